"""`make bench-peers`: the service side by side with peer gateways, one run.

    make bench-peers                               # installs the peers, then this
    .venv/bin/python -m benchmarks.peers --reps 1 --concurrencies 8   # a short look

The peers are installed by `make bench-peers` under `.bench/` (gitignored,
not project dependencies), at pinned versions:

- LiteLLM proxy (`.bench/litellm`, its own virtualenv), on its Azure AI
  FLUX route (`azure_ai/FLUX.2-pro`), which calls
  `/providers/blackforestlabs/v1/flux-2-pro?api-version=preview`: the
  emulator's protocol. LiteLLM sends that route's key as `api-key`; the
  emulator, like this service's backend, uses `Authorization: Bearer`, so
  the model's `extra_headers` sets it.
- Portkey's gateway (`.bench/portkey`, the npm package run with node). It
  has no FLUX-on-Azure route, so it is called on its OpenAI images route
  (`x-portkey-provider: openai`) with the emulator's FLUX URL as the custom
  host: Portkey appends `/images/generations`, which the `#` at the end of
  the custom host turns into a URL fragment that is never sent. The
  OpenAI body it forwards is one the emulator accepts (it ignores `size`
  and `response_format`), and the emulator's answer is already in OpenAI's
  `{"data":[{"b64_json":...}]}` shape.

All of them, the service (server + REST sidecar) included, call the same
emulator process (`benchmarks.emulator`, the sandbox's FLUX route) on
127.0.0.1, and the load process calls each through the same OpenAI-style
client (`RestClient`: `Accept-Encoding: gzip, deflate`, as the openai SDK).
Cells are interleaved: within each repetition, every cell is measured
directly on the emulator and then through each system, in an order that
rotates between repetitions, so that a noisy minute on the shared machine
hits every system alike; a system's figures pool its repetitions.

Before the load, each system is asked for what FLUX-through-a-gateway
callers need beyond one image: `n=4`, `stream=true`, and
`response_format=url`. The answers go in the report verbatim (shortened).

Nothing leaves the machine: LiteLLM reads its model-cost map and other
catalogues from the package (`LITELLM_LOCAL_*`), and their remote URLs
point at a closed loopback port; Portkey runs `--headless`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import procstat
from benchmarks.clients import DirectClient, RestClient, prompt
from benchmarks.emulator import API_KEY
from benchmarks.load import LoadResult, percentile
from benchmarks.processes import HOST, REPO_ROOT, Child, Stack, base_env, free_port, start_child
from benchmarks.run import MAX_REQUESTS_PER_CELL, environment, log, measured_loop

BENCH_DIR = REPO_ROOT / ".bench"
LITELLM_BIN = BENCH_DIR / "litellm" / "bin" / "litellm"
PORTKEY_JS = BENCH_DIR / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build"
PORTKEY_JS = PORTKEY_JS / "start-server.js"
# LiteLLM imports a great deal; on a busy 2-core machine it can take a minute.
PEER_START_TIMEOUT_S = 180.0
FLUX_PATH = "/providers/blackforestlabs/v1/flux-2-pro?api-version=preview"
# Where LiteLLM's remote catalogues would come from: a closed port.
_NOWHERE = "http://127.0.0.1:9/"


@dataclass
class System:
    """One thing under load: the service or a peer, its processes and client."""

    key: str
    label: str
    route: str
    client: RestClient
    pids: list[int]
    child: Child | None = None


@dataclass
class PeerCell:
    """One system in one cell, pooled over the repetitions."""

    system: str
    latency_ms: int
    concurrency: int
    loads: list[LoadResult] = field(default_factory=list)
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    encodings: Counter[str] = field(default_factory=Counter)

    @property
    def latencies(self) -> list[float]:
        return [x for load in self.loads for x in load.latencies]

    @property
    def completed(self) -> int:
        return sum(load.completed for load in self.loads)

    @property
    def errors(self) -> int:
        return sum(sum(load.errors.values()) for load in self.loads)

    @property
    def throughput(self) -> float:
        elapsed = sum(load.elapsed for load in self.loads)
        return self.completed / elapsed if elapsed else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s * 1000 / self.completed if self.completed else math.nan


async def start_litellm(workdir: Path, emulator_url: str) -> System:
    """LiteLLM proxy with one model, `azure/flux-2-pro`, on its Azure AI FLUX route."""
    if not LITELLM_BIN.exists():
        raise SystemExit(f"{LITELLM_BIN} is missing: run `make bench-peers`")
    master_key = "sk-" + secrets.token_hex(32)
    config = {
        "model_list": [
            {
                "model_name": "azure/flux-2-pro",
                "litellm_params": {
                    "model": "azure_ai/FLUX.2-pro",
                    "api_base": emulator_url,
                    "api_key": API_KEY,
                    "api_version": "preview",
                    "extra_headers": {"Authorization": f"Bearer {API_KEY}"},
                },
            }
        ],
        # FLUX takes no `response_format`; without this LiteLLM refuses the
        # openai SDK's requests instead of answering base64 as it always does.
        "litellm_settings": {"drop_params": True},
    }
    path = workdir / "litellm.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    env = {
        **base_env(),
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOCAL_BLOG_POSTS": "True",
        "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
        "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
        "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
        "LITELLM_MODEL_COST_MAP_URL": _NOWHERE,
        "LITELLM_BLOG_POSTS_URL": _NOWHERE,
        "LITELLM_ANTHROPIC_BETA_HEADERS_URL": _NOWHERE,
        "LITELLM_AUTOROUTER_PRESETS_URL": _NOWHERE,
    }
    child = await start_child(
        "litellm",
        [str(LITELLM_BIN), "--config", str(path), "--host", HOST, "--port", str(port)],
        env,
        workdir / "litellm.log",
        r"Uvicorn running on",
        PEER_START_TIMEOUT_S,
    )
    client = RestClient(
        f"http://{HOST}:{port}",
        model="azure/flux-2-pro",
        headers={"Authorization": f"Bearer {master_key}"},
    )
    return System(
        "litellm",
        f"LiteLLM proxy {_litellm_version()}",
        "azure_ai/FLUX.2-pro (Azure AI FLUX route)",
        client,
        procstat.descendants(child.pid),
        child,
    )


async def start_portkey(workdir: Path, emulator_url: str) -> System:
    """Portkey's gateway, called on its OpenAI images route with the emulator as custom host."""
    if not PORTKEY_JS.exists():
        raise SystemExit(f"{PORTKEY_JS} is missing: run `make bench-peers`")
    port = free_port()
    env = {**base_env(), "NODE_ENV": "production"}
    child = await start_child(
        "portkey",
        ["node", str(PORTKEY_JS), f"--port={port}", "--headless"],
        env,
        workdir / "portkey.log",
        r"Ready for connections",
        PEER_START_TIMEOUT_S,
    )
    client = RestClient(
        f"http://{HOST}:{port}",
        model="FLUX.2-pro",
        headers={
            "Authorization": f"Bearer {API_KEY}",
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"{emulator_url}{FLUX_PATH}#",
        },
    )
    return System(
        "portkey",
        f"Portkey gateway {_portkey_version()}",
        "openai provider, custom host = the emulator's FLUX URL",
        client,
        procstat.descendants(child.pid),
        child,
    )


def _litellm_version() -> str:
    site = list((BENCH_DIR / "litellm" / "lib").glob("python*/site-packages/litellm-*.dist-info"))
    return site[0].name.split("-")[1].removesuffix(".dist") if site else "?"


def _portkey_version() -> str:
    package = PORTKEY_JS.parents[1] / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def _short(text: str, limit: int = 160) -> str:
    one_line = " ".join(text.split()).replace("|", "/")
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
        error = payload.get("error", payload) if isinstance(payload, dict) else payload
        message = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        message = response.text
    return _short(f"HTTP {response.status_code}: {message}")


async def probe(client: RestClient) -> dict[str, str]:
    """What the system does with n=4, stream=true and response_format=url."""
    http = client.client
    text = prompt("1mb", 0)
    base = {"model": client.model, "prompt": text, "size": "1024x1024"}
    found: dict[str, str] = {}

    response = await http.post(
        "/v1/images/generations", json={**base, "n": 4, "response_format": "b64_json"}
    )
    images = response.content.count(b'"b64_json":"') if response.status_code == 200 else 0
    found["n=4"] = (
        "yes"
        if images == 4
        else (
            f"no: {images} image(s)"
            if response.status_code == 200
            else f"no: {_error_text(response)}"
        )
    )

    response = await http.post(
        "/v1/images/generations",
        json={**base, "n": 1, "response_format": "b64_json", "stream": True},
    )
    kind = response.headers.get("content-type", "")
    if response.status_code == 200 and kind.startswith("text/event-stream"):
        found["stream=true"] = "yes (server-sent events)"
    elif response.status_code == 200:
        found["stream=true"] = f"no: ignored, one {kind.split(';')[0]} answer"
    else:
        found["stream=true"] = f"no: {_error_text(response)}"

    response = await http.post(
        "/v1/images/generations", json={**base, "n": 1, "response_format": "url"}
    )
    if response.status_code == 200 and b'"url":"' in response.content:
        found["url"] = "yes"
    elif response.status_code == 200:
        found["url"] = "no: answered b64_json instead"
    else:
        found["url"] = f"no: {_error_text(response)}"
    return found


@dataclass(frozen=True)
class PeerPlan:
    latencies_ms: tuple[int, ...] = (0, 500)
    concurrencies: tuple[int, ...] = (1, 8, 32)
    noise: str = "3mb"
    reps: int = 3
    # Longer than the grid's boxes: a peer may manage only a few requests a second.
    duration_s: float = 3.0
    max_requests: int = MAX_REQUESTS_PER_CELL
    peers: tuple[str, ...] = ("litellm", "portkey")


class PeerBench:
    """Runs a `PeerPlan` against the service and the started peers."""

    def __init__(self, plan: PeerPlan, systems: list[System], direct: DirectClient) -> None:
        self.plan = plan
        self.systems = systems
        self.direct = direct
        self.cells: dict[tuple[str, int, int], PeerCell] = {}
        self.features: dict[str, dict[str, str]] = {}

    def cell(self, system: str, latency_ms: int, concurrency: int) -> PeerCell:
        key = (system, latency_ms, concurrency)
        if key not in self.cells:
            self.cells[key] = PeerCell(system, latency_ms, concurrency)
        return self.cells[key]

    async def run(self) -> None:
        for system in self.systems:
            self.features[system.key] = await probe(system.client)
            log(f"  {system.key}: {self.features[system.key]}")
        plan = self.plan
        for rep in range(plan.reps):
            for latency in plan.latencies_ms:
                for concurrency in plan.concurrencies:
                    await self.one(rep, latency, concurrency)

    async def one(self, rep: int, latency_ms: int, concurrency: int) -> None:
        plan = self.plan
        text = prompt(plan.noise, latency_ms / 1000)
        stagger = latency_ms / 1000
        window = await measured_loop(
            self.direct.generate(text, 1),
            [],
            concurrency,
            plan.duration_s,
            stagger,
            plan.max_requests,
        )
        self.cell("direct", latency_ms, concurrency).loads.append(window.load)
        shift = rep % len(self.systems)
        for system in self.systems[shift:] + self.systems[:shift]:
            before = Counter(system.client.encodings)
            window = await measured_loop(
                system.client.generate(text, 1, b64=True),
                system.pids,
                concurrency,
                plan.duration_s,
                stagger,
                plan.max_requests,
            )
            cell = self.cell(system.key, latency_ms, concurrency)
            cell.loads.append(window.load)
            cell.cpu_s += sum(window.cpu_s.values())
            cell.peak_rss_mib = max(cell.peak_rss_mib, sum(window.peak_rss_mib.values()))
            cell.encodings.update(system.client.encodings - before)
            log(
                f"  rep {rep + 1}, {latency_ms} ms, c={concurrency}: {system.key} "
                f"{window.load.throughput:.1f} req/s, errors {sum(window.load.errors.values())}"
            )

    def report(self, elapsed_s: float) -> str:
        labels = {s.key: s.label for s in self.systems}
        lines = [
            "## Environment",
            "",
            environment(elapsed_s),
            "",
            "## Systems",
            "",
            "| system | route to the emulator | processes measured |",
            "|---|---|---|",
        ]
        for s in self.systems:
            lines.append(f"| {s.label} | {s.route} | {len(s.pids)} |")
        lines += [
            "",
            "## Features beyond one image",
            "",
            "| system | n=4 | stream=true | response_format=url |",
            "|---|---|---|---|",
        ]
        for s in self.systems:
            f = self.features.get(s.key, {})
            lines.append(
                f"| {s.label} | {f.get('n=4', '—')} | {f.get('stream=true', '—')} "
                f"| {f.get('url', '—')} |"
            )
        lines += [
            "",
            f"## Side by side: b64_json, {self.plan.noise} PNG, n=1, "
            f"{self.plan.reps} interleaved repetitions",
            "",
            "| upstream ms | conc | system | req/s | p50 ms | p99 ms | added p50 | added p99 "
            "| CPU ms/req | CPU × service | peak RSS MiB | reqs | errors | encodings |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for latency in self.plan.latencies_ms:
            for concurrency in self.plan.concurrencies:
                direct = self.cells.get(("direct", latency, concurrency))
                service = self.cells.get(("service", latency, concurrency))
                if direct is None:
                    continue
                d50 = percentile(direct.latencies, 50)
                d99 = percentile(direct.latencies, 99)
                lines.append(
                    f"| {latency} | {concurrency} | direct → emulator | {direct.throughput:.1f} "
                    f"| {_ms(d50)} | {_ms(d99)} | — | — | — | — | — | {direct.completed} "
                    f"| {direct.errors} | — |"
                )
                for s in self.systems:
                    c = self.cells.get((s.key, latency, concurrency))
                    if c is None:
                        continue
                    p50, p99 = percentile(c.latencies, 50), percentile(c.latencies, 99)
                    ratio = c.cpu_ms / service.cpu_ms if service and service.cpu_ms else math.nan
                    encodings = ", ".join(f"{k} {v}" for k, v in sorted(c.encodings.items()))
                    lines.append(
                        f"| {latency} | {concurrency} | {labels[s.key]} | {c.throughput:.1f} "
                        f"| {_ms(p50)} | {_ms(p99)} | {_ms(p50 - d50)} | {_ms(p99 - d99)} "
                        f"| {c.cpu_ms:.2f} | {ratio:.2f} | {c.peak_rss_mib:.0f} "
                        f"| {c.completed} | {c.errors} | {encodings} |"
                    )
        return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


async def run(plan: PeerPlan, workdir: Path) -> tuple[PeerBench, float]:
    started = time.perf_counter()
    stack = Stack(workdir, workdir / "media", noise_sizes=tuple(sorted({plan.noise, "1mb"})))
    log(f"starting emulator, server and sidecar (logs in {workdir})")
    async with stack:
        systems = [
            System(
                "service",
                "this service (REST sidecar + server)",
                "its Azure FLUX backend",
                RestClient(stack.rest_url),
                stack.service_pids(),
            )
        ]
        try:
            for name, starter in (("litellm", start_litellm), ("portkey", start_portkey)):
                if name in plan.peers:
                    log(f"starting {name}")
                    systems.append(await starter(workdir, stack.emulator_url))
            direct = DirectClient(stack.emulator_url)
            bench = PeerBench(plan, systems, direct)
            try:
                await bench.run()
            finally:
                await direct.close()
        finally:
            for system in systems:
                await system.client.close()
                if system.child is not None:
                    await asyncio.to_thread(system.child.stop)
    return bench, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument("--reps", type=int, default=PeerPlan.reps)
    parser.add_argument("--duration", type=float, default=PeerPlan.duration_s)
    parser.add_argument("--latencies", default="0,500", help="upstream latencies, ms")
    parser.add_argument("--concurrencies", default="1,8,32")
    parser.add_argument("--peers", default="litellm,portkey")
    parser.add_argument(
        "--max-requests", type=int, default=PeerPlan.max_requests, help="close a window after"
    )
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    plan = PeerPlan(
        latencies_ms=tuple(int(v) for v in args.latencies.split(",") if v),
        concurrencies=tuple(int(v) for v in args.concurrencies.split(",") if v),
        reps=args.reps,
        duration_s=args.duration,
        max_requests=args.max_requests,
        peers=tuple(p for p in args.peers.split(",") if p),
    )
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="image-bench-peers-", dir=base) as tmp:
        bench, elapsed = asyncio.run(run(plan, Path(tmp)))
    text = bench.report(elapsed)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 1 if any(c.errors for c in bench.cells.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: run the benchmark plan and print the tables.

    python -m benchmarks.run            # the full grid, a few minutes
    python -m benchmarks.run --quick    # the target cells only, under a minute
    python -m benchmarks.run --output results.md --json results.json

Starts the emulator, service and sidecar (`benchmarks.processes.Stack`),
then measures, in this order, each in the same run:

1. The grid: upstream latency x PNG size x n x concurrency, each group of
   cells first called directly on the emulator (the baseline), then through
   gRPC (URL, inline) and the REST sidecar (url, b64_json).
2. The target cells the grid lacks (REST b64_json of a 4 MiB PNG), and the
   gRPC target cell again with a longer time box.
3. Streaming: time to first image of `StreamGenerate` n=4 whose four
   upstream calls take different times, against the fastest call alone.
4. Capacity: many generations in flight at once behind a slow upstream.
5. Observability: CPU per request with metrics and tracing on versus off
   (three more stacks side by side, `benchmarks/observability.py`).

Every loop is bounded in requests and time; every address is 127.0.0.1.
Progress goes to stderr, the Markdown report to stdout (and `--output`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

import grpc

from benchmarks import keyed, procstat
from benchmarks.clients import Call, DirectClient, GrpcClient, RestClient, prompt
from benchmarks.load import LoadResult, closed_loop, percentile
from benchmarks.observability import ObservabilityResult, compare
from benchmarks.processes import Stack
from benchmarks.report import (
    CapacityResult,
    CellResult,
    StreamResult,
    Target,
    capacity_table,
    config_table,
    grid_table,
    stream_table,
    target_table,
)

SERVICE_PATHS = ("grpc-url", "grpc-inline", "rest-url", "rest-b64")
# The cells the issue sets targets on: (path, latency ms, PNG, n, concurrency).
GRPC_TARGET = ("grpc-url", 500, "3mb", 1, 32)
REST_TARGET = ("rest-b64", 0, "4mb", 1, 8)
MAX_REQUESTS_PER_CELL = 5000
# A cell's window stays open past its time box until this many requests per
# worker (and at least MIN_REQUESTS) have completed, for at most MAX_BOXES
# time boxes.
MIN_REQUESTS_PER_WORKER = 2
# The capacity run's calls per gRPC channel (one HTTP/2 connection each).
CALLS_PER_CHANNEL = 1000
# Each capacity call's deadline. Every call must be picked up and answered
# by one event loop; at a few ms of CPU per generation, 10,000 take longer
# than the load's usual 60 s on this shared machine (BENCHMARKS.md).
CAPACITY_TIMEOUT_S = 300.0
MIN_REQUESTS = 6
MAX_BOXES = 4


@dataclass(frozen=True)
class Plan:
    """What to measure and for how long."""

    latencies_ms: tuple[int, ...] = (0, 500)
    noises: tuple[str, ...] = ("1mb", "3mb")
    ns: tuple[int, ...] = (1, 4)
    concurrencies: tuple[int, ...] = (1, 8, 32)
    paths: tuple[str, ...] = SERVICE_PATHS
    # Time box of each grid cell, and of the target cells.
    duration_s: float = 1.5
    target_duration_s: float = 5.0
    # A cell's window also closes once this many requests have completed:
    # with a long time box, a count that does not depend on how fast this
    # machine is (the harness's smoke test uses that).
    max_requests_per_cell: int = MAX_REQUESTS_PER_CELL
    stream_noise: str = "3mb"
    stream_latencies_ms: tuple[int, ...] = (100, 200, 300, 400)
    stream_requests: int = 10
    capacity: int = 10_000
    capacity_upstream_s: float = 5.0
    capacity_noise: str = "64kb"
    # Metrics and tracing on versus off (benchmarks/observability.py).
    observability_rounds: int = 5
    observability_duration_s: float = 3.0
    # The service's configurations (CONFIGS), each measured in every cell.
    configs: tuple[str, ...] = ("bare", "production")


# What each configuration sets in the server's and sidecar's environment.
# "bare": no metrics, no tracing, no access lines (WARNING). "production":
# Prometheus metrics on both processes, every span exported over OTLP/HTTP
# to the emulator process's receiver, JSON logs with an access line per RPC
# and per HTTP request.
CONFIGS: dict[str, dict[str, str]] = {
    "bare": {
        "IMAGE_SERVICE_AUTH": "none",
        "IMAGE_SERVICE_METRICS": "false",
        "IMAGE_SERVICE_LOG_LEVEL": "WARNING",
        "OTEL_SDK_DISABLED": "true",
    },
    "production": {
        "IMAGE_SERVICE_METRICS": "true",
        "IMAGE_SERVICE_LOG_LEVEL": "INFO",
        "IMAGE_SERVICE_LOG_FORMAT": "json",
        "OTEL_TRACES_EXPORTER": "otlp",
    },
}
TRACED_CONFIGS = frozenset({"production"})
# Configurations whose callers present API keys checked against Redis, with
# per-key and per-provider limits counted there (when this service has
# `image-service keys` and redis-server is installed: `benchmarks.keyed`).
KEYED_CONFIGS = frozenset({"production"})


FULL = Plan()
QUICK = Plan(
    latencies_ms=(),
    noises=(),
    ns=(),
    concurrencies=(),
    target_duration_s=2.0,
    stream_requests=4,
    observability_rounds=1,
    observability_duration_s=2.0,
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Window:
    """One closed-loop window and what the measured processes used during it."""

    load: LoadResult
    # pid -> CPU seconds inside the window, and peak RSS (MiB) during it.
    cpu_s: dict[int, float]
    peak_rss_mib: dict[int, float]


async def measured_loop(
    call: Call,
    pids: Sequence[int],
    concurrency: int,
    duration_s: float,
    stagger_s: float,
    max_requests: int = MAX_REQUESTS_PER_CELL,
) -> Window:
    """`closed_loop` over `call` with a cell's bounds, reading the CPU time
    and peak RSS of `pids` at the window's two ends."""
    starts: dict[int, procstat.CpuSnapshot] = {}
    ends: dict[int, procstat.CpuSnapshot] = {}
    peaks: dict[int, float] = {}

    def on_start() -> None:
        for pid in pids:
            procstat.reset_peak(pid)
            starts[pid] = procstat.cpu_snapshot(pid)

    def on_stop() -> None:
        for pid in pids:
            ends[pid] = procstat.cpu_snapshot(pid)
            peaks[pid] = procstat.peak_rss_mib(pid)

    load = await closed_loop(
        call,
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=max_requests,
        min_requests=max(MIN_REQUESTS_PER_WORKER * concurrency, MIN_REQUESTS),
        max_duration_s=MAX_BOXES * duration_s,
        stagger_s=stagger_s,
        on_start=on_start,
        on_stop=on_stop,
    )
    cpu = {pid: procstat.cpu_seconds_between(starts[pid], ends[pid]) for pid in pids}
    return Window(load, cpu, peaks)


@dataclass
class Service:
    """One configuration of the service under test: its stack and clients."""

    config: str
    stack: Stack
    # The caller's API key when the configuration checks keys, else "".
    api_key: str = ""

    def __post_init__(self) -> None:
        self.grpc = GrpcClient(self.stack.grpc_target, self.api_key)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        self.rest = RestClient(self.stack.rest_url, headers=headers)

    def call_for(self, path: str, text: str, n: int) -> Call:
        """The call that sends `text` asking for `n` images along `path`."""
        if path == "grpc-url":
            return self.grpc.generate(text, n, inline=False)
        if path == "grpc-inline":
            return self.grpc.generate(text, n, inline=True)
        if path == "rest-url":
            return self.rest.generate(text, n, b64=False)
        if path == "rest-b64":
            return self.rest.generate(text, n, b64=True)
        raise ValueError(path)

    async def close(self) -> None:
        await self.grpc.close()
        await self.rest.close()


class Bench:
    """Runs a `Plan` against started services (configurations) sharing one emulator.

    Every service cell is measured once per configuration, right after the
    other, behind one direct baseline.
    """

    def __init__(self, services: Sequence[Service], plan: Plan) -> None:
        self.services = list(services)
        self.plan = plan
        self.direct = DirectClient(self.services[0].stack.emulator_url)
        self.cells: list[CellResult] = []
        self.streams: list[StreamResult] = []
        self.capacity: list[CapacityResult] = []
        self.observability: ObservabilityResult | None = None
        # What the emulator's OTLP receiver got from the traced configurations.
        self.otlp_exports = 0
        self.otlp_bytes = 0

    async def close(self) -> None:
        for service in self.services:
            await service.close()
        await self.direct.close()

    async def group(
        self,
        latency_ms: int,
        noise: str,
        n: int,
        concurrency: int,
        paths: Sequence[str],
        duration_s: float,
    ) -> None:
        """The direct baseline, then each of `paths`, for one set of conditions."""
        text = prompt(noise, latency_ms / 1000)
        label = f"{latency_ms} ms, {noise}, n={n}, c={concurrency}"
        # Callers spread over one upstream latency, not in lockstep waves.
        stagger_s = latency_ms / 1000
        window = await measured_loop(
            self.direct.generate(text, n),
            [],
            concurrency,
            duration_s,
            stagger_s,
            self.plan.max_requests_per_cell,
        )
        baseline = window.load
        self.cells.append(CellResult("direct", latency_ms, noise, n, concurrency, baseline))
        log(f"  {label}: direct {baseline.throughput:.1f} req/s")
        for path in paths:
            for service in self.services:
                service.stack.check_alive()
                cell = await self.measure(
                    service, path, text, n, concurrency, duration_s, stagger_s
                )
                cell = replace(cell, latency_ms=latency_ms, noise=noise, baseline=baseline)
                self.cells.append(cell)
                await asyncio.to_thread(service.stack.clear_media)
                log(
                    f"  {label}: {path} [{service.config}] {cell.load.throughput:.1f} req/s, "
                    f"+{_ms(cell.added(50))} ms p50, CPU {cell.cpu_ms or 0:.2f} ms/req, "
                    f"errors {sum(cell.load.errors.values())}"
                )

    async def measure(
        self,
        service: Service,
        path: str,
        text: str,
        n: int,
        concurrency: int,
        duration_s: float,
        stagger_s: float,
    ) -> CellResult:
        """One service cell: load, CPU per request and peak RSS of server and sidecar."""
        server_pid, sidecar_pid = pids = service.stack.service_pids()
        encodings_before = dict(service.rest.encodings)
        window = await measured_loop(
            service.call_for(path, text, n),
            pids,
            concurrency,
            duration_s,
            stagger_s,
            self.plan.max_requests_per_cell,
        )
        load = window.load
        per_request = 1000 / load.completed if load.completed else math.nan
        encodings = {
            k: v - encodings_before.get(k, 0)
            for k, v in service.rest.encodings.items()
            if v - encodings_before.get(k, 0)
        }
        return CellResult(
            path,
            0,
            "",
            n,
            concurrency,
            load,
            cpu_ms=sum(window.cpu_s.values()) * per_request,
            cpu_ms_server=window.cpu_s[server_pid] * per_request,
            cpu_ms_sidecar=window.cpu_s[sidecar_pid] * per_request,
            peak_rss_server=window.peak_rss_mib[server_pid],
            peak_rss_sidecar=window.peak_rss_mib[sidecar_pid],
            encodings=encodings,
            config=service.config,
        )

    async def grid(self) -> None:
        """Every group of the plan's grid but the gRPC target's (see `targets`)."""
        plan = self.plan
        for latency in plan.latencies_ms:
            for noise in plan.noises:
                for n in plan.ns:
                    for concurrency in plan.concurrencies:
                        if (latency, noise, n, concurrency) != GRPC_TARGET[1:]:
                            await self.group(
                                latency, noise, n, concurrency, plan.paths, plan.duration_s
                            )

    async def targets(self) -> None:
        """The target cells, with the longer time box: the gRPC target's whole
        group (all four paths when the grid has that group), and REST b64_json
        of a 4 MiB PNG."""
        plan = self.plan
        latency, noise, n, concurrency = GRPC_TARGET[1:]
        in_grid = (
            latency in plan.latencies_ms
            and noise in plan.noises
            and n in plan.ns
            and concurrency in plan.concurrencies
        )
        paths = SERVICE_PATHS if in_grid else (GRPC_TARGET[0],)
        await self.group(latency, noise, n, concurrency, paths, plan.target_duration_s)
        latency, noise, n, concurrency = REST_TARGET[1:]
        await self.group(latency, noise, n, concurrency, (REST_TARGET[0],), plan.target_duration_s)

    async def stream(self) -> None:
        """Time to first image in each configuration."""
        for service in self.services:
            await self.stream_one(service)

    async def stream_one(self, service: Service) -> None:
        """Time to first image: n=4, four calls of different latencies, URL answers."""
        plan = self.plan
        fastest = min(plan.stream_latencies_ms) / 1000
        result = StreamResult(
            plan.stream_noise, list(plan.stream_latencies_ms), config=service.config
        )
        direct = await closed_loop(
            self.direct.generate(prompt(plan.stream_noise, fastest), 1),
            concurrency=1,
            duration_s=60,
            max_requests=plan.stream_requests,
        )
        result.fastest_direct = direct.latencies
        # Directives would override the queued latencies: none in this prompt.
        text = prompt(plan.stream_noise, None)
        n = len(plan.stream_latencies_ms)
        rng = random.Random(6)
        schedule: list[float] = []
        for _ in range(plan.stream_requests + 1):  # one warm-up stream
            group = [ms / 1000 for ms in plan.stream_latencies_ms]
            rng.shuffle(group)
            schedule.extend(group)
        await self.direct.set_latencies(schedule)
        try:
            for i in range(plan.stream_requests + 1):
                try:
                    first, whole = await service.grpc.first_image(text, n)
                except Exception as error:
                    log(f"  stream failed: {type(error).__name__}: {error}")
                    result.errors += 1
                    continue
                if i:
                    result.first_image.append(first)
                    result.whole_stream.append(whole)
        finally:
            await self.direct.set_latencies([])
        self.streams.append(result)
        log(
            f"  stream [{service.config}]: "
            f"first image p50 {_ms(percentile(result.first_image, 50))} ms, "
            f"fastest call {_ms(percentile(result.fastest_direct, 50))} ms"
        )

    async def hold(self) -> None:
        """Capacity: `plan.capacity` generations at once behind a slow upstream,
        in the last configuration (production's, when measured)."""
        plan = self.plan
        service = self.services[-1]
        server = service.stack.service_pids()[0]
        result = CapacityResult(
            plan.capacity, plan.capacity_upstream_s, plan.capacity_noise, config=service.config
        )
        # Warm the path (connection, the emulator's noise cache) first.
        await service.grpc.generate(prompt(plan.capacity_noise, 0), 1, inline=False)()
        result.baseline_rss_server = procstat.rss_mib(server)
        procstat.reset_peak(server)
        cpu_start = procstat.cpu_snapshot(server)
        # As many callers' connections as production would see, one per
        # CALLS_PER_CHANNEL calls, rather than every call on one HTTP/2 connection.
        channels = [
            GrpcClient(service.stack.grpc_target, service.api_key)
            for _ in range(math.ceil(plan.capacity / CALLS_PER_CHANNEL))
        ]
        text = prompt(plan.capacity_noise, plan.capacity_upstream_s)
        calls = [
            channels[i % len(channels)].generate(
                text, 1, inline=False, timeout_s=CAPACITY_TIMEOUT_S
            )
            for i in range(plan.capacity)
        ]
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                stats = await self.direct.stats()
                result.max_upstream_in_flight = max(
                    result.max_upstream_in_flight, stats["in_flight"]
                )
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        try:
            outcomes = await asyncio.gather(*(call() for call in calls), return_exceptions=True)
        finally:
            for channel in channels:
                await channel.close()
        result.wall_s = time.perf_counter() - started
        done.set()
        await sampler
        errors: dict[str, int] = {}
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                name = type(outcome).__name__
                if isinstance(outcome, grpc.aio.AioRpcError):
                    name = f"{outcome.code().name}: {outcome.details()}"[:120]
                errors[name] = errors.get(name, 0) + 1
        result.errors = errors
        result.completed = plan.capacity - sum(errors.values())
        result.peak_rss_server = procstat.peak_rss_mib(server)
        cpu = procstat.cpu_seconds_between(cpu_start, procstat.cpu_snapshot(server))
        result.cpu_ms = cpu * 1000 / max(1, result.completed)
        self.capacity.append(result)
        log(
            f"  capacity: {result.completed}/{plan.capacity} in {result.wall_s:.1f} s, "
            f"peak RSS {result.peak_rss_server:.0f} MiB, errors {errors}"
        )

    def target_results(self) -> list[Target]:
        """The issue's targets, from this run's cells."""

        targets: list[Target] = []
        for service in self.services:
            targets += self._targets_of(service.config)
        targets += self._budget_targets()
        if self.observability is not None:
            observed = self.observability
            targets.append(
                Target(
                    "Metrics on: their updates' CPU per REST request (timed alone)",
                    observed.metric_updates_share() * 100,
                    5,
                    "%",
                    "max",
                )
            )
        return targets

    def _budget_targets(self) -> list[Target]:
        """What the second configuration (production) may add to the first
        (bare) in the target cells: 1 ms of CPU and 1 ms of added p50."""
        if len(self.services) < 2:
            return []
        base, other = self.services[0].config, self.services[1].config
        found = {(c.config, c.path, c.key): c for c in self.cells}
        targets: list[Target] = []
        for spec, label in (
            (GRPC_TARGET, "gRPC n=1 3 MiB URL, 500 ms, c=32"),
            (REST_TARGET, "REST b64_json 4 MiB, c=8"),
        ):
            path, latency_ms, noise, n, concurrency = spec
            key = (latency_ms, noise, n, concurrency)
            a = found.get((base, path, key))
            b = found.get((other, path, key))
            if a is None or b is None:
                continue
            name = f"{other} − {base}, {label}"
            targets += [
                Target(
                    f"{name}: CPU per request",
                    _nan(b.cpu_ms) - _nan(a.cpu_ms),
                    1,
                    "ms",
                    "max",
                ),
                Target(f"{name}: added p50", (b.added(50) - a.added(50)) * 1000, 1, "ms", "max"),
            ]
        return targets

    def _targets_of(self, config: str) -> list[Target]:
        """The targets measured in one configuration, named with it."""

        def cell(spec: tuple[str, int, str, int, int]) -> CellResult | None:
            path, *key = spec
            for c in self.cells:
                if c.config == config and c.path == path and list(c.key) == key:
                    return c
            return None

        targets: list[Target] = []
        grpc = cell(GRPC_TARGET)
        if grpc is not None:
            name = f"[{config}] gRPC n=1 3 MiB URL, 500 ms upstream, c=32"
            targets += [
                Target(f"{name}: service CPU per request", _nan(grpc.cpu_ms), 3, "ms", "max"),
                Target(f"{name}: added p50", grpc.added(50) * 1000, 2, "ms", "max"),
                Target(f"{name}: added p99", grpc.added(99) * 1000, 10, "ms", "max"),
            ]
        rest = cell(REST_TARGET)
        if rest is not None:
            name = f"[{config}] REST b64_json 4 MiB PNG, c=8"
            compressed = sum(v for k, v in rest.encodings.items() if k != "identity")
            targets += [
                Target(
                    f"{name}: CPU per request (server + sidecar)",
                    _nan(rest.cpu_ms),
                    10,
                    "ms",
                    "max",
                ),
                Target(f"{name}: throughput", rest.load.throughput, 50, "req/s", "min"),
                Target(f"{name}: compressed responses", compressed, 0, "", "max"),
            ]
        for stream in (s for s in self.streams if s.config == config):
            gap = percentile(stream.first_image, 50) - percentile(stream.fastest_direct, 50)
            targets.append(
                Target(
                    f"[{config}] Streaming n=4: first image after the fastest call (p50)",
                    gap * 1000,
                    5,
                    "ms",
                    "max",
                )
            )
        for hold in (h for h in self.capacity if h.config == config):
            name = f"[{config}] {hold.requested} in flight, {hold.upstream_s:g} s upstream"
            targets += [
                Target(f"{name}: errors", sum(hold.errors.values()), 0, "", "max"),
                Target(f"{name}: server peak RSS", hold.peak_rss_server, 1024, "MiB", "max"),
            ]
        return targets

    def report(self, elapsed_s: float) -> str:
        """The whole Markdown report."""
        parts = [
            "## Environment",
            "",
            environment(elapsed_s),
            "",
            "## Configurations",
            "",
            configurations(self.services, self.otlp_exports, self.otlp_bytes),
            "",
            "## Targets",
            "",
            target_table(self.target_results()),
            "",
            "## Grid",
            "",
            grid_table(self.cells),
        ]
        configs = [s.config for s in self.services]
        if len(configs) > 1:
            parts += [
                "",
                f"## {configs[0]} against {configs[1]}",
                "",
                config_table(self.cells, configs[0], configs[1]),
            ]
        if self.streams:
            parts += ["", "## Streaming: time to first image", "", stream_table(self.streams)]
        if self.capacity:
            parts += ["", "## Capacity", "", capacity_table(self.capacity)]
        if self.observability is not None:
            parts += [
                "",
                "## Observability: metrics and tracing cost",
                "",
                self.observability.table(),
            ]
        return "\n".join(parts) + "\n"

    def as_json(self) -> dict[str, object]:
        def load(result: LoadResult | None) -> dict[str, object] | None:
            if result is None:
                return None
            return {
                "latencies_s": result.latencies,
                "errors": dict(result.errors),
                "elapsed_s": result.elapsed,
            }

        return {
            "cells": [
                {
                    **{k: v for k, v in asdict(c).items() if k not in ("load", "baseline")},
                    "load": load(c.load),
                    "baseline": load(c.baseline),
                }
                for c in self.cells
            ],
            "streams": [asdict(s) for s in self.streams],
            "capacity": [asdict(c) for c in self.capacity],
            "targets": [{**asdict(t), "met": t.met} for t in self.target_results()],
            "otlp": {"exports": self.otlp_exports, "bytes": self.otlp_bytes},
        }


def configurations(services: Sequence[Service], exports: int, nbytes: int) -> str:
    """One line per configuration: what it sets; then what tracing exported."""
    lines = [
        f"- {s.config}: "
        + ", ".join(f"`{k}={v}`" for k, v in CONFIGS[s.config].items())
        + (", traces to the emulator's OTLP receiver" if s.config in TRACED_CONFIGS else "")
        + (f", {keyed.DESCRIPTION}" if s.api_key else "")
        for s in services
    ]
    if any(s.config in KEYED_CONFIGS and not s.api_key for s in services):
        lines.append(f"- no API keys or Redis in this run: {keyed.UNSUPPORTED}")
    if any(s.config in TRACED_CONFIGS for s in services):
        lines.append(f"- OTLP trace exports received: {exports} ({nbytes / 1e6:.1f} MB)")
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(elapsed_s: float) -> str:
    """One paragraph: machine, versions, run time."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    packages = ", ".join(
        f"{p} {_version(p)}"
        for p in ("grpcio", "protobuf", "httpx", "aiohttp", "starlette", "uvicorn")
    )
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {packages}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; the whole run took {elapsed_s:.0f} s; "
        f"load average at the end {load}."
    )


async def keys_for(
    config: str, workdir: Path, stacks: contextlib.AsyncExitStack
) -> tuple[dict[str, str], str]:
    """The extra service environment and the API key callers present in `config`.

    A keyed configuration gets a redis-server of its own (stopped with
    `stacks`) and one key created in it; others, or a machine without
    redis-server, get none.
    """
    if config not in KEYED_CONFIGS or not keyed.supported():
        return {}, ""
    redis_url = await stacks.enter_async_context(keyed.redis_server(workdir, config))
    return keyed.service_env(redis_url), await keyed.create_key(redis_url)


async def run(
    plan: Plan, workdir: Path, phases: set[str], service_env: dict[str, str]
) -> tuple[Bench, float]:
    started = time.perf_counter()
    noises = {*plan.noises, plan.stream_noise, plan.capacity_noise, GRPC_TARGET[2], REST_TARGET[2]}
    log(f"starting emulator, servers and sidecars of {plan.configs} (logs in {workdir})")
    async with contextlib.AsyncExitStack() as stacks:
        services: list[Service] = []
        for config in plan.configs:
            extra, api_key = await keys_for(config, workdir, stacks)
            stack = Stack(
                workdir,
                workdir / f"media-{config}",
                noise_sizes=tuple(sorted(noises)),
                service_env={**CONFIGS[config], **extra, **service_env},
                name=f"{config}-",
                trace_to_emulator=config in TRACED_CONFIGS,
                # The first stack starts the emulator; the others call it.
                emulator_url=services[0].stack.emulator_url if services else "",
            )
            await stacks.enter_async_context(stack)
            services.append(Service(config, stack, api_key))
        bench = Bench(services, plan)
        try:
            steps: list[tuple[str, Callable[[], object]]] = [
                ("grid", bench.grid),
                ("targets", bench.targets),
                ("stream", bench.stream),
                ("capacity", bench.hold),
            ]
            for name, step in steps:
                if name in phases:
                    log(f"{name}:")
                    outcome = step()
                    if asyncio.iscoroutine(outcome):
                        await outcome
            # Stopped before the emulator (the first stack's), so that the
            # traced services flush their last spans to its receiver first.
            for service in services[1:]:
                await asyncio.to_thread(service.stack.stop)
            stats = await bench.direct.stats()
            bench.otlp_exports, bench.otlp_bytes = stats["otlp_exports"], stats["otlp_bytes"]
        finally:
            await bench.close()
    return bench, time.perf_counter() - started


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="target cells only, short boxes")
    parser.add_argument("--duration", type=float, help="time box of each grid cell, s")
    parser.add_argument("--target-duration", type=float, help="time box of target cells, s")
    parser.add_argument("--stream-requests", type=int, help="streams to time")
    parser.add_argument(
        "--max-requests", type=int, help="close a cell's window after this many requests"
    )
    parser.add_argument("--capacity", type=int, help="generations held in flight at once")
    parser.add_argument("--capacity-upstream-s", type=float, help="upstream latency then, s")
    parser.add_argument(
        "--observability-rounds", type=int, help="rounds of metrics/tracing on vs off"
    )
    parser.add_argument(
        "--observability-duration", type=float, help="time box of each of those cells, s"
    )
    parser.add_argument("--latencies", help="grid upstream latencies, ms, e.g. 0,500")
    parser.add_argument("--noises", help="grid PNG sizes, e.g. 1mb,3mb")
    parser.add_argument("--ns", help="grid n values, e.g. 1,4")
    parser.add_argument("--concurrencies", help="grid concurrencies, e.g. 1,8,32")
    parser.add_argument("--paths", help=f"grid paths (default: {','.join(SERVICE_PATHS)})")
    parser.add_argument(
        "--configs", help=f"service configurations, in order (default: {','.join(CONFIGS)})"
    )
    parser.add_argument(
        "--only",
        default="grid,targets,stream,capacity,observability",
        help="comma-separated phases to run (default: all)",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the server and sidecar only (repeatable)",
    )
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument("--json", type=Path, help="write raw results (all latencies) here")
    parser.add_argument("--workdir", type=Path, help="logs and stored images (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    overrides: dict[str, object] = {}
    for flag, name in (
        ("duration", "duration_s"),
        ("target_duration", "target_duration_s"),
        ("stream_requests", "stream_requests"),
        ("max_requests", "max_requests_per_cell"),
        ("capacity", "capacity"),
        ("capacity_upstream_s", "capacity_upstream_s"),
        ("observability_rounds", "observability_rounds"),
        ("observability_duration", "observability_duration_s"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[name] = value
    for flag, name, kind in (
        ("latencies", "latencies_ms", int),
        ("noises", "noises", str),
        ("ns", "ns", int),
        ("concurrencies", "concurrencies", int),
        ("paths", "paths", str),
        ("configs", "configs", str),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[name] = tuple(kind(v) for v in value.split(",") if v)
    plan = replace(plan, **overrides)  # type: ignore[arg-type]
    phases = {p.strip() for p in args.only.split(",") if p.strip()}
    # Images are written under the work dir: tmpfs when there is one, so the
    # figures are the service's, not this machine's disk (see BENCHMARKS.md).
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="image-bench-", dir=base) as tmp:
        workdir = args.workdir or Path(tmp)
        service_env = dict(item.split("=", 1) for item in args.service_env)
        bench, elapsed = asyncio.run(run(plan, workdir, phases, service_env))
        if "observability" in phases:
            log("observability:")
            bench.observability = asyncio.run(
                compare(
                    workdir / "observability",
                    rounds=plan.observability_rounds,
                    duration_s=plan.observability_duration_s,
                    max_requests=plan.max_requests_per_cell,
                )
            )
    text = bench.report(elapsed)
    print(text)
    if args.output:
        args.output.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(bench.as_json(), indent=1, default=str))
    failed = any(c.load.errors for c in bench.cells) or any(s.errors for s in bench.streams)
    if bench.observability is not None:
        failed = failed or any(v.errors for v in bench.observability.variants)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

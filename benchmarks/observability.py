"""What metrics and tracing cost: CPU per request with them on versus off.

Three stacks (emulator, server, sidecar) run side by side, identical but for
their observability settings:

- `off`: `IMAGE_SERVICE_METRICS=false`, no `OTEL_*` (the baseline);
- `metrics`: the defaults (Prometheus metrics on, tracing off);
- `metrics+traces`: metrics, and every request traced (`always_on`) and
  exported over OTLP/HTTP to a sink in this process that decodes nothing.

Rounds interleave the variants cell by cell, so drift in the machine's load
hits all three alike; each variant's figure is the median over the rounds of
the CPU (server + sidecar, user + system, from /proc) per completed request.
The cells are small images with no upstream latency, where the fixed
per-request cost of observability is the largest share of the request.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks import procstat
from benchmarks.clients import GrpcClient, RestClient, prompt
from benchmarks.load import closed_loop
from benchmarks.processes import Stack
from server.asgi import AsgiServer

NOISE = "64kb"
# (path, concurrency)
CELLS = (("rest-url", 8), ("grpc-url", 8))
VARIANTS = ("off", "metrics", "metrics+traces")


@dataclass
class Variant:
    name: str
    stack: Stack
    grpc: GrpcClient | None = None
    rest: RestClient | None = None
    # (path, concurrency) -> CPU ms per request, one per round
    cpu_ms: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    errors: int = 0


@dataclass
class ObservabilityResult:
    rounds: int
    duration_s: float
    variants: list[Variant]
    # CPU µs of one REST generation's metric updates (`metric_updates_per_request_us`).
    metric_updates_us: float = math.nan

    def metric_updates_share(self, cell: tuple[str, int] = CELLS[0]) -> float:
        """Those µs as a share of the `off` variant's CPU per request in `cell`."""
        return self.metric_updates_us / 1000 / self.median(self.variants[0], cell)

    def median(self, variant: Variant, cell: tuple[str, int]) -> float:
        values = variant.cpu_ms.get(cell, [])
        return statistics.median(values) if values else math.nan

    def table(self) -> str:
        off = self.variants[0]
        lines = [
            f"{NOISE} PNG, n=1, no upstream latency; median of {self.rounds} interleaved "
            f"rounds of {self.duration_s:g} s; CPU of server + sidecar per request.",
            "",
            "| path | c | variant | CPU ms/request | vs off |",
            "|---|---|---|---|---|",
        ]
        for cell in CELLS:
            base = self.median(off, cell)
            for variant in self.variants:
                value = self.median(variant, cell)
                change = "—" if variant is off else f"{(value / base - 1) * 100:+.1f}%"
                spread = ", ".join(f"{v:.2f}" for v in variant.cpu_ms.get(cell, []))
                row = (cell[0], str(cell[1]), variant.name, f"{value:.2f} ({spread})", change)
                lines.append("| " + " | ".join(row) + " |")
        lines += [
            "",
            f"Every metric update of one REST generation (both processes), timed alone: "
            f"{self.metric_updates_us:.1f} µs of CPU, "
            f"{self.metric_updates_share() * 100:.2f}% of the `off` variant's "
            f"{self.median(off, CELLS[0]):.2f} ms per {CELLS[0][0]} request.",
        ]
        return "\n".join(lines)


async def _sink() -> AsgiServer:
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing."""

    async def traces(request: Request) -> Response:
        await request.body()
        return Response(b"", media_type="application/x-protobuf")

    server = AsgiServer(Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])]))
    await server.start()
    return server


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _measure(
    variant: Variant, path: str, concurrency: int, duration_s: float, max_requests: int
) -> float:
    assert variant.grpc is not None and variant.rest is not None
    text = prompt(NOISE, 0)
    call = (
        variant.rest.generate(text, 1, b64=False)
        if path == "rest-url"
        else variant.grpc.generate(text, 1, inline=False)
    )
    pids = variant.stack.service_pids()
    starts: dict[int, procstat.CpuSnapshot] = {}
    ends: dict[int, procstat.CpuSnapshot] = {}

    def on_start() -> None:
        for pid in pids:
            starts[pid] = procstat.cpu_snapshot(pid)

    def on_stop() -> None:
        for pid in pids:
            ends[pid] = procstat.cpu_snapshot(pid)

    load = await closed_loop(
        call,
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=max_requests,
        min_requests=min(4 * concurrency, max_requests),
        max_duration_s=4 * duration_s,
        on_start=on_start,
        on_stop=on_stop,
    )
    variant.errors += sum(load.errors.values())
    cpu = sum(procstat.cpu_seconds_between(starts[p], ends[p]) for p in pids)
    return cpu * 1000 / load.completed if load.completed else math.nan


async def compare(
    workdir: Path, *, rounds: int, duration_s: float, max_requests: int = 5000
) -> ObservabilityResult:
    """Run the three variants side by side; see the module doc."""
    async with AsyncExitStack() as stack:
        sink = await _sink()
        stack.push_async_callback(sink.stop)
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.base_url,
            "OTEL_TRACES_SAMPLER": "always_on",
        }
        settings = {"off": {"metrics": "false"}, "metrics": {}, "metrics+traces": {}}
        envs = {"off": {}, "metrics": {}, "metrics+traces": otel}
        variants: list[Variant] = []
        for name in VARIANTS:
            directory = workdir / name.replace("+", "-")
            running = Stack(
                directory,
                directory / "media",
                settings=settings[name],
                service_env=envs[name],
                noise_sizes=(NOISE,),
            )
            _log(f"starting the {name!r} stack (logs in {directory})")
            await stack.enter_async_context(running)
            variant = Variant(name, running, GrpcClient(running.grpc_target))
            variant.rest = RestClient(running.rest_url)
            stack.push_async_callback(variant.rest.close)
            stack.push_async_callback(variant.grpc.close)  # type: ignore[union-attr]
            variants.append(variant)
        for round_ in range(rounds):
            for cell in CELLS:
                # Rotate the order too, so no variant always runs first.
                order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
                for variant in order:
                    value = await _measure(variant, *cell, duration_s, max_requests)
                    variant.cpu_ms.setdefault(cell, []).append(value)
                    _log(
                        f"  round {round_ + 1} {cell[0]} c={cell[1]} {variant.name}: {value:.2f} ms"
                    )
                    variant.stack.clear_media()
        return ObservabilityResult(rounds, duration_s, variants, metric_updates_per_request_us())


def metric_updates_per_request_us(repeats: int = 20_000) -> float:
    """CPU microseconds of every metric update one REST generation makes, in
    both processes: what `IMAGE_SERVICE_METRICS` switches on or off.

    End-to-end differences of a few percent drown in a shared machine's
    noise; this is the same work, timed alone: the sidecar's HTTP histogram
    and gauge, the server's RPC histogram and gauge, the in-flight gauge, the
    generation histogram, one upstream call, two storage writes (image and
    record), images and cost.
    """
    from decimal import Decimal

    from server.domain.catalogue import Catalogue
    from server.observability.metrics import RestMetrics, ServiceMetrics

    catalogue = Catalogue.load()
    service = ServiceMetrics({m.name: m.backend for m in catalogue})
    rest = RestMetrics()
    model = "azure/flux-kontext-pro"
    service_name, method = "chuizi.image.v1.ImageService", "Generate"

    def one_request() -> None:
        active = rest.active.labels("POST")
        active.inc()
        service.rpc_active.labels("grpc", service_name, method).inc()
        label = service.model(model)
        backend = service.backend_of(model)
        service.generations_in_flight.labels(label, backend).inc()
        service.upstream_call("azure_flux", model, "OK", 0.2)
        service.storage_put("OK", 0.01)
        service.storage_put("OK", 0.005)
        service.generation_delivered(
            model, backend, images=1, inline_fallbacks=0, cost=Decimal("0.05")
        )
        service.rpc_active.labels("grpc", service_name, method).dec()
        service.rpc_duration.labels("grpc", service_name, method, "OK").observe(0.25)
        service.generations_in_flight.labels(label, backend).dec()
        service.generation_duration.labels(label, backend, "OK").observe(0.25)
        active.dec()
        rest.duration.labels("POST", "/v1/images/generations", "200").observe(0.26)

    for _ in range(1000):  # warm
        one_request()
    started = time.process_time()
    for _ in range(repeats):
        one_request()
    return (time.process_time() - started) / repeats * 1e6

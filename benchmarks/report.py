"""Results and their Markdown tables.

Times are milliseconds, throughput requests per second, memory MiB.
"Added" latency is a percentile through the service minus the same
percentile of the direct emulator call with the same payload, latency,
fan-out and concurrency, measured in the same run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from benchmarks.load import LoadResult, percentile

PATH_LABELS = {
    "direct": "direct → emulator",
    "grpc-url": "gRPC Generate, URL",
    "grpc-inline": "gRPC Generate, inline",
    "rest-url": "REST, url",
    "rest-b64": "REST, b64_json",
}


@dataclass
class CellResult:
    """One measured cell of the grid."""

    path: str
    latency_ms: int
    noise: str
    n: int
    concurrency: int
    load: LoadResult
    # Service (server + sidecar) CPU milliseconds per successful request,
    # and the two parts.
    cpu_ms: float | None = None
    cpu_ms_server: float | None = None
    cpu_ms_sidecar: float | None = None
    peak_rss_server: float | None = None
    peak_rss_sidecar: float | None = None
    baseline: LoadResult | None = None
    # REST only: Content-Encoding -> responses.
    encodings: dict[str, int] = field(default_factory=dict)
    # The service configuration measured ("bare", "production"); "" for direct.
    config: str = ""

    @property
    def key(self) -> tuple[int, str, int, int]:
        return (self.latency_ms, self.noise, self.n, self.concurrency)

    def added(self, q: float) -> float:
        """Added latency at percentile `q`, seconds (NaN without a baseline)."""
        if self.baseline is None:
            return math.nan
        return self.load.percentile(q) - self.baseline.percentile(q)


@dataclass
class StreamResult:
    """Time to first image of `StreamGenerate` n=4, fan-out calls of different latencies."""

    noise: str
    latencies_ms: list[int]
    first_image: list[float] = field(default_factory=list)
    whole_stream: list[float] = field(default_factory=list)
    # Direct emulator calls at the fastest latency, same payload.
    fastest_direct: list[float] = field(default_factory=list)
    errors: int = 0
    config: str = ""


@dataclass
class CapacityResult:
    """Many concurrent generations held open by a slow upstream."""

    requested: int
    upstream_s: float
    noise: str
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    # Most upstream calls the emulator saw in flight at once (sampled).
    max_upstream_in_flight: int = 0
    peak_rss_server: float = 0.0
    baseline_rss_server: float = 0.0
    cpu_ms: float = 0.0
    config: str = ""


@dataclass
class Target:
    """One of the issue's targets and whether this run met it."""

    name: str
    measured: float
    limit: float
    unit: str
    # "max": measured must be <= limit; "min": >= limit.
    kind: str

    @property
    def met(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured <= self.limit if self.kind == "max" else self.measured >= self.limit


def _ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _cpu(cell: CellResult) -> str:
    if cell.cpu_ms is None:
        return "—"
    return f"{_num(cell.cpu_ms, 2)} ({_num(cell.cpu_ms_server, 1)}+{_num(cell.cpu_ms_sidecar, 1)})"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def grid_table(cells: Sequence[CellResult]) -> str:
    """The main table: one row per cell."""
    header = [
        "path",
        "config",
        "upstream ms",
        "PNG",
        "n",
        "conc",
        "req/s",
        "p50 ms",
        "p99 ms",
        "added p50",
        "added p99",
        "CPU ms/req (srv+rest)",
        "peak RSS MiB srv/rest",
        "reqs",
        "errors",
    ]
    rows = []
    for c in cells:
        rss = (
            "—"
            if c.peak_rss_server is None
            else f"{c.peak_rss_server:.0f}/{_num(c.peak_rss_sidecar, 0)}"
        )
        errors = sum(c.load.errors.values())
        encodings = [e for e in c.encodings if e != "identity"]
        rows.append(
            [
                PATH_LABELS.get(c.path, c.path),
                c.config or "—",
                str(c.latency_ms),
                c.noise.upper().replace("MB", " MiB"),
                str(c.n),
                str(c.concurrency),
                _num(c.load.throughput),
                _ms(c.load.percentile(50)),
                _ms(c.load.percentile(99)),
                _ms(c.added(50)),
                _ms(c.added(99)),
                _cpu(c),
                rss,
                str(c.load.completed),
                str(errors) + (f" (gzip: {','.join(encodings)})" if encodings else ""),
            ]
        )
    return _table(header, rows)


def stream_table(results: Sequence[StreamResult]) -> str:
    header = [
        "config",
        "PNG",
        "upstream calls ms",
        "first image p50",
        "first image p99",
        "fastest call direct p50",
        "first image − fastest p50",
        "whole stream p50",
        "streams",
        "errors",
    ]
    rows = []
    for r in results:
        first50 = percentile(r.first_image, 50)
        rows.append(
            [
                r.config,
                r.noise.upper().replace("MB", " MiB"),
                "/".join(str(v) for v in r.latencies_ms),
                _ms(first50),
                _ms(percentile(r.first_image, 99)),
                _ms(percentile(r.fastest_direct, 50)),
                _ms(first50 - percentile(r.fastest_direct, 50)),
                _ms(percentile(r.whole_stream, 50)),
                str(len(r.first_image)),
                str(r.errors),
            ]
        )
    return _table(header, rows)


def capacity_table(results: Sequence[CapacityResult]) -> str:
    header = [
        "config",
        "in flight",
        "upstream s",
        "PNG",
        "completed",
        "errors",
        "upstream in flight (max seen)",
        "wall s",
        "server RSS MiB idle → peak",
        "CPU ms/req",
    ]
    rows = [
        [
            r.config,
            str(r.requested),
            f"{r.upstream_s:g}",
            r.noise.upper().replace("KB", " KiB").replace("MB", " MiB"),
            str(r.completed),
            str(sum(r.errors.values()))
            + (f" ({', '.join(f'{k}: {v}' for k, v in r.errors.items())})" if r.errors else ""),
            str(r.max_upstream_in_flight),
            f"{r.wall_s:.1f}",
            f"{r.baseline_rss_server:.0f} → {r.peak_rss_server:.0f}",
            _num(r.cpu_ms, 2),
        ]
        for r in results
    ]
    return _table(header, rows)


def target_table(targets: Sequence[Target]) -> str:
    header = ["target", "measured", "limit", "met"]
    rows = [
        [
            t.name,
            f"{_num(t.measured, 2)} {t.unit}",
            f"{'≤' if t.kind == 'max' else '≥'} {t.limit:g} {t.unit}",
            "yes" if t.met else "**no**",
        ]
        for t in targets
    ]
    return _table(header, rows)


def config_table(cells: Sequence[CellResult], base: str, other: str) -> str:
    """Each service cell measured under both configurations: what `other` adds to `base`."""
    header = [
        "path",
        "upstream ms",
        "PNG",
        "n",
        "conc",
        f"CPU ms/req {base}",
        other,
        "Δ CPU",
        f"added p50 {base}",
        other,
        "Δ p50",
        f"req/s {base}",
        other,
        f"peak RSS srv {base}",
        other,
    ]
    by_key = {(c.config, c.path, c.key): c for c in cells if c.config}
    rows = []
    for c in cells:
        if c.config != base:
            continue
        o = by_key.get((other, c.path, c.key))
        if o is None:
            continue
        rows.append(
            [
                PATH_LABELS.get(c.path, c.path),
                str(c.latency_ms),
                c.noise.upper().replace("MB", " MiB"),
                str(c.n),
                str(c.concurrency),
                _num(c.cpu_ms, 2),
                _num(o.cpu_ms, 2),
                _num((o.cpu_ms or math.nan) - (c.cpu_ms or math.nan), 2),
                _ms(c.added(50)),
                _ms(o.added(50)),
                _ms(o.added(50) - c.added(50)),
                _num(c.load.throughput),
                _num(o.load.throughput),
                _num(c.peak_rss_server, 0),
                _num(o.peak_rss_server, 0),
            ]
        )
    return _table(header, rows)

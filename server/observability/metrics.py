"""Every Prometheus metric the two processes export, named once.

Each process builds its own `CollectorRegistry` (`ServiceMetrics` for the
gRPC server, `RestMetrics` for the sidecar), so two servers in one test
process never share counts. Names follow Prometheus conventions (base
units, `_seconds`, `_total`) and, where OpenTelemetry has a semantic
convention, its name and attribute keys translated the way OTel's own
Prometheus exporter does (`rpc.server.duration` ->
`rpc_server_duration_seconds`, `rpc.grpc.status_code` ->
`rpc_grpc_status_code`, `http.server.request.duration` ->
`http_server_request_duration_seconds`). Labels are bounded: catalogue model
names (anything else is `other`), registry backend keys, gRPC code names,
domain error reasons, route templates. Never prompts, keys or ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    make_asgi_app,
)
from prometheus_client import (
    gc_collector as _gc,
)
from prometheus_client import (
    platform_collector as _platform,
)
from prometheus_client import (
    process_collector as _process,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE_LATEST",
    "OTHER",
    "RestMetrics",
    "ServiceMetrics",
    "exposition",
    "metrics_app",
]

# `_created` series double every counter's and histogram's series for a
# timestamp Prometheus does not need (it detects resets itself).
disable_created_metrics()  # type: ignore[no-untyped-call]

OTHER = "other"
NAMESPACE = "image_service"

# Cheap calls (ListModels, errors, /readyz) take milliseconds; image models
# take seconds to minutes. One ladder covers both ends.
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600,
)  # fmt: skip
_STORAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _registry() -> CollectorRegistry:
    """A registry with the standard process, platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=True)
    _process.ProcessCollector(registry=registry)
    _platform.PlatformCollector(registry=registry)
    _gc.GCCollector(registry=registry)
    return registry


def metrics_app(registry: CollectorRegistry) -> Any:
    """An ASGI app serving `registry` on every path (the gRPC server's metrics port)."""
    return make_asgi_app(registry=registry)


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition of `registry` (what /metrics serves)."""
    return generate_latest(registry)


class BoundedNames:
    """Maps a caller-supplied name to itself if known, else `other`."""

    def __init__(self, known: Iterable[str]) -> None:
        self._known = frozenset(known)

    def __call__(self, name: str) -> str:
        return name if name in self._known else OTHER


class ServiceMetrics:
    """The gRPC server's metrics; also the domain's `Telemetry` observer."""

    def __init__(self, models: dict[str, str]) -> None:
        """`models` maps each catalogue model name to its backend key."""
        self.registry = _registry()
        self.model = BoundedNames(models)
        self._backend_of = dict(models)
        r = self.registry
        self.rpc_duration = Histogram(
            "rpc_server_duration_seconds",
            "Duration of gRPC calls handled by this server (OTel rpc.server.duration).",
            ["rpc_system", "rpc_service", "rpc_method", "rpc_grpc_status_code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rpc_active = Gauge(
            "rpc_server_active_requests",
            "gRPC calls in progress.",
            ["rpc_system", "rpc_service", "rpc_method"],
            registry=r,
        )
        self.generations_in_flight = Gauge(
            f"{NAMESPACE}_generations_in_flight",
            "Generations and edits running now (the autoscaling signal).",
            ["model", "backend"],
            registry=r,
        )
        self.generation_duration = Histogram(
            f"{NAMESPACE}_generation_duration_seconds",
            "Wall time of a generation or edit RPC, by model and gRPC status code.",
            ["model", "backend", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_image = Histogram(
            f"{NAMESPACE}_time_to_first_image_seconds",
            "From the start of a streaming RPC to its first image sent.",
            ["model", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            f"{NAMESPACE}_images_total",
            "Images delivered to callers (stored, or inline when storage failed).",
            ["model", "backend"],
            registry=r,
        )
        self.inline_fallbacks = Counter(
            f"{NAMESPACE}_storage_inline_fallbacks_total",
            "Images returned inline because storing them failed.",
            ["model", "backend"],
            registry=r,
        )
        self.cost = Counter(
            f"{NAMESPACE}_cost_usd_total",
            "Upstream cost of delivered images, in US dollars.",
            ["model", "backend"],
            registry=r,
        )
        # Per API key: families of their own, labelled by the key's public id
        # alone, so keys (as many as an operator creates) do not multiply the
        # model x backend series. Never the key itself.
        self.key_images = Counter(
            f"{NAMESPACE}_key_images_total",
            "Images delivered, per API key (its public id).",
            ["key_id"],
            registry=r,
        )
        self.key_cost = Counter(
            f"{NAMESPACE}_key_cost_usd_total",
            "Upstream cost of delivered images, per API key (its public id), in US dollars.",
            ["key_id"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            f"{NAMESPACE}_upstream_call_duration_seconds",
            "One call to a backend (retries and limiter queueing included), by outcome "
            "(OK or the domain error reason).",
            ["backend", "model", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_retries = Counter(
            f"{NAMESPACE}_upstream_retries_total",
            "Upstream attempts retried, by the reason the failed attempt gave.",
            ["backend", "model", "reason"],
            registry=r,
        )
        self.limiter_waits = Histogram(
            f"{NAMESPACE}_limiter_wait_seconds",
            "Time calls queued for a per-deployment limit before starting.",
            ["backend", "model", "limit"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.limiter_refusals = Counter(
            f"{NAMESPACE}_limiter_refusals_total",
            "Calls a per-deployment limit refused (no slot before the deadline).",
            ["backend", "model", "limit"],
            registry=r,
        )
        self.storage_put_duration = Histogram(
            f"{NAMESPACE}_storage_put_duration_seconds",
            "One write to the blob store (one attempt), by outcome.",
            ["outcome"],
            buckets=_STORAGE_BUCKETS,
            registry=r,
        )
        self.storage_put_failures = Counter(
            f"{NAMESPACE}_storage_put_failures_total",
            "Failed writes to the blob store (attempts), by reason.",
            ["reason"],
            registry=r,
        )

    def backend_of(self, model: str) -> str:
        """The backend key of a catalogue model (`other` for unknown names)."""
        return self._backend_of.get(model, OTHER)

    # --- the domain's Telemetry protocol ------------------------------------

    def upstream_call(self, backend: str, model: str, outcome: str, seconds: float) -> None:
        self.upstream_duration.labels(backend, self.model(model), outcome).observe(seconds)

    def upstream_retry(self, backend: str, model: str, reason: str) -> None:
        self.upstream_retries.labels(backend, self.model(model), reason).inc()

    def limiter_wait(self, backend: str, model: str, limit: str, seconds: float) -> None:
        self.limiter_waits.labels(backend, self.model(model), limit).observe(seconds)

    def limiter_refused(self, backend: str, model: str, limit: str) -> None:
        self.limiter_refusals.labels(backend, self.model(model), limit).inc()

    def storage_put(self, outcome: str, seconds: float) -> None:
        self.storage_put_duration.labels(outcome).observe(seconds)
        if outcome != "OK":
            self.storage_put_failures.labels(outcome).inc()

    def generation_delivered(
        self,
        model: str,
        backend: str,
        *,
        images: int,
        inline_fallbacks: int,
        cost: Decimal | None,
        key_id: str = "",
    ) -> None:
        labels = (self.model(model), backend)
        if images:
            self.images.labels(*labels).inc(images)
            if key_id:
                self.key_images.labels(key_id).inc(images)
        if inline_fallbacks:
            self.inline_fallbacks.labels(*labels).inc(inline_fallbacks)
        if cost:
            self.cost.labels(*labels).inc(float(cost))
            if key_id:
                self.key_cost.labels(key_id).inc(float(cost))


class RestMetrics:
    """The REST sidecar's metrics (OTel http.server.* conventions)."""

    def __init__(self) -> None:
        self.registry = _registry()
        self.duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP requests served by the sidecar (OTel http.server.request.duration).",
            ["http_request_method", "http_route", "http_response_status_code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.active = Gauge(
            "http_server_active_requests",
            "HTTP requests in progress.",
            ["http_request_method"],
            registry=self.registry,
        )

"""OpenTelemetry tracing, configured by the standard `OTEL_*` variables.

Off unless asked for, and then free: with none of the variables below set,
no SDK is installed, nothing is instrumented and no interceptor or
middleware is added, so the request path is exactly as without tracing.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`), or
when it is unset and `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SDK_DISABLED=true` and
`OTEL_TRACES_EXPORTER=none` keep it off. Everything else is the SDK's own
reading of the environment: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_EXPORTER_OTLP_*` (OTLP over HTTP with
protobuf), `OTEL_BSP_*`.

Spans and propagation (W3C `traceparent`, the SDK default), hop by hop:
the sidecar's ASGI server span accepts a caller's `traceparent`; its gRPC
client span injects it into the call metadata; the gRPC server span
(`server.rpc.observing`, with `server_tracer`) extracts it; the backends'
upstream calls are client spans that carry it on: the backends' httpx
clients (FLUX, MAI, Wan: the service's own spans,
`server.providers._shared.http_spans`, added by `http.new_client` once this
module has installed a provider), the grpc.aio channel of Vertex, botocore
for Bedrock and R2 (which sends AWS's own `X-Amzn-Trace-Id`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

_ON_BY_ENDPOINT = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_provider: Any = None


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (see the module doc)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name, "").strip() for name in _ON_BY_ENDPOINT)


def active() -> bool:
    """Whether `setup_tracing` installed a tracer provider in this process."""
    return _provider is not None


def setup_tracing(default_service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Install the SDK and the client instrumentations if `wanted`; True if on.

    Call once per process, before building channels, HTTP sessions and
    boto3 clients (the instrumentations hook their construction). Servers
    and the sidecar app add their own spans (`server_tracer`, `asgi_traced`) when
    `active()`.
    """
    global _provider
    if _provider is not None or not wanted(environ):
        return _provider is not None
    # Imported here: with tracing off none of this is loaded.
    from opentelemetry import trace
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter: SpanExporter
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # Only the hops: no request/response bodies or headers are recorded.
    BotocoreInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorClient().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    _provider = provider
    return True


def shutdown_tracing() -> None:
    """Flush and stop the exporter (at process exit; a no-op when off)."""
    if _provider is not None:
        _provider.shutdown()


def server_tracer() -> Tracer | None:
    """The tracer of the gRPC server's own spans (`rpc.observing`) when
    tracing is on, else None."""
    if _provider is None:
        return None
    tracer: Tracer = _provider.get_tracer("server.rpc")
    return tracer


def asgi_traced(app: ASGIApp) -> ASGIApp:
    """`app` inside OTel's ASGI middleware when tracing is on, else `app`."""
    if not active():
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    # Probes and scrapes would be most of the spans and say nothing. So do
    # the INTERNAL `http send` / `http receive` spans the middleware makes
    # per ASGI message (three or more a request), and they were half its
    # CPU: ~200 -> ~100 µs a request without them (BENCHMARKS.md, round 6).
    traced: ASGIApp = OpenTelemetryMiddleware(
        app,
        excluded_urls="/healthz,/readyz,/metrics",
        tracer_provider=_provider,
        exclude_spans=["receive", "send"],
    )
    return traced

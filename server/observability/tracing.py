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
the sidecar's HTTP server span (`server.rest.observing`) accepts a caller's
`traceparent` and sends its own in the metadata of its gRPC calls; the gRPC
server span (`server.rpc.observing`) extracts it; the backends' upstream
calls are client spans that carry it on: the backends' httpx clients (FLUX,
MAI, Wan: the service's own spans, `server.providers._shared.http_spans`,
added by `http.new_client` once this module has installed a provider), the
grpc.aio channel of Vertex, botocore for Bedrock and R2 (which sends AWS's
own `X-Amzn-Trace-Id`).

The two servers' spans are the service's own rather than OpenTelemetry's
ASGI middleware and grpc.aio interceptors, for their cost (BENCHMARKS.md,
rounds 6 and 10). For the same reason the sidecar makes no gRPC client span:
its hop to the server is loopback in the same pod, and the server's span,
a child of the sidecar's, times it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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


def setup_tracing(
    default_service_name: str,
    environ: Mapping[str, str] = os.environ,
    *,
    grpc_client_spans: bool = True,
) -> bool:
    """Install the SDK and the client instrumentations if `wanted`; True if on.

    Call once per process, before building channels, HTTP sessions and
    boto3 clients (the instrumentations hook their construction). The gRPC
    server and the sidecar add their own SERVER spans with `tracer()` when it
    gives one. `grpc_client_spans` False leaves grpc.aio channels
    uninstrumented (the sidecar: see the module doc).
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
    if grpc_client_spans:
        GrpcAioInstrumentorClient().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    _provider = provider
    return True


def shutdown_tracing() -> None:
    """Flush and stop the exporter (at process exit; a no-op when off)."""
    if _provider is not None:
        _provider.shutdown()


def tracer(instrumentation: str) -> Tracer | None:
    """The tracer for a server's own spans (`instrumentation` names the module
    that makes them) when tracing is on, else None."""
    if _provider is None:
        return None
    found: Tracer = _provider.get_tracer(instrumentation)
    return found

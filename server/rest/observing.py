"""The sidecar's metrics, access lines and request ids.

`ObservingMiddleware` (pure ASGI, so streamed bodies pass through
untouched) chooses each request's id (the caller's `X-Request-Id` if usable,
else a new one), makes it current, records `http_server_request_duration_seconds`
and the active-requests gauge by route template, and writes one access line
per request (not for probes and scrapes). With a tracer (tracing on) it
also makes each request's SERVER span, current while the app runs,
continuing the caller's `traceparent`: named `<METHOD> <route template>`,
with `http.request.method`, `url.scheme`, `http.response.status_code` and,
when a route matched, `http.route` and `url.path` (an unrouted path is the
caller's free text, left out as from the access line), ERROR for a 5xx
answer (semantic conventions for HTTP servers: a 4xx is the caller's, not
the span's, error). The span's
own `traceparent` goes into the request's context for the gRPC calls it
makes (`upstream.CallContext`). Probes and scrapes get no span either.
`AccessFieldsInterceptor`s on the
channel to the service copy the generation id, model, image count and cost
of the responses into that access line, so the handlers need not.
`metrics_route` serves the sidecar's `/metrics`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.observability import request_context
from server.observability.access import log_access
from server.observability.metrics import CONTENT_TYPE_LATEST, RestMetrics, exposition
from server.observability.request_context import RequestContext, request_id_or_new
from server.observability.tracing import tracer as active_tracer
from server.rest.wire import Received

METRICS_PATH = "/metrics"
_UNLOGGED_PATHS = frozenset({METRICS_PATH, "/healthz", "/readyz"})
_UNMATCHED = "other"


def metrics_route(metrics: RestMetrics) -> BaseRoute:
    """`GET /metrics`: the sidecar's registry in the Prometheus text format."""

    async def scrape(request: Request) -> Response:
        return Response(exposition(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Route(METRICS_PATH, scrape, methods=["GET"])


TRACER_NAME = "server.rest"


def observe(app: Starlette, *, metrics: bool) -> ASGIApp:
    """`app` behind `ObservingMiddleware`, with `/metrics` added when `metrics`,
    traced when tracing is on."""
    rest_metrics = RestMetrics() if metrics else None
    if rest_metrics is not None:
        app.router.routes.append(metrics_route(rest_metrics))
    return ObservingMiddleware(app, rest_metrics, active_tracer(TRACER_NAME))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _start_span(
    tracer: trace.Tracer, scope: Scope, method: str, context: RequestContext
) -> tuple[trace.Span, object]:
    """The request's SERVER span, made current, its `traceparent` noted in
    `context` for the calls upstream; returns it and the token to detach."""
    carrier = {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in scope.get("headers", ())
        if key in _TRACE_HEADERS
    }
    span = tracer.start_span(
        method,
        context=propagate.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes={
            "http.request.method": method,
            "url.scheme": str(scope.get("scheme", "http")),
        },
    )
    current = trace.set_span_in_context(span)
    sent: dict[str, str] = {}
    propagate.inject(sent, context=current)
    context.trace_metadata = tuple(sent.items())
    return span, otel_context.attach(current)


def _end_span(
    span: trace.Span, token: object, scope: Scope, method: str, route: str, status: int
) -> None:
    # An unrouted path is the caller's free text (a key pasted into a URL, say):
    # like the access line, the span then says only the method.
    if route != _UNMATCHED:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("url.path", str(scope.get("path", "")))
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
    otel_context.detach(token)  # type: ignore[arg-type]
    span.end()


# What the propagators read (W3C trace context and baggage, the SDK default).
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


class ObservingMiddleware:
    """See the module doc. `metrics` None: ids and access lines only;
    `tracer` None: no spans."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: RestMetrics | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(request_id_or_new(_header(scope, b"x-request-id")))
        method = str(scope["method"])
        status = 500  # if the app fails before answering
        started = time.monotonic()
        active = None
        if self.metrics is not None:
            # Routing happens inside the app; the gauge cannot know the route yet.
            active = self.metrics.active.labels(method)
            active.inc()

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        logged = scope.get("path") not in _UNLOGGED_PATHS
        span, token = None, None
        if self.tracer is not None and logged:
            span, token = _start_span(self.tracer, scope, method, context)
        with request_context.serving(context):
            try:
                await self.app(scope, receive, send_observed)
            finally:
                seconds = time.monotonic() - started
                route = getattr(scope.get("route"), "path", _UNMATCHED)
                if self.metrics is not None and active is not None:
                    active.dec()
                    self.metrics.duration.labels(method, route, str(status)).observe(seconds)
                if logged:
                    log_access(
                        context,
                        kind="http",
                        method=method,
                        route=route,
                        status=str(status),
                        seconds=seconds,
                    )
                # Last: the access line is written inside the span, so it
                # carries the trace and span ids (observability/logs.py).
                if span is not None:
                    _end_span(span, token, scope, method, route, status)


def _cost(text: str) -> Decimal | None:
    try:
        return Decimal(text) if text else None
    except InvalidOperation:
        return None


def _note(message: Any) -> None:
    """Copy what `message` tells about the generation into the access line."""
    context = request_context.current()
    if context is None:
        return
    generation = None
    if isinstance(message, Received):  # what the sidecar's image methods answer
        message = message.message
    if isinstance(message, pb.Generation):
        generation = message
    elif isinstance(
        message, pb.StreamGenerateResponse | pb.StreamEditResponse
    ) and message.HasField("generation"):
        generation = message.generation
    if generation is None:
        return
    context.generation_id = generation.generation_id
    context.model = generation.model
    context.images = len(generation.images)
    context.cost = _cost(generation.cost)


def _note_model(request: Any) -> None:
    context = request_context.current()
    if context is not None and isinstance(request, pb.GenerateRequest | pb.EditRequest):
        context.model = request.model


if TYPE_CHECKING:  # generic only in grpc-stubs
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor


class _UnaryFields(_UnaryUnary):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        _note_model(request)
        call = await continuation(client_call_details, request)
        # The caller sees any error; the access line has the status.
        with contextlib.suppress(grpc.aio.AioRpcError):
            _note(await call)  # the caller's own await returns the same response
        return call


class _StreamFields(_UnaryStream):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        _note_model(request)
        call = await continuation(client_call_details, request)

        async def relay() -> AsyncIterator[Any]:
            async for message in call:
                _note(message)
                yield message

        return relay()


def access_fields_interceptors() -> list[Any]:
    """The client interceptors that fill the access line from responses."""
    return [_UnaryFields(), _StreamFields()]

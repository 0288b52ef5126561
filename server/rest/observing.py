"""The sidecar's metrics, access lines and request ids.

`ObservingMiddleware` (pure ASGI, so streamed bodies pass through
untouched) chooses each request's id (the caller's `X-Request-Id` if usable,
else a new one), makes it current, records `http_server_request_duration_seconds`
and the active-requests gauge by route template, and writes one access line
per request (not for probes and scrapes). `AccessFieldsInterceptor`s on the
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.observability import request_context
from server.observability.access import log_access
from server.observability.metrics import CONTENT_TYPE_LATEST, RestMetrics, exposition
from server.observability.request_context import RequestContext, request_id_or_new
from server.observability.tracing import asgi_traced
from server.rest.wire import Received

METRICS_PATH = "/metrics"
_UNLOGGED_PATHS = frozenset({METRICS_PATH, "/healthz", "/readyz"})
_UNMATCHED = "other"


def metrics_route(metrics: RestMetrics) -> BaseRoute:
    """`GET /metrics`: the sidecar's registry in the Prometheus text format."""

    async def scrape(request: Request) -> Response:
        return Response(exposition(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Route(METRICS_PATH, scrape, methods=["GET"])


def observe(app: Starlette, *, metrics: bool) -> ASGIApp:
    """`app` behind `ObservingMiddleware`, with `/metrics` added when `metrics`."""
    rest_metrics = RestMetrics() if metrics else None
    if rest_metrics is not None:
        app.router.routes.append(metrics_route(rest_metrics))
    return asgi_traced(ObservingMiddleware(app, rest_metrics))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class ObservingMiddleware:
    """See the module doc. `metrics` None: ids and access lines only."""

    def __init__(self, app: ASGIApp, metrics: RestMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

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

        with request_context.serving(context):
            try:
                await self.app(scope, receive, send_observed)
            finally:
                seconds = time.monotonic() - started
                route = getattr(scope.get("route"), "path", _UNMATCHED)
                if self.metrics is not None and active is not None:
                    active.dec()
                    self.metrics.duration.labels(method, route, str(status)).observe(seconds)
                if scope.get("path") not in _UNLOGGED_PATHS:
                    log_access(
                        context,
                        kind="http",
                        method=method,
                        route=route,
                        status=str(status),
                        seconds=seconds,
                    )


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

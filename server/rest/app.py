"""The REST sidecar's routes and Starlette app.

    POST /v1/images/generations   JSON -> Generate / StreamGenerate
    POST /v1/images/edits         multipart -> Edit / StreamEdit
    GET  /v1/models               ListModels, OpenAI's list shape
    GET  /v1/models/{model}       one entry of ListModels
    GET  /v1/generations/{id}     GetGeneration, the generation body shape
    GET  /healthz, /readyz        process up / gRPC service serving (app only)
    GET  /openapi.json            the OpenAPI document of all this (app only)

Every response carries `X-Request-Id` (the caller's, or a generated one) and
every error is OpenAI's `{"error": {...}}` shape (`server.rest.errors`). The
sidecar is only a gRPC client of the service: it never imports the domain.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from server.observability.metrics import RestMetrics
from server.observability.request_context import REQUEST_ID_HEADER
from server.observability.tracing import tracer as active_tracer
from server.rest import forms
from server.rest.drain import Drain, DrainMiddleware
from server.rest.errors import (
    INTERNAL,
    METHOD_NOT_ALLOWED,
    MODEL_NOT_FOUND,
    SERVER,
    UNKNOWN_URL,
    RestError,
    from_rpc_error,
)
from server.rest.observing import TRACER_NAME, ObservingMiddleware, metrics_route
from server.rest.openapi import openapi_document
from server.rest.responses import ChunkedJSONResponse, generation_chunks, model_list, model_object
from server.rest.streaming import EDIT_IMAGE_EVENT, GENERATION_IMAGE_EVENT, start_stream
from server.rest.upstream import (
    CallContext,
    ClientDisconnected,
    DisconnectWatcher,
    Upstream,
    open_channel,
)
from server.rest.wire import Received
from server.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_READY_TIMEOUT_S = 2.0
# nginx's "client closed request"; nobody reads it, but logs and metrics do.
_CLIENT_CLOSED = 499

Handler = Callable[[Request, CallContext], Awaitable[Response]]


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: request id, and every failure as an OpenAI error body."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        context = CallContext.from_headers(request.headers)
        try:
            context.check_authorization()
            response = await handler(request, context)
        except RestError as error:
            response = error.response()
        except grpc.aio.AioRpcError as error:
            rest_error = from_rpc_error(error)
            if rest_error.status >= 500:
                log.warning(
                    "request %s: upstream %s -> HTTP %d",
                    context.request_id,
                    error.code().name,
                    rest_error.status,
                )
            response = rest_error.response()
        except ClientDisconnected:
            log.info("request %s: client disconnected; upstream call cancelled", context.request_id)
            response = Response(status_code=_CLIENT_CLOSED)
        except Exception:
            log.exception("request %s failed", context.request_id)
            response = RestError(500, "Internal error.", type=SERVER, code=INTERNAL).response()
        response.headers[REQUEST_ID_HEADER] = context.request_id
        return response

    return endpoint


class _Handlers:
    def __init__(self, upstream: Upstream, settings: Settings, drain: Drain | None) -> None:
        self._upstream = upstream
        self._drain = drain
        self._stub = upstream.stub
        self._timeout = upstream.timeout_s
        self._max_upload = settings.rest_max_upload_bytes

    async def generations(self, request: Request, context: CallContext) -> Response:
        forms.check_json_content_type(request.headers.get("content-type"))
        body = await forms.read_body(
            request.headers.get("content-length"), request.stream(), forms.MAX_JSON_BYTES
        )
        parsed = forms.parse_generation(body)
        parsed.request.request_id = request.headers.get(IDEMPOTENCY_HEADER, "")
        return await self._run(
            request,
            context,
            parsed.request,
            stream=parsed.stream,
            unary=self._upstream.generate,
            streaming=self._upstream.stream_generate,
            image_event=GENERATION_IMAGE_EVENT,
        )

    async def edits(self, request: Request, context: CallContext) -> Response:
        parsed = await forms.parse_edit(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
            self._max_upload,
        )
        parsed.request.request_id = request.headers.get(IDEMPOTENCY_HEADER, "")
        return await self._run(
            request,
            context,
            parsed.request,
            stream=parsed.stream,
            unary=self._upstream.edit,
            streaming=self._upstream.stream_edit,
            image_event=EDIT_IMAGE_EVENT,
        )

    async def _run(
        self,
        request: Request,
        context: CallContext,
        message: pb.GenerateRequest | pb.EditRequest,
        *,
        stream: bool,
        unary: Any,
        streaming: Any,
        image_event: str,
    ) -> Response:
        b64 = forms.wants_b64(message.response_format)
        # The body has been read: from here `receive` only reports disconnects.
        watcher = DisconnectWatcher(request.receive, self._drain)
        handed_over = False
        try:
            if stream:
                call = streaming(message, metadata=context.metadata, timeout=self._timeout)
                response = await start_stream(call, watcher, image_event_name=image_event, b64=b64)
                handed_over = True  # the response closes the watcher
                return response
            generation: Received[pb.Generation] = await watcher.run(
                unary(message, metadata=context.metadata, timeout=self._timeout)
            )
        finally:
            if not handed_over:
                watcher.close()
        return ChunkedJSONResponse(
            generation_chunks(generation.message, b64=b64, image_data=generation.image_data)
        )

    async def models(self, request: Request, context: CallContext) -> Response:
        listing = await self._list_models(request, context)
        return JSONResponse(model_list(listing.models))

    async def model(self, request: Request, context: CallContext) -> Response:
        name = request.path_params["model"]
        listing = await self._list_models(request, context)
        for model in listing.models:
            if model.name == name:
                return JSONResponse(model_object(model))
        raise RestError(404, f"Model {name!r} does not exist.", param="model", code=MODEL_NOT_FOUND)

    async def generation(self, request: Request, context: CallContext) -> Response:
        message = pb.GetGenerationRequest(generation_id=request.path_params["generation_id"])
        watcher = DisconnectWatcher(request.receive, self._drain)
        try:
            generation: Received[pb.Generation] = await watcher.run(
                self._upstream.get_generation(
                    message, metadata=context.metadata, timeout=self._timeout
                )
            )
        finally:
            watcher.close()
        return ChunkedJSONResponse(
            generation_chunks(generation.message, b64=False, image_data=generation.image_data)
        )

    async def _list_models(self, request: Request, context: CallContext) -> pb.ListModelsResponse:
        watcher = DisconnectWatcher(request.receive, self._drain)
        try:
            listing: pb.ListModelsResponse = await watcher.run(
                self._stub.ListModels(
                    pb.ListModelsRequest(), metadata=context.metadata, timeout=self._timeout
                )
            )
        finally:
            watcher.close()
        return listing


def rest_routes(
    channel: grpc.aio.Channel | str, settings: Settings, drain: Drain | None = None
) -> list[BaseRoute]:
    """The OpenAI-compatible `/v1/...` routes, calling the service over `channel`.

    `channel` is the long-lived channel to the service, or its `host:port`
    target, in which case a channel is opened here (inside the running event
    loop) and lives as long as the process. The routes are self-contained
    (errors and request ids are handled per route), so they can be added to
    any Starlette app, for example beside the local media. With `drain`,
    requests still waiting when its grace expires answer 503 (`server.rest.drain`).
    """
    if isinstance(channel, str):
        channel = open_channel(settings, channel)
    handlers = _Handlers(Upstream(channel, settings), settings, drain)
    return [
        Route("/v1/images/generations", _endpoint(handlers.generations), methods=["POST"]),
        Route("/v1/images/edits", _endpoint(handlers.edits), methods=["POST"]),
        Route("/v1/models", _endpoint(handlers.models), methods=["GET"]),
        Route("/v1/models/{model:path}", _endpoint(handlers.model), methods=["GET"]),
        Route("/v1/generations/{generation_id}", _endpoint(handlers.generation), methods=["GET"]),
    ]


def health_routes(channel: grpc.aio.Channel, drain: Drain | None = None) -> list[BaseRoute]:
    """`/healthz` (the process answers) and `/readyz` (the gRPC service is
    SERVING and this process is not draining)."""
    health = health_pb2_grpc.HealthStub(channel)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if drain is not None and drain.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        try:
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=_READY_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            return JSONResponse({"status": error.code().name.lower()}, status_code=503)
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        return JSONResponse(
            {"status": "ok" if serving else "not_serving"}, status_code=200 if serving else 503
        )

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = RestError(404, f"No route {request.url.path}.", code=UNKNOWN_URL)
    else:
        error = RestError(
            exc.status_code,
            f"{request.method} is not allowed on {request.url.path}.",
            code=METHOD_NOT_ALLOWED,
            headers=exc.headers,
        )
    return error.response()


def openapi_route() -> BaseRoute:
    """`GET /openapi.json`: the document of the routes above (server/rest/openapi.py)."""
    document = openapi_document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    return Route("/openapi.json", openapi, methods=["GET"])


def create_app(
    channel: grpc.aio.Channel,
    settings: Settings,
    *,
    extra_routes: Sequence[BaseRoute] = (),
    drain: Drain | None = None,
    tracer: Tracer | None = None,
) -> ASGIApp:
    """The sidecar app: the `/v1` routes, health probes and `extra_routes`.

    Unknown paths and methods get OpenAI-shaped 404/405 bodies. `channel` is
    the one long-lived channel to the service (see `upstream.open_channel`);
    the caller owns it and closes it after the server stops. `drain` (the
    process's shutdown state, `server.rest.drain`) counts requests in flight
    and turns `/readyz` to 503 once shutdown begins. `tracer` makes the
    requests' spans (server/rest/observing.py); by default the process's
    when tracing is on (`server.observability.tracing`), else none.
    """
    metrics = RestMetrics() if settings.metrics else None
    observability = [metrics_route(metrics)] if metrics is not None else []
    app = Starlette(
        routes=[
            *rest_routes(channel, settings, drain),
            *health_routes(channel, drain),
            openapi_route(),
            *observability,
            *extra_routes,
        ],
        exception_handlers={404: _http_error, 405: _http_error},
        middleware=[
            Middleware(
                ObservingMiddleware,
                metrics=metrics,
                tracer=active_tracer(TRACER_NAME) if tracer is None else tracer,
            )
        ],
    )
    return app if drain is None else DrainMiddleware(app, drain)

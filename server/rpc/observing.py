"""The server interceptor behind metrics, access lines and request ids.

For every unary and server-streaming RPC it:

- takes the request id from the `x-request-id` metadata (the REST sidecar
  forwards its own) or makes one, makes it current for the call's logs and
  returns it in the trailing metadata (trailers) of every RPC, failed ones
  included; server-streaming RPCs also send it in the initial metadata
  (headers) as they start, so it is known before the first message;
- records `rpc_server_duration_seconds` and the active-calls gauge;
- for the image RPCs, tracks in-flight generations per model, their
  duration, time to first image (streams), images, inline fallbacks and
  cost, read from the responses the servicer sends;
- writes one access line (`server.observability.access`), except for
  health checks, which probes send every few seconds;
- with a `tracer` (tracing on), makes the call's SERVER span, current while
  the handler runs, continuing the caller's trace from its `traceparent`
  metadata (named `/<service>/<method>`, with `rpc.system`, `rpc.service`,
  `rpc.method` and `rpc.grpc.status_code`; ERROR with the code's name when
  the call fails). Health checks get none either.

The span was OpenTelemetry's grpc.aio server interceptor's until round 6
of BENCHMARKS.md, a second interceptor around every call. On an echo
server this one adds a little less (median +130 µs of CPU a call against
+170, five interleaved rounds; the span itself is 31 µs, the rest is the
batch exporter's hand-off), and the call's status is known here anyway.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import grpc
from chuizi.image.v1 import image_service_pb2 as pb
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from server.observability.access import log_access
from server.observability.metrics import ServiceMetrics
from server.observability.request_context import (
    REQUEST_ID_METADATA,
    RequestContext,
    request_id_or_new,
    serving,
)
from server.rpc.handlers import WrappingInterceptor

_IMAGE_SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"].full_name
_GENERATING = frozenset({"Generate", "Edit", "StreamGenerate", "StreamEdit"})
_UNLOGGED_SERVICES = frozenset({"grpc.health.v1.Health"})

Context = grpc.aio.ServicerContext[Any, Any]
UnaryBehaviour = Callable[[Any, Context], Awaitable[Any]]
StreamBehaviour = Callable[[Any, Context], AsyncIterator[Any]]


def _code_name(context: Context, error: BaseException | None) -> str:
    """The status the call ended with, as a gRPC code name."""
    if error is None:
        code = context.code()
        return "OK" if code is None else _name(code)
    if isinstance(error, grpc.aio.AbortError) or context.code() not in (None, grpc.StatusCode.OK):
        code = context.code()
        return "UNKNOWN" if code is None else _name(code)
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


def _name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:  # grpc.aio may report the integer value
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA and isinstance(value, str):
            return request_id_or_new(value)
    return request_id_or_new(None)


def _start_span(tracer: trace.Tracer, call: _Call) -> tuple[trace.Span, object]:
    """The call's SERVER span, made current; returns it and the token to detach."""
    carrier = {k: v for k, v in call.context.invocation_metadata() or () if isinstance(v, str)}
    span = tracer.start_span(
        call.full_method,
        context=propagate.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": call.service, "rpc.method": call.method},
    )
    return span, otel_context.attach(trace.set_span_in_context(span))


def _end_span(span: trace.Span, token: object, code: str) -> None:
    span.set_attribute("rpc.grpc.status_code", _CODE_VALUES.get(code, 2))
    if code != "OK":
        span.set_status(trace.Status(trace.StatusCode.ERROR, code))
    otel_context.detach(token)  # type: ignore[arg-type]
    span.end()


_CODE_VALUES = {status.name: status.value[0] for status in grpc.StatusCode}


def _cost(text: str) -> Decimal | None:
    try:
        return Decimal(text) if text else None
    except InvalidOperation:
        return None


class _Call:
    """One RPC being observed."""

    def __init__(
        self,
        metrics: ServiceMetrics | None,
        tracer: trace.Tracer | None,
        service: str,
        method: str,
        context: Context,
    ) -> None:
        self.metrics = metrics
        self.service = service
        self.method = method
        self.full_method = f"/{service}/{method}"
        self.context = context
        self.request = RequestContext(_request_id(context))
        self.started = time.monotonic()
        self.generating = service == _IMAGE_SERVICE and method in _GENERATING
        self.model_label = ""
        self.first_image_seen = False
        self.span: tuple[trace.Span, object] | None = None
        if tracer is not None and service not in _UNLOGGED_SERVICES:
            self.span = _start_span(tracer, self)

    async def begin(self, request: Any, *, streaming: bool) -> None:
        request_id = ((REQUEST_ID_METADATA, self.request.request_id),)
        # Trailers travel with the status, in the call's last write; headers
        # sent on their own are one more write per call (about 60 µs of
        # server CPU, measured alone), paid only where a stream needs the id early.
        self.context.set_trailing_metadata(request_id)
        if streaming:
            await self.context.send_initial_metadata(request_id)
        if self.generating and isinstance(request, pb.GenerateRequest | pb.EditRequest):
            self.request.model = request.model
        if self.metrics is None:
            return
        self.metrics.rpc_active.labels("grpc", self.service, self.method).inc()
        if self.generating:
            self.model_label = self.metrics.model(self.request.model)
            backend = self.metrics.backend_of(self.request.model)
            self.metrics.generations_in_flight.labels(self.model_label, backend).inc()

    def saw(self, message: Any) -> None:
        """Note what a response message tells (images, the generation record)."""
        if isinstance(message, pb.Generation):
            self._generation(message)
        elif isinstance(message, pb.StreamGenerateResponse | pb.StreamEditResponse):
            if message.HasField("generation"):
                self._generation(message.generation)
            elif not self.first_image_seen:
                self.first_image_seen = True
                if self.metrics is not None:
                    self.metrics.time_to_first_image.labels(
                        self.model_label, self.metrics.backend_of(self.request.model)
                    ).observe(time.monotonic() - self.started)

    def _generation(self, generation: pb.Generation) -> None:
        self.request.generation_id = generation.generation_id
        self.request.model = generation.model or self.request.model
        if not self.generating:
            return  # GetGeneration: delivered and paid for earlier
        # Images and cost are counted by the domain (a replay costs nothing).
        self.request.images = len(generation.images)
        self.request.cost = _cost(generation.cost)

    def end(self, error: BaseException | None) -> None:
        seconds = time.monotonic() - self.started
        code = _code_name(self.context, error)
        if self.metrics is not None:
            self.metrics.rpc_active.labels("grpc", self.service, self.method).dec()
            self.metrics.rpc_duration.labels("grpc", self.service, self.method, code).observe(
                seconds
            )
            if self.generating:
                backend = self.metrics.backend_of(self.request.model)
                self.metrics.generations_in_flight.labels(self.model_label, backend).dec()
                self.metrics.generation_duration.labels(self.model_label, backend, code).observe(
                    seconds
                )
        if self.service not in _UNLOGGED_SERVICES:
            log_access(
                self.request, kind="rpc", method=self.full_method, status=code, seconds=seconds
            )
        # Last: the access line is written inside the span, so it carries the
        # trace and span ids (server/observability/logs.py reads the current span).
        if self.span is not None:
            _end_span(*self.span, code)


class ObservingInterceptor(WrappingInterceptor):
    """See the module doc; `metrics` None logs and tags without counting,
    `tracer` None makes no spans."""

    def __init__(self, metrics: ServiceMetrics | None, tracer: trace.Tracer | None = None) -> None:
        super().__init__()
        self._metrics = metrics
        self._tracer = tracer

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], full_method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, method = full_method.lstrip("/").rpartition("/")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                # grpc.aio hands aio behaviours through the sync-typed handler.
                self._unary(cast(UnaryBehaviour, handler.unary_unary), service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            streaming = handler.unary_stream
            # A stream handler is an async generator, or a coroutine that
            # writes with `context.write` (grpc_health's Watch); the latter
            # is awaited like a unary one.
            observed = (
                self._stream(cast(StreamBehaviour, streaming), service, method)
                if inspect.isasyncgenfunction(streaming)
                else self._unary(cast(UnaryBehaviour, streaming), service, method)
            )
            return grpc.unary_stream_rpc_method_handler(
                observed,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming calls (reflection) pass unobserved

    def _unary(self, behaviour: UnaryBehaviour, service: str, method: str) -> UnaryBehaviour:
        metrics, tracer = self._metrics, self._tracer

        async def observed(request: Any, context: Context) -> Any:
            call = _Call(metrics, tracer, service, method, context)
            with serving(call.request):
                error: BaseException | None = None
                try:
                    await call.begin(request, streaming=False)
                    response = await behaviour(request, context)
                    call.saw(response)
                    return response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    call.end(error)

        return observed

    def _stream(self, behaviour: StreamBehaviour, service: str, method: str) -> StreamBehaviour:
        metrics, tracer = self._metrics, self._tracer

        async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(metrics, tracer, service, method, context)
            with serving(call.request):
                error: BaseException | None = None
                try:
                    await call.begin(request, streaming=True)
                    async for message in behaviour(request, context):
                        call.saw(message)
                        yield message
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    call.end(error)

        return observed

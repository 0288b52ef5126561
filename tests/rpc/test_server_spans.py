"""The gRPC server's own SERVER spans (`ObservingInterceptor` with a tracer),
on a real grpc.aio server over a real socket: one span per call, continuing
the caller's `traceparent`, current while the handler runs (unary and
streaming), marked with the status; none for health checks. The trace
through every hop is tests/observability/test_traces.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.observability.logs import JsonFormatter
from server.rpc.observing import ObservingInterceptor

SERVICE = "chuizi.image.v1.ImageService"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


class ServerSpanEnded(SpanProcessor):
    """Set once a SERVER span has ended.

    grpc.aio's `context.abort` sends the status before it raises through
    the interceptor that ends the span, so a caller can hold a failed
    status before the server (on the test's event loop) has unwound."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def on_end(self, span: ReadableSpan) -> None:
        if span.kind is trace.SpanKind.SERVER:
            self.event.set()


@pytest.fixture
def server_span_ended() -> ServerSpanEnded:
    return ServerSpanEnded()


@pytest.fixture
async def channel(
    exported: InMemorySpanExporter, server_span_ended: ServerSpanEnded
) -> AsyncIterator[grpc.aio.Channel]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    provider.add_span_processor(server_span_ended)
    tracer = provider.get_tracer("test")

    class Service(pb_grpc.ImageServiceServicer):
        async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:
            with tracer.start_as_current_span("inside unary"):
                return pb.ListModelsResponse()

        async def GetGeneration(self, request: Any, context: Any) -> pb.Generation:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such generation")
            raise AssertionError("abort returns no further")

        async def StreamGenerate(self, request: Any, context: Any) -> AsyncIterator[Any]:
            yield pb.StreamGenerateResponse(image=pb.Image())
            with tracer.start_as_current_span("inside stream"):
                yield pb.StreamGenerateResponse(generation=pb.Generation())

    server = grpc.aio.server(interceptors=[ObservingInterceptor(None, tracer)])
    pb_grpc.add_ImageServiceServicer_to_server(Service(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    await server.stop(None)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.ImageServiceStub:
    return pb_grpc.ImageServiceStub(channel)


def spans(exported: InMemorySpanExporter, kind: trace.SpanKind) -> list[ReadableSpan]:
    return [s for s in exported.get_finished_spans() if s.kind is kind]


async def test_a_call_is_a_server_span_in_the_callers_trace(
    stub: pb_grpc.ImageServiceStub, exported: InMemorySpanExporter
) -> None:
    traceparent = ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")
    await stub.ListModels(pb.ListModelsRequest(), metadata=(traceparent,))
    (server,) = spans(exported, trace.SpanKind.SERVER)
    assert server.name == f"/{SERVICE}/ListModels"
    assert dict(server.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "ListModels",
        "rpc.grpc.status_code": 0,
    }
    assert server.status.status_code is trace.StatusCode.UNSET
    assert server.context is not None and server.parent is not None
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert f"{server.parent.span_id:016x}" == PARENT_ID
    (inside,) = spans(exported, trace.SpanKind.INTERNAL)
    assert inside.parent is not None and inside.parent.span_id == server.context.span_id


async def test_the_access_line_carries_the_calls_trace(
    stub: pb_grpc.ImageServiceStub,
    exported: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="server.access")
    caplog.handler.setFormatter(JsonFormatter())
    traceparent = ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")
    await stub.ListModels(pb.ListModelsRequest(), metadata=(traceparent,))
    (server,) = spans(exported, trace.SpanKind.SERVER)
    [line] = [json.loads(text) for text in caplog.text.splitlines()]
    assert line["method"] == f"/{SERVICE}/ListModels"
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, f"{server.context.span_id:016x}")


async def test_a_failed_call_marks_its_span(
    stub: pb_grpc.ImageServiceStub,
    exported: InMemorySpanExporter,
    server_span_ended: ServerSpanEnded,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetGeneration(pb.GetGenerationRequest(generation_id="gen_x"))
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    async with asyncio.timeout(10):
        await server_span_ended.event.wait()
    (server,) = spans(exported, trace.SpanKind.SERVER)
    assert server.status.status_code is trace.StatusCode.ERROR
    assert server.status.description == "NOT_FOUND"
    assert (server.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert server.parent is None  # no traceparent: a trace of its own


async def test_a_stream_keeps_its_span_current_between_messages(
    stub: pb_grpc.ImageServiceStub, exported: InMemorySpanExporter
) -> None:
    messages = [m async for m in stub.StreamGenerate(pb.GenerateRequest())]
    assert len(messages) == 2
    (server,) = spans(exported, trace.SpanKind.SERVER)
    assert server.name == f"/{SERVICE}/StreamGenerate"
    (inside,) = spans(exported, trace.SpanKind.INTERNAL)
    assert server.context is not None and inside.parent is not None
    assert inside.parent.span_id == server.context.span_id


async def test_health_checks_make_no_spans(
    channel: grpc.aio.Channel, exported: InMemorySpanExporter
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert exported.get_finished_spans() == ()

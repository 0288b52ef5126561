"""Upstream client spans (`http_spans.SpanningTransport`) over a real socket:
one span per request with the stable HTTP client attributes, the span's
`traceparent` sent upstream, errors marked, and nothing private recorded.
The end-to-end trace through every hop is tests/observability/test_traces.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.providers._shared.http1 import Http1Transport
from server.providers._shared.http_spans import SpanningTransport
from tests.support.raw_http import RawServer, answer, raw_server


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def tracer(exported: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider.get_tracer("test")


async def teapot(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
    status = 503 if b"/broken" in head.split(b"\r\n")[0] else 200
    writer.write(answer(b"{}").replace(b"200 OK", f"{status} X".encode(), 1))
    await writer.drain()


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    async with raw_server(teapot) as started:
        yield started


@pytest.fixture
async def client(tracer: trace.Tracer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=SpanningTransport(Http1Transport(), tracer)) as opened:
        yield opened


def only(exported: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exported.get_finished_spans()
    return span


async def test_a_request_is_a_client_span_whose_context_goes_upstream(
    server: RawServer, client: httpx.AsyncClient, exported: InMemorySpanExporter
) -> None:
    secret_query = "sig=s3cr3t&api-version=2025-04-01"
    response = await client.post(
        f"{server.url}/images?{secret_query}",
        content=b'{"prompt": "a private prompt"}',
        headers={"api-key": "upstream-credential"},
    )
    assert response.status_code == 200
    span = only(exported)
    assert span.name == "POST" and span.kind is trace.SpanKind.CLIENT
    port = int(server.url.rsplit(":", 1)[1])
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "url.full": f"{server.url}/images?sig=REDACTED&api-version=2025-04-01",
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 200,
    }
    assert span.status.status_code is trace.StatusCode.UNSET
    # The span's own context travels upstream as `traceparent`.
    head = server.requests[0][0].decode().lower()
    context = span.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert f"traceparent: {traceparent}" in head
    # Nothing private in the span: no credential, prompt or signature.
    recorded = repr(span.to_json())
    for private in ("upstream-credential", "private prompt", "s3cr3t"):
        assert private not in recorded


async def test_a_span_continues_the_calls_trace(
    server: RawServer,
    client: httpx.AsyncClient,
    tracer: trace.Tracer,
    exported: InMemorySpanExporter,
) -> None:
    with tracer.start_as_current_span("rpc") as parent:
        await client.get(f"{server.url}/result")
    upstream = next(s for s in exported.get_finished_spans() if s.name == "GET")
    assert upstream.parent is not None
    assert upstream.parent.span_id == parent.get_span_context().span_id
    assert upstream.context is not None
    assert upstream.context.trace_id == parent.get_span_context().trace_id


async def test_an_error_status_marks_the_span(
    server: RawServer, client: httpx.AsyncClient, exported: InMemorySpanExporter
) -> None:
    response = await client.get(f"{server.url}/broken")
    assert response.status_code == 503
    span = only(exported)
    assert span.status.status_code is trace.StatusCode.ERROR
    attributes = span.attributes or {}
    assert (attributes["http.response.status_code"], attributes["error.type"]) == (503, "503")


async def test_no_answer_marks_the_span_with_the_failure(
    client: httpx.AsyncClient, exported: InMemorySpanExporter
) -> None:
    async with raw_server(teapot) as gone:
        url = gone.url
    with pytest.raises(httpx.ConnectError):
        await client.get(f"{url}/images")
    span = only(exported)
    assert span.status.status_code is trace.StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "ConnectError"
    assert not span.events  # no exception message recorded

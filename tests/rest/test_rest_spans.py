"""The sidecar's own SERVER spans (`ObservingMiddleware` with a tracer), on a
real sidecar over real sockets in front of the scripted gRPC service: one
span per request continuing the caller's `traceparent`, named by route,
marked with the status, and its own trace context sent to the service in
the call metadata (there is no gRPC client span in between). Probes and
scrapes get none. The trace through both real processes and every upstream
hop is tests/observability/test_traces.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.observability.logs import JsonFormatter
from server.settings import Settings
from tests.rest.conftest import Context, FakeImageService, fake_service, sidecar_for

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
GENERATE = {"model": "azure/flux-kontext-pro", "prompt": "a fox"}


class Exported(InMemorySpanExporter):
    """The spans ended so far, with a wake-up for each."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = asyncio.Condition()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        # Spans end on the sidecar's event loop, which is the test's.
        asyncio.get_running_loop().create_task(self._wake())
        return result

    async def _wake(self) -> None:
        async with self.ended:
            self.ended.notify_all()

    async def spans(self, count: int) -> list[ReadableSpan]:
        """The first `count` ended spans. A span ends after the last body
        byte is sent, so the client can hold the answer before it ends."""
        async with asyncio.timeout(10), self.ended:
            await self.ended.wait_for(lambda: len(self.get_finished_spans()) >= count)
        return list(self.get_finished_spans())


@pytest.fixture
def exported() -> Iterator[Exported]:
    exporter = Exported()
    yield exporter
    exporter.shutdown()


@pytest.fixture
async def service() -> AsyncIterator[tuple[FakeImageService, str]]:
    async with fake_service() as running:
        yield running


@pytest.fixture
async def traced(
    service: tuple[FakeImageService, str], exported: Exported
) -> AsyncIterator[tuple[FakeImageService, httpx.AsyncClient]]:
    """The fake service and a client of a sidecar tracing into `exported`."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    fake, target = service
    settings = Settings(metrics=True)
    async with (
        sidecar_for(target, settings, tracer=provider.get_tracer("test")) as sidecar,
        httpx.AsyncClient(base_url=sidecar.base_url, timeout=30) as client,
    ):
        yield fake, client


def _sent_traceparent(fake: FakeImageService) -> tuple[str, str]:
    """The trace id and parent span id the sidecar's last gRPC call carried."""
    version, trace_id, parent, flags = fake.calls[-1].metadata["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1, flags  # sampled
    return trace_id, parent


async def test_a_request_is_one_server_span_whose_context_goes_to_the_service(
    traced: tuple[FakeImageService, httpx.AsyncClient], exported: Exported
) -> None:
    fake, client = traced
    response = await client.post(
        "/v1/images/generations", json=GENERATE, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200, response.text

    [span] = await exported.spans(1)
    assert span.kind is trace.SpanKind.SERVER
    assert span.name == "POST /v1/images/generations"
    assert span.parent is not None and span.parent.is_remote
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "url.scheme": "http",
        "url.path": "/v1/images/generations",
        "http.route": "/v1/images/generations",
        "http.response.status_code": 200,
    }
    assert span.status.status_code is trace.StatusCode.UNSET
    # The service continues the sidecar's span, not the caller's.
    assert _sent_traceparent(fake) == (TRACE_ID, f"{span.context.span_id:016x}")


async def test_the_access_line_carries_the_requests_trace(
    traced: tuple[FakeImageService, httpx.AsyncClient],
    exported: Exported,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, client = traced
    caplog.set_level(logging.INFO, logger="server.access")
    caplog.handler.setFormatter(JsonFormatter())
    response = await client.post(
        "/v1/images/generations", json=GENERATE, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200, response.text

    [span] = await exported.spans(1)
    [line] = [json.loads(text) for text in caplog.text.splitlines()]
    assert line["route"] == "/v1/images/generations"
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, f"{span.context.span_id:016x}")


async def test_a_request_without_a_traceparent_starts_a_trace_the_service_continues(
    traced: tuple[FakeImageService, httpx.AsyncClient], exported: Exported
) -> None:
    fake, client = traced
    response = await client.post("/v1/images/generations", json=GENERATE)
    assert response.status_code == 200, response.text

    [span] = await exported.spans(1)
    assert span.parent is None
    assert _sent_traceparent(fake) == (
        f"{span.context.trace_id:032x}",
        f"{span.context.span_id:016x}",
    )


async def test_a_stream_is_one_span_that_ends_after_its_last_event(
    traced: tuple[FakeImageService, httpx.AsyncClient], exported: Exported
) -> None:
    fake, client = traced
    body = {**GENERATE, "n": 2, "stream": True}
    async with client.stream(
        "POST", "/v1/images/generations", json=body, headers={"traceparent": TRACEPARENT}
    ) as response:
        assert response.status_code == 200
        events = [line async for line in response.aiter_lines() if line.startswith("event:")]
    assert len(events) == 3, events  # two images and the completion

    [span] = await exported.spans(1)
    assert span.name == "POST /v1/images/generations"
    assert fake.calls[-1].method == "StreamGenerate"
    assert _sent_traceparent(fake) == (TRACE_ID, f"{span.context.span_id:016x}")


async def test_a_5xx_answer_marks_the_span_an_error_and_a_4xx_does_not(
    traced: tuple[FakeImageService, httpx.AsyncClient], exported: Exported
) -> None:
    fake, client = traced

    async def unavailable(method: str, request: Any, context: Context) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the provider is down")

    fake.unary = unavailable
    failed = await client.post("/v1/images/generations", json=GENERATE)
    assert failed.status_code == 503, failed.text
    refused = await client.post(
        "/v1/images/generations", json={**GENERATE, "response_format": "jpeg"}
    )
    assert refused.status_code == 400, refused.text

    first, second = await exported.spans(2)
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["http.response.status_code"] == 503
    assert first.status.status_code is trace.StatusCode.ERROR
    assert second.attributes["http.response.status_code"] == 400
    assert second.status.status_code is trace.StatusCode.UNSET


async def test_an_unrouted_path_is_named_by_its_method_and_not_recorded(
    traced: tuple[FakeImageService, httpx.AsyncClient], exported: Exported
) -> None:
    _, client = traced
    response = await client.get("/v1/ck-pasted-where-a-path-goes")
    assert response.status_code == 404

    [span] = await exported.spans(1)
    # Neither the raw path as a name (unbounded names) nor as an attribute:
    # it is whatever the caller typed.
    assert span.name == "GET"
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "http.response.status_code": 404,
    }


async def test_probes_and_scrapes_make_no_spans(
    traced: tuple[FakeImageService, httpx.AsyncClient], exported: Exported
) -> None:
    _, client = traced
    for path in ("/healthz", "/metrics"):
        response = await client.get(path)
        assert response.status_code == 200, path
    # A traced request after them: its span is the only one.
    assert (await client.get("/v1/models")).status_code == 200
    [span] = await exported.spans(1)
    assert span.name == "GET /v1/models"


async def test_untraced_the_sidecar_sends_no_trace_context(
    service: tuple[FakeImageService, str],
) -> None:
    fake, target = service
    async with (
        sidecar_for(target, Settings()) as sidecar,
        httpx.AsyncClient(base_url=sidecar.base_url, timeout=30) as client,
    ):
        response = await client.post(
            "/v1/images/generations", json=GENERATE, headers={"traceparent": TRACEPARENT}
        )
    assert response.status_code == 200, response.text
    assert "traceparent" not in fake.calls[-1].metadata

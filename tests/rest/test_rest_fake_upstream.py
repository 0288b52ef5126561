"""The sidecar against a scripted gRPC service: what it sends upstream, how
each gRPC failure reaches OpenAI clients, streaming, and cancellation."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import openai
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.domain import errors
from server.rest import streaming
from server.rpc.status import to_status
from server.settings import Settings
from tests.rest.conftest import (
    FAKE_IMAGE,
    Context,
    FakeStack,
    sample_generation,
    sample_image,
    sidecar_for,
)


def _client_at(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="ck-test-key", max_retries=0)


def _client(stack: FakeStack) -> openai.AsyncOpenAI:
    return _client_at(stack.base_url)


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _status(code: grpc.StatusCode, message: str, reason: str, *extra: Any) -> grpc.Status:
    """A status shaped like the service's: ErrorInfo in the service's domain."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain="image.chuizi.ai")
    return rpc_status.to_status(
        status_pb2.Status(
            code=getattr(code_pb2, code.name),
            message=message,
            details=[_packed(info), *(_packed(e) for e in extra)],
        )
    )


def _failing(status: grpc.Status) -> Any:
    async def behaviour(method: str, request: Any, context: Context) -> Any:
        await context.abort(status.code, status.details, status.trailing_metadata)

    return behaviour


async def _hang(method: str, request: Any, context: Context) -> Any:
    await asyncio.Event().wait()


# --- what goes upstream ---------------------------------------------------------


async def test_authorization_request_id_and_deadline_reach_the_service(fake: FakeStack) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/v1/images/generations",
            json={"model": "azure/flux-kontext-pro", "prompt": "a fox", "n": 2, "seed": 7},
            headers={
                "Authorization": "Bearer ck-your-key-here",
                "X-Request-Id": "trace-123",
                "Idempotency-Key": "retry-me",
            },
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-123"
    (call,) = fake.service.calls
    assert call.method == "Generate"
    assert call.metadata["authorization"] == "Bearer ck-your-key-here"
    assert call.metadata["x-request-id"] == "trace-123"
    assert call.time_remaining is not None
    assert fake.settings.rest_upstream_timeout_s - 10 < call.time_remaining
    # grpc sends the deadline as a grpc-timeout header rounded up to whole
    # seconds above 100 s (a remaining 120.001 s goes out as "121S"), so the
    # server may see up to a second more than the sidecar asked for.
    assert call.time_remaining <= fake.settings.rest_upstream_timeout_s + 1
    assert call.request == pb.GenerateRequest(
        model="azure/flux-kontext-pro",
        prompt="a fox",
        n=2,
        response_format=pb.RESPONSE_FORMAT_URL,
        request_id="retry-me",
        seed=7,
    )


async def test_a_request_id_is_generated_when_missing_or_unusable(fake: FakeStack) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        first = await http.get("/v1/models")
        second = await http.get("/v1/models", headers={"X-Request-Id": "has spaces"})
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(i.startswith("req-") for i in ids) and ids[0] != ids[1]
    assert [c.metadata["x-request-id"] for c in fake.service.calls] == ids
    assert "authorization" not in fake.service.calls[0].metadata


async def test_b64_json_asks_the_service_for_inline_bytes(fake: FakeStack) -> None:
    async with _client(fake) as client:
        result = await client.images.generate(
            model="azure/flux-kontext-pro", prompt="a fox", response_format="b64_json", n=2
        )
    assert fake.service.calls[0].request.response_format == pb.RESPONSE_FORMAT_INLINE
    assert result.data is not None
    assert [base64.b64decode(i.b64_json or "") for i in result.data] == [FAKE_IMAGE] * 2
    assert all(i.url is None for i in result.data)


# --- errors ---------------------------------------------------------------------------


ERROR_CASES = [
    pytest.param(
        to_status(errors.InvalidArgument([errors.FieldViolation("size", "is not offered")])),
        openai.BadRequestError, 400, "size", "invalid_argument", id="invalid-argument",
    ),
    pytest.param(
        to_status(errors.ContentRejected("Your request was rejected by the safety system.")),
        openai.BadRequestError, 400, None, "moderation_blocked", id="content-policy",
    ),
    pytest.param(
        _status(grpc.StatusCode.UNAUTHENTICATED, "Invalid API key.", "API_KEY_INVALID"),
        openai.AuthenticationError, 401, None, "api_key_invalid", id="unauthenticated",
    ),
    pytest.param(
        _status(grpc.StatusCode.PERMISSION_DENIED, "Not allowed.", "MODEL_NOT_ALLOWED"),
        openai.PermissionDeniedError, 403, None, "model_not_allowed", id="permission-denied",
    ),
    pytest.param(
        to_status(errors.ModelNotFound("Unknown model 'x/y'.")),
        openai.NotFoundError, 404, None, "model_not_found", id="not-found",
    ),
    pytest.param(
        to_status(errors.RequestIdConflict("request_id was already used.")),
        openai.ConflictError, 409, None, "request_id_conflict", id="already-exists",
    ),
    pytest.param(
        to_status(errors.RateLimited("Upstream rate limit.", retry_after=2.5)),
        openai.RateLimitError, 429, None, "upstream_rate_limited", id="resource-exhausted",
    ),
    pytest.param(
        to_status(errors.BackendNotConfigured("Model not configured here.")),
        openai.InternalServerError, 503, None, "backend_not_configured", id="not-configured",
    ),
    pytest.param(
        to_status(errors.UpstreamUnavailable("The upstream is unavailable.")),
        openai.InternalServerError, 502, None, "upstream_unavailable", id="upstream-unavailable",
    ),
    pytest.param(
        to_status(errors.StorageUnavailable("Storage is unavailable.")),
        openai.InternalServerError, 503, None, "storage_unavailable", id="storage-unavailable",
    ),
    pytest.param(
        to_status(errors.UpstreamTimeout("The upstream timed out.")),
        openai.InternalServerError, 504, None, "upstream_timeout", id="deadline-exceeded",
    ),
    pytest.param(
        to_status(errors.ImageServiceError("Internal error.")),
        openai.InternalServerError, 500, None, "internal", id="internal",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("status", "error_class", "http_status", "param", "code"), ERROR_CASES)
async def test_grpc_failures_raise_the_matching_sdk_error(
    fake: FakeStack,
    status: grpc.Status,
    error_class: type[openai.APIStatusError],
    http_status: int,
    param: str | None,
    code: str,
) -> None:
    fake.service.unary = _failing(status)
    async with _client(fake) as client:
        with pytest.raises(error_class) as raised:
            await client.images.generate(model="azure/flux-kontext-pro", prompt="a fox")
    error = raised.value
    assert error.status_code == http_status
    assert error.param == param
    assert error.code == code
    assert isinstance(error.body, dict)
    assert error.body["message"] == status.details
    assert error.response.headers["x-request-id"].startswith("req-")


async def test_rate_limit_carries_retry_after_from_retry_info(fake: FakeStack) -> None:
    fake.service.unary = _failing(to_status(errors.RateLimited("Slow down.", retry_after=2.5)))
    async with _client(fake) as client:
        with pytest.raises(openai.RateLimitError) as raised:
            await client.images.generate(model="azure/flux-kontext-pro", prompt="a fox")
    headers = raised.value.response.headers
    assert headers["retry-after"] == "3"  # rounded up: never earlier than asked
    assert headers["retry-after-ms"] == "2500"


async def test_failures_without_the_service_error_info_leak_nothing(fake: FakeStack) -> None:
    secret = "connect to 10.0.0.7:5432 with password hunter2 failed"
    fake.service.unary = _failing(
        rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=secret))
    )
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/v1/images/generations", json={"model": "azure/flux-kontext-pro", "prompt": "x"}
        )
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "Internal error.",
            "type": "server_error",
            "param": None,
            "code": "internal",
        }
    }


async def test_the_deadline_comes_from_settings_and_becomes_a_504(fake: FakeStack) -> None:
    fake.service.unary = _hang
    settings = fake.settings.model_copy(update={"rest_upstream_timeout_s": 0.3})
    async with (
        sidecar_for(fake.target, settings) as sidecar,
        _client_at(sidecar.base_url) as client,
    ):
        with pytest.raises(openai.InternalServerError) as raised:
            await client.images.generate(model="azure/flux-kontext-pro", prompt="a fox")
    assert raised.value.status_code == 504
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["message"] == "The request timed out."
    assert fake.service.calls[0].time_remaining is not None
    # gRPC carries the timeout rounded up on the wire (grpc-timeout), so the
    # server can see a hair more than the 0.3 s the sidecar set.
    assert fake.service.calls[0].time_remaining <= 0.31


async def test_an_unreachable_service_is_a_503(rest_settings: Settings) -> None:
    async with (
        sidecar_for("127.0.0.1:1", rest_settings) as sidecar,
        httpx.AsyncClient(base_url=sidecar.base_url) as http,
    ):
        response = await http.get("/v1/models")
        ready = await http.get("/readyz")
        healthy = await http.get("/healthz")
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "The image service is unavailable."
    assert "127.0.0.1" not in response.text
    assert ready.status_code == 503
    assert healthy.status_code == 200


async def test_readyz_reports_a_serving_service(fake: FakeStack) -> None:
    from grpc_health.v1 import health

    # The fake serves no health service: NOT_FOUND reads as not ready...
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        assert (await http.get("/readyz")).status_code == 503
    # ...and a SERVING one as ready.
    servicer = health.aio.HealthServicer()
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        async with (
            sidecar_for(f"127.0.0.1:{port}", fake.settings) as sidecar,
            httpx.AsyncClient(base_url=sidecar.base_url) as http,
        ):
            ready = await http.get("/readyz")
    finally:
        await server.stop(0)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok"}


# --- routes ---------------------------------------------------------------------------


async def test_models_list_and_retrieve(fake: FakeStack) -> None:
    async with _client(fake) as client:
        page = await client.models.list()
        model = await client.models.retrieve("azure/flux-kontext-pro")
        with pytest.raises(openai.NotFoundError) as raised:
            await client.models.retrieve("nope/nothing")
    assert [m.id for m in page.data] == ["azure/flux-kontext-pro"]
    assert model.id == "azure/flux-kontext-pro"
    assert model.owned_by == "Azure (FLUX)"
    extra = model.model_extra or {}
    assert extra["operations"] == ["generate", "prompt_edit"]
    assert extra["price_per_image"] == "0.05000000"
    assert extra["configured"] is True
    assert raised.value.param == "model"


async def test_get_generation_has_the_generation_body(fake: FakeStack) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.get("/v1/generations/gen-0123456789abcdef")
    assert response.status_code == 200
    assert response.json() == {
        "created": 1712000000,
        "data": [{"url": "https://media.test/images/gen-0123456789abcdef-0.png"}],
        "size": "1024x1024",
        "x_chuizi": {
            "generation_id": "gen-0123456789abcdef",
            "cost": "0.05000000",
            "latency_ms": 8500,
            "model": "azure/flux-kontext-pro",
            "served_by": "azure/flux-kontext-pro",
            "upstream_model": "",
            "images": [{"index": 0, "width": 1024, "height": 1024, "seed": None}],
        },
    }
    assert fake.service.calls[0].request == pb.GetGenerationRequest(
        generation_id="gen-0123456789abcdef"
    )


async def test_unknown_routes_and_methods_get_openai_errors(fake: FakeStack) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        missing = await http.get("/v1/nothing")
        wrong_method = await http.get("/v1/images/generations")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_url"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"


# --- request body problems ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "status", "param"),
    [
        (b'{"model": "m", "prompt": ', "application/json", 400, None),
        (b"[1, 2]", "application/json", 400, None),
        (b"model=m&prompt=x", "application/x-www-form-urlencoded", 415, None),
        (b'{"model": "m", "prompt": "x", "n": "two"}', "application/json", 400, "n"),
        (b'{"model": "m", "prompt": "x", "n": true}', "application/json", 400, "n"),
        (b'{"model": "m", "prompt": "x", "n": 0}', "application/json", 400, "n"),
        (b'{"model": "m", "prompt": "x", "size": 1024}', "application/json", 400, "size"),
        (b'{"model": 5, "prompt": "x"}', "application/json", 400, "model"),
        (b'{"model": "m", "prompt": "x", "response_format": "png"}', "application/json", 400,
         "response_format"),
        (b'{"model": "m", "prompt": "x", "stream": "maybe"}', "application/json", 400, "stream"),
        (b'{"model": "m", "prompt": "x", "seed": -1}', "application/json", 400, "seed"),
    ],
)  # fmt: skip
async def test_bad_generation_bodies_get_a_4xx_naming_the_field(
    fake: FakeStack, content: bytes, content_type: str, status: int, param: str | None
) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/v1/images/generations", content=content, headers={"Content-Type": content_type}
        )
    assert response.status_code == status
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fake.service.calls == []


async def test_a_huge_json_body_is_a_413(fake: FakeStack) -> None:
    body = json.dumps({"model": "m", "prompt": "x" * (2 * 1024 * 1024)})
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/v1/images/generations", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413
    assert fake.service.calls == []


async def test_size_auto_and_unknown_openai_params(fake: FakeStack) -> None:
    async with _client(fake) as client:
        await client.images.generate(
            model="azure/flux-kontext-pro", prompt="a fox", size="auto", quality="high", user="u1"
        )
    assert fake.service.calls[0].request.size == ""


# --- streaming --------------------------------------------------------------------------


def _parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The named events; the `[DONE]` sentinel before the record is skipped."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines or lines == ["data: [DONE]"]:
            continue
        name = next(line[7:] for line in lines if line.startswith("event: "))
        data = "".join(line[6:] for line in lines if line.startswith("data: "))
        events.append((name, json.loads(data)))
    return events


async def test_stream_sends_each_image_then_the_record(fake: FakeStack) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/v1/images/generations",
            json={"model": "azure/flux-kontext-pro", "prompt": "a fox", "n": 3, "stream": True},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert fake.service.calls[0].method == "StreamGenerate"
    events = _parse_sse(response.text)
    assert [name for name, _ in events] == [
        "image_generation.completed",
        "image_generation.completed",
        "image_generation.completed",
        "x_chuizi.generation",
    ]
    # In the order the service finished them, each with its index.
    assert [data["index"] for _, data in events[:3]] == [2, 1, 0]
    first = events[0][1]
    assert first["type"] == "image_generation.completed"
    assert first["url"] == "https://media.test/images/gen-0123456789abcdef-2.png"
    assert first["size"] == "1024x1024" and first["output_format"] == "png"
    assert "b64_json" not in first
    record = events[-1][1]
    assert record["type"] == "x_chuizi.generation"
    assert {k: record["x_chuizi"][k] for k in ("generation_id", "cost", "latency_ms")} == {
        "generation_id": "gen-0123456789abcdef",
        "cost": "0.15000000",
        "latency_ms": 8500,
    }
    assert [image["index"] for image in record["x_chuizi"]["images"]] == [0, 1, 2]
    assert len(record["data"]) == 3


async def test_stream_with_b64_json_through_the_sdk(fake: FakeStack) -> None:
    async with _client(fake) as client:
        stream = await client.images.generate(
            model="azure/flux-kontext-pro",
            prompt="a fox",
            n=2,
            response_format="b64_json",
            stream=True,
        )
        events = [event async for event in stream]
    # The record follows [DONE], where the SDK stops: it is never taken for an image.
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    assert base64.b64decode(events[0].b64_json) == FAKE_IMAGE


async def test_edit_stream_uses_the_edit_event_name(fake: FakeStack) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/v1/images/edits",
            files={"image": ("a.png", FAKE_IMAGE, "image/png")},
            data={"model": "azure/flux-kontext-pro", "prompt": "x", "stream": "true"},
        )
    names = [name for name, _ in _parse_sse(response.text)]
    assert names == ["image_edit.completed", "x_chuizi.generation"]
    assert fake.service.calls[0].method == "StreamEdit"


async def test_stream_rejected_at_once_is_a_plain_http_error(fake: FakeStack) -> None:
    status = to_status(errors.InvalidArgument([errors.FieldViolation("n", "must be 1 to 4")]))

    async def reject(method: str, request: Any, context: Context) -> AsyncIterator[Any]:
        await context.abort(status.code, status.details, status.trailing_metadata)
        yield  # pragma: no cover

    fake.service.stream = reject
    async with _client(fake) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.images.generate(
                model="azure/flux-kontext-pro", prompt="a fox", n=9, stream=True
            )
    assert raised.value.param == "n"


async def test_failure_mid_stream_is_an_error_event(fake: FakeStack) -> None:
    status = to_status(errors.UpstreamUnavailable("The upstream is unavailable."))

    async def one_then_fail(method: str, request: Any, context: Context) -> AsyncIterator[Any]:
        yield pb.StreamGenerateResponse(image=sample_image(0))
        await context.abort(status.code, status.details, status.trailing_metadata)

    fake.service.stream = one_then_fail
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/v1/images/generations",
            json={"model": "azure/flux-kontext-pro", "prompt": "a fox", "n": 2, "stream": True},
        )
    events = _parse_sse(response.text)
    assert [name for name, _ in events] == ["image_generation.completed", "error"]
    assert events[1][1] == {
        "type": "error",
        "error": {
            "message": "The upstream is unavailable.",
            "type": "server_error",
            "param": None,
            "code": "upstream_unavailable",
        },
    }
    async with _client(fake) as client:
        stream = await client.images.generate(
            model="azure/flux-kontext-pro", prompt="a fox", n=2, stream=True
        )
        with pytest.raises(openai.APIError, match="upstream is unavailable"):
            async for _ in stream:
                pass


async def test_slow_streams_get_keep_alive_comments(
    fake: FakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streaming, "KEEPALIVE_S", 0.05)
    monkeypatch.setattr(streaming, "ERROR_STATUS_WINDOW_S", 0.05)

    # The first image comes only once the client has seen a keep-alive
    # comment (released by the test, not after a pause it hopes is long enough).
    keep_alive_seen = asyncio.Event()

    async def slow(method: str, request: Any, context: Context) -> AsyncIterator[Any]:
        await keep_alive_seen.wait()
        yield pb.StreamGenerateResponse(image=sample_image(0))
        yield pb.StreamGenerateResponse(generation=sample_generation(1))

    fake.service.stream = slow
    text = ""
    async with (
        httpx.AsyncClient(base_url=fake.base_url, timeout=30) as http,
        http.stream(
            "POST",
            "/v1/images/generations",
            json={"model": "azure/flux-kontext-pro", "prompt": "a fox", "stream": True},
        ) as response,
    ):
        async for chunk in response.aiter_text():
            text += chunk
            if text.startswith(": keep-alive\n\n"):
                keep_alive_seen.set()
    assert text.startswith(": keep-alive\n\n")
    assert [n for n, _ in _parse_sse(text)] == [
        "image_generation.completed",
        "x_chuizi.generation",
    ]


# --- cancellation ----------------------------------------------------------------------


async def _disconnect_during(fake: FakeStack, body: dict[str, Any], read_first: bool) -> None:
    http = httpx.AsyncClient(base_url=fake.base_url, timeout=30)

    first_bytes = asyncio.Event()

    async def request() -> None:
        async with http.stream("POST", "/v1/images/generations", json=body) as response:
            async for _ in response.aiter_bytes():
                first_bytes.set()

    task = asyncio.create_task(request())
    await asyncio.wait_for(fake.service.started.wait(), 10)
    if read_first:
        await asyncio.wait_for(first_bytes.wait(), 10)  # the first event is through
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await http.aclose()


async def test_client_disconnect_cancels_the_unary_call(fake: FakeStack) -> None:
    fake.service.unary = _hang
    await _disconnect_during(fake, {"model": "azure/flux-kontext-pro", "prompt": "x"}, False)
    await asyncio.wait_for(fake.service.cancel_seen.wait(), 10)
    assert fake.service.cancelled == ["Generate"]


async def test_client_disconnect_cancels_the_stream(fake: FakeStack) -> None:
    async def one_then_hang(method: str, request: Any, context: Context) -> AsyncIterator[Any]:
        yield pb.StreamGenerateResponse(image=sample_image(0))
        await asyncio.Event().wait()
        yield pb.StreamGenerateResponse(image=sample_image(1))  # pragma: no cover

    fake.service.stream = one_then_hang
    body = {"model": "azure/flux-kontext-pro", "prompt": "x", "n": 2, "stream": True}
    await _disconnect_during(fake, body, True)
    await asyncio.wait_for(fake.service.cancel_seen.wait(), 10)
    assert fake.service.cancelled == ["StreamGenerate"]


async def test_partial_failures_and_unstored_images_in_the_body(fake: FakeStack) -> None:
    generation = sample_generation(1)
    generation.n = 3
    generation.images.append(sample_image(1, data=FAKE_IMAGE, stored=False))
    generation.failures.append(
        pb.ImageFailure(
            image_count=1, reason="CONTENT_POLICY_VIOLATION", message="One image was filtered."
        )
    )

    async def partial(method: str, request: Any, context: Context) -> Any:
        return generation

    fake.service.unary = partial
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post(
            "/v1/images/generations",
            json={"model": "azure/flux-kontext-pro", "prompt": "x", "n": 3},
        )
    body = response.json()
    assert body["data"] == [
        {"url": "https://media.test/images/gen-0123456789abcdef-0.png"},
        {"b64_json": base64.b64encode(FAKE_IMAGE).decode()},
    ]
    assert body["x_chuizi"]["failures"] == [
        {"image_count": 1, "code": "moderation_blocked", "message": "One image was filtered."}
    ]


async def test_an_upload_over_the_services_message_limit_is_a_413(
    rest_settings: Settings,
) -> None:
    # The sidecar's upload limit is set above what the service accepts in
    # one message: a deployment mistake that must not read as a rate limit.
    from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

    from tests.rest.conftest import FakeImageService

    service = FakeImageService()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 * 1024)])
    pb_grpc.add_ImageServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with (
            sidecar_for(f"127.0.0.1:{port}", rest_settings) as sidecar,
            httpx.AsyncClient(base_url=sidecar.base_url) as http,
        ):
            response = await http.post(
                "/v1/images/edits",
                files={"image": ("a.png", FAKE_IMAGE + b"\x00" * 512 * 1024, "image/png")},
                data={"model": "azure/flux-kontext-pro", "prompt": "x"},
            )
    finally:
        await server.stop(0)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert service.calls == []

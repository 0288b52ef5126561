"""AzureMaiBackend against the Azure MAI emulator, over real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from server.domain.catalogue import Catalogue
from server.domain.deadline import Deadline
from server.domain.errors import (
    BackendNotConfigured,
    CapabilityNotSupported,
    ContentRejected,
    ImageServiceError,
    InvalidArgument,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.domain.retry import RetryPolicy
from server.providers.azure_mai import (
    DEPLOYMENT_SETTING,
    AzureMaiBackend,
    classify,
    parse_response,
    produced_size,
    request_body,
)
from server.sandbox.azure_mai import (
    CONTENT_FILTER_OUTPUT,
    CONTENT_FILTER_PROMPT,
    SANDBOX_AZURE_MAI_KEY,
)
from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.server import SandboxServer
from tests.support.images import png, size_of

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
MAI = Catalogue.load().get("azure/mai-image-2")
SQUARE = Size(1024, 1024)


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer("127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def faults(sandbox: SandboxServer) -> FaultPlan:
    return sandbox.azure_mai.faults


def make_backend(
    sandbox: SandboxServer,
    *,
    key: str = SANDBOX_AZURE_MAI_KEY,
    endpoint: str | None = None,
    deployment: str = "",
    api_version: str = "",
) -> AzureMaiBackend:
    return AzureMaiBackend(
        endpoint=sandbox.base_url if endpoint is None else endpoint,
        api_key=SecretStr(key),
        deployment=deployment,
        api_version=api_version,
        timeout_s=10.0,
        retry=FAST_RETRY,
    )


@pytest.fixture
async def backend(sandbox: SandboxServer) -> AsyncIterator[AzureMaiBackend]:
    backend = make_backend(sandbox)
    yield backend
    await backend.aclose()


def generate(
    size: Size | None = SQUARE,
    *,
    prompt: str = "a university at sunset",
    seed: int | None = None,
) -> UpstreamCall:
    return UpstreamCall(model=MAI, prompt=prompt, size=size, count=1, seed=seed)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (Size(1024, 1024), (1024, 1024)),
        (Size(1792, 1024), (1344, 768)),
        (Size(1024, 1792), (768, 1344)),
    ],
    ids=str,
)
async def test_every_catalogue_size_is_produced_within_mai_limits(
    backend: AzureMaiBackend, sandbox: SandboxServer, size: Size, expected: tuple[int, int]
) -> None:
    assert size in MAI.sizes
    result = await backend.run(generate(size, seed=7), Deadline.after(10))

    assert len(result.images) == 1
    assert result.filtered == 0
    assert result.images[0].mime_type == "image/png"
    assert size_of(result.images[0].data) == expected
    # Exactly the documented body: no n, no seed, no format.
    sent = sandbox.azure_mai.received[-1]
    assert sent.body == {
        "model": "MAI-Image-2",
        "prompt": "a university at sunset",
        "width": expected[0],
        "height": expected[1],
    }
    assert sent.api_version is None


def test_the_catalogue_offers_only_sizes_mai_can_shape() -> None:
    assert Size(2048, 2048) not in MAI.sizes
    assert str(MAI.max_size) == "1024x1024"
    assert MAI.images_per_call == 1
    for size in MAI.sizes:
        produced = produced_size(size)
        assert produced.pixels <= 1024 * 1024
        assert min(produced.width, produced.height) >= 768
        assert abs(produced.aspect - size.aspect) < 0.02


def test_size_mapping() -> None:
    assert produced_size(Size(1792, 1024)) == Size(1344, 768)
    assert produced_size(Size(1024, 1792)) == Size(768, 1344)
    assert produced_size(Size(1000, 800)) == Size(1000, 800)  # fits: kept as asked
    assert produced_size(Size(2048, 2048)) == Size(1024, 1024)
    assert produced_size(Size(512, 512)) == Size(768, 768)
    assert produced_size(Size(1920, 1080)) == Size(1360, 768)
    with pytest.raises(InvalidArgument) as caught:
        produced_size(Size(2100, 900))
    assert [v.field for v in caught.value.violations] == ["size"]
    assert "768" in caught.value.violations[0].description


def test_no_size_means_the_default_square() -> None:
    body = request_body(generate(None))
    assert (body["width"], body["height"]) == (1024, 1024)


async def test_edits_and_batches_are_refused_before_any_call(
    backend: AzureMaiBackend, faults: FaultPlan
) -> None:
    edit = UpstreamCall(
        model=MAI, prompt="x", size=None, count=1, operation=Operation.PROMPT_EDIT, images=(png(),)
    )
    with pytest.raises(CapabilityNotSupported):
        await backend.run(edit, Deadline.after(5))
    batch = UpstreamCall(model=MAI, prompt="x", size=Size(1024, 1024), count=2)
    with pytest.raises(ImageServiceError, match="one image per call"):
        await backend.run(batch, Deadline.after(5))
    assert faults.stats.received == 0


async def test_deployment_setting_names_the_model_field(sandbox: SandboxServer) -> None:
    sandbox.azure_mai.deployments["my-mai"] = "my-mai"
    backend = make_backend(sandbox, deployment="my-mai", api_version="preview")
    try:
        await backend.run(generate(), Deadline.after(10))
    finally:
        await backend.aclose()
    sent = sandbox.azure_mai.received[-1]
    assert sent.body["model"] == "my-mai"
    assert sent.api_version == "preview"


async def test_unknown_deployment_points_at_the_deployment_setting(
    sandbox: SandboxServer, faults: FaultPlan
) -> None:
    backend = make_backend(sandbox, deployment="not-deployed")
    try:
        with pytest.raises(BackendNotConfigured) as caught:
            await backend.run(generate(), Deadline.after(5))
    finally:
        await backend.aclose()
    assert caught.value.metadata["setting"] == DEPLOYMENT_SETTING
    assert DEPLOYMENT_SETTING in caught.value.message
    assert faults.stats.received == 1


async def test_wrong_route_points_at_the_endpoint_setting(sandbox: SandboxServer) -> None:
    backend = make_backend(sandbox, endpoint=sandbox.base_url + "/openai")
    try:
        with pytest.raises(BackendNotConfigured) as caught:
            await backend.run(generate(), Deadline.after(5))
    finally:
        await backend.aclose()
    assert caught.value.metadata["setting"] == "IMAGE_SERVICE_AZURE_MAI_ENDPOINT"


async def test_wrong_key_is_auth_failure_without_the_key(
    sandbox: SandboxServer, faults: FaultPlan
) -> None:
    backend = make_backend(sandbox, key="not-the-key")
    try:
        with pytest.raises(UpstreamAuthFailed) as caught:
            await backend.run(generate(), Deadline.after(5))
    finally:
        await backend.aclose()
    assert "not-the-key" not in caught.value.message
    assert "IMAGE_SERVICE_AZURE_MAI_API_KEY" in caught.value.message
    assert faults.stats.received == 1


def test_malformed_endpoint_is_refused() -> None:
    with pytest.raises(ValueError):
        AzureMaiBackend(endpoint="myres.services.ai.azure.com", api_key=SecretStr("k"))


async def test_bad_request_is_rejected_without_retry(
    backend: AzureMaiBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.BAD_REQUEST)
    with pytest.raises(UpstreamRejected) as caught:
        await backend.run(generate(), Deadline.after(5))
    assert caught.value.metadata["upstream_status"] == "400"
    assert "sandbox fault" not in caught.value.message
    assert faults.stats.received == 1


@pytest.mark.parametrize(
    ("variant", "categories"), [(CONTENT_FILTER_PROMPT, "sexual"), (CONTENT_FILTER_OUTPUT, None)]
)
async def test_content_filter_is_content_rejected_and_not_retried(
    backend: AzureMaiBackend, faults: FaultPlan, variant: str, categories: str | None
) -> None:
    faults.push(FaultMode.CONTENT_FILTER, variant=variant, times=3)
    with pytest.raises(ContentRejected) as caught:
        await backend.run(generate(), Deadline.after(5))
    assert caught.value.metadata.get("categories") == categories
    assert faults.stats.received == 1


async def test_rate_limit_honours_retry_after_then_succeeds(
    backend: AzureMaiBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=0.4)
    started = time.monotonic()

    result = await backend.run(generate(), Deadline.after(10))

    assert time.monotonic() - started >= 0.4
    assert len(result.images) == 1
    assert faults.stats.received == 2


async def test_persistent_rate_limit_surfaces_retry_after(
    backend: AzureMaiBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=0.05, times=10)
    with pytest.raises(RateLimited) as caught:
        await backend.run(generate(), Deadline.after(10))
    assert caught.value.retry_after == pytest.approx(0.05)
    assert faults.stats.received == FAST_RETRY.attempts


async def test_the_deployment_quota_429_is_retried_after_its_wait(
    backend: AzureMaiBackend, sandbox: SandboxServer
) -> None:
    emulator = sandbox.azure_mai
    emulator.requests_per_minute, emulator.rate_window_s = 1, 0.3
    await backend.run(generate(), Deadline.after(10))
    started = time.monotonic()

    await backend.run(generate(), Deadline.after(10))

    assert emulator.rate_limited == 1
    assert time.monotonic() - started >= 0.2


async def test_server_error_is_retried(backend: AzureMaiBackend, faults: FaultPlan) -> None:
    faults.push(FaultMode.SERVER_ERROR)
    result = await backend.run(generate(), Deadline.after(10))
    assert len(result.images) == 1
    assert faults.stats.received == 2


async def test_persistent_server_error_is_unavailable(
    backend: AzureMaiBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.SERVER_ERROR, times=10)
    with pytest.raises(UpstreamUnavailable):
        await backend.run(generate(), Deadline.after(10))
    assert faults.stats.received == FAST_RETRY.attempts


async def test_timeout_stops_at_the_deadline(backend: AzureMaiBackend, faults: FaultPlan) -> None:
    faults.push(FaultMode.TIMEOUT, times=10)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await backend.run(generate(), Deadline.after(0.5))
    assert 0.4 <= time.monotonic() - started < 1.5
    await faults.wait_for(lambda s: s.in_flight == 0 and s.cancelled == 1)


async def test_dropped_connection_is_retried(backend: AzureMaiBackend, faults: FaultPlan) -> None:
    faults.push(FaultMode.DROP_CONNECTION)
    result = await backend.run(generate(), Deadline.after(10))
    assert len(result.images) == 1
    assert (faults.stats.received, faults.stats.dropped) == (2, 1)


async def test_persistent_dropped_connection_is_unavailable(
    backend: AzureMaiBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.DROP_CONNECTION, times=10)
    with pytest.raises(UpstreamUnavailable):
        await backend.run(generate(), Deadline.after(10))
    assert faults.stats.dropped == FAST_RETRY.attempts


async def test_cancelling_the_call_cancels_the_upstream_request(
    backend: AzureMaiBackend, faults: FaultPlan
) -> None:
    faults.latencies = [30.0]
    task = asyncio.create_task(backend.run(generate(), Deadline.after(60)))
    await faults.wait_for(lambda s: s.in_flight == 1)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    stats = await faults.wait_for(lambda s: s.in_flight == 0, within_s=2)
    assert (stats.received, stats.cancelled, stats.completed) == (1, 1, 0)


async def test_prompt_directive_injects_a_fault(
    backend: AzureMaiBackend, faults: FaultPlan
) -> None:
    with pytest.raises(ContentRejected):
        await backend.run(generate(prompt="fox [sandbox:fault=content_filter]"), Deadline.after(5))
    assert faults.stats.faults[FaultMode.CONTENT_FILTER] == 1


def _response(payload: object, status: int = 200) -> httpx.Response:
    request = httpx.Request("POST", "https://res.test/mai/v1/images/generations")
    return httpx.Response(status, json=payload, request=request)


def test_a_filtered_200_item_is_content_rejected() -> None:
    item = {
        "finish_reason": "content_filter",
        "content_filter_results": {"violence": {"filtered": True}},
    }
    with pytest.raises(ContentRejected) as caught:
        parse_response(_response({"data": [item]}))
    assert caught.value.metadata["categories"] == "violence"


@pytest.mark.parametrize(
    "payload",
    [
        {"data": []},
        {"data": [{"b64_json": "not base64!"}]},
        {"data": [{"b64_json": "aGVsbG8="}]},
        [],
    ],
)
def test_malformed_200_is_unavailable_and_so_retried(payload: object) -> None:
    with pytest.raises(UpstreamUnavailable):
        parse_response(_response(payload))


def test_classify_leaves_ordinary_errors_to_the_generic_mapping() -> None:
    assert (
        classify(
            _response(
                {
                    "error": {
                        "code": "BadRequest",
                        "message": "'width' must be at least 768 pixels.",
                    }
                },
                400,
            )
        )
        is None
    )
    assert (
        classify(_response({"error": {"code": "404", "message": "Resource not found"}}, 404))
        is None
    )
    assert isinstance(
        classify(
            _response({"error": {"code": "x", "message": "Flagged by the content filter"}}, 400)
        ),
        ContentRejected,
    )

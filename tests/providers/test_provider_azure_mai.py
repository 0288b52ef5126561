"""AzureMaiBackend against the Azure MAI emulator, over real sockets: what only
MAI does. The failure behaviour every backend shares is in
test_backend_contract.py."""

from __future__ import annotations

import time

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
    UpstreamUnavailable,
)
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.providers.azure_mai.backend import AzureMaiBackend
from server.providers.azure_mai.errors import DEPLOYMENT_SETTING, classify
from server.providers.azure_mai.request import produced_size, request_body
from server.providers.azure_mai.response import parse_response
from server.sandbox.faults import FaultPlan
from server.sandbox.server import SandboxServer
from tests.providers.backends import azure_mai as make_backend
from tests.providers.conftest import backend_fixture
from tests.support.images import png, size_of

MAI = Catalogue.load().get("azure/mai-image-2")
SQUARE = Size(1024, 1024)


@pytest.fixture
def faults(sandbox: SandboxServer) -> FaultPlan:
    return sandbox.azure_mai.faults


backend = backend_fixture(make_backend)


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


def test_malformed_endpoint_is_refused() -> None:
    with pytest.raises(ValueError):
        AzureMaiBackend(endpoint="myres.services.ai.azure.com", api_key=SecretStr("k"))


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

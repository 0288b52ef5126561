"""BedrockStabilityBackend (boto3 `invoke_model`) against the emulator, over real
sockets: what only Bedrock does (its models' bodies, its error codes, boto3's
threads and credential chain). The failure behaviour every backend shares is
in test_backend_contract.py."""

from __future__ import annotations

import asyncio
import base64
import io
import pathlib
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    InvalidEndpointConfigurationError,
    NoCredentialsError,
    ReadTimeoutError,
)
from PIL import Image

from server.domain.catalogue import Catalogue, ModelSpec
from server.domain.deadline import Deadline
from server.domain.errors import (
    BackendNotConfigured,
    CapabilityNotSupported,
    ImageServiceError,
    InvalidArgument,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.domain.imaging import mask_to_grayscale
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.providers.bedrock_stability.backend import BedrockStabilityBackend
from server.providers.bedrock_stability.errors import (
    error_for_botocore_error,
    error_for_client_error,
)
from server.providers.bedrock_stability.request import aspect_ratio_for, upstream_seed
from server.providers.bedrock_stability.response import parse_response
from server.providers.registry import build_backends
from server.sandbox.bedrock_stability import (
    ACCESS_DENIED,
    MODEL_NOT_READY,
    MODEL_TIMEOUT,
    NOT_FOUND,
    QUOTA,
    SANDBOX_BEDROCK_ACCESS_KEY_ID,
    SANDBOX_BEDROCK_SECRET_ACCESS_KEY,
)
from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.server import SandboxServer
from server.settings import Settings
from tests.providers.backends import bedrock_stability as make_backend
from tests.providers.conftest import FAST_RETRY, backend_fixture
from tests.support.images import alpha_mask, png, size_of

CATALOGUE = Catalogue.load()
SD35 = CATALOGUE.get("bedrock/stability-sd3-5-large")
CORE = CATALOGUE.get("bedrock/stability-stable-image-core")
ULTRA = CATALOGUE.get("bedrock/stability-stable-image-ultra")
REMOVE_BG = CATALOGUE.get("bedrock/stability-remove-background")
INPAINT = CATALOGUE.get("bedrock/stability-inpaint")
FAST_UPSCALE = CATALOGUE.get("bedrock/stability-fast-upscale")
CONSERVATIVE_UPSCALE = CATALOGUE.get("bedrock/stability-conservative-upscale")
TEXT_TO_IMAGE = (SD35, CORE, ULTRA)
SQUARE = Size(1024, 1024)
PRODUCED = {
    Size(1024, 1024): (1024, 1024),
    Size(1792, 1024): (1344, 768),
    Size(1024, 1792): (768, 1344),
}
_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_BEARER_TOKEN_BEDROCK",
)


@pytest.fixture
def faults(sandbox: SandboxServer) -> FaultPlan:
    return sandbox.bedrock_stability.faults


backend = backend_fixture(make_backend)


def call_for(
    model: ModelSpec = CORE,
    size: Size | None = SQUARE,
    *,
    prompt: str = "a red fox in an autumn forest",
    operation: Operation = Operation.GENERATE,
    images: tuple[bytes, ...] = (),
    mask: bytes | None = None,
    seed: int | None = None,
) -> UpstreamCall:
    return UpstreamCall(
        model=model,
        prompt=prompt,
        size=size,
        count=1,
        operation=operation,
        images=images,
        mask=mask,
        seed=seed,
    )


def last_body(sandbox: SandboxServer) -> dict[str, Any]:
    return sandbox.bedrock_stability.received[-1].body


# --- mapping -------------------------------------------------------------------


def test_size_mapping() -> None:
    assert aspect_ratio_for(Size(1024, 1024)) == "1:1"
    assert aspect_ratio_for(Size(1792, 1024)) == "16:9"
    assert aspect_ratio_for(Size(1024, 1792)) == "9:16"
    assert aspect_ratio_for(Size(4000, 1000)) == "21:9"
    assert aspect_ratio_for(Size(1200, 1000)) == "5:4"


def test_seed_mapping() -> None:
    assert upstream_seed(None) == 0
    assert upstream_seed(7) == 7
    # The proto allows 2**32 - 1 and fan-out adds the index; the upstream stops at 2**32 - 2.
    assert upstream_seed(4_294_967_295) == 0
    assert upstream_seed(4_294_967_297) == 2


@pytest.mark.parametrize("model", TEXT_TO_IMAGE, ids=lambda m: m.name)
@pytest.mark.parametrize("size", list(PRODUCED), ids=str)
async def test_generate_every_catalogue_size(
    backend: BedrockStabilityBackend, sandbox: SandboxServer, model: ModelSpec, size: Size
) -> None:
    assert size in model.sizes
    result = await backend.run(call_for(model, size, seed=7), Deadline.after(10))

    assert len(result.images) == 1
    assert result.filtered == 0
    assert result.images[0].mime_type == "image/png"
    assert size_of(result.images[0].data) == PRODUCED[size]
    received = sandbox.bedrock_stability.received[-1]
    assert received.model_id == model.upstream_id
    expected = {
        "prompt": "a red fox in an autumn forest",
        "aspect_ratio": aspect_ratio_for(size),
        "seed": 7,
        "output_format": "png",
    }
    if model is SD35:
        expected["mode"] = "text-to-image"
    assert received.body == expected
    assert sandbox.bedrock_stability.faults.stats.received == 1


async def test_no_seed_sends_the_upstreams_random_seed(
    backend: BedrockStabilityBackend, sandbox: SandboxServer
) -> None:
    await backend.run(call_for(ULTRA), Deadline.after(10))
    assert last_body(sandbox)["seed"] == 0


async def test_remove_background_sends_only_the_image(
    backend: BedrockStabilityBackend, sandbox: SandboxServer
) -> None:
    source = png(300, 200)
    call = call_for(
        REMOVE_BG, None, prompt="", operation=Operation.REMOVE_BACKGROUND, images=(source,)
    )
    result = await backend.run(call, Deadline.after(10))
    with Image.open(io.BytesIO(result.images[0].data)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (300, 200))
    body = last_body(sandbox)
    assert set(body) == {"image", "output_format"}
    assert body["output_format"] == "png"


async def test_inpaint_sends_the_grayscale_mask(
    backend: BedrockStabilityBackend, sandbox: SandboxServer
) -> None:
    source = png(256, 192)
    mask, _, _ = mask_to_grayscale(alpha_mask(256, 192))
    call = call_for(
        INPAINT,
        None,
        prompt="a red scarf",
        operation=Operation.INPAINT,
        images=(source,),
        mask=mask,
        seed=11,
    )
    result = await backend.run(call, Deadline.after(10))

    assert size_of(result.images[0].data) == (256, 192)
    body = last_body(sandbox)
    assert set(body) == {"image", "mask", "prompt", "grow_mask", "seed", "output_format"}
    assert (body["prompt"], body["seed"], body["grow_mask"]) == ("a red scarf", 11, 5)


async def test_fast_upscale_is_four_times(
    backend: BedrockStabilityBackend, sandbox: SandboxServer
) -> None:
    call = call_for(
        FAST_UPSCALE, None, prompt="", operation=Operation.UPSCALE, images=(png(160, 90),)
    )
    result = await backend.run(call, Deadline.after(10))
    assert size_of(result.images[0].data) == (640, 360)
    assert set(last_body(sandbox)) == {"image", "output_format"}


async def test_conservative_upscale_sends_the_prompt(
    backend: BedrockStabilityBackend, sandbox: SandboxServer
) -> None:
    call = call_for(
        CONSERVATIVE_UPSCALE,
        None,
        prompt="a crisp photo",
        operation=Operation.UPSCALE,
        images=(png(200, 100),),
    )
    result = await backend.run(call, Deadline.after(10))
    assert size_of(result.images[0].data) == (800, 400)
    assert last_body(sandbox)["prompt"] == "a crisp photo"


@pytest.mark.parametrize(
    ("call", "field", "error"),
    [
        (
            call_for(
                CONSERVATIVE_UPSCALE, None, prompt=" ", operation=Operation.UPSCALE, images=(png(),)
            ),
            "prompt",
            InvalidArgument,
        ),
        (
            call_for(INPAINT, None, operation=Operation.INPAINT, images=(png(),)),
            "mask",
            InvalidArgument,
        ),
        (
            call_for(REMOVE_BG, None, operation=Operation.REMOVE_BACKGROUND, images=(png(), png())),
            "images",
            InvalidArgument,
        ),
        (
            call_for(CORE, None, operation=Operation.PROMPT_EDIT, images=(png(),)),
            "operation",
            CapabilityNotSupported,
        ),
    ],
    ids=["conservative-without-prompt", "inpaint-without-mask", "two-images", "prompt-edit"],
)
async def test_requests_the_upstream_would_refuse_are_refused_first(
    backend: BedrockStabilityBackend,
    faults: FaultPlan,
    call: UpstreamCall,
    field: str,
    error: type[InvalidArgument],
) -> None:
    with pytest.raises(error) as caught:
        await backend.run(call, Deadline.after(5))
    assert [v.field for v in caught.value.violations] == [field]
    assert faults.stats.received == 0


# --- faults --------------------------------------------------------------------


async def test_model_not_ready_is_retried_as_unavailable(
    backend: BedrockStabilityBackend, faults: FaultPlan
) -> None:
    # A 429 that is not throttling: the model is still loading.
    faults.push(FaultMode.RATE_LIMIT, variant=MODEL_NOT_READY)
    result = await backend.run(call_for(), Deadline.after(10))
    assert len(result.images) == 1
    assert faults.stats.received == 2

    faults.push(FaultMode.RATE_LIMIT, variant=MODEL_NOT_READY, times=10)
    with pytest.raises(UpstreamUnavailable) as caught:
        await backend.run(call_for(), Deadline.after(10))
    assert type(caught.value) is UpstreamUnavailable
    assert caught.value.metadata["upstream_code"] == "ModelNotReadyException"
    assert faults.stats.received == 2 + FAST_RETRY.attempts


@pytest.mark.parametrize(
    ("mode", "variant", "error"),
    [
        (FaultMode.BAD_REQUEST, ACCESS_DENIED, UpstreamAuthFailed),
        (FaultMode.BAD_REQUEST, NOT_FOUND, BackendNotConfigured),
        (FaultMode.BAD_REQUEST, QUOTA, RateLimited),
        (FaultMode.SERVER_ERROR, MODEL_TIMEOUT, UpstreamTimeout),
    ],
)
async def test_permanent_faults_are_not_retried(
    backend: BedrockStabilityBackend,
    faults: FaultPlan,
    mode: FaultMode,
    variant: str,
    error: type[ImageServiceError],
) -> None:
    faults.push(mode, variant=variant, times=3)
    with pytest.raises(error):
        await backend.run(call_for(), Deadline.after(5))
    assert faults.stats.received == 1


async def test_cancelled_call_queued_for_a_thread_never_reaches_the_upstream(
    sandbox: SandboxServer, faults: FaultPlan
) -> None:
    backend = make_backend(sandbox, max_connections=1)
    # The first call holds the only connection until the queued one is cancelled.
    release = faults.hold()
    try:
        first = asyncio.create_task(backend.run(call_for(seed=1), Deadline.after(10)))
        await faults.wait_for(lambda s: s.in_flight == 1)
        queued = asyncio.create_task(backend.run(call_for(seed=2), Deadline.after(10)))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        assert len((await first).images) == 1
        await asyncio.sleep(0.2)
    finally:
        await backend.aclose()
    assert faults.stats.received == 1


async def test_calls_run_concurrently_off_the_event_loop(
    backend: BedrockStabilityBackend, faults: FaultPlan
) -> None:
    # Held upstream rather than timed, so the proof does not depend on load.
    gates = [faults.hold() for _ in range(4)]
    ticks, ticks_wanted = 0, 0
    ticked = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1
            if ticks_wanted and ticks >= ticks_wanted:
                ticked.set()

    clock = asyncio.create_task(ticker())
    calls = asyncio.gather(*(backend.run(call_for(seed=i), Deadline.after(10)) for i in range(4)))
    try:
        # All four are upstream at once: in parallel, not in series ...
        await faults.wait_for(lambda s: s.in_flight == 4)
        # ... and off the event loop, which keeps running meanwhile (the
        # emulator answering them runs on it too).
        ticks_wanted = ticks + 5
        await asyncio.wait_for(ticked.wait(), 10)
        for gate in gates:
            gate.set()
        results = await calls
    finally:
        clock.cancel()
    assert all(len(r.images) == 1 for r in results)
    assert faults.stats.max_in_flight == 4


# --- credentials ---------------------------------------------------------------


@pytest.fixture
def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """An environment where boto3's standard chain finds nothing by itself."""
    for name in _AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.usefixtures("isolated_aws_env")
async def test_credentials_come_from_the_standard_chain(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SANDBOX_BEDROCK_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SANDBOX_BEDROCK_SECRET_ACCESS_KEY)
    backend = make_backend(sandbox, key_id=None, secret=None, session=None)
    try:
        result = await backend.run(call_for(), Deadline.after(10))
    finally:
        await backend.aclose()
    assert len(result.images) == 1


async def test_static_keys_win_over_a_bedrock_api_key_in_the_environment(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # botocore would otherwise send the bearer token (and refuse http://).
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "an-api-key")
    backend = make_backend(sandbox, session=None)
    try:
        result = await backend.run(call_for(), Deadline.after(10))
    finally:
        await backend.aclose()
    assert len(result.images) == 1


@pytest.mark.usefixtures("isolated_aws_env")
async def test_no_credentials_anywhere_is_backend_not_configured(
    sandbox: SandboxServer, faults: FaultPlan
) -> None:
    backend = make_backend(sandbox, key_id=None, secret=None, session=None)
    try:
        with pytest.raises(BackendNotConfigured) as caught:
            await backend.run(call_for(), Deadline.after(10))
    finally:
        await backend.aclose()
    assert "AWS credentials" in caught.value.metadata["setting"]
    assert faults.stats.received == 0


async def test_registry_builds_the_backend_from_the_sandbox_settings(
    sandbox: SandboxServer,
) -> None:
    settings = Settings.model_validate(sandbox.settings_overrides())
    backends, missing = build_backends(settings, ["bedrock_stability"])
    try:
        assert "bedrock_stability" not in missing
        result = await backends["bedrock_stability"].run(call_for(), Deadline.after(10))
        assert len(result.images) == 1
    finally:
        for built in backends.values():
            await built.aclose()


def test_registry_names_the_region_setting_when_unset() -> None:
    _, missing = build_backends(Settings.model_validate({"bedrock_region": ""}))
    assert missing["bedrock_stability"] == "IMAGE_SERVICE_BEDROCK_REGION"


def test_half_a_static_key_pair_fails_start_up() -> None:
    settings = Settings.model_validate(
        {"bedrock_region": "us-east-1", "bedrock_access_key_id": "AKIAEXAMPLE"}
    )
    with pytest.raises(ValueError, match="set together"):
        build_backends(settings)


def test_malformed_endpoint_fails_start_up() -> None:
    with pytest.raises(ValueError, match="http"):
        BedrockStabilityBackend(region="us-east-1", endpoint_url="localhost:9000")


# --- the error table, for codes no fault mode produces ----------------------------


def client_error(code: str, status: int, message: str = "m") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}},
    }
    return ClientError(response, "InvokeModel")


@pytest.mark.parametrize(
    ("code", "status", "error", "retryable"),
    [
        ("ThrottlingException", 429, RateLimited, True),
        ("ModelNotReadyException", 429, UpstreamUnavailable, True),
        ("InternalServerException", 500, UpstreamUnavailable, True),
        ("ServiceUnavailableException", 503, UpstreamUnavailable, True),
        ("ModelErrorException", 424, UpstreamUnavailable, True),
        ("SomethingNew", 502, UpstreamUnavailable, True),
        ("ValidationException", 400, UpstreamRejected, False),
        ("AccessDeniedException", 403, UpstreamAuthFailed, False),
        ("UnrecognizedClientException", 403, UpstreamAuthFailed, False),
        ("ExpiredTokenException", 403, UpstreamAuthFailed, False),
        ("ResourceNotFoundException", 404, BackendNotConfigured, False),
        ("ModelTimeoutException", 408, UpstreamTimeout, False),
        ("ServiceQuotaExceededException", 400, RateLimited, False),
    ],
)
def test_client_error_table(
    code: str, status: int, error: type[ImageServiceError], retryable: bool
) -> None:
    mapped = error_for_client_error(client_error(code, status))
    assert type(mapped) is error
    assert mapped.retryable is retryable
    assert mapped.metadata["upstream_code"] == code
    assert mapped.metadata["upstream_status"] == str(status)


def test_validation_message_blames_the_field_without_quoting_it() -> None:
    mapped = error_for_client_error(
        client_error("ValidationException", 400, "Malformed input request: #/aspect_ratio: x")
    )
    assert isinstance(mapped, UpstreamRejected)
    assert [v.field for v in mapped.violations] == ["size"]
    assert "aspect_ratio" not in mapped.message


def test_model_access_validation_message_is_an_auth_failure() -> None:
    mapped = error_for_client_error(
        client_error("ValidationException", 400, "Your account is not authorized to invoke it.")
    )
    assert isinstance(mapped, UpstreamAuthFailed)


@pytest.mark.parametrize(
    ("error", "mapped"),
    [
        (NoCredentialsError(), BackendNotConfigured),
        (EndpointConnectionError(endpoint_url="http://x"), UpstreamUnavailable),
        (ConnectTimeoutError(endpoint_url="http://x"), UpstreamUnavailable),
        (ReadTimeoutError(endpoint_url="http://x"), UpstreamTimeout),
        (IncompleteReadError(actual_bytes=1, expected_bytes=2), UpstreamUnavailable),
        (InvalidEndpointConfigurationError(msg="bearer needs https"), BackendNotConfigured),
    ],
)
def test_botocore_error_table(error: Any, mapped: type[ImageServiceError]) -> None:
    assert type(error_for_botocore_error(error)) is mapped


def test_partial_filter_returns_what_passed() -> None:
    good = png(8, 8)
    raw = (
        b'{"seeds":[1,2],"finish_reasons":[null,"Filter reason: output image"],"images":["'
        + base64.b64encode(good)
        + b'"]}'
    )
    result = parse_response(raw)
    assert [i.data for i in result.images] == [good]
    assert result.filtered == 1


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"images":["***"]}', b'{"finish_reasons":[null]}'],
)
def test_malformed_success_bodies_are_retryable(raw: bytes) -> None:
    with pytest.raises(UpstreamUnavailable):
        parse_response(raw)

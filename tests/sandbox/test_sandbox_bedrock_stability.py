"""The Bedrock Stability emulator's wire behaviour, driven with boto3 and plain HTTP.

boto3 itself is the client here, so what is checked is that the real SDK
signs, sends, parses and raises against the emulator as it would against
Bedrock Runtime.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, IncompleteReadError, ResponseStreamingError
from PIL import Image

from server.sandbox.bedrock_stability import (
    ACCESS_DENIED,
    CONTENT_FILTER_INPUT,
    CONTENT_FILTER_OUTPUT,
    INFERENCE_ERROR,
    MODEL_ERROR,
    MODEL_NOT_READY,
    MODEL_TIMEOUT,
    NOT_FOUND,
    QUOTA,
    SANDBOX_BEDROCK_ACCESS_KEY_ID,
    SANDBOX_BEDROCK_REGION,
    SANDBOX_BEDROCK_SECRET_ACCESS_KEY,
    UNAVAILABLE,
    base_model_id,
)
from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.server import SandboxServer
from tests.support.images import png

SD35 = "stability.sd3-5-large-v1:0"
CORE = "stability.stable-image-core-v1:1"
ULTRA = "stability.stable-image-ultra-v1:1"
REMOVE_BG = "us.stability.stable-image-remove-background-v1:0"
INPAINT = "us.stability.stable-image-inpaint-v1:0"
FAST_UPSCALE = "us.stability.stable-fast-upscale-v1:0"
CONSERVATIVE_UPSCALE = "us.stability.stable-conservative-upscale-v1:0"
# One session for every client: it caches the service model botocore loads.
SESSION = boto3.session.Session()


@pytest.fixture
def faults(sandbox: SandboxServer) -> FaultPlan:
    return sandbox.bedrock_stability.faults


def make_client(
    sandbox: SandboxServer,
    *,
    key_id: str = SANDBOX_BEDROCK_ACCESS_KEY_ID,
    secret: str = SANDBOX_BEDROCK_SECRET_ACCESS_KEY,
    region: str = SANDBOX_BEDROCK_REGION,
    read_timeout: float = 10,
) -> Any:
    return SESSION.client(
        "bedrock-runtime",
        region_name=region,
        endpoint_url=sandbox.base_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=read_timeout),
    )


@pytest.fixture
def brt(sandbox: SandboxServer) -> Any:
    return make_client(sandbox)


async def invoke(client: Any, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    def call() -> dict[str, Any]:
        response = client.invoke_model(
            modelId=model_id,
            body=json.dumps(body),
            contentType="application/json",
            accept="application/json",
        )
        payload: dict[str, Any] = json.loads(response["body"].read())
        return payload

    return await asyncio.to_thread(call)


async def invoke_error(client: Any, model_id: str, body: dict[str, Any]) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await invoke(client, model_id, body)
    return caught.value


def decode(payload: dict[str, Any]) -> Image.Image:
    assert payload["finish_reasons"] == [None]
    assert len(payload["seeds"]) == 1
    image = Image.open(io.BytesIO(base64.b64decode(payload["images"][0])))
    image.load()
    return image


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gray_mask(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 0).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("model_id", "ratio", "size"),
    [
        (SD35, "1:1", (1024, 1024)),
        (SD35, "16:9", (1344, 768)),
        (SD35, "9:16", (768, 1344)),
        (CORE, "21:9", (1536, 640)),
        (ULTRA, "2:3", (832, 1216)),
        (f"us.{ULTRA}", "5:4", (1088, 896)),
    ],
)
async def test_text_to_image_renders_about_a_megapixel_at_the_ratio(
    brt: Any, sandbox: SandboxServer, model_id: str, ratio: str, size: tuple[int, int]
) -> None:
    body: dict[str, Any] = {"prompt": "a fox", "aspect_ratio": ratio, "output_format": "png"}
    if "sd3" in model_id:
        body["mode"] = "text-to-image"
    image = decode(await invoke(brt, model_id, body))
    assert (image.format, image.size) == ("PNG", size)
    # boto3 sends the id percent-encoded ("%3A"); the emulator decodes it.
    assert sandbox.bedrock_stability.received[-1].model_id == model_id


async def test_seed_is_echoed_and_formats_are_honoured(brt: Any) -> None:
    payload = await invoke(brt, CORE, {"prompt": "x", "seed": 42, "output_format": "jpeg"})
    assert payload["seeds"] == [42]
    assert decode(payload).format == "JPEG"
    webp = decode(await invoke(brt, CORE, {"prompt": "x", "output_format": "webp"}))
    assert webp.format == "WEBP"
    default = decode(await invoke(brt, ULTRA, {"prompt": "x"}))
    assert (default.format, default.size) == ("PNG", (1024, 1024))


async def test_remove_background_keeps_the_size_and_adds_transparency(brt: Any) -> None:
    image = decode(
        await invoke(brt, REMOVE_BG, {"image": b64(png(320, 200)), "output_format": "png"})
    )
    assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (320, 200))
    alpha = image.getchannel("A")
    assert alpha.getpixel((0, 0)) == 0
    assert alpha.getpixel((160, 100)) == 255


async def test_inpaint_repaints_only_the_white_region(brt: Any) -> None:
    source = png(256, 128, color=(10, 200, 10))
    mask_image = Image.new("L", (256, 128), 0)
    mask_image.paste(255, (0, 0, 128, 128))
    mask = io.BytesIO()
    mask_image.save(mask, format="PNG")
    body = {
        "image": b64(source),
        "mask": b64(mask.getvalue()),
        "prompt": "a red scarf",
        "grow_mask": 5,
        "seed": 3,
        "output_format": "png",
    }
    image = decode(await invoke(brt, INPAINT, body)).convert("RGB")
    assert image.size == (256, 128)
    assert image.getpixel((250, 120)) == (10, 200, 10)  # black in the mask: kept
    assert image.getpixel((64, 64)) != (10, 200, 10)  # white: repainted


@pytest.mark.parametrize(
    ("model_id", "source", "expected"),
    [
        (FAST_UPSCALE, (100, 60), (400, 240)),
        (CONSERVATIVE_UPSCALE, (100, 64), (400, 256)),
        # 4x would be 5120 wide: capped at 4096 on the long side.
        (CONSERVATIVE_UPSCALE, (1280, 640), (4096, 2048)),
    ],
)
async def test_upscales(
    brt: Any, model_id: str, source: tuple[int, int], expected: tuple[int, int]
) -> None:
    body: dict[str, Any] = {"image": b64(png(*source))}
    if "conservative" in model_id:
        body["prompt"] = "a sharp photo"
    assert decode(await invoke(brt, model_id, body)).size == expected


@pytest.mark.parametrize(
    ("model_id", "body", "needle"),
    [
        (CORE, {}, "required key [prompt]"),
        (CORE, {"prompt": ""}, "minLength"),
        (CORE, {"prompt": "x" * 10_001}, "maxLength"),
        (CORE, {"prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio"),
        (CORE, {"prompt": "x", "seed": 4_294_967_295}, "seed"),
        (CORE, {"prompt": "x", "seed": -1}, "seed"),
        (CORE, {"prompt": "x", "output_format": "gif"}, "output_format"),
        (CORE, {"prompt": "x", "mode": "text-to-image"}, "extraneous key [mode]"),
        (ULTRA, {"prompt": "x", "style_preset": "anime"}, "extraneous key [style_preset]"),
        (SD35, {"prompt": "x", "mode": "sketch"}, "mode"),
        (SD35, {"prompt": "x", "mode": "image-to-image", "strength": 0.5}, "image"),
        (SD35, {"prompt": "x", "image": b64(png())}, "image-to-image"),
        (REMOVE_BG, {"image": b64(png()), "output_format": "jpeg"}, "output_format"),
        (REMOVE_BG, {"image": "not base64!"}, "base64"),
        (REMOVE_BG, {"image": b64(b"hello")}, "decoded"),
        (REMOVE_BG, {"image": b64(png(32, 32))}, "at least 64"),
        (INPAINT, {"image": b64(png(64, 64)), "prompt": "x"}, "required key [mask]"),
        (
            INPAINT,
            {"image": b64(png(64, 64)), "mask": b64(gray_mask(64, 65)), "prompt": "x"},
            "same dimensions",
        ),
        (
            INPAINT,
            {"image": b64(png()), "mask": b64(gray_mask(64, 64)), "prompt": "x", "grow_mask": 21},
            "grow_mask",
        ),
        (FAST_UPSCALE, {"image": b64(png(1600, 100))}, "between 32 and 1536"),
        (FAST_UPSCALE, {"image": b64(png(300, 100))}, "aspect ratio"),
        (FAST_UPSCALE, {"image": b64(png()), "prompt": "x"}, "extraneous key [prompt]"),
        (CONSERVATIVE_UPSCALE, {"image": b64(png())}, "required key [prompt]"),
    ],
)
async def test_invalid_bodies_are_validation_exceptions(
    brt: Any, faults: FaultPlan, model_id: str, body: dict[str, Any], needle: str
) -> None:
    error = await invoke_error(brt, model_id, body)
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert needle in error.response["Error"]["Message"]
    # Invalid requests do not consume the fault plan.
    assert faults.stats.faults.total() == 0


async def test_unknown_model_id_is_a_validation_exception(brt: Any) -> None:
    error = await invoke_error(brt, "stability.sd9-v1:0", {"prompt": "x"})
    assert error.response["Error"]["Code"] == "ValidationException"
    assert "model identifier" in error.response["Error"]["Message"]


def test_model_ids_with_profiles_and_arns_resolve() -> None:
    assert base_model_id("us.stability.stable-fast-upscale-v1:0") == (
        "stability.stable-fast-upscale-v1:0"
    )
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.stability.sd3-5-large-v1:0"
    assert base_model_id(arn) == SD35


async def test_arn_model_id_survives_percent_encoding(brt: Any, sandbox: SandboxServer) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us." + CORE
    decode(await invoke(brt, arn, {"prompt": "x"}))
    assert sandbox.bedrock_stability.received[-1].model_id == arn


@pytest.mark.parametrize(
    ("mode", "variant", "status", "code"),
    [
        (FaultMode.RATE_LIMIT, "", 429, "ThrottlingException"),
        (FaultMode.RATE_LIMIT, MODEL_NOT_READY, 429, "ModelNotReadyException"),
        (FaultMode.BAD_REQUEST, "", 400, "ValidationException"),
        (FaultMode.BAD_REQUEST, ACCESS_DENIED, 403, "AccessDeniedException"),
        (FaultMode.BAD_REQUEST, NOT_FOUND, 404, "ResourceNotFoundException"),
        (FaultMode.BAD_REQUEST, QUOTA, 400, "ServiceQuotaExceededException"),
        (FaultMode.SERVER_ERROR, "", 500, "InternalServerException"),
        (FaultMode.SERVER_ERROR, UNAVAILABLE, 503, "ServiceUnavailableException"),
        (FaultMode.SERVER_ERROR, MODEL_ERROR, 424, "ModelErrorException"),
        (FaultMode.SERVER_ERROR, MODEL_TIMEOUT, 408, "ModelTimeoutException"),
    ],
)
async def test_faults_raise_client_errors_with_bedrock_codes(
    brt: Any, faults: FaultPlan, mode: FaultMode, variant: str, status: int, code: str
) -> None:
    faults.push(mode, variant=variant)
    error = await invoke_error(brt, CORE, {"prompt": "x"})
    assert error.response["Error"]["Code"] == code
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error.response["Error"]["Message"]
    # Modelled errors come back as the client's own exception classes.
    assert type(error).__name__ == code
    assert faults.stats.completed == 1


async def test_throttling_carries_retry_after_when_the_fault_has_one(
    brt: Any, faults: FaultPlan
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=1.5)
    error = await invoke_error(brt, CORE, {"prompt": "x"})
    assert error.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "2"


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("", "Filter reason: prompt"),
        (CONTENT_FILTER_INPUT, "Filter reason: input image"),
        (CONTENT_FILTER_OUTPUT, "Filter reason: output image"),
    ],
)
async def test_content_filter_is_a_200_without_images(
    brt: Any, faults: FaultPlan, variant: str, reason: str
) -> None:
    faults.push(FaultMode.CONTENT_FILTER, variant=variant)
    payload = await invoke(brt, CORE, {"prompt": "x"})
    assert payload["finish_reasons"] == [reason]
    assert not payload.get("images")


async def test_inference_error_is_a_200_finish_reason(brt: Any, faults: FaultPlan) -> None:
    faults.push(FaultMode.SERVER_ERROR, variant=INFERENCE_ERROR)
    payload = await invoke(brt, CORE, {"prompt": "x"})
    assert payload["finish_reasons"] == ["Inference error"]


async def test_dropped_connection_truncates_the_body(brt: Any, faults: FaultPlan) -> None:
    faults.push(FaultMode.DROP_CONNECTION)
    with pytest.raises((IncompleteReadError, ResponseStreamingError)):
        await invoke(brt, CORE, {"prompt": "x"})
    assert faults.stats.dropped == 1


async def test_timeout_hangs_until_the_client_gives_up(
    sandbox: SandboxServer, faults: FaultPlan
) -> None:
    faults.push(FaultMode.TIMEOUT)
    client = make_client(sandbox, read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(Exception, match="Read timeout"):
        await invoke(client, CORE, {"prompt": "x"})
    assert time.monotonic() - started < 10  # the read timeout ended it, not the hang
    client.close()
    stats = await faults.wait_for(lambda s: s.in_flight == 0)
    assert (stats.cancelled, stats.completed) == (1, 0)


async def test_prompt_directives(brt: Any, faults: FaultPlan) -> None:
    error = await invoke_error(brt, CORE, {"prompt": "x [sandbox:fault=rate_limit]"})
    assert error.response["Error"]["Code"] == "ThrottlingException"
    payload = await invoke(brt, CORE, {"prompt": "x [sandbox:fault=content_filter]"})
    assert payload["finish_reasons"] == ["Filter reason: prompt"]


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"key_id": "AKIAOTHERKEY000000000"}, "UnrecognizedClientException"),
        ({"secret": "not-the-secret"}, "InvalidSignatureException"),
        ({"region": "eu-west-1"}, "InvalidSignatureException"),
    ],
)
async def test_wrong_credentials_are_refused(
    sandbox: SandboxServer, faults: FaultPlan, overrides: dict[str, str], code: str
) -> None:
    client = make_client(sandbox, **overrides)  # type: ignore[arg-type]
    error = await invoke_error(client, CORE, {"prompt": "x"})
    assert error.response["Error"]["Code"] == code
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "not-the-secret" not in str(error)
    assert faults.stats.faults.total() == 0


async def test_unsigned_and_non_sigv4_requests_are_refused(sandbox: SandboxServer) -> None:
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as client:
        url = "/model/stability.stable-image-core-v1%3A1/invoke"
        unsigned = await client.post(url, json={"prompt": "x"})
        assert unsigned.status_code == 403
        assert unsigned.headers["x-amzn-errortype"].startswith(
            "MissingAuthenticationTokenException:"
        )
        assert unsigned.json() == {"message": "Missing Authentication Token"}
        bearer = await client.post(
            url, json={"prompt": "x"}, headers={"Authorization": "Bearer some-api-key"}
        )
        assert bearer.status_code == 403
        assert bearer.headers["x-amzn-errortype"].startswith("IncompleteSignatureException:")
        forged = await client.post(
            url,
            json={"prompt": "x"},
            headers={
                "Authorization": (
                    f"AWS4-HMAC-SHA256 Credential={SANDBOX_BEDROCK_ACCESS_KEY_ID}/20260101/"
                    f"{SANDBOX_BEDROCK_REGION}/bedrock/aws4_request, "
                    "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
                ),
                "X-Amz-Date": "20260101T000000Z",
            },
        )
        assert forged.status_code == 403
        assert forged.headers["x-amzn-errortype"].startswith("InvalidSignatureException:")


# --- the Image Services added in issue 15 ---------------------------------------------

ERASE = "us.stability.stable-image-erase-object-v1:0"
OUTPAINT = "us.stability.stable-outpaint-v1:0"
SEARCH_REPLACE = "us.stability.stable-image-search-replace-v1:0"
SEARCH_RECOLOR = "us.stability.stable-image-search-recolor-v1:0"
SKETCH = "us.stability.stable-image-control-sketch-v1:0"
STYLE_GUIDE = "us.stability.stable-image-style-guide-v1:0"
STYLE_TRANSFER = "us.stability.stable-style-transfer-v1:0"
CREATIVE_UPSCALE = "us.stability.stable-creative-upscale-v1:0"


@pytest.mark.parametrize(
    ("model_id", "body", "needle"),
    [
        (OUTPAINT, {"image": b64(png())}, "at least one of [left, right, up, down]"),
        (OUTPAINT, {"image": b64(png()), "left": 2001}, "left"),
        (OUTPAINT, {"image": b64(png()), "left": 1.5}, "Integer"),
        (OUTPAINT, {"image": b64(png()), "up": 10, "creativity": 1.2}, "creativity"),
        (SEARCH_REPLACE, {"image": b64(png()), "prompt": "a dog"}, "required key [search_prompt]"),
        (
            SEARCH_RECOLOR,
            {"image": b64(png()), "prompt": "red", "search_prompt": "x"},
            "extraneous",
        ),
        (SKETCH, {"image": b64(png()), "prompt": "x", "control_strength": 2}, "control_strength"),
        (STYLE_GUIDE, {"image": b64(png()), "prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio"),
        (
            STYLE_TRANSFER,
            {"image": b64(png()), "style_image": b64(png())},
            "extraneous key [image]",
        ),
        (STYLE_TRANSFER, {"init_image": b64(png())}, "required key [style_image]"),
        (
            STYLE_TRANSFER,
            {"init_image": b64(png()), "style_image": b64(png()), "change_strength": 0.05},
            "change_strength",
        ),
        (CREATIVE_UPSCALE, {"image": b64(png()), "prompt": "x", "creativity": 0.6}, "creativity"),
        (CREATIVE_UPSCALE, {"image": b64(png(1200, 1000)), "prompt": "x"}, "pixels"),
        (ERASE, {"image": b64(png()), "prompt": "x"}, "extraneous key [prompt]"),
        (ERASE, {"image": b64(png(64, 64)), "mask": b64(gray_mask(64, 65))}, "same dimensions"),
    ],
)
async def test_image_services_bodies_are_checked_like_bedrock(
    brt: Any, model_id: str, body: dict[str, Any], needle: str
) -> None:
    error = await invoke_error(brt, model_id, body)
    assert error.response["Error"]["Code"] == "ValidationException"
    assert needle in error.response["Error"]["Message"]


async def test_outpaint_extends_the_canvas_and_keeps_the_input(brt: Any) -> None:
    source = png(100, 80, color=(0, 0, 255))
    picture = decode(await invoke(brt, OUTPAINT, {"image": b64(source), "left": 30, "down": 20}))
    assert picture.size == (130, 100)
    # The input sits where the margins put it.
    assert picture.convert("RGB").getpixel((60, 10)) == (0, 0, 255)


async def test_erase_fills_the_masked_area(brt: Any) -> None:
    source = png(64, 64, color=(250, 0, 0))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    picture = decode(await invoke(brt, ERASE, {"image": b64(source), "mask": b64(out.getvalue())}))
    assert picture.size == (64, 64)
    assert picture.convert("RGB").getpixel((48, 10)) == (250, 0, 0)


async def test_style_guide_renders_at_the_ratio(brt: Any) -> None:
    body = {"image": b64(png()), "prompt": "a lighthouse", "aspect_ratio": "9:16"}
    assert decode(await invoke(brt, STYLE_GUIDE, body)).size == (768, 1344)

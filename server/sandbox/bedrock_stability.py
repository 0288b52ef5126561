"""Emulator of Amazon Bedrock Runtime's `InvokeModel` for the Stability AI models.

    POST /model/{modelId}/invoke
    Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/bedrock/aws4_request,
                   SignedHeaders=..., Signature=...
    Content-Type: application/json

This is the HTTP API boto3's `bedrock-runtime` client speaks (restJson1), so
the real client is what gets tested, pointed here with `endpoint_url`.
boto3 percent-encodes the model id in the path (`:` → `%3A`, `/` of an ARN
→ `%2F`); the id is read from the raw path so both survive.

Auth: a request without a SigV4 `Authorization` header is refused (403
`MissingAuthenticationTokenException`), and so is one whose credential is
not the sandbox's key id (`UnrecognizedClientException`), not scoped to
`bedrock` in the sandbox's region, or whose signature does not verify
against the sandbox's secret (`InvalidSignatureException`). Bedrock API
keys (bearer tokens) are not emulated.

Errors come back as boto3 parses them for this protocol: the status, an
`x-amzn-ErrorType: <Code>:<namespace>` header and a `{"message": ...}` body,
so `ClientError.response["Error"]["Code"]` is the real code.

Bodies are validated per model like Bedrock's JSON schema does, a little
more strictly where the upstream is undocumented (extraneous keys are
refused, as Bedrock does for most models): prompt 1..10,000 characters,
`aspect_ratio` from the enum, `seed` 0..4294967294, `output_format`
jpeg/png/webp (png/webp for background removal), SD3.5's `mode`, and images
as raw base64 with each tool's pixel limits; an inpaint mask must have the
image's size. Invalid bodies are 400 `ValidationException` "Malformed input
request: ..." and do not consume the fault plan.

Produced sizes: text-to-image renders about one megapixel at the ratio
(`OUTPUT_SIZES`: 1:1 → 1024x1024, 16:9 → 1344x768, 9:16 → 768x1344);
background removal and inpaint keep the input's size (background removal
returns RGBA with the border made transparent); fast upscale is 4x;
conservative upscale is 4x but at most 4096 on the long side. A success is
`{"seeds": [...], "finish_reasons": [null], "images": ["<base64>"]}`.

Faults (`faults.FaultPlan`), with variants for Bedrock's several codes:

    BAD_REQUEST      400 ValidationException; "access_denied" 403
                     AccessDeniedException; "not_found" 404
                     ResourceNotFoundException; "quota" 400
                     ServiceQuotaExceededException
    CONTENT_FILTER   200 with finish_reasons ["Filter reason: prompt"] and no
                     image; variant "input" / "output" names the input or
                     output image instead
    RATE_LIMIT       429 ThrottlingException (Retry-After if the fault has
                     one; Bedrock documents none); "model_not_ready" 429
                     ModelNotReadyException
    SERVER_ERROR     500 InternalServerException; "unavailable" 503
                     ServiceUnavailableException; "model_error" 424
                     ModelErrorException; "inference_error" 200 with
                     finish_reasons ["Inference error"];
                     "model_timeout" 408 ModelTimeoutException
    TIMEOUT          hangs (`FaultPlan.hang_s`), then 408 ModelTimeoutException
    DROP_CONNECTION  a truncated 200 body
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import json
import math
import random
import re
import uuid
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote, unquote

from PIL import Image, ImageDraw, ImageFont
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from server.sandbox.faults import (
    DroppedResponse,
    Exchange,
    Fault,
    FaultMode,
    FaultPlan,
    strip_directives,
)
from server.sandbox.render import render_image

# Well-known sandbox credentials, not secrets: they only open the emulator.
SANDBOX_BEDROCK_REGION = "us-east-1"
SANDBOX_BEDROCK_ACCESS_KEY_ID = "AKIASANDBOXBEDROCK00"
SANDBOX_BEDROCK_SECRET_ACCESS_KEY = "sandbox-bedrock-secret-access-key"

ROUTE = "/model/{model_id:path}/invoke"
ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"

ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
# About one megapixel at each ratio, sides multiples of 64.
OUTPUT_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "21:9": (1536, 640),
    "9:21": (640, 1536),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "5:4": (1088, 896),
    "4:5": (896, 1088),
}
MAX_SEED = 4_294_967_294
MAX_PROMPT = 10_000
UPSCALE_FACTOR = 4
CONSERVATIVE_MAX_SIDE = 4096
STYLE_PRESETS = frozenset(
    {
        "3d-model",
        "analog-film",
        "anime",
        "cinematic",
        "comic-book",
        "digital-art",
        "enhance",
        "fantasy-art",
        "isometric",
        "line-art",
        "low-poly",
        "modeling-compound",
        "neon-punk",
        "origami",
        "photographic",
        "pixel-art",
        "tile-texture",
    }
)
# Inference profile prefixes (cross-region ids such as us.stability...).
_GEO_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.")
_FORMATS = frozenset({"jpeg", "png", "webp"})

CONTENT_FILTER_INPUT = "input"
CONTENT_FILTER_OUTPUT = "output"
ACCESS_DENIED = "access_denied"
NOT_FOUND = "not_found"
QUOTA = "quota"
MODEL_NOT_READY = "model_not_ready"
UNAVAILABLE = "unavailable"
MODEL_ERROR = "model_error"
INFERENCE_ERROR = "inference_error"
MODEL_TIMEOUT = "model_timeout"

Kind = Literal[
    "sd3", "core", "ultra", "remove_background", "inpaint", "fast_upscale", "conservative_upscale"
]


@dataclass(frozen=True)
class ImageLimits:
    """What an image input may be: sides, total pixels and proportions."""

    min_side: int
    max_side: int
    min_pixels: int
    max_pixels: int
    max_ratio: float = 0.0  # 0: any proportions


@dataclass(frozen=True)
class StabilityModel:
    """What one model id accepts."""

    model_id: str
    kind: Kind
    keys: frozenset[str]
    required: frozenset[str]
    image_limits: ImageLimits | None = None


_NO_SIDE_LIMIT = 1 << 16
_T2I_KEYS = frozenset({"prompt", "negative_prompt", "aspect_ratio", "seed", "output_format"})
_WIDE = ImageLimits(64, _NO_SIDE_LIMIT, 4_096, 9_437_184)
MODELS: dict[str, StabilityModel] = {
    m.model_id: m
    for m in (
        StabilityModel(
            "stability.sd3-5-large-v1:0",
            "sd3",
            _T2I_KEYS | {"mode", "image", "strength"},
            frozenset({"prompt"}),
            _WIDE,
        ),
        StabilityModel(
            "stability.stable-image-core-v1:1",
            "core",
            _T2I_KEYS | {"style_preset"},
            frozenset({"prompt"}),
        ),
        StabilityModel(
            "stability.stable-image-core-v1:0",
            "core",
            _T2I_KEYS | {"style_preset"},
            frozenset({"prompt"}),
        ),
        StabilityModel(
            "stability.stable-image-ultra-v1:1", "ultra", _T2I_KEYS, frozenset({"prompt"})
        ),
        StabilityModel(
            "stability.stable-image-ultra-v1:0", "ultra", _T2I_KEYS, frozenset({"prompt"})
        ),
        StabilityModel(
            "stability.stable-image-remove-background-v1:0",
            "remove_background",
            frozenset({"image", "output_format"}),
            frozenset({"image"}),
            ImageLimits(64, _NO_SIDE_LIMIT, 4_096, 4_194_304),
        ),
        StabilityModel(
            "stability.stable-image-inpaint-v1:0",
            "inpaint",
            frozenset(
                {
                    "image",
                    "mask",
                    "prompt",
                    "negative_prompt",
                    "grow_mask",
                    "seed",
                    "output_format",
                    "style_preset",
                }
            ),
            frozenset({"image", "mask", "prompt"}),
            _WIDE,
        ),
        StabilityModel(
            "stability.stable-fast-upscale-v1:0",
            "fast_upscale",
            frozenset({"image", "output_format"}),
            frozenset({"image"}),
            ImageLimits(32, 1536, 1_024, 1_048_576, max_ratio=2.5),
        ),
        StabilityModel(
            "stability.stable-conservative-upscale-v1:0",
            "conservative_upscale",
            frozenset(
                {"image", "prompt", "negative_prompt", "seed", "creativity", "output_format"}
            ),
            frozenset({"image", "prompt"}),
            replace(_WIDE, max_ratio=2.5),
        ),
    )
}


@dataclass(frozen=True)
class Received:
    """A request body the emulator accepted past auth, for tests to inspect."""

    model_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class _Job:
    model: StabilityModel
    prompt: str
    width: int
    height: int
    output_format: str
    seed: int
    image: bytes | None = None
    mask: bytes | None = None


class _Invalid(Exception):
    """The body breaks the model's schema; the message is the 400's."""


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"message": message},
        status,
        headers={
            "x-amzn-ErrorType": f"{code}:{ERROR_NAMESPACE}",
            "x-amzn-RequestId": str(uuid.uuid4()),
            **(headers or {}),
        },
    )


def _malformed(detail: str) -> _Invalid:
    return _Invalid(f"Malformed input request: {detail}, please reformat your input and try again.")


def base_model_id(model_id: str) -> str:
    """`model_id` without an inference-profile prefix or ARN around it."""
    if model_id.startswith("arn:"):
        model_id = model_id.rsplit("/", 1)[-1]
    for prefix in _GEO_PREFIXES:
        if model_id.startswith(prefix):
            return model_id[len(prefix) :]
    return model_id


# --- SigV4 -------------------------------------------------------------------

_AUTH_PARTS = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]+)")


class _AuthError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _canonical_headers(request: Request, names: list[str]) -> str:
    lines = []
    for name in names:
        value = request.headers.get(name)
        if value is None:
            raise _AuthError(
                "InvalidSignatureException", f"Signed header {name} is missing from the request."
            )
        lines.append(f"{name}:{' '.join(value.split())}\n")
    return "".join(lines)


def _canonical_query(request: Request) -> str:
    pairs = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in request.query_params.multi_items()
    )
    return "&".join(f"{k}={v}" for k, v in pairs)


def verify_sigv4(
    request: Request,
    raw_path: str,
    body: bytes,
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
) -> None:
    """Check the request's SigV4 signature for service `bedrock`; `_AuthError` if not."""
    header = request.headers.get("authorization")
    if not header:
        raise _AuthError("MissingAuthenticationTokenException", "Missing Authentication Token")
    algorithm, _, rest = header.partition(" ")
    parts = dict(_AUTH_PARTS.findall(rest))
    if algorithm != "AWS4-HMAC-SHA256" or set(parts) != {
        "Credential",
        "SignedHeaders",
        "Signature",
    }:
        raise _AuthError(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' "
            "parameters (AWS4-HMAC-SHA256; the sandbox accepts SigV4 only).",
        )
    scope = parts["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _AuthError("IncompleteSignatureException", "Credential is malformed.")
    key_id, date, scope_region, service, _ = scope
    if not hmac.compare_digest(key_id.encode(), access_key_id.encode()):
        raise _AuthError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if service != "bedrock":
        raise _AuthError(
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.",
        )
    if scope_region != region:
        raise _AuthError(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{scope_region}'.",
        )
    amz_date = request.headers.get("x-amz-date", "")
    if not amz_date.startswith(date):
        raise _AuthError("InvalidSignatureException", "Date in Credential scope does not match.")
    names = parts["SignedHeaders"].split(";")
    if "host" not in names:
        raise _AuthError("InvalidSignatureException", "The host header must be signed.")
    payload_hash = request.headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical = "\n".join(
        [
            request.method,
            # Non-S3 services sign the path URI-encoded twice; the raw path
            # is the once-encoded form the client sent.
            quote(raw_path, safe="/~"),
            _canonical_query(request),
            _canonical_headers(request, names),
            parts["SignedHeaders"],
            payload_hash,
        ]
    )
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            f"{date}/{region}/bedrock/aws4_request",
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = _hmac(("AWS4" + secret_access_key).encode(), date)
    for step in (region, "bedrock", "aws4_request"):
        key = _hmac(key, step)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parts["Signature"]):
        raise _AuthError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.",
        )


# --- body validation ---------------------------------------------------------


def _string(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _malformed(f"#: required key [{key}] not found")
        return None
    if not isinstance(value, str):
        raise _malformed(f"#/{key}: expected type: String, found: {type(value).__name__}")
    if required and not value.strip():
        raise _malformed(f"#/{key}: expected minLength: 1, actual: 0")
    if len(value) > MAX_PROMPT:
        raise _malformed(f"#/{key}: expected maxLength: {MAX_PROMPT}, actual: {len(value)}")
    return value


def _number(body: dict[str, Any], key: str, low: float, high: float, *, integer: bool) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"#/{key}: expected type: Number, found: {type(value).__name__}")
    if integer and not float(value).is_integer():
        raise _malformed(f"#/{key}: expected type: Integer, found: Number")
    if not low <= value <= high:
        raise _malformed(f"#/{key}: {value} is not between {low:g} and {high:g}")
    return int(value) if integer else float(value)


def _decode_image(key: str, value: Any, limits: ImageLimits) -> tuple[bytes, int, int, str]:
    if not isinstance(value, str) or value.startswith(("data:", "http://", "https://")):
        raise _malformed(f"#/{key}: expected a base64-encoded image string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"#/{key}: is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            width, height, image_format = image.width, image.height, image.format or ""
    except Exception:  # Pillow raises many types for undecodable input.
        raise _Invalid(f"The {key} could not be decoded as an image.") from None
    if image_format not in ("PNG", "JPEG", "WEBP"):
        raise _Invalid(f"The {key} must be a PNG, JPEG or WebP image.")
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        bounds = (
            f"between {limits.min_side} and {limits.max_side}"
            if limits.max_side < _NO_SIDE_LIMIT
            else f"at least {limits.min_side}"
        )
        raise _Invalid(f"The {key} is {width}x{height}; each side must be {bounds} pixels.")
    if not limits.min_pixels <= width * height <= limits.max_pixels:
        raise _Invalid(
            f"The {key} has {width * height} pixels; it must have between "
            f"{limits.min_pixels} and {limits.max_pixels}."
        )
    ratio = max(width, height) / min(width, height)
    if limits.max_ratio and ratio > limits.max_ratio + 1e-9:
        raise _Invalid(f"The {key}'s aspect ratio must be between 1:2.5 and 2.5:1.")
    return data, width, height, image_format


def _output_format(model: StabilityModel, body: dict[str, Any]) -> str:
    value = body.get("output_format", "png")
    allowed = {"png", "webp"} if model.kind == "remove_background" else _FORMATS
    if value not in allowed:
        raise _malformed(f"#/output_format: {value} is not a valid enum value")
    return str(value)


def _text_to_image_size(body: dict[str, Any]) -> tuple[int, int]:
    ratio = body.get("aspect_ratio", "1:1")
    if ratio not in ASPECT_RATIOS:
        raise _malformed(f"#/aspect_ratio: {ratio} is not a valid enum value")
    return OUTPUT_SIZES[ratio]


def _nearest_output(width: int, height: int) -> tuple[int, int]:
    def distance(ratio: str) -> float:
        w, h = OUTPUT_SIZES[ratio]
        return abs(math.log(w / h) - math.log(width / height))

    return OUTPUT_SIZES[min(OUTPUT_SIZES, key=distance)]


def _sd3_job(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> _Job:
    mode = body.get("mode", "text-to-image")
    if mode not in ("text-to-image", "image-to-image"):
        raise _malformed(f"#/mode: {mode} is not a valid enum value")
    if mode == "text-to-image":
        for key in ("image", "strength"):
            if key in body:
                raise _malformed(f"#: {key} is only allowed with mode image-to-image")
        width, height = _text_to_image_size(body)
        return _Job(model, width=width, height=height, **common)
    if "aspect_ratio" in body:
        raise _malformed("#: aspect_ratio is not allowed with mode image-to-image")
    if _number(body, "strength", 0, 1, integer=False) is None:
        raise _malformed("#: required key [strength] not found")
    if "image" not in body or model.image_limits is None:
        raise _malformed("#: required key [image] not found")
    data, width, height, _ = _decode_image("image", body["image"], model.image_limits)
    out_w, out_h = _nearest_output(width, height)
    return _Job(model, width=out_w, height=out_h, image=data, **common)


def _edit_job(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> _Job:
    assert model.image_limits is not None
    data, width, height, _ = _decode_image("image", body["image"], model.image_limits)
    mask: bytes | None = None
    if model.kind == "inpaint":
        _number(body, "grow_mask", 0, 20, integer=True)
        mask, mask_w, mask_h, _ = _decode_image("mask", body["mask"], model.image_limits)
        if (mask_w, mask_h) != (width, height):
            raise _Invalid(
                f"The mask is {mask_w}x{mask_h} but the image is {width}x{height}; "
                "they must have the same dimensions."
            )
    if model.kind == "fast_upscale":
        width, height = width * UPSCALE_FACTOR, height * UPSCALE_FACTOR
    elif model.kind == "conservative_upscale":
        _number(body, "creativity", 0.2, 0.5, integer=False)
        scale = max(1.0, min(UPSCALE_FACTOR, CONSERVATIVE_MAX_SIDE / max(width, height)))
        width, height = round(width * scale), round(height * scale)
    return _Job(model, width=width, height=height, image=data, mask=mask, **common)


def validate(model: StabilityModel, body: Any) -> _Job:
    """The job `body` asks `model` for; `_Invalid` with Bedrock's message if malformed."""
    if not isinstance(body, dict):
        raise _malformed("#: expected type: JSONObject")
    for key in body:
        if key not in model.keys:
            raise _malformed(f"#: extraneous key [{key}] is not permitted")
    for key in sorted(model.required):
        if body.get(key) is None:
            raise _malformed(f"#: required key [{key}] not found")
    prompt = _string(body, "prompt", required="prompt" in model.required) or ""
    _string(body, "negative_prompt", required=False)
    style = body.get("style_preset")
    if style is not None and style not in STYLE_PRESETS:
        raise _malformed(f"#/style_preset: {style} is not a valid enum value")
    seed = _number(body, "seed", 0, MAX_SEED, integer=True)
    common: dict[str, Any] = {
        "prompt": prompt,
        "output_format": _output_format(model, body),
        "seed": seed or random.randint(1, MAX_SEED),
    }
    if model.kind == "sd3":
        return _sd3_job(model, body, common)
    if model.kind in ("core", "ultra"):
        width, height = _text_to_image_size(body)
        return _Job(model, width=width, height=height, **common)
    return _edit_job(model, body, common)


# --- rendering ---------------------------------------------------------------


def _encode(image: Image.Image, output_format: str) -> bytes:
    out = io.BytesIO()
    if output_format == "jpeg":
        image.convert("RGB").save(out, format="JPEG", quality=85)
    elif output_format == "webp":
        image.save(out, format="WEBP", quality=80)
    else:
        image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _label(image: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(image)
    size = max(8, min(image.size) // 40)
    font = ImageFont.load_default(size=size)
    margin = max(4, min(image.size) // 48)
    box = draw.textbbox((margin, image.height - margin - size), text, font=font)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((margin, image.height - margin - size), text, fill=(255, 255, 255), font=font)


def _open(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def _remove_background(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = Image.new("L", rgba.size, 0)
    inset_x, inset_y = rgba.width // 8, rgba.height // 8
    ImageDraw.Draw(alpha).ellipse(
        (inset_x, inset_y, rgba.width - 1 - inset_x, rgba.height - 1 - inset_y), fill=255
    )
    rgba.putalpha(alpha)
    return rgba


def _inpaint(job: _Job, image: Image.Image) -> Image.Image:
    assert job.mask is not None
    base = image.convert("RGB")
    painted = _open(
        render_image(job.width, job.height, strip_directives(job.prompt), label="sandbox inpaint")
    ).convert("RGB")
    mask = _open(job.mask).convert("L")
    return Image.composite(painted, base, mask)


def _upscale(job: _Job, image: Image.Image) -> Image.Image:
    mode = "RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"
    scaled = image.convert(mode).resize((job.width, job.height), Image.Resampling.BICUBIC)
    kind = "fast 4x" if job.model.kind == "fast_upscale" else "conservative"
    text = f"sandbox {kind} upscale {job.width}x{job.height}"
    if job.prompt:
        text += f": {strip_directives(job.prompt)[:80]}"
    _label(scaled, text)
    return scaled


def render(job: _Job) -> dict[str, Any]:
    """The 200 body for `job`: an image of the produced size."""
    kind = job.model.kind
    if job.image is None:
        label = f"sandbox {job.model.model_id} {job.width}x{job.height} seed {job.seed}"
        picture = _open(
            render_image(job.width, job.height, strip_directives(job.prompt), label=label)
        )
    else:
        source = _open(job.image)
        if kind == "remove_background":
            picture = _remove_background(source)
        elif kind == "inpaint":
            picture = _inpaint(job, source)
        elif kind in ("fast_upscale", "conservative_upscale"):
            picture = _upscale(job, source)
        else:  # SD3.5 image-to-image: a new picture at the input's ratio.
            label = f"sandbox {job.model.model_id} image-to-image {job.width}x{job.height}"
            picture = _open(
                render_image(job.width, job.height, strip_directives(job.prompt), label=label)
            )
    data = _encode(picture, job.output_format)
    return {
        "seeds": [job.seed],
        "finish_reasons": [None],
        "images": [base64.b64encode(data).decode("ascii")],
    }


# --- faults ------------------------------------------------------------------


# (mode, variant) → the error response's status, code and message.
_ERRORS: dict[tuple[FaultMode, str], tuple[int, str, str]] = {
    (FaultMode.BAD_REQUEST, ""): (
        400,
        "ValidationException",
        "The request is invalid (sandbox fault).",
    ),
    (FaultMode.BAD_REQUEST, ACCESS_DENIED): (
        403,
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    (FaultMode.BAD_REQUEST, NOT_FOUND): (
        404,
        "ResourceNotFoundException",
        "The requested resource could not be found.",
    ),
    (FaultMode.BAD_REQUEST, QUOTA): (
        400,
        "ServiceQuotaExceededException",
        "Your request exceeds the service quota for your account.",
    ),
    (FaultMode.RATE_LIMIT, ""): (
        429,
        "ThrottlingException",
        "Too many requests, please wait before trying again.",
    ),
    (FaultMode.RATE_LIMIT, MODEL_NOT_READY): (
        429,
        "ModelNotReadyException",
        "The model is not ready to serve inference requests. Retry your request.",
    ),
    (FaultMode.SERVER_ERROR, ""): (
        500,
        "InternalServerException",
        "The server encountered an internal error.",
    ),
    (FaultMode.SERVER_ERROR, UNAVAILABLE): (
        503,
        "ServiceUnavailableException",
        "The service is unavailable. Try again later.",
    ),
    (FaultMode.SERVER_ERROR, MODEL_ERROR): (
        424,
        "ModelErrorException",
        "The model failed to process the request.",
    ),
    (FaultMode.SERVER_ERROR, MODEL_TIMEOUT): (
        408,
        "ModelTimeoutException",
        "The model took too long to respond.",
    ),
    (FaultMode.TIMEOUT, ""): (
        408,
        "ModelTimeoutException",
        "The model took too long to respond.",
    ),
}


def _fault_response(fault: Fault, job: _Job) -> Response:
    mode, variant = fault.mode, fault.variant
    if mode is FaultMode.CONTENT_FILTER:
        target = {CONTENT_FILTER_INPUT: "input image", CONTENT_FILTER_OUTPUT: "output image"}
        reason = f"Filter reason: {target.get(variant, 'prompt')}"
        return JSONResponse({"seeds": [job.seed], "finish_reasons": [reason]})
    if mode is FaultMode.SERVER_ERROR and variant == INFERENCE_ERROR:
        return JSONResponse({"seeds": [job.seed], "finish_reasons": ["Inference error"]})
    if mode is FaultMode.DROP_CONNECTION:
        partial = f'{{"seeds":[{job.seed}],"finish_reasons":[null],"images":["iVBOR'
        return DroppedResponse(
            partial=partial.encode(), content_length=64 * 1024, media_type="application/json"
        )
    status, code, message = _ERRORS.get((mode, variant)) or _ERRORS[(mode, "")]
    headers = {}
    if mode is FaultMode.RATE_LIMIT and fault.retry_after is not None:
        headers["Retry-After"] = str(math.ceil(fault.retry_after))
    return _error(status, code, message, headers)


class BedrockStabilityEmulator:
    """Bedrock Runtime's InvokeModel for the Stability models, in one region."""

    name = "bedrock_stability"

    def __init__(
        self,
        *,
        access_key_id: str = SANDBOX_BEDROCK_ACCESS_KEY_ID,
        secret_access_key: str = SANDBOX_BEDROCK_SECRET_ACCESS_KEY,
        region: str = SANDBOX_BEDROCK_REGION,
        faults: FaultPlan | None = None,
    ) -> None:
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = region
        self.faults = faults or FaultPlan()
        # The latest accepted bodies, newest last (bounded: the sandbox may
        # run for days under `image-service dev`).
        self.received: deque[Received] = deque(maxlen=32)

    def routes(self) -> list[BaseRoute]:
        return [Route(ROUTE, self.faults.endpoint(self._handle), methods=["POST"])]

    def settings_overrides(self, base_url: str) -> dict[str, str]:
        """`Settings` field values that point the real backend at this emulator."""
        return {
            "bedrock_region": self.region,
            "bedrock_endpoint_url": base_url,
            "bedrock_access_key_id": self.access_key_id,
            "bedrock_secret_access_key": self.secret_access_key,
        }

    @staticmethod
    def _raw_path(request: Request) -> str:
        raw = request.scope.get("raw_path")
        return raw.decode("latin-1") if raw else quote(request.url.path, safe="/")

    async def _handle(self, request: Request, exchange: Exchange) -> Response:
        raw_path = self._raw_path(request)
        body_bytes = await request.body()
        try:
            verify_sigv4(
                request,
                raw_path,
                body_bytes,
                access_key_id=self.access_key_id,
                secret_access_key=self.secret_access_key,
                region=self.region,
            )
        except _AuthError as denied:
            return _error(403, denied.code, denied.message)
        # The id between /model/ and /invoke, decoded once: "%3A" → ":".
        model_id = unquote(raw_path[len("/model/") : -len("/invoke")])
        model = MODELS.get(base_model_id(model_id))
        if model is None:
            return _error(400, "ValidationException", "The provided model identifier is invalid.")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _error(400, "ValidationException", "The contentType must be application/json.")
        try:
            body = json.loads(body_bytes)
        except ValueError:
            return _error(400, "ValidationException", "Malformed input request: invalid JSON.")
        if isinstance(body, dict):
            self.received.append(Received(model_id, body))
        try:
            job = await asyncio.to_thread(validate, model, body)
        except _Invalid as invalid:
            return _error(400, "ValidationException", str(invalid))

        fault = await exchange.begin(job.prompt)
        if fault.mode is not FaultMode.NONE:
            return _fault_response(fault, job)
        return JSONResponse(
            await asyncio.to_thread(render, job),
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

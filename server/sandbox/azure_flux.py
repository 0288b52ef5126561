"""Emulator of Azure AI Foundry's Black Forest Labs route (FLUX models).

    POST /providers/blackforestlabs/v1/{flux-kontext-pro|flux-2-pro}?api-version=preview
    Authorization: Bearer <key>

It checks what the upstream checks, a little more strictly where the real
service is undocumented (so backend mistakes surface here rather than in
production):

- FLUX.1 Kontext [pro] takes `aspect_ratio` ("W:H", 21:9 … 9:21) and no
  width/height, and renders about one megapixel at that ratio with sides
  that are multiples of 32 (1:1 → 1024x1024, 16:9 → 1376x768). With an
  input image and no ratio it keeps the input's ratio. At most 1 input image.
- FLUX.2 [pro] takes `width`/`height`, multiples of 16 within 256..1440;
  with neither it uses the first input image's size fitted to those limits,
  else 1024x1024. Input images `input_image`, `input_image_2` … `_8`.
- Input images are raw base64 (no data: URI, no URL) and must decode.
- `output_format` is "png" or "jpeg" (the upstream's default, jpeg).

A success answers `{"data":[{"b64_json": ...}], "request_meta": {...}}`
with a rendered picture of the prompt, or, for a prompt carrying
`[sandbox:noise=3mb]`, a cached noise PNG of about that many bytes whatever
the size asked (for benchmarks: noise does not compress, and serving it
costs the emulator almost no CPU). Faults (`faults.FaultPlan`) answer as
the upstream would; `CONTENT_FILTER` has two shapes, chosen by the fault's
variant: `CONTENT_FILTER_HTTP` (default, a 400 error body) or
`CONTENT_FILTER_FINISH_REASON` (a 200 whose item has no image).

A success can instead name the image by URL (`{"data":[{"url": ...}]}`)
or answer BFL's asynchronous way (`{"id", "polling_url"}`, then polls):
`answers` sets the default, `[sandbox:answer=url|polling]` a prompt's; see
`azure_flux_tasks`. Result URLs are served on `delivery_host` (default: the
host the request came to) and need no key. Polling links name the host the
request came to and need the resource key, unless `polling_host` names
another: that link is signed, as the result URLs are, and needs no key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
import re
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from server.sandbox.azure_common import (
    azure_error,
    hung_or_cut,
    invalid_key,
    key_matches,
    retry_headers,
    unsupported_api_version,
)
from server.sandbox.azure_flux_tasks import (
    DELIVERY_PATH,
    POLL_PATH,
    Answer,
    AnswerPlan,
    FluxTasks,
)
from server.sandbox.faults import (
    Exchange,
    Fault,
    FaultMode,
    FaultPlan,
    parse_directives,
    strip_directives,
)
from server.sandbox.render import noise_png_of_size, noise_size, render_image

# A well-known sandbox credential, not a secret: it only opens the emulator.
SANDBOX_AZURE_FLUX_KEY = "sandbox-azure-flux-key"
API_VERSIONS = frozenset({"preview"})
ROUTE = "/providers/blackforestlabs/v1/{model_path}"

CONTENT_FILTER_HTTP = "http"
CONTENT_FILTER_FINISH_REASON = "finish_reason"

_MEGAPIXEL = 1024 * 1024
_MIN_RATIO, _MAX_RATIO = 9 / 21, 21 / 9
_FLUX2_MIN_SIDE, _FLUX2_MAX_SIDE, _FLUX2_STEP = 256, 1440, 16
_INPUT_KEY = re.compile(r"^input_image(?:_(\d+))?$")
_RATIO = re.compile(r"^(\d{1,3}):(\d{1,3})$")


@dataclass(frozen=True)
class FluxModel:
    """What one model path accepts."""

    path: str
    model: str
    sizing: Literal["aspect_ratio", "pixels"]
    max_input_images: int
    max_safety_tolerance: int
    # BFL credits (1 credit = 1 US cent) for the first output megapixel.
    base_cost: float


MODELS: dict[str, FluxModel] = {
    m.path: m
    for m in (
        FluxModel("flux-kontext-pro", "FLUX.1-Kontext-pro", "aspect_ratio", 1, 6, 4.0),
        FluxModel("flux-2-pro", "FLUX.2-pro", "pixels", 8, 5, 3.0),
    )
}


@dataclass(frozen=True)
class Received:
    """A request body the emulator accepted past auth, for tests to inspect."""

    model_path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class _Job:
    prompt: str
    width: int
    height: int
    output_format: str
    seed: int | None
    input_mp: float


class _Invalid(Exception):
    """The body breaks the upstream's rules; the message is the 400's."""


def _int_field(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{key} must be an integer")
    return value


def _decode_image(key: str, value: Any) -> tuple[int, int]:
    if not isinstance(value, str) or value.startswith(("data:", "http://", "https://")):
        raise _Invalid(f"{key} must be a raw base64-encoded image")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"{key} is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            return image.size
    except Exception:  # Pillow raises many types for undecodable input.
        raise _Invalid(f"{key} is not a decodable image") from None


def _input_images(model: FluxModel, body: dict[str, Any]) -> list[tuple[int, int]]:
    by_index: dict[int, tuple[int, int]] = {}
    for key, value in body.items():
        match = _INPUT_KEY.match(key)
        if not match or value is None:
            continue
        index = int(match.group(1) or 1)
        if index < 1 or index > model.max_input_images or (index == 1 and match.group(1)):
            raise _Invalid(
                f"{key} is not supported; {model.model} takes at most "
                f"{model.max_input_images} input image(s)"
            )
        by_index[index] = _decode_image(key, value)
    return [by_index[i] for i in sorted(by_index)]


def _one_megapixel(ratio: float) -> tuple[int, int]:
    ratio = min(_MAX_RATIO, max(_MIN_RATIO, ratio))
    width = round(math.sqrt(_MEGAPIXEL * ratio) / 32) * 32
    height = round(math.sqrt(_MEGAPIXEL / ratio) / 32) * 32
    return width, height


def _fit_flux2(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, _FLUX2_MAX_SIDE / max(width, height))
    scale = max(scale, _FLUX2_MIN_SIDE / min(width, height))

    def snap(side: float) -> int:
        side = int(side / _FLUX2_STEP + 0.5) * _FLUX2_STEP
        return min(_FLUX2_MAX_SIDE, max(_FLUX2_MIN_SIDE, side))

    return snap(width * scale), snap(height * scale)


def _kontext_size(body: dict[str, Any], images: list[tuple[int, int]]) -> tuple[int, int]:
    if "width" in body or "height" in body:
        raise _Invalid("width and height are not supported for this model; use aspect_ratio")
    aspect_ratio = body.get("aspect_ratio")
    if aspect_ratio is None:
        ratio = images[0][0] / images[0][1] if images else 1.0
        return _one_megapixel(ratio)
    match = _RATIO.match(aspect_ratio) if isinstance(aspect_ratio, str) else None
    if not match or int(match.group(2)) == 0:
        raise _Invalid("aspect_ratio must look like 16:9")
    ratio = int(match.group(1)) / int(match.group(2))
    if not _MIN_RATIO - 1e-9 <= ratio <= _MAX_RATIO + 1e-9:
        raise _Invalid("aspect_ratio must be between 21:9 and 9:21")
    return _one_megapixel(ratio)


def _flux2_size(body: dict[str, Any], images: list[tuple[int, int]]) -> tuple[int, int]:
    if "aspect_ratio" in body:
        raise _Invalid("aspect_ratio is not supported for this model; use width and height")
    width, height = _int_field(body, "width"), _int_field(body, "height")
    if width is None and height is None:
        return _fit_flux2(*images[0]) if images else (1024, 1024)
    if width is None or height is None:
        raise _Invalid("width and height must be given together")
    for name, side in (("width", width), ("height", height)):
        if not _FLUX2_MIN_SIDE <= side <= _FLUX2_MAX_SIDE or side % _FLUX2_STEP:
            raise _Invalid(
                f"{name} must be a multiple of {_FLUX2_STEP} "
                f"between {_FLUX2_MIN_SIDE} and {_FLUX2_MAX_SIDE}"
            )
    return width, height


def _validate(model: FluxModel, body: Any) -> _Job:
    if not isinstance(body, dict):
        raise _Invalid("The request body must be a JSON object")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Invalid("prompt is required")
    named = body.get("model")
    if named is not None and (not isinstance(named, str) or named.lower() != model.model.lower()):
        raise _Invalid(f"model must be {model.model} on this route")
    for key in ("num_images", "n"):
        if key in body and _int_field(body, key) != 1:
            raise _Invalid(f"{key} must be 1")
    output_format = body.get("output_format", "jpeg")
    if output_format not in ("png", "jpeg"):
        raise _Invalid("output_format must be png or jpeg")
    seed = _int_field(body, "seed")
    tolerance = _int_field(body, "safety_tolerance")
    if tolerance is not None and not 0 <= tolerance <= model.max_safety_tolerance:
        raise _Invalid(f"safety_tolerance must be between 0 and {model.max_safety_tolerance}")
    if not isinstance(body.get("prompt_upsampling", False), bool):
        raise _Invalid("prompt_upsampling must be a boolean")
    images = _input_images(model, body)
    if model.sizing == "aspect_ratio":
        width, height = _kontext_size(body, images)
    else:
        width, height = _flux2_size(body, images)
    input_mp = sum(w * h for w, h in images) / 1e6
    return _Job(prompt, width, height, output_format, seed, input_mp)


def _request_meta(model: FluxModel, job: _Job) -> dict[str, float]:
    output_mp = job.width * job.height / 1e6
    cost = model.base_cost
    if model.sizing == "pixels":
        # Roughly BFL's FLUX.2 pricing: extra output and input megapixels
        # cost half the first one.
        extra = max(0, math.ceil(output_mp) - 1) + math.ceil(job.input_mp)
        cost += extra * model.base_cost / 2
    return {"cost": cost, "input_mp": round(job.input_mp, 2), "output_mp": round(output_mp, 2)}


def _render_image(model: FluxModel, job: _Job) -> bytes:
    label = f"sandbox {model.model} {job.width}x{job.height}"
    if job.seed is not None:
        label += f" seed {job.seed}"
    return render_image(
        job.width,
        job.height,
        strip_directives(job.prompt),
        label=label,
        image_format="png" if job.output_format == "png" else "jpeg",
    )


def _render(model: FluxModel, job: _Job) -> dict[str, Any]:
    image = _render_image(model, job)
    return {
        "data": [{"b64_json": base64.b64encode(image).decode("ascii")}],
        "request_meta": _request_meta(model, job),
    }


@lru_cache(maxsize=8)
def _noise_b64(nbytes: int) -> bytes:
    return base64.b64encode(noise_png_of_size(nbytes))


def _noise_response(model: FluxModel, job: _Job, nbytes: int) -> Response:
    meta = json.dumps(_request_meta(model, job), separators=(",", ":")).encode()
    body = b'{"data":[{"b64_json":"' + _noise_b64(nbytes) + b'"}],"request_meta":' + meta + b"}"
    return Response(body, media_type="application/json")


def _fault_response(fault: Fault, model: FluxModel, job: _Job) -> Response:
    if fault.mode is FaultMode.BAD_REQUEST:
        return azure_error(400, "InvalidRequest", "The request is invalid (sandbox fault).")
    if fault.mode is FaultMode.CONTENT_FILTER:
        if fault.variant == CONTENT_FILTER_FINISH_REASON:
            item = {
                "finish_reason": "content_filter",
                "content_filter_results": {
                    "sexual": {"filtered": True, "severity": "high"},
                    "violence": {"filtered": False, "severity": "safe"},
                },
            }
            return JSONResponse({"data": [item], "request_meta": _request_meta(model, job)})
        return azure_error(
            400,
            "content_filter",
            "The request was rejected because it was flagged by the content filter.",
        )
    if fault.mode is FaultMode.RATE_LIMIT:
        headers = None
        message = "Rate limit is exceeded."
        if fault.retry_after is not None:
            headers = retry_headers(fault.retry_after)
            message += f" Try again in {math.ceil(fault.retry_after)} seconds."
        return azure_error(429, "429", message, headers)
    if fault.mode is FaultMode.SERVER_ERROR:
        return azure_error(
            500, "InternalServerError", "The server had an error processing the request."
        )
    return hung_or_cut(fault)


class AzureFluxEmulator:
    """The Black Forest Labs route of one Azure AI Foundry resource."""

    name = "azure_flux"

    def __init__(self, api_key: str = SANDBOX_AZURE_FLUX_KEY, *, faults: FaultPlan | None = None):
        self.api_key = api_key
        self.faults = faults or FaultPlan()
        # The latest accepted bodies, newest last (bounded: the sandbox may
        # run for days under `image-service dev`).
        self.received: deque[Received] = deque(maxlen=32)
        # How a success answers unless the prompt says otherwise.
        self.answers = AnswerPlan()
        self.tasks = FluxTasks()
        # The host result URLs name (None: the one the request came to), so
        # a test can put them on a host that must never see the key.
        self.delivery_host: str | None = None
        # The host polling links name (None: the one the request came to).
        self.polling_host: str | None = None

    def routes(self) -> list[BaseRoute]:
        return [
            Route(ROUTE, self.faults.endpoint(self._handle), methods=["POST"]),
            Route(POLL_PATH, self._poll, methods=["GET"]),
            Route(DELIVERY_PATH, self._deliver, methods=["GET"]),
        ]

    def reset(self) -> None:
        """Back to base64 answers, with no tasks and zeroed counters."""
        self.answers = AnswerPlan()
        self.tasks.reset()
        self.delivery_host = None
        self.polling_host = None

    def settings_overrides(self, base_url: str) -> dict[str, str]:
        """`Settings` field values that point the real backend at this emulator."""
        return {"azure_flux_endpoint": base_url, "azure_flux_api_key": self.api_key}

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and key_matches(token, self.api_key)

    async def _handle(self, request: Request, exchange: Exchange) -> Response:
        if not self._authorized(request):
            return invalid_key()
        version = request.query_params.get("api-version")
        if version is None:
            return azure_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if version not in API_VERSIONS:
            return unsupported_api_version()
        model = MODELS.get(request.path_params["model_path"])
        if model is None:
            return azure_error(
                404, "DeploymentNotFound", "The API deployment for this resource does not exist."
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return azure_error(400, "InvalidRequest", "The request body must be valid JSON.")
        if isinstance(body, dict):
            self.received.append(Received(model.path, body))
        try:
            job = await asyncio.to_thread(_validate, model, body)
        except _Invalid as invalid:
            return azure_error(400, "InvalidRequest", str(invalid))

        fault = await exchange.begin(job.prompt)
        if fault.mode is not FaultMode.NONE:
            return _fault_response(fault, model, job)
        noise = noise_size(parse_directives(job.prompt).get("noise", ""))
        if noise is not None:
            # The first request of a size encodes it (seconds for MiBs).
            await asyncio.to_thread(_noise_b64, noise)
            return _noise_response(model, job, noise)
        return await self._answer(request, model, job)

    async def _answer(self, request: Request, model: FluxModel, job: _Job) -> Response:
        """A success, as the prompt (or `answers`) asks: base64, a URL or a polling link."""
        plan = self.answers.for_prompt(job.prompt)
        if plan.answer is Answer.BASE64:
            return JSONResponse(await asyncio.to_thread(_render, model, job))
        task_id = self.tasks.submit(lambda: _render_image(model, job), plan)
        if plan.answer is Answer.URL:
            item = {"url": self._delivery_url(request, task_id)}
            return JSONResponse({"data": [item], "request_meta": _request_meta(model, job)})
        polling_url = request.url.replace(path=POLL_PATH, query=f"id={task_id}")
        if self.polling_host is not None:
            polling_url = polling_url.replace(hostname=self.polling_host).include_query_params(
                sig=self.tasks.signature(task_id)
            )
        return JSONResponse({"id": task_id, "polling_url": str(polling_url)})

    def _delivery_url(self, request: Request, task_id: str) -> str:
        url = request.url.replace(path=DELIVERY_PATH.format(task_id=task_id), query="")
        if self.delivery_host is not None:
            url = url.replace(hostname=self.delivery_host)
        return str(url.include_query_params(sig=self.tasks.signature(task_id)))

    async def _poll(self, request: Request) -> Response:
        """BFL's get_result: the resource key (or a signed link), then the
        task's status."""
        task_id = request.query_params.get("id", "")
        signature = request.query_params.get("sig")
        if "authorization" in request.headers:
            self.tasks.stats.polls_with_credentials += 1
        signed = signature is not None and self.tasks.signed(task_id, signature)
        if not signed and not self._authorized(request):
            return invalid_key()
        if self.tasks.failing_polls > 0:
            self.tasks.failing_polls -= 1
            return azure_error(500, "InternalServerError", "The server had an error.")
        body, ready = self.tasks.poll(task_id)
        if ready is not None:
            body["result"] = {"sample": self._delivery_url(request, ready)}
        return JSONResponse(body)

    async def _deliver(self, request: Request) -> Response:
        """A signed result URL: no key needed, a wrong signature is a 403."""
        task = self.tasks.delivery(
            request.path_params["task_id"],
            request.query_params.get("sig", ""),
            with_credentials="authorization" in request.headers,
        )
        if task is None:
            return Response(b"AuthenticationFailed", 403, media_type="text/plain")
        if task.image is None:
            task.image = await asyncio.to_thread(task.render)
        jpeg = task.image.startswith(b"\xff\xd8")
        return Response(task.image, media_type="image/jpeg" if jpeg else "image/png")

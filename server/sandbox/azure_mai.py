"""Emulator of Azure AI Foundry's MAI image route (MAI-Image-2).

    POST /mai/v1/images/generations
    api-key: <key>
    {"model": "<deployment>", "prompt": "...", "width": 1024, "height": 1024}

It checks what the upstream checks, a little more strictly where the real
service is undocumented (so backend mistakes surface here rather than in
production):

- the `api-key` header (a Bearer header carrying the key is refused: the
  real route wants an Entra token there); the documented route has no
  `api-version`, and `preview` (what LiteLLM sends) is tolerated;
- `model` names a deployment of this resource (404 `DeploymentNotFound`
  otherwise, compared case-insensitively like Azure deployment names);
- `prompt` is a non-empty string; `width` and `height` are integers, each
  at least 768, at most 1,048,576 pixels together (400 with messages like
  the upstream's `'width' must be at least 768 pixels.`). Other fields
  (`n`, say) are ignored, as the upstream is reported to do.

A success answers `{"data":[{"b64_json": <PNG>}], "usage": {...}}` with a
rendered PNG of exactly the requested size: MAI always returns one PNG.

`requests_per_minute`, when set, makes the emulator enforce a quota like
the deployment's: requests beyond it within `rate_window_s` get a 429 with
Retry-After (they do not consume the fault plan).

Faults (`faults.FaultPlan`) answer as the upstream would. MAI's moderation
error is undocumented; `CONTENT_FILTER` answers with the Azure OpenAI shape
(400, `code: content_filter`, `innererror.code:
ResponsibleAIPolicyViolation` with per-category results) for the variant
`CONTENT_FILTER_PROMPT` (default), or the Azure image API's output refusal
(400, `code: contentFilter`) for `CONTENT_FILTER_OUTPUT`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
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
from server.sandbox.faults import (
    Exchange,
    Fault,
    FaultMode,
    FaultPlan,
    strip_directives,
)
from server.sandbox.render import render_image

# A well-known sandbox credential, not a secret: it only opens the emulator.
SANDBOX_AZURE_MAI_KEY = "sandbox-azure-mai-key"
ROUTE = "/mai/v1/images/generations"
DEFAULT_DEPLOYMENTS = ("MAI-Image-2", "MAI-Image-2.6", "MAI-Image-2.6-Flash")
EDIT_ROUTE = "/mai/v1/images/edits"
# Deployments of models that edit (MAI-Image-2.5 and 2.6; MAI-Image-2 does not).
EDITING_MODELS = frozenset(
    {"mai-image-2.5", "mai-image-2.5-flash", "mai-image-2.6", "mai-image-2.6-flash"}
)
MAX_EDIT_IMAGES = 5
_EDIT_IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
API_VERSIONS = frozenset({"preview"})

CONTENT_FILTER_PROMPT = "prompt"
CONTENT_FILTER_OUTPUT = "output"

MIN_SIDE = 768
MAX_PIXELS = 1024 * 1024


@dataclass(frozen=True)
class Received:
    """A request body the emulator accepted past auth, for tests to inspect.

    `at` is `time.monotonic()` on arrival; `api_version` the query's, if any.
    """

    body: dict[str, Any]
    at: float
    api_version: str | None = None


@dataclass(frozen=True)
class _Job:
    deployment: str
    prompt: str
    width: int
    height: int


class _Invalid(Exception):
    """The body breaks the upstream's rules; the message is the 400's."""


def _side(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if value is None:
        raise _Invalid(f"'{key}' is required.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"'{key}' must be an integer.")
    if value < MIN_SIDE:
        raise _Invalid(f"'{key}' must be at least {MIN_SIDE} pixels.")
    return value


def _validate(body: dict[str, Any], deployment: str) -> _Job:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Invalid("'prompt' is required.")
    width, height = _side(body, "width"), _side(body, "height")
    if width * height > MAX_PIXELS:
        raise _Invalid(
            f"'width' * 'height' must be at most {MAX_PIXELS} pixels; got {width * height}."
        )
    return _Job(deployment, prompt, width, height)


def _edit_job(deployment: str, prompt: object, images: list[bytes]) -> _Job:
    """The job an edit form asks for; `_Invalid` with the 400's message otherwise."""
    if deployment.lower() not in EDITING_MODELS:
        raise _Invalid(f"{deployment} does not support image edits.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Invalid("'prompt' is required.")
    if not 1 <= len(images) <= MAX_EDIT_IMAGES:
        raise _Invalid(f"Between 1 and {MAX_EDIT_IMAGES} 'image[]' files are required.")
    sizes = []
    for data in images:
        try:
            with Image.open(io.BytesIO(data)) as opened:
                if opened.format not in _EDIT_IMAGE_FORMATS:
                    raise ValueError
                sizes.append(opened.size)
        except (UnidentifiedImageError, OSError, ValueError):
            raise _Invalid("Each 'image[]' must be a JPEG, PNG or WebP image.") from None
    width, height = _fit(*sizes[0])
    return _Job(deployment, prompt, width, height)


def _fit(width: int, height: int) -> tuple[int, int]:
    """An edit's output size: the input's proportions within 1,048,576 pixels,
    in multiples of 16 (sides may fall under 768 for shapes beyond 16:9)."""
    scale = math.sqrt(MAX_PIXELS / (width * height))
    return max(16, int(width * scale) // 16 * 16), max(16, int(height * scale) // 16 * 16)


def _render(job: _Job) -> dict[str, Any]:
    image = render_image(
        job.width,
        job.height,
        strip_directives(job.prompt),
        label=f"sandbox {job.deployment} {job.width}x{job.height}",
        image_format="png",
    )
    return {
        "data": [{"b64_json": base64.b64encode(image).decode("ascii")}],
        "usage": {
            "num_input_text_tokens": len(job.prompt.split()),
            "num_output_tokens": job.width * job.height // 256,
        },
    }


def _rate_limited(retry_after: float | None) -> Response:
    message = "Requests to the MAI image generation operation have exceeded the rate limit."
    headers = None
    if retry_after is not None:
        headers = retry_headers(retry_after)
        message += f" Please retry after {math.ceil(retry_after)} seconds."
    return azure_error(429, "429", message, headers)


def _fault_response(fault: Fault) -> Response:
    if fault.mode is FaultMode.BAD_REQUEST:
        return azure_error(400, "BadRequest", "The request is invalid (sandbox fault).")
    if fault.mode is FaultMode.CONTENT_FILTER:
        if fault.variant == CONTENT_FILTER_OUTPUT:
            return azure_error(
                400,
                "contentFilter",
                "Generated image was filtered as a result of our safety system.",
            )
        return azure_error(
            400,
            "content_filter",
            "The response was filtered due to the prompt triggering Azure's content "
            "management policy. Please modify your prompt and retry.",
            param="prompt",
            innererror={
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {
                    "hate": {"filtered": False, "severity": "safe"},
                    "self_harm": {"filtered": False, "severity": "safe"},
                    "sexual": {"filtered": True, "severity": "high"},
                    "violence": {"filtered": False, "severity": "safe"},
                },
            },
        )
    if fault.mode is FaultMode.RATE_LIMIT:
        return _rate_limited(fault.retry_after)
    if fault.mode is FaultMode.SERVER_ERROR:
        return azure_error(
            500, "InternalServerError", "The server had an error while processing your request."
        )
    return hung_or_cut(fault)


class AzureMaiEmulator:
    """The MAI image route of one Azure AI Foundry resource."""

    name = "azure_mai"

    def __init__(
        self,
        api_key: str = SANDBOX_AZURE_MAI_KEY,
        *,
        deployments: Iterable[str] = DEFAULT_DEPLOYMENTS,
        faults: FaultPlan | None = None,
    ) -> None:
        self.api_key = api_key
        self.deployments = {name.lower(): name for name in deployments}
        self.faults = faults or FaultPlan()
        # The deployment's quota, off by default; see the module docstring.
        self.requests_per_minute: int | None = None
        self.rate_window_s = 60.0
        # Requests answered 429 by that quota (not by the fault plan).
        self.rate_limited = 0
        self._admitted: deque[float] = deque()
        # The latest accepted bodies, newest last (bounded: the sandbox may
        # run for days under `image-service dev`).
        self.received: deque[Received] = deque(maxlen=64)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(ROUTE, self.faults.endpoint(self._handle), methods=["POST"]),
            Route(EDIT_ROUTE, self.faults.endpoint(self._handle_edit), methods=["POST"]),
        ]

    def settings_overrides(self, base_url: str) -> dict[str, str]:
        """`Settings` field values that point the real backend at this emulator."""
        return {"azure_mai_endpoint": base_url, "azure_mai_api_key": self.api_key}

    def _over_quota(self) -> float | None:
        """Seconds until the quota admits another request, or None to admit this one."""
        if self.requests_per_minute is None:
            return None
        now = time.monotonic()
        while self._admitted and self._admitted[0] <= now - self.rate_window_s:
            self._admitted.popleft()
        if len(self._admitted) >= self.requests_per_minute:
            return self._admitted[0] + self.rate_window_s - now
        self._admitted.append(now)
        return None

    def _refused(self, request: Request) -> Response | None:
        """The answer to a request without the right key or api-version, if any."""
        key = request.headers.get("api-key")
        if key is None:
            return azure_error(
                401,
                "401",
                "Access denied due to missing subscription key. Make sure to include "
                "subscription key when making requests to an API.",
            )
        if not key_matches(key, self.api_key):
            return invalid_key()
        version = request.query_params.get("api-version")
        if version is not None and version not in API_VERSIONS:
            return unsupported_api_version()
        return None

    async def _handle_edit(self, request: Request, exchange: Exchange) -> Response:
        """`POST /mai/v1/images/edits`: a multipart form (model, prompt, image[]...)."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return azure_error(400, "BadRequest", "The request must be multipart/form-data.")
        async with request.form(max_files=MAX_EDIT_IMAGES + 1) as form:
            named = form.get("model")
            prompt = form.get("prompt")
            uploads = [*form.getlist("image[]"), *form.getlist("image")]
            images = [await upload.read() for upload in uploads if isinstance(upload, UploadFile)]
        self.received.append(
            Received(
                {"model": named, "prompt": prompt, "images": len(images), "edit": True},
                time.monotonic(),
                request.query_params.get("api-version"),
            )
        )
        deployment = self._deployment(named)
        if isinstance(deployment, Response):
            return deployment
        try:
            job = _edit_job(deployment, prompt, images)
        except _Invalid as invalid:
            return azure_error(400, "BadRequest", str(invalid))
        return await self._answer(job, exchange)

    def _deployment(self, named: object) -> str | Response:
        """The deployment a body's `model` names, or Azure's error answer."""
        if not isinstance(named, str) or not named.strip():
            return azure_error(400, "BadRequest", "'model' is required.")
        deployment = self.deployments.get(named.strip().lower())
        if deployment is None:
            return azure_error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
        return deployment

    async def _answer(self, job: _Job, exchange: Exchange) -> Response:
        """A valid request's answer: the quota, then any injected fault, then the image."""
        wait = self._over_quota()
        if wait is not None:
            self.rate_limited += 1
            return _rate_limited(max(wait, 0.001))
        fault = await exchange.begin(job.prompt)
        if fault.mode is not FaultMode.NONE:
            return _fault_response(fault)
        return JSONResponse(await asyncio.to_thread(_render, job))

    async def _handle(self, request: Request, exchange: Exchange) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        version = request.query_params.get("api-version")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return azure_error(400, "BadRequest", "The request body must be valid JSON.")
        if not isinstance(body, dict):
            return azure_error(400, "BadRequest", "The request body must be a JSON object.")
        self.received.append(Received(body, time.monotonic(), version))
        named = body.get("model")
        deployment = self._deployment(named)
        if isinstance(deployment, Response):
            return deployment
        try:
            job = _validate(body, deployment)
        except _Invalid as invalid:
            return azure_error(400, "BadRequest", str(invalid))
        return await self._answer(job, exchange)

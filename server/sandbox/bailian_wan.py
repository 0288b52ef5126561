"""Emulator of DashScope's asynchronous image API for the Wan 2.7 models.

    POST /dashscope/api/v1/services/aigc/image-generation/generation
         Authorization: Bearer <key>, X-DashScope-Async: enable
    GET  /dashscope/api/v1/tasks/{task_id}
    POST /dashscope/api/v1/tasks/{task_id}/cancel
    GET  /dashscope-results/{task_id}/{index}.png?Expires=..&OSSAccessKeyId=..&Signature=..

The base URL a backend uses is `<sandbox>/dashscope/api/v1`. It behaves as
DashScope does, a little more strictly where DashScope is undocumented:

- A submission needs the Bearer key (else 401 `InvalidApiKey`) and
  `X-DashScope-Async: enable` (the Wan 2.7 route here is async only: 403
  `AccessDenied`). The body is `{"model", "input": {"messages": [one user
  message whose content holds exactly one {"text"} and 0 to 9 {"image"}]},
  "parameters": {...}}`; images must be data URIs (the sandbox fetches no
  URLs) of 240 to 8000 px a side and at most 8:1. `parameters.n` is 1 to 4;
  `size` is "1K", "2K" (the default), "4K" (pro text-to-image only) or
  "W*H" with W*H between 768*768 and 2048*2048 (4096*4096 for pro
  text-to-image) and at most 8:1. "W*H" renders exactly that; "1K"/"2K"/"4K"
  render about 1/4/16 megapixels, square for text-to-image and in the last
  input image's proportions for an edit. Errors are `{"request_id", "code",
  "message"}` with DashScope's HTTP statuses.
- A submission answers `{"output": {"task_id", "task_status": "PENDING"}}`.
  The task stays PENDING for the first `pending_fraction` of its latency
  (the fault plan's latency for that request), RUNNING for the rest, then
  SUCCEEDED or FAILED. Polls of an unknown id answer UNKNOWN. A PENDING task
  can be cancelled (CANCELED); cancelling any other answers 400.
- A SUCCEEDED task lists its images as signed URLs on this server that
  expire after `result_ttl_s`; fetching one renders a PNG of the produced
  size showing the prompt. A wrong signature or an expired URL is an
  OSS-style 403.

Faults (`faults.FaultPlan`) are drawn once per submission and decide how the
task behaves; the variant picks where a fault shows:

    BAD_REQUEST      400 InvalidParameter; variant "task": a FAILED task
    CONTENT_FILTER   400 DataInspectionFailed; "task": a FAILED task;
                     "partial": SUCCEEDED with one image fewer, `output.code`
                     DataInspectionFailed and `task_metrics`; "partial_results":
                     the same in the older Wanx `results` shape
    RATE_LIMIT       429 Throttling.RateQuota (Retry-After only if given)
    SERVER_ERROR     500 InternalError; "task": a FAILED task (InternalError.Algo)
    TIMEOUT          the task never finishes (RUNNING forever); "submit":
                     the submission hangs
    DROP_CONNECTION  the submission's response is cut; "poll": the task's
                     first poll response is; "download": its first image's

`stats` counts submissions, polls and cancellations per task, and downloads,
so a test can check that polling stopped.
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
import re
import secrets
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from PIL import Image
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
from server.sandbox.render import render_png

# A well-known sandbox credential, not a secret: it only opens the emulator.
SANDBOX_DASHSCOPE_KEY = "sandbox-dashscope-key"
API_PREFIX = "/dashscope/api/v1"
RESULTS_PREFIX = "/dashscope-results"
SUBMIT_ROUTE = API_PREFIX + "/services/aigc/image-generation/generation"

# Fault variants (see the module docstring).
IN_TASK = "task"
PARTIAL = "partial"
PARTIAL_RESULTS = "partial_results"
AT_SUBMIT = "submit"
AT_POLL = "poll"
AT_DOWNLOAD = "download"

MAX_INPUT_IMAGES = 9
MAX_PROMPT_CHARS = 5000
MAX_SEED = 2**31 - 1
MIN_PIXELS = 768 * 768
_PRESETS = {"1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 4096 * 4096}
_MAX_RATIO = 8.0
_MIN_INPUT_SIDE, _MAX_INPUT_SIDE = 240, 8000
_MAX_TASKS = 256
_CUSTOM_SIZE = re.compile(r"^(\d{1,5})\*(\d{1,5})$")
_DATA_URI = re.compile(r"^data:image/(png|jpeg|jpg|webp|bmp);base64,(.*)$", re.DOTALL)

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, UNKNOWN = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELED",
    "UNKNOWN",
)


@dataclass(frozen=True)
class WanModel:
    """What one model accepts."""

    name: str
    # Largest output for text-to-image; edits stop at 2K on both models.
    max_t2i_pixels: int


MODELS: dict[str, WanModel] = {
    m.name: m
    for m in (
        WanModel("wan2.7-image", 2048 * 2048),
        WanModel("wan2.7-image-pro", 4096 * 4096),
    )
}
_MAX_EDIT_PIXELS = 2048 * 2048


@dataclass(frozen=True)
class Received:
    """A submission the emulator accepted past auth, for tests to inspect."""

    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class _Job:
    model: str
    prompt: str
    width: int
    height: int
    n: int
    seed: int | None
    input_images: int


@dataclass
class DashScopeStats:
    """What the emulator saw besides submissions (those are `faults.stats`)."""

    # Tasks created (accepted submissions that became tasks).
    submits: int = 0
    # Poll requests per task id (unknown ids included).
    polls: Counter[str] = field(default_factory=Counter)
    # Cancel requests per task id, whatever their outcome.
    cancels: Counter[str] = field(default_factory=Counter)
    # Result images served in full.
    downloads: int = 0
    # Result requests that carried an Authorization header (the real storage
    # is another host, which must never be sent the API key).
    downloads_with_credentials: int = 0

    @property
    def total_polls(self) -> int:
        return self.polls.total()


@dataclass
class EmulatedTask:
    """One task and the fault that decides its fate."""

    task_id: str
    job: _Job
    fault: Fault
    latency: float
    pending_s: float
    created: float = field(default_factory=time.monotonic)
    submit_time: str = field(default_factory=lambda: _clock())
    canceled: bool = False
    end_time: str = ""
    drop_next_poll: bool = False
    drop_next_download: bool = False
    rendered: dict[int, bytes] = field(default_factory=dict)

    def status(self) -> str:
        if self.canceled:
            return CANCELED
        elapsed = time.monotonic() - self.created
        if elapsed < self.pending_s:
            return PENDING
        if self.fault.mode is FaultMode.TIMEOUT or elapsed < self.latency:
            return RUNNING
        if not self.end_time:
            self.end_time = _clock()
        return FAILED if self.failure() is not None else SUCCEEDED

    def failure(self) -> tuple[str, str] | None:
        """(code, message) of a task that FAILED as a whole."""
        mode, variant = self.fault.mode, self.fault.variant
        if mode is FaultMode.CONTENT_FILTER and (
            variant == IN_TASK or (variant in (PARTIAL, PARTIAL_RESULTS) and self.job.n == 1)
        ):
            return "DataInspectionFailed", "Output data may contain inappropriate content."
        if mode is FaultMode.SERVER_ERROR and variant == IN_TASK:
            return "InternalError.Algo", "Algorithm process error (sandbox fault)."
        if mode is FaultMode.BAD_REQUEST and variant == IN_TASK:
            return "InvalidParameter", "The input image does not meet the requirements."
        return None

    @property
    def produced(self) -> int:
        """Images a SUCCEEDED task has (one fewer for a partial filter)."""
        partial = self.fault.mode is FaultMode.CONTENT_FILTER and self.fault.variant in (
            PARTIAL,
            PARTIAL_RESULTS,
        )
        return self.job.n - 1 if partial else self.job.n


class _Invalid(Exception):
    """The body breaks the upstream's rules; `code` and the message are the 400's."""

    def __init__(self, message: str, code: str = "InvalidParameter") -> None:
        super().__init__(message)
        self.code = code


def _clock() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _request_id() -> str:
    return str(uuid.uuid4())


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"request_id": _request_id(), "code": code, "message": message}
    return JSONResponse(body, status, headers=headers)


def _oss_error(status: int, code: str, message: str) -> Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{uuid.uuid4().hex.upper()[:24]}</RequestId></Error>"
    )
    return Response(xml, status, media_type="application/xml")


# --- validation ------------------------------------------------------------


def _int_param(parameters: dict[str, Any], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"parameters.{key} must be an integer")
    return value


def _decode_input(index: int, value: Any) -> tuple[int, int]:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"image {index + 1} must be a URL or a data URI")
    if value.startswith(("http://", "https://", "oss://")):
        raise _Invalid(
            f"image {index + 1}: the sandbox fetches no URLs; send a data URI", "InvalidURL"
        )
    match = _DATA_URI.match(value)
    if not match:
        raise _Invalid(f"image {index + 1} must be a data:image/...;base64 URI")
    try:
        data = base64.b64decode(match.group(2), validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            width, height = image.size
    except (binascii.Error, ValueError):
        raise _Invalid(f"image {index + 1} is not valid base64") from None
    except Exception:  # Pillow raises many types for undecodable input.
        raise _Invalid(f"image {index + 1} is not a decodable image") from None
    short, long = min(width, height), max(width, height)
    if short < _MIN_INPUT_SIDE or long > _MAX_INPUT_SIDE or long / short > _MAX_RATIO:
        raise _Invalid(
            f"image {index + 1} is {width}x{height}; sides must be 240 to 8000 px, at most 8:1"
        )
    return width, height


def _content(body: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    payload = body.get("input")
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if not isinstance(messages, list) or len(messages) != 1:
        raise _Invalid("input.messages must hold exactly one message")
    message = messages[0]
    if not isinstance(message, dict) or message.get("role") != "user":
        raise _Invalid("the message's role must be user")
    content = message.get("content")
    if not isinstance(content, list):
        raise _Invalid("the message's content must be an array")
    texts: list[Any] = []
    images: list[Any] = []
    for item in content:
        if not isinstance(item, dict) or len(item) != 1 or not ({"text", "image"} & set(item)):
            raise _Invalid("each content item must be one {text} or one {image}")
        (texts if "text" in item else images).append(next(iter(item.values())))
    if len(texts) != 1:
        raise _Invalid("content must contain exactly one text object")
    prompt = texts[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _Invalid("the text must be a non-empty string")
    if len(images) > MAX_INPUT_IMAGES:
        raise _Invalid(f"content may contain at most {MAX_INPUT_IMAGES} images")
    return prompt[:MAX_PROMPT_CHARS], [_decode_input(i, v) for i, v in enumerate(images)]


def _preset_size(pixels: int, ratio: float) -> tuple[int, int]:
    def snap(side: float) -> int:
        return max(16, int(side // 16) * 16)

    return snap(math.sqrt(pixels * ratio)), snap(math.sqrt(pixels / ratio))


def _size(model: WanModel, size: Any, inputs: list[tuple[int, int]]) -> tuple[int, int]:
    limit = _MAX_EDIT_PIXELS if inputs else model.max_t2i_pixels
    if size is None:
        size = "2K"
    if not isinstance(size, str):
        raise _Invalid("parameters.size must be a string")
    if size in _PRESETS:
        if _PRESETS[size] > limit:
            raise _Invalid(f"size {size} is not supported by {model.name} for this input")
        # Edits keep the proportions of the last input image (UNCERTAIN upstream).
        ratio = inputs[-1][0] / inputs[-1][1] if inputs else 1.0
        return _preset_size(_PRESETS[size], ratio)
    match = _CUSTOM_SIZE.match(size)
    if not match:
        raise _Invalid("parameters.size must be 1K, 2K, 4K or width*height, e.g. 1024*1024")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1 or not MIN_PIXELS <= width * height <= limit:
        raise _Invalid(
            f"parameters.size {size}: width*height must be between {MIN_PIXELS} and {limit}"
        )
    if max(width, height) / min(width, height) > _MAX_RATIO:
        raise _Invalid(f"parameters.size {size}: the aspect ratio must be within 1:8 to 8:1")
    return width, height


def _validate(body: Any) -> _Job:
    if not isinstance(body, dict):
        raise _Invalid("The request body must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise _Invalid("Model is required", "BadRequest.EmptyModel")
    model = MODELS.get(name)
    if model is None:
        raise _Invalid("Model not exist.")
    prompt, inputs = _content(body)
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _Invalid("parameters must be an object")
    for key in ("watermark", "thinking_mode", "enable_sequential"):
        if key in parameters and not isinstance(parameters[key], bool):
            raise _Invalid(f"parameters.{key} must be a boolean")
    sequential = parameters.get("enable_sequential") is True
    n = _int_param(parameters, "n")
    n = 1 if n is None else n
    most = 12 if sequential else 4
    if not 1 <= n <= most:
        raise _Invalid(f"parameters.n must be between 1 and {most}")
    seed = _int_param(parameters, "seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise _Invalid(f"parameters.seed must be between 0 and {MAX_SEED}")
    width, height = _size(model, parameters.get("size"), inputs)
    return _Job(model.name, prompt, width, height, n, seed, len(inputs))


# --- the emulator ----------------------------------------------------------


class BailianWanEmulator:
    """DashScope's async task API and result storage, for the Wan 2.7 models."""

    name = "bailian_wan"

    def __init__(
        self, api_key: str = SANDBOX_DASHSCOPE_KEY, *, faults: FaultPlan | None = None
    ) -> None:
        self.api_key = api_key
        self.faults = faults or FaultPlan()
        self.stats = DashScopeStats()
        # Share of a task's latency spent PENDING (cancellable) before RUNNING.
        self.pending_fraction = 0.2
        # How long result URLs stay valid (DashScope: 24 h).
        self.result_ttl_s = 24 * 3600.0
        # The latest accepted submissions, newest last (bounded: the sandbox
        # may run for days under `image-service dev`).
        self.received: deque[Received] = deque(maxlen=32)
        self.tasks: OrderedDict[str, EmulatedTask] = OrderedDict()
        self._signing_key = secrets.token_bytes(32)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(SUBMIT_ROUTE, self.faults.endpoint(self._submit), methods=["POST"]),
            Route(API_PREFIX + "/tasks/{task_id}", self._poll, methods=["GET"]),
            Route(API_PREFIX + "/tasks/{task_id}/cancel", self._cancel, methods=["POST"]),
            Route(RESULTS_PREFIX + "/{task_id}/{index:int}.png", self._result, methods=["GET"]),
        ]

    def settings_overrides(self, base_url: str) -> dict[str, str]:
        """`Settings` field values that point the real backend at this emulator."""
        return {"bailian_base_url": base_url + API_PREFIX, "bailian_api_key": self.api_key}

    def reset(self) -> None:
        """Forget tasks, submissions and counters (and reset the fault plan)."""
        self.faults.reset()
        self.stats = DashScopeStats()
        self.received.clear()
        self.tasks.clear()

    def task_status(self, task_id: str) -> str:
        """The status a poll of `task_id` would report now."""
        task = self.tasks.get(task_id)
        return task.status() if task else UNKNOWN

    # --- auth ----------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )

    @staticmethod
    def _unauthorized() -> Response:
        return _error(401, "InvalidApiKey", "Invalid API-key provided.")

    def _signature(self, task_id: str, index: int, expires: int) -> str:
        message = f"GET\n{task_id}/{index}.png\n{expires}".encode()
        digest = hmac.new(self._signing_key, message, hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")

    def _result_url(self, request: Request, task: EmulatedTask, index: int) -> str:
        expires = int(time.time() + self.result_ttl_s)
        signature = quote(self._signature(task.task_id, index, expires), safe="")
        base = str(request.base_url).rstrip("/")
        return (
            f"{base}{RESULTS_PREFIX}/{task.task_id}/{index}.png"
            f"?Expires={expires}&OSSAccessKeyId=sandbox&Signature={signature}"
        )

    # --- submission ----------------------------------------------------------

    async def _submit(self, request: Request, exchange: Exchange) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        if request.headers.get("x-dashscope-async", "").lower() != "enable":
            return _error(
                403, "AccessDenied", "current user api does not support synchronous calls"
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "InvalidParameter", "The request body is not valid JSON.")
        if isinstance(body, dict):
            headers = {
                k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"
            }
            self.received.append(Received(body, headers))
        try:
            job = await asyncio.to_thread(_validate, body)
        except _Invalid as invalid:
            return _error(400, invalid.code, str(invalid))

        step = self.faults.next(job.prompt)
        fault = step.fault
        if fault.mode is FaultMode.TIMEOUT and fault.variant == AT_SUBMIT:
            await exchange.sleep(step.latency + self.faults.hang_s)
            return _error(504, "RequestTimeOut", "Request timed out.")
        refusal = self._submit_fault(fault)
        if refusal is not None:
            return refusal
        task = EmulatedTask(
            task_id=str(uuid.uuid4()),
            job=job,
            fault=fault,
            latency=step.latency,
            pending_s=step.latency * self.pending_fraction,
            drop_next_poll=fault.mode is FaultMode.DROP_CONNECTION and fault.variant == AT_POLL,
            drop_next_download=fault.mode is FaultMode.DROP_CONNECTION
            and fault.variant == AT_DOWNLOAD,
        )
        self._store(task)
        self.stats.submits += 1
        return JSONResponse(
            {
                "request_id": _request_id(),
                "output": {"task_id": task.task_id, "task_status": PENDING},
            }
        )

    @staticmethod
    def _submit_fault(fault: Fault) -> Response | None:
        """The error response for a fault that shows at submission, else None."""
        mode, variant = fault.mode, fault.variant
        if mode is FaultMode.BAD_REQUEST and variant != IN_TASK:
            return _error(400, "InvalidParameter", "The parameters are invalid (sandbox fault).")
        if mode is FaultMode.CONTENT_FILTER and variant not in (IN_TASK, PARTIAL, PARTIAL_RESULTS):
            return _error(
                400, "DataInspectionFailed", "Input data may contain inappropriate content."
            )
        if mode is FaultMode.RATE_LIMIT:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(math.ceil(fault.retry_after))
            return _error(
                429,
                "Throttling.RateQuota",
                "Requests rate limit exceeded, please try again later.",
                headers,
            )
        if mode is FaultMode.SERVER_ERROR and variant != IN_TASK:
            return _error(
                500,
                "InternalError",
                "An internal error has occured, please try again later or contact service support.",
            )
        if mode is FaultMode.DROP_CONNECTION and variant not in (AT_POLL, AT_DOWNLOAD):
            return DroppedResponse(
                partial=b'{"request_id":"', content_length=256, media_type="application/json"
            )
        return None

    def _store(self, task: EmulatedTask) -> None:
        self.tasks[task.task_id] = task
        while len(self.tasks) > _MAX_TASKS:
            self.tasks.popitem(last=False)

    # --- polling and cancelling --------------------------------------------

    async def _poll(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        task_id = request.path_params["task_id"]
        self.stats.polls[task_id] += 1
        task = self.tasks.get(task_id)
        if task is None:
            return JSONResponse(
                {
                    "request_id": _request_id(),
                    "output": {"task_id": task_id, "task_status": UNKNOWN},
                }
            )
        if task.drop_next_poll:
            task.drop_next_poll = False
            return DroppedResponse(
                partial=b'{"request_id":"', content_length=512, media_type="application/json"
            )
        return JSONResponse(self._task_body(request, task))

    def _task_body(self, request: Request, task: EmulatedTask) -> dict[str, Any]:
        status = task.status()
        output: dict[str, Any] = {
            "task_id": task.task_id,
            "task_status": status,
            "submit_time": task.submit_time,
        }
        body: dict[str, Any] = {"request_id": _request_id(), "output": output}
        if status == PENDING:
            return body
        output["scheduled_time"] = task.submit_time
        if status == RUNNING:
            return body
        output["end_time"] = task.end_time or _clock()
        failure = task.failure()
        if status == FAILED and failure is not None:
            output["code"], output["message"] = failure
            return body
        if status == CANCELED:
            return body
        output["finished"] = True
        urls = [self._result_url(request, task, i) for i in range(task.produced)]
        job = task.job
        if task.fault.variant == PARTIAL_RESULTS:
            output["results"] = [{"url": url} for url in urls] + [
                {
                    "code": "DataInspectionFailed",
                    "message": "Output data may contain inappropriate content.",
                }
            ]
        else:
            output["choices"] = [
                {
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": [{"type": "image", "image": url} for url in urls],
                    },
                }
            ]
        if task.produced < job.n:
            output["code"] = "DataInspectionFailed"
            output["message"] = "Output data may contain inappropriate content."
            output["task_metrics"] = {
                "TOTAL": job.n,
                "SUCCEEDED": task.produced,
                "FAILED": job.n - task.produced,
            }
        body["usage"] = {
            "image_count": task.produced,
            "size": f"{job.width}*{job.height}",
            "input_tokens": 16 * len(job.prompt) + 1024 * job.input_images,
            "output_tokens": 2,
            "total_tokens": 16 * len(job.prompt) + 1024 * job.input_images + 2,
        }
        return body

    async def _cancel(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        task_id = request.path_params["task_id"]
        self.stats.cancels[task_id] += 1
        task = self.tasks.get(task_id)
        # UNCERTAIN: the exact code DashScope answers for a task past PENDING.
        if task is None or task.status() != PENDING:
            return _error(
                400,
                "UnsupportedOperation",
                "Failed to cancel the task, please confirm if the task is in PENDING status.",
            )
        task.canceled = True
        task.end_time = _clock()
        return JSONResponse({"request_id": _request_id()})

    # --- result storage ------------------------------------------------------

    async def _result(self, request: Request) -> Response:
        if "authorization" in request.headers:
            self.stats.downloads_with_credentials += 1
        task_id = request.path_params["task_id"]
        index = request.path_params["index"]
        params = request.query_params
        try:
            expires = int(params.get("Expires", ""))
        except ValueError:
            return _oss_error(
                403, "AccessDenied", "Anonymous access is forbidden for this operation."
            )
        expected = self._signature(task_id, index, expires)
        if not hmac.compare_digest(params.get("Signature", "").encode(), expected.encode()):
            return _oss_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        if time.time() > expires:
            return _oss_error(403, "AccessDenied", "Request has expired.")
        task = self.tasks.get(task_id)
        if task is None or task.status() != SUCCEEDED or not 0 <= index < task.produced:
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        data = task.rendered.get(index)
        if data is None:
            data = await asyncio.to_thread(_render, task, index)
            data = task.rendered.setdefault(index, data)
        if task.drop_next_download:
            task.drop_next_download = False
            return DroppedResponse(
                partial=data[:64], content_length=len(data), media_type="image/png"
            )
        self.stats.downloads += 1
        return Response(data, media_type="image/png")


def _render(task: EmulatedTask, index: int) -> bytes:
    job = task.job
    label = f"sandbox {job.model} {job.width}x{job.height} #{index + 1}/{job.n}"
    if job.seed is not None:
        label += f" seed {job.seed}"
    return render_png(job.width, job.height, strip_directives(job.prompt), label=label)

"""Alibaba Cloud Model Studio (Bailian / DashScope): the Wan 2.7 image models.

A generation takes a minute or two, so this uses DashScope's asynchronous
task API rather than holding one HTTP request open that long:

    POST {base}/services/aigc/image-generation/generation
         Authorization: Bearer <key>
         X-DashScope-Async: enable
      -> {"output": {"task_id": "...", "task_status": "PENDING"}, "request_id": "..."}
    GET  {base}/tasks/{task_id}
      -> PENDING -> RUNNING -> SUCCEEDED | FAILED (also CANCELED, UNKNOWN)
    POST {base}/tasks/{task_id}/cancel          best effort, only while PENDING
    GET  <signed result URL>                     each image, on Alibaba's OSS

Polling starts after `poll_initial_s` and backs off by `POLL_BACKOFF` (with
a little jitter) up to `poll_max_s`; it stops at the deadline (an
`UpstreamTimeout`) and at once when the caller's task is cancelled. Either
way, a task last seen PENDING is cancelled upstream in the background so it
is not run (and billed) for nobody. A RUNNING task cannot be cancelled.

Result URLs expire after 24 hours, so the images are downloaded here (with
the same client, a bounded number at a time, never sending our key) and the
service stores them like any other backend's bytes.

Sizes: the seed caps Wan at 1024x1024, so a requested size becomes `W*H`
scaled into [768*768, 1024*1024] pixels with its proportions kept and sides
in multiples of 16: 1024x1024 -> 1024*1024, 1792x1024 -> 1344*768. An edit
with no size sends "1K", which keeps the input's proportions at about a
megapixel. Up to 4 images per task (`n`); prompt edits send 1 to 9 input
images as data URIs.

Errors: `DataInspectionFailed` (a 400, or inside a FAILED task) is
`ContentRejected`; `Throttling*` is `RateLimited`; `InvalidApiKey`
`UpstreamAuthFailed`; `InvalidParameter*` `UpstreamRejected`;
`InternalError*` `UpstreamUnavailable`. DashScope also reports errors inside
HTTP 200 bodies (a top-level `code`, or a FAILED task's `output.code`); those
are mapped the same way. A task that SUCCEEDED with fewer images than asked
(per-image failures, as older Wanx models did) returns the images it has and
counts the ones withheld by moderation as filtered.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from server.domain.deadline import Deadline
from server.domain.errors import (
    CapabilityNotSupported,
    ContentRejected,
    FieldViolation,
    ImageServiceError,
    InvalidArgument,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.domain.imaging import inspect
from server.domain.ports import ProducedImage, UpstreamCall, UpstreamResult
from server.domain.requests import Operation, Size
from server.domain.retry import RetryPolicy
from server.providers.http import (
    Upstream,
    blamed_field,
    new_client,
    parse_retry_after,
    send_once,
    send_with_retry,
    upstream_error_body,
)

log = logging.getLogger(__name__)

UPSTREAM = Upstream(
    key="bailian_wan",
    name="DashScope",
    credential_setting="IMAGE_SERVICE_BAILIAN_API_KEY",
    endpoint_setting="IMAGE_SERVICE_BAILIAN_BASE_URL",
)
# The result images live on Alibaba's object storage behind signed URLs; it
# never sees our key, so its refusals must not read as "check the API key".
RESULT_STORAGE = Upstream(
    key="bailian_wan",
    name="DashScope result storage",
    credential_setting="IMAGE_SERVICE_BAILIAN_API_KEY",
    endpoint_setting="IMAGE_SERVICE_BAILIAN_BASE_URL",
)

DEFAULT_BASE_URL = "https://dashscope-intl.aliyuncs.com/api/v1"
SUBMIT_PATH = "/services/aigc/image-generation/generation"

MAX_IMAGES_PER_TASK = 4
MAX_INPUT_IMAGES = 9
MAX_SEED = 2**31 - 1
# The seed's cap for Wan, and the upstream's minimum (UNCERTAIN, from resellers).
MAX_PIXELS = 1024 * 1024
MIN_PIXELS = 768 * 768
PIXEL_STEP = 16
# An edit without a size: about a megapixel, in the input's proportions
# (without any size DashScope defaults to "2K", four times the seed's cap).
EDIT_DEFAULT_SIZE = "1K"

POLL_BACKOFF = 1.5
_POLL_JITTER = 0.1
CANCEL_TIMEOUT_S = 5.0

PENDING = "PENDING"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELED = "CANCELED"
UNKNOWN = "UNKNOWN"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED, UNKNOWN})
_STATUSES = TERMINAL | {PENDING, RUNNING}

_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


# --- request -------------------------------------------------------------


def wan_size(size: Size) -> Size:
    """`size` scaled into [MIN_PIXELS, MAX_PIXELS], keeping its proportions,
    with sides in multiples of `PIXEL_STEP` (rounded towards the range)."""
    scale = min(1.0, math.sqrt(MAX_PIXELS / size.pixels))
    scale = max(scale, math.sqrt(MIN_PIXELS / size.pixels))

    def snap(side: int) -> int:
        steps = side * scale / PIXEL_STEP
        # Down when shrinking and up when growing, so the result stays in range.
        whole = math.ceil(steps - 1e-9) if scale > 1 else math.floor(steps + 1e-9)
        return max(PIXEL_STEP, whole * PIXEL_STEP)

    return Size(snap(size.width), snap(size.height))


def upstream_size(size: Size | None) -> str:
    """The `parameters.size` for a requested size (None: an edit keeping the input's shape)."""
    if size is None:
        return EDIT_DEFAULT_SIZE
    fitted = wan_size(size)
    return f"{fitted.width}*{fitted.height}"


def _data_uri(index: int, image: bytes) -> str:
    try:
        mime = inspect(image).mime_type
    except ValueError:
        raise InvalidArgument(
            [FieldViolation(f"images[{index}]", "is not a PNG, JPEG or WebP image")]
        ) from None
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def _input_images(call: UpstreamCall) -> list[dict[str, str]]:
    if call.operation is Operation.GENERATE:
        return []
    if call.operation is not Operation.PROMPT_EDIT or call.mask is not None:
        raise CapabilityNotSupported(
            [FieldViolation("operation", "Wan models only edit from a prompt, without a mask")]
        )
    if not 1 <= len(call.images) <= MAX_INPUT_IMAGES:
        raise InvalidArgument(
            [
                FieldViolation(
                    "images", f"{call.model.name} takes 1 to {MAX_INPUT_IMAGES} input images"
                )
            ]
        )
    return [{"image": _data_uri(i, image)} for i, image in enumerate(call.images)]


def request_body(call: UpstreamCall) -> dict[str, Any]:
    """The JSON body of the task submission for `call` (without credentials)."""
    if not 1 <= call.count <= MAX_IMAGES_PER_TASK:
        raise ImageServiceError(f"A Wan task produces 1 to {MAX_IMAGES_PER_TASK} images.")
    content: list[dict[str, str]] = [{"text": call.prompt}, *_input_images(call)]
    parameters: dict[str, Any] = {
        "n": call.count,
        "size": upstream_size(call.size),
        "watermark": False,
    }
    if call.seed is not None:
        # The upstream takes 0..2^31-1; the API allows any uint32. Wrapping
        # keeps a given seed reproducible.
        parameters["seed"] = call.seed % (MAX_SEED + 1)
    return {
        "model": call.model.upstream_id,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


# --- errors --------------------------------------------------------------


def is_content_code(code: str) -> bool:
    """Whether a DashScope error code is a moderation refusal."""
    return (
        code == "DataInspectionFailed"
        or code.startswith("DataInspectionFailed.")
        or code == "IPInfringementSuspect"
    )


def _metadata(code: str, status: int | None) -> dict[str, str]:
    metadata = {"upstream": UPSTREAM.key}
    if status is not None:
        metadata["upstream_status"] = str(status)
    if code and _SAFE_CODE.match(code):
        metadata["upstream_code"] = code
    return metadata


def _content_rejected(metadata: dict[str, str]) -> ContentRejected:
    return ContentRejected(
        "DashScope's content moderation refused the prompt, an input image or the "
        "result; rephrase and try again.",
        metadata=metadata,
    )


def error_for_code(
    code: str,
    message: str = "",
    *,
    status: int | None = None,
    retry_after: float | None = None,
) -> ImageServiceError | None:
    """The domain error for a DashScope error `code`, or None for codes left
    to the HTTP status. `message` (the upstream's) only picks the field to
    blame; it never reaches the caller."""
    metadata = _metadata(code, status)
    if is_content_code(code):
        return _content_rejected(metadata)
    if code.startswith("Throttling"):
        return RateLimited(
            "DashScope is rate limiting requests; retry later.",
            metadata=metadata,
            retry_after=retry_after,
        )
    if code == "InvalidApiKey" or code.startswith("AccessDenied"):
        return UpstreamAuthFailed(
            "DashScope refused the service's API key for this model; check "
            f"{UPSTREAM.credential_setting} and its region ({UPSTREAM.endpoint_setting}).",
            metadata=metadata,
        )
    if code == "Arrearage":
        return UpstreamAuthFailed(
            "The DashScope account behind the service's API key is overdue.", metadata=metadata
        )
    if code.startswith("InternalError"):
        return UpstreamUnavailable(
            "DashScope failed internally; retry later.", metadata=metadata, retry_after=retry_after
        )
    if code == "RequestTimeOut":
        return UpstreamTimeout("DashScope timed out.", metadata=metadata)
    if code.startswith(("InvalidParameter", "BadRequest", "InvalidURL")):
        shown = f" ({code})" if "upstream_code" in metadata else ""
        return UpstreamRejected(
            [FieldViolation(blamed_field(message), "rejected by DashScope")],
            message=f"DashScope rejected the request{shown}.",
            metadata=metadata,
        )
    return None


def classify_error(response: httpx.Response) -> ImageServiceError | None:
    """`error_for_status` hook: DashScope's `{"code", "message"}` error bodies."""
    body = upstream_error_body(response)
    return error_for_code(
        body.code,
        body.message,
        status=response.status_code,
        retry_after=parse_retry_after(response.headers),
    )


def _classify_download(response: httpx.Response) -> ImageServiceError | None:
    if 400 <= response.status_code < 500 and response.status_code != 429:
        # An expired or mis-signed URL: nothing the caller or our key can fix.
        return UpstreamUnavailable(
            f"Could not download a result image from {RESULT_STORAGE.name} "
            f"(HTTP {response.status_code}).",
            metadata={"upstream": UPSTREAM.key, "upstream_status": str(response.status_code)},
        )
    return None


def _unavailable(message: str, **metadata: str) -> UpstreamUnavailable:
    # Retried where it happens inside an attempt: a malformed 200 is most
    # likely a glitch on the way back.
    return UpstreamUnavailable(message, metadata={"upstream": UPSTREAM.key, **metadata})


def _error_in_body(code: str, message: str) -> ImageServiceError:
    error = error_for_code(code, message)
    if error is not None:
        return error
    log.warning("DashScope reported error code %r in a successful response", code[:64])
    return UpstreamUnavailable("DashScope reported an error.", metadata=_metadata(code, None))


# --- responses -----------------------------------------------------------


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except (ValueError, UnicodeDecodeError):
        raise _unavailable("DashScope returned an unreadable response.") from None
    if not isinstance(payload, dict):
        raise _unavailable("DashScope returned an unexpected response.")
    return payload


def _code_and_message(holder: Mapping[str, Any]) -> tuple[str, str]:
    code, message = holder.get("code"), holder.get("message")
    return (
        str(code) if code else "",
        message if isinstance(message, str) else "",
    )


@dataclass(frozen=True)
class TaskState:
    """One poll's view of a task: its status and the raw `output` object."""

    task_id: str
    status: str
    output: Mapping[str, Any]


def parse_task(response: httpx.Response) -> TaskState:
    """A 200 from the submission or a poll; an error in the body raises."""
    payload = _json_object(response)
    output = payload.get("output")
    if not isinstance(output, dict):
        code, message = _code_and_message(payload)
        if code:
            raise _error_in_body(code, message)
        raise _unavailable("DashScope returned no task.")
    task_id = output.get("task_id")
    status = str(output.get("task_status", "")).upper()
    if not isinstance(task_id, str) or not task_id or status not in _STATUSES:
        code, message = _code_and_message(payload)
        if code:
            raise _error_in_body(code, message)
        raise _unavailable("DashScope returned a malformed task.")
    return TaskState(task_id, status, output)


def parse_submission(response: httpx.Response) -> TaskState:
    """The submitted task; a task that failed at once raises its error."""
    state = parse_task(response)
    if state.status == FAILED:
        raise _task_error(state)
    return state


def _task_error(state: TaskState) -> ImageServiceError:
    code, message = _code_and_message(state.output)
    if code:
        return _error_in_body(code, message)
    return _unavailable("The DashScope task failed without saying why.", task_id=state.task_id)


@dataclass(frozen=True)
class TaskResult:
    """What a SUCCEEDED task produced: the image URLs, and how many of the
    requested images failed (and, of those, how many moderation withheld)."""

    urls: tuple[str, ...]
    failed: int = 0
    filtered: int = 0


def _choice_urls(output: Mapping[str, Any], codes: list[str]) -> list[str]:
    urls: list[str] = []
    for choice in output.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        found = [
            item["image"]
            for item in content or ()
            if isinstance(item, dict) and isinstance(item.get("image"), str) and item["image"]
        ]
        urls.extend(found)
        if not found and choice.get("code"):
            # A per-choice failure: UNCERTAIN whether Wan 2.7 ever sends one.
            codes.append(str(choice["code"]))
    return urls


def _legacy_result_urls(output: Mapping[str, Any], codes: list[str]) -> list[str]:
    # Older Wanx tasks: "results": [{"url": ...} | {"code": ..., "message": ...}].
    urls: list[str] = []
    for result in output.get("results") or ():
        if not isinstance(result, dict):
            continue
        url = result.get("url")
        if isinstance(url, str) and url:
            urls.append(url)
        elif result.get("code"):
            codes.append(str(result["code"]))
    return urls


def task_result(state: TaskState, requested: int) -> TaskResult:
    """The outcome of a finished task; raises for anything but images.

    FAILED maps its `output.code`; CANCELED and UNKNOWN (expired or unknown
    id) are `UpstreamUnavailable`. A SUCCEEDED task may carry fewer images
    than `requested` with a failure code per image, or one `output.code`
    and `task_metrics.FAILED` for the lot; moderation codes count as filtered.
    """
    if state.status == FAILED:
        raise _task_error(state)
    if state.status == CANCELED:
        raise _unavailable("The DashScope task was cancelled upstream.", task_id=state.task_id)
    if state.status == UNKNOWN:
        raise _unavailable(
            "DashScope no longer knows the task (expired or unknown).", task_id=state.task_id
        )
    output = state.output
    codes: list[str] = []
    urls = _choice_urls(output, codes) + _legacy_result_urls(output, codes)
    top_code, top_message = _code_and_message(output)
    metrics = output.get("task_metrics")
    metric_failed = metrics.get("FAILED") if isinstance(metrics, dict) else None
    if codes:
        failed = len(codes)
        filtered = sum(1 for code in codes if is_content_code(code))
    else:
        if isinstance(metric_failed, int) and not isinstance(metric_failed, bool):
            failed = max(0, metric_failed)
        else:
            failed = max(0, requested - len(urls))
        filtered = failed if is_content_code(top_code) else 0
    if not urls:
        if filtered:
            raise _content_rejected(_metadata(top_code or codes[0], None))
        if top_code or codes:
            raise _error_in_body(top_code or codes[0], top_message)
        raise _unavailable("The DashScope task succeeded without images.", task_id=state.task_id)
    return TaskResult(tuple(urls), failed=failed, filtered=filtered)


def _downloaded_image(response: httpx.Response) -> ProducedImage:
    data = response.content
    try:
        mime = inspect(data).mime_type
    except ValueError:
        raise _unavailable("DashScope's result storage returned something not an image.") from None
    return ProducedImage(data=data, mime_type=mime)


# --- backend -------------------------------------------------------------


class BailianWanBackend:
    """`ImageBackend` for the Wan 2.7 models on one DashScope region and key."""

    def __init__(
        self,
        *,
        api_key: SecretStr,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 60.0,
        poll_initial_s: float = 0.5,
        poll_max_s: float = 5.0,
        task_timeout_s: float = 900.0,
        download_concurrency: int = 8,
        retry: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`timeout_s` bounds each HTTP request (submission, poll, download);
        `task_timeout_s` the whole wait for a task when the caller's deadline
        is later. `client` is used as given and not closed; otherwise one is
        made (over `transport`, if given) and closed by `aclose`."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("the DashScope base URL must be an http(s) URL")
        if poll_initial_s <= 0 or poll_max_s < poll_initial_s:
            raise ValueError("need 0 < poll_initial_s <= poll_max_s")
        if download_concurrency < 1:
            raise ValueError("download_concurrency must be at least 1")
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._poll_initial_s = poll_initial_s
        self._poll_max_s = poll_max_s
        self._task_timeout_s = task_timeout_s
        self._retry = retry or RetryPolicy()
        self._downloads = asyncio.Semaphore(download_concurrency)
        self._owns_client = client is None
        self._client = client or new_client(timeout_s=timeout_s, transport=transport)
        # Upstream cancellations still in flight, kept so they are not
        # garbage-collected mid-request and so `aclose` can wait for them.
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def submit_url(self) -> str:
        return self._base_url + SUBMIT_PATH

    def task_url(self, task_id: str) -> str:
        return f"{self._base_url}/tasks/{quote(task_id, safe='')}"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """Submit one task, wait for it and download its images, within `deadline`."""
        body = request_body(call)
        deadline = deadline.earliest(Deadline.after(self._task_timeout_s))
        task = await send_with_retry(
            self._client,
            "POST",
            self.submit_url,
            upstream=UPSTREAM,
            policy=self._retry,
            deadline=deadline,
            timeout_s=self._timeout_s,
            parse=parse_submission,
            json_body=body,
            headers={**self._auth(), "X-DashScope-Async": "enable"},
            classify=classify_error,
        )
        finished = await self._wait(task, deadline)
        result = task_result(finished, call.count)
        images = await self._download_all(result.urls, deadline)
        return UpstreamResult(images=images, filtered=result.filtered)

    async def _wait(self, task: TaskState, deadline: Deadline) -> TaskState:
        """Poll until `task` is terminal; cancel it upstream if abandoned while PENDING."""
        state = task
        interval = self._poll_initial_s
        try:
            while state.status not in TERMINAL:
                pause = interval * random.uniform(1 - _POLL_JITTER, 1 + _POLL_JITTER)
                remaining = deadline.remaining()
                await asyncio.sleep(pause if remaining is None else min(pause, remaining))
                if deadline.expired():
                    raise UpstreamTimeout(
                        "DashScope had not finished the task when the deadline passed.",
                        metadata={"upstream": UPSTREAM.key, "task_id": task.task_id},
                    )
                state = await send_with_retry(
                    self._client,
                    "GET",
                    self.task_url(task.task_id),
                    upstream=UPSTREAM,
                    policy=self._retry,
                    deadline=deadline,
                    timeout_s=self._timeout_s,
                    parse=parse_task,
                    headers=self._auth(),
                    classify=classify_error,
                )
                interval = min(self._poll_max_s, interval * POLL_BACKOFF)
        except BaseException:
            # Timeout, cancellation or a poll that kept failing. Only a
            # PENDING task can be cancelled; a RUNNING one finishes (and is
            # billed) regardless.
            if state.status == PENDING:
                self._cancel_soon(task.task_id)
            raise
        return state

    def _cancel_soon(self, task_id: str) -> None:
        """Ask DashScope to cancel `task_id` without making anyone wait for it."""
        if self._closed:
            return
        background = asyncio.get_running_loop().create_task(self._cancel(task_id))
        self._background.add(background)
        background.add_done_callback(self._background.discard)

    async def _cancel(self, task_id: str) -> None:
        try:
            await send_once(
                self._client,
                "POST",
                self.task_url(task_id) + "/cancel",
                upstream=UPSTREAM,
                deadline=Deadline.after(CANCEL_TIMEOUT_S),
                timeout_s=CANCEL_TIMEOUT_S,
                headers=self._auth(),
                classify=classify_error,
            )
        except ImageServiceError as error:
            # It may have started running meanwhile; nothing more to do.
            log.info("could not cancel DashScope task %s (%s)", task_id, error.reason)
        else:
            log.info("cancelled DashScope task %s", task_id)

    async def _download_all(
        self, urls: Sequence[str], deadline: Deadline
    ) -> tuple[ProducedImage, ...]:
        outcomes = await asyncio.gather(
            *(self._download(url, deadline) for url in urls), return_exceptions=True
        )
        images: list[ProducedImage] = []
        first_error: ImageServiceError | None = None
        for outcome in outcomes:
            if isinstance(outcome, ProducedImage):
                images.append(outcome)
            elif isinstance(outcome, ImageServiceError):
                # The others are paid for too: return them, and the
                # orchestrator reports this one as missing.
                log.warning("a DashScope result image could not be downloaded: %s", outcome)
                first_error = first_error or outcome
            else:
                raise outcome
        if not images and first_error is not None:
            raise first_error
        return tuple(images)

    async def _download(self, url: str, deadline: Deadline) -> ProducedImage:
        if not url.startswith(("https://", "http://")):
            raise _unavailable("DashScope returned a malformed result URL.")
        async with self._downloads:
            # No Authorization header: the URL is signed, and our key must
            # not travel to another host.
            return await send_with_retry(
                self._client,
                "GET",
                url,
                upstream=RESULT_STORAGE,
                policy=self._retry,
                deadline=deadline,
                timeout_s=self._timeout_s,
                parse=_downloaded_image,
                classify=_classify_download,
            )

    async def aclose(self) -> None:
        """Let pending upstream cancellations finish (briefly), then close."""
        self._closed = True
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=CANCEL_TIMEOUT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

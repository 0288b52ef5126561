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

- `request`: a call → the submission body (sizes, seed, input images).
- `errors`: the one table of DashScope error codes → domain errors, used for
  HTTP errors and for errors DashScope reports inside HTTP 200 bodies.
- `task`: the task's statuses; a poll's answer and a finished task's result.
- `download`: fetching the result images from Alibaba's storage.
- `backend`: the client, and the submit → poll (→ cancel) → download flow.

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

from server.providers.bailian_wan.backend import (
    CANCEL_TIMEOUT_S,
    DEFAULT_BASE_URL,
    POLL_BACKOFF,
    SUBMIT_PATH,
    BailianWanBackend,
)
from server.providers.bailian_wan.download import RESULT_STORAGE
from server.providers.bailian_wan.errors import (
    UPSTREAM,
    classify_error,
    error_for_code,
    is_content_code,
)
from server.providers.bailian_wan.request import (
    EDIT_DEFAULT_SIZE,
    MAX_IMAGES_PER_TASK,
    MAX_INPUT_IMAGES,
    MAX_PIXELS,
    MAX_SEED,
    MIN_PIXELS,
    PIXEL_STEP,
    request_body,
    upstream_size,
    wan_size,
)
from server.providers.bailian_wan.task import (
    CANCELED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    UNKNOWN,
    TaskResult,
    TaskState,
    parse_submission,
    parse_task,
    task_result,
)

__all__ = [
    "CANCELED",
    "CANCEL_TIMEOUT_S",
    "DEFAULT_BASE_URL",
    "EDIT_DEFAULT_SIZE",
    "FAILED",
    "MAX_IMAGES_PER_TASK",
    "MAX_INPUT_IMAGES",
    "MAX_PIXELS",
    "MAX_SEED",
    "MIN_PIXELS",
    "PENDING",
    "PIXEL_STEP",
    "POLL_BACKOFF",
    "RESULT_STORAGE",
    "RUNNING",
    "SUBMIT_PATH",
    "SUCCEEDED",
    "TERMINAL",
    "UNKNOWN",
    "UPSTREAM",
    "BailianWanBackend",
    "TaskResult",
    "TaskState",
    "classify_error",
    "error_for_code",
    "is_content_code",
    "parse_submission",
    "parse_task",
    "request_body",
    "task_result",
    "upstream_size",
    "wan_size",
]

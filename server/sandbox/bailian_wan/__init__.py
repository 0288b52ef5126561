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

Modules:

- `validation`: submissions checked → the job they ask for.
- `tasks`: an emulated task's status over time and the fault deciding it.
- `responses`: DashScope's and OSS's error answers, and submission faults.
- `emulator`: `BailianWanEmulator`, its routes, auth and result storage.

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

from server.sandbox.bailian_wan.emulator import (
    API_PREFIX,
    RESULTS_PREFIX,
    SANDBOX_DASHSCOPE_KEY,
    SUBMIT_ROUTE,
    BailianWanEmulator,
    DashScopeStats,
    Received,
)
from server.sandbox.bailian_wan.tasks import (
    AT_DOWNLOAD,
    AT_POLL,
    AT_SUBMIT,
    CANCELED,
    FAILED,
    IN_TASK,
    PARTIAL,
    PARTIAL_RESULTS,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UNKNOWN,
    EmulatedTask,
)
from server.sandbox.bailian_wan.validation import (
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MIN_PIXELS,
    MODELS,
    WanModel,
)

__all__ = [
    "API_PREFIX",
    "AT_DOWNLOAD",
    "AT_POLL",
    "AT_SUBMIT",
    "CANCELED",
    "FAILED",
    "IN_TASK",
    "MAX_INPUT_IMAGES",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MIN_PIXELS",
    "MODELS",
    "PARTIAL",
    "PARTIAL_RESULTS",
    "PENDING",
    "RESULTS_PREFIX",
    "RUNNING",
    "SANDBOX_DASHSCOPE_KEY",
    "SUBMIT_ROUTE",
    "SUCCEEDED",
    "UNKNOWN",
    "BailianWanEmulator",
    "DashScopeStats",
    "EmulatedTask",
    "Received",
    "WanModel",
]

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
- `response`: the task's statuses; a poll's answer and a finished task's result.
- `download`: fetching the result images from Alibaba's storage.
- `backend`: the client, and the submit → poll (→ cancel) → download flow.

This module is the backend's plugin (settings, factory).

Polling starts after `poll_initial_s` and backs off by `_shared.polling.BACKOFF` (with
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

from pydantic import Field, SecretStr

from server.providers._shared.plugin import (
    BackendPlugin,
    BackendSettings,
    NoOptions,
    backend_settings_config,
)


class BailianWanSettings(BackendSettings):
    """`IMAGE_SERVICE_BAILIAN_*`."""

    model_config = backend_settings_config("IMAGE_SERVICE_BAILIAN_")

    # Region base URL; keys are per region. Beijing is
    # https://dashscope.aliyuncs.com/api/v1.
    base_url: str = "https://dashscope-intl.aliyuncs.com/api/v1"
    api_key: SecretStr | None = None
    # Per HTTP request (submission, one poll, one download); a task's whole
    # wait is bounded by the caller's deadline and task_timeout_s.
    timeout_s: float = Field(default=60.0, gt=0)
    task_timeout_s: float = Field(default=900.0, gt=0)
    # Task polling backs off from the first to the second. Task queries are
    # limited to 20 QPS per account: raise the maximum when many tasks run at once.
    poll_initial_s: float = Field(default=0.5, gt=0)
    poll_max_s: float = Field(default=5.0, gt=0)
    # Result images downloaded at once, across all tasks.
    download_concurrency: int = Field(default=8, ge=1)


PLUGIN = BackendPlugin(
    key="bailian_wan",
    settings=BailianWanSettings,
    required=("base_url", "api_key"),
    backend="server.providers.bailian_wan.backend:BailianWanBackend",
    options=NoOptions,
)

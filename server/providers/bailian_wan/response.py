"""DashScope's asynchronous task: its statuses, and what a poll or the end says.

    PENDING -> RUNNING -> SUCCEEDED | FAILED (also CANCELED, UNKNOWN)

`parse_task` reads a submission's or a poll's 200 (errors inside it raise,
through `errors.error_in_body`); `task_result` turns a finished task into
image URLs, or into the error it ended with. A task that SUCCEEDED with
fewer images than asked (per-image failures, as older Wanx models did)
returns the images it has and counts the ones withheld by moderation as
filtered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from server.domain.errors import ImageServiceError
from server.providers._shared.upstream import unavailable
from server.providers.bailian_wan.errors import (
    UPSTREAM,
    code_and_message,
    content_rejected,
    error_in_body,
    error_metadata,
    is_content_code,
    json_object,
)

PENDING = "PENDING"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELED = "CANCELED"
UNKNOWN = "UNKNOWN"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED, UNKNOWN})
_STATUSES = TERMINAL | {PENDING, RUNNING}


@dataclass(frozen=True)
class TaskState:
    """One poll's view of a task: its status and the raw `output` object."""

    task_id: str
    status: str
    output: Mapping[str, Any]


def parse_task(response: httpx.Response) -> TaskState:
    """A 200 from the submission or a poll; an error in the body raises."""
    payload = json_object(response)
    output = payload.get("output")
    if not isinstance(output, dict):
        code, message = code_and_message(payload)
        if code:
            raise error_in_body(code, message)
        raise unavailable(UPSTREAM, "DashScope returned no task.")
    task_id = output.get("task_id")
    status = str(output.get("task_status", "")).upper()
    if not isinstance(task_id, str) or not task_id or status not in _STATUSES:
        code, message = code_and_message(payload)
        if code:
            raise error_in_body(code, message)
        raise unavailable(UPSTREAM, "DashScope returned a malformed task.")
    return TaskState(task_id, status, output)


def parse_submission(response: httpx.Response) -> TaskState:
    """The submitted task; a task that failed at once raises its error."""
    state = parse_task(response)
    if state.status == FAILED:
        raise _task_error(state)
    return state


def _task_error(state: TaskState) -> ImageServiceError:
    code, message = code_and_message(state.output)
    if code:
        return error_in_body(code, message)
    return unavailable(
        UPSTREAM, "The DashScope task failed without saying why.", task_id=state.task_id
    )


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
        raise unavailable(
            UPSTREAM, "The DashScope task was cancelled upstream.", task_id=state.task_id
        )
    if state.status == UNKNOWN:
        raise unavailable(
            UPSTREAM,
            "DashScope no longer knows the task (expired or unknown).",
            task_id=state.task_id,
        )
    output = state.output
    codes: list[str] = []
    urls = _choice_urls(output, codes) + _legacy_result_urls(output, codes)
    top_code, top_message = code_and_message(output)
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
            raise content_rejected(error_metadata(top_code or codes[0], None))
        if top_code or codes:
            raise error_in_body(top_code or codes[0], top_message)
        raise unavailable(
            UPSTREAM, "The DashScope task succeeded without images.", task_id=state.task_id
        )
    return TaskResult(tuple(urls), failed=failed, filtered=filtered)

"""`BailianWanEmulator`: the task API's routes and the result storage.

A SUCCEEDED task lists its images as signed URLs on this server that expire
after `result_ttl_s`; fetching one renders a PNG of the produced size
showing the prompt. A wrong signature or an expired URL is an OSS-style 403.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from server.sandbox.bailian_wan.responses import error_response, oss_error, request_id, submit_fault
from server.sandbox.bailian_wan.tasks import (
    AT_DOWNLOAD,
    AT_POLL,
    AT_SUBMIT,
    CANCELED,
    FAILED,
    PARTIAL_RESULTS,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UNKNOWN,
    EmulatedTask,
    clock,
    render_result,
)
from server.sandbox.bailian_wan.validation import Invalid, validate
from server.sandbox.faults import DroppedResponse, Exchange, FaultMode, FaultPlan

# A well-known sandbox credential, not a secret: it only opens the emulator.
SANDBOX_DASHSCOPE_KEY = "sandbox-dashscope-key"
API_PREFIX = "/dashscope/api/v1"
RESULTS_PREFIX = "/dashscope-results"
SUBMIT_ROUTE = API_PREFIX + "/services/aigc/image-generation/generation"
_MAX_TASKS = 256


@dataclass(frozen=True)
class Received:
    """A submission the emulator accepted past auth, for tests to inspect."""

    body: dict[str, Any]
    headers: dict[str, str]


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
        return error_response(401, "InvalidApiKey", "Invalid API-key provided.")

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
            return error_response(
                403, "AccessDenied", "current user api does not support synchronous calls"
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error_response(400, "InvalidParameter", "The request body is not valid JSON.")
        if isinstance(body, dict):
            headers = {
                k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"
            }
            self.received.append(Received(body, headers))
        try:
            job = await asyncio.to_thread(validate, body)
        except Invalid as invalid:
            return error_response(400, invalid.code, str(invalid))

        step = self.faults.next(job.prompt)
        fault = step.fault
        if fault.mode is FaultMode.TIMEOUT and fault.variant == AT_SUBMIT:
            await exchange.sleep(step.latency + self.faults.hang_s)
            return error_response(504, "RequestTimeOut", "Request timed out.")
        refusal = submit_fault(fault)
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
                "request_id": request_id(),
                "output": {"task_id": task.task_id, "task_status": PENDING},
            }
        )

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
                    "request_id": request_id(),
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
        body: dict[str, Any] = {"request_id": request_id(), "output": output}
        if status == PENDING:
            return body
        output["scheduled_time"] = task.submit_time
        if status == RUNNING:
            return body
        output["end_time"] = task.end_time or clock()
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
            return error_response(
                400,
                "UnsupportedOperation",
                "Failed to cancel the task, please confirm if the task is in PENDING status.",
            )
        task.canceled = True
        task.end_time = clock()
        return JSONResponse({"request_id": request_id()})

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
            return oss_error(
                403, "AccessDenied", "Anonymous access is forbidden for this operation."
            )
        expected = self._signature(task_id, index, expires)
        if not hmac.compare_digest(params.get("Signature", "").encode(), expected.encode()):
            return oss_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        if time.time() > expires:
            return oss_error(403, "AccessDenied", "Request has expired.")
        task = self.tasks.get(task_id)
        if task is None or task.status() != SUCCEEDED or not 0 <= index < task.produced:
            return oss_error(404, "NoSuchKey", "The specified key does not exist.")
        data = task.rendered.get(index)
        if data is None:
            data = await asyncio.to_thread(render_result, task, index)
            data = task.rendered.setdefault(index, data)
        if task.drop_next_download:
            task.drop_next_download = False
            return DroppedResponse(
                partial=data[:64], content_length=len(data), media_type="image/png"
            )
        self.stats.downloads += 1
        return Response(data, media_type="image/png")

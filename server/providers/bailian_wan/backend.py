"""`BailianWanBackend`: submit a task, poll it, cancel it if abandoned, download.

Polling starts after `poll_initial_s` and backs off (`_shared.polling`)
up to `poll_max_s`; it stops at the deadline (an
`UpstreamTimeout`) and at once when the caller's task is cancelled. Either
way, a task last seen PENDING is cancelled upstream in the background so it
is not run (and billed) for nobody. A RUNNING task cannot be cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from server.domain.deadline import Deadline
from server.domain.errors import ImageServiceError, UpstreamTimeout
from server.domain.ports import UpstreamCall, UpstreamResult
from server.domain.retry import RetryPolicy
from server.providers._shared.http import owned_client, send_once, send_with_retry
from server.providers._shared.polling import PollPacing, check_poll_interval
from server.providers.bailian_wan.download import result_downloader
from server.providers.bailian_wan.errors import UPSTREAM, classify_error
from server.providers.bailian_wan.request import request_body
from server.providers.bailian_wan.response import (
    PENDING,
    TERMINAL,
    TaskState,
    parse_submission,
    parse_task,
    task_result,
)

log = logging.getLogger(__name__)

SUBMIT_PATH = "/services/aigc/image-generation/generation"

CANCEL_TIMEOUT_S = 5.0


class BailianWanBackend:
    """`ImageBackend` for the Wan 2.7 models on one DashScope region and key."""

    def __init__(
        self,
        *,
        api_key: SecretStr,
        base_url: str,
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
        check_poll_interval(poll_initial_s, poll_max_s)
        if download_concurrency < 1:
            raise ValueError("download_concurrency must be at least 1")
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._poll_initial_s = poll_initial_s
        self._poll_max_s = poll_max_s
        self._task_timeout_s = task_timeout_s
        self._retry = retry or RetryPolicy()
        self._http = owned_client(client, timeout_s=timeout_s, transport=transport)
        self._client = self._http.resource
        self._downloads = result_downloader(
            self._client,
            concurrency=download_concurrency,
            policy=self._retry,
            timeout_s=timeout_s,
        )
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
        images = await self._downloads.download_all(result.urls, deadline)
        return UpstreamResult(images=images, filtered=result.filtered)

    async def _wait(self, task: TaskState, deadline: Deadline) -> TaskState:
        """Poll until `task` is terminal; cancel it upstream if abandoned while PENDING."""
        state = task
        pacing = PollPacing(self._poll_initial_s, self._poll_max_s)
        try:
            while state.status not in TERMINAL:
                if not await pacing.wait(deadline):
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
        except BaseException as error:
            # Timeout, cancellation or a poll that kept failing. A poll request
            # cut off by the deadline raises the transport's own timeout, so the
            # task id is attached here, whichever way polling ended: it is what
            # support needs to find the (possibly billed) task.
            if isinstance(error, ImageServiceError):
                error.metadata.setdefault("task_id", task.task_id)
            # Only a PENDING task can be cancelled; a RUNNING one finishes (and
            # is billed) regardless.
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

    async def aclose(self) -> None:
        """Let pending upstream cancellations finish (briefly), then close."""
        self._closed = True
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=CANCEL_TIMEOUT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._http.aclose()

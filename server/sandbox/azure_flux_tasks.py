"""The Azure FLUX emulator's answers that name an image instead of carrying it.

Microsoft's FLUX page says the BFL route answers with "a URL or
base64-encoded image data", and Black Forest Labs' own API is asynchronous
(a submission answers `{"id", "polling_url"}`; polling it answers
`{"status": "Pending"}` until `{"status": "Ready", "result": {"sample":
<signed URL>}}`, or a moderated / failed status). The emulator can answer
either way (`Answer`), chosen per emulator or per prompt:

    "a red fox [sandbox:answer=url]"
    "a red fox [sandbox:answer=polling] [sandbox:pending_polls=3]"
    "a red fox [sandbox:answer=polling] [sandbox:pending_polls=forever]"
    "a red fox [sandbox:answer=polling] [sandbox:poll_outcome=content_moderated]"

`FluxTasks` holds the submitted tasks and their rendered images (bounded),
answers polls, and serves results from signed delivery URLs that need no
key (a wrong signature is a 403, as for an expired BFL URL).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.sandbox.faults import parse_directives

POLL_PATH = "/providers/blackforestlabs/v1/get_result"
DELIVERY_PATH = "/delivery/results/{task_id}/sample.png"
_MAX_TASKS = 256

READY = "Ready"
PENDING = "Pending"
# BFL's terminal failures, by the directive that picks them.
OUTCOMES = {
    "ready": READY,
    "content_moderated": "Content Moderated",
    "request_moderated": "Request Moderated",
    "error": "Error",
    "failed": "Failed",
    "task_not_found": "Task not found",
}


class Answer(enum.Enum):
    """How a successful submission answers."""

    BASE64 = "b64"
    URL = "url"
    POLLING = "polling"


@dataclass
class FluxTaskStats:
    """What the links saw: submissions answered with a link, polls, deliveries."""

    linked: int = 0
    polls: int = 0
    polls_with_credentials: int = 0
    deliveries: int = 0
    deliveries_with_credentials: int = 0


@dataclass
class FluxTask:
    """One submitted task; `render` draws its image (off the loop, once)."""

    render: Callable[[], bytes]
    pending_polls: int | None
    outcome: str
    image: bytes | None = None


@dataclass
class AnswerPlan:
    """The emulator-wide defaults a prompt's directives override."""

    answer: Answer = Answer.BASE64
    # Pending answers before the outcome; None: pending forever.
    pending_polls: int | None = 1
    outcome: str = READY

    def for_prompt(self, prompt: str) -> AnswerPlan:
        directives = parse_directives(prompt)
        plan = AnswerPlan(self.answer, self.pending_polls, self.outcome)
        with contextlib.suppress(ValueError):
            plan.answer = Answer(directives.get("answer", plan.answer.value).lower())
        polls = directives.get("pending_polls")
        if polls == "forever":
            plan.pending_polls = None
        elif polls is not None and polls.isdigit():
            plan.pending_polls = int(polls)
        plan.outcome = OUTCOMES.get(directives.get("poll_outcome", "").lower(), plan.outcome)
        return plan


@dataclass
class FluxTasks:
    """Submitted tasks and their images, for polls and deliveries."""

    stats: FluxTaskStats = field(default_factory=FluxTaskStats)
    # Polls still to answer with HTTP 500, so a test can show a failed poll
    # is retried as a poll.
    failing_polls: int = 0
    # Whether result URLs answer 403, as BFL's do once expired (10 minutes).
    urls_expired: bool = False
    _tasks: OrderedDict[str, FluxTask] = field(default_factory=OrderedDict)
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(16))

    def submit(self, render: Callable[[], bytes], plan: AnswerPlan) -> str:
        """A new task's id; `render` draws its image when it is first needed."""
        task_id = secrets.token_hex(12)
        self._tasks[task_id] = FluxTask(render, plan.pending_polls, plan.outcome)
        while len(self._tasks) > _MAX_TASKS:
            self._tasks.popitem(last=False)
        self.stats.linked += 1
        return task_id

    def signature(self, task_id: str) -> str:
        return hmac.new(self._secret, task_id.encode(), hashlib.sha256).hexdigest()[:32]

    def signed(self, task_id: str, signature: str) -> bool:
        """Whether `signature` is the one a link for `task_id` carries."""
        return hmac.compare_digest(signature, self.signature(task_id))

    def poll(self, task_id: str) -> tuple[dict[str, Any], str | None]:
        """A poll's body, and the task id whose sample is ready (else None)."""
        self.stats.polls += 1
        task = self._tasks.get(task_id)
        if task is None:
            return {"id": task_id, "status": "Task not found"}, None
        if task.pending_polls is None or task.pending_polls > 0:
            if task.pending_polls is not None:
                task.pending_polls -= 1
            return {"id": task_id, "status": PENDING}, None
        if task.outcome != READY:
            return {"id": task_id, "status": task.outcome, "result": None}, None
        return {"id": task_id, "status": READY}, task_id

    def delivery(self, task_id: str, signature: str, with_credentials: bool) -> FluxTask | None:
        """The task a delivery GET names; None if unknown or mis-signed."""
        self.stats.deliveries += 1
        if with_credentials:
            self.stats.deliveries_with_credentials += 1
        task = self._tasks.get(task_id)
        if task is None or self.urls_expired:
            return None
        if not self.signed(task_id, signature):
            return None
        return task

    def reset(self) -> None:
        self.stats = FluxTaskStats()
        self.failing_polls = 0
        self.urls_expired = False
        self._tasks.clear()

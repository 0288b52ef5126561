"""An emulated task: its status over time, and how its fault decides its fate.

A task stays PENDING for the first `pending_fraction` of its latency (the
fault plan's latency for that request), RUNNING for the rest, then
SUCCEEDED or FAILED; a PENDING task can be CANCELED. The fault variants that
show inside a task, rather than at submission, are defined here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from server.sandbox.bailian_wan.validation import Job
from server.sandbox.faults import Fault, FaultMode, strip_directives
from server.sandbox.render import render_png

# Fault variants (see the package docstring).
IN_TASK = "task"
PARTIAL = "partial"
PARTIAL_RESULTS = "partial_results"
AT_SUBMIT = "submit"
AT_POLL = "poll"
AT_DOWNLOAD = "download"

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED, UNKNOWN = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELED",
    "UNKNOWN",
)


@dataclass
class EmulatedTask:
    """One task and the fault that decides its fate."""

    task_id: str
    job: Job
    fault: Fault
    latency: float
    pending_s: float
    created: float = field(default_factory=time.monotonic)
    submit_time: str = field(default_factory=lambda: clock())
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
            self.end_time = clock()
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


def clock() -> str:
    """Now, as DashScope writes `submit_time` and `end_time`."""
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def render_result(task: EmulatedTask, index: int) -> bytes:
    """The PNG of result image `index` of `task`, showing the prompt."""
    job = task.job
    label = f"sandbox {job.model} {job.width}x{job.height} #{index + 1}/{job.n}"
    if job.seed is not None:
        label += f" seed {job.seed}"
    return render_png(job.width, job.height, strip_directives(job.prompt), label=label)

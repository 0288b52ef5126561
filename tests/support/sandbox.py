"""Putting the session's sandbox back as it was between tests.

The root conftest starts one `SandboxServer` for the whole session (starting
uvicorn and the Vertex gRPC listener per test cost most of the suite's
set-up time). Tests program the emulators (fault queues, latencies, a rotated
key, a quota) and read what they saw (counters, received bodies, tasks), so
after each test `SandboxBaseline.restore` puts every emulator back:

- each fault plan: in-flight requests are released, queued faults, latencies
  and counters cleared (`FaultPlan.reset`), `default_latency` and `hang_s`
  set back;
- every other emulator attribute that is plain data (numbers, strings, keys,
  flags), a container (the `received` deques, Wan's tasks, MAI's quota
  window) or a dataclass (Wan's stats) goes back to its value at start-up.

The rule is generic on purpose: an emulator added later (one object with a
`faults` plan and plain attributes) is reset without a change here. Objects
that are neither (listeners, relays, servers) are left alone: they are the
sandbox's machinery, not state a test sets.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from server.sandbox.faults import FaultPlan
from server.sandbox.server import SandboxServer

_PLAIN = (type(None), bool, int, float, str, bytes, tuple, frozenset)
_CONTAINERS = (list, dict, set, collections.deque)
# How long a request left in flight by the previous test may take to end once
# released (it answers 503 at once; this only bounds a bug).
_DRAIN_S = 5.0


def _is_state(value: Any) -> bool:
    if isinstance(value, FaultPlan):
        return False
    is_dataclass_instance = dataclasses.is_dataclass(value) and not isinstance(value, type)
    return isinstance(value, _PLAIN + _CONTAINERS) or is_dataclass_instance


@dataclass(frozen=True)
class _EmulatorBaseline:
    attributes: dict[str, Any]
    default_latency: float
    hang_s: float


class SandboxBaseline:
    """What every emulator of `sandbox` looked like when taken."""

    def __init__(self, sandbox: SandboxServer) -> None:
        self._sandbox = sandbox
        self._emulators = {
            emulator.name: _EmulatorBaseline(
                attributes={
                    name: copy.deepcopy(value)
                    for name, value in vars(emulator).items()
                    if _is_state(value)
                },
                default_latency=emulator.faults.default_latency,
                hang_s=emulator.faults.hang_s,
            )
            for emulator in sandbox.emulators
        }

    async def restore(self) -> None:
        """Put every emulator back as it was when this baseline was taken."""
        for emulator in self._sandbox.emulators:
            baseline = self._emulators[emulator.name]
            await _settle(emulator.faults)
            emulator.faults.reset()
            emulator.faults.default_latency = baseline.default_latency
            emulator.faults.hang_s = baseline.hang_s
            current = vars(emulator)
            for name, value in baseline.attributes.items():
                _put_back(current, name, value)
            for name in [n for n, v in current.items() if n not in baseline.attributes]:
                if _is_state(current[name]):
                    # State a test added (an attribute the emulator did not
                    # have at start-up) goes too.
                    delattr(emulator, name)


def _put_back(current: dict[str, Any], name: str, value: Any) -> None:
    now = current.get(name)
    if isinstance(value, _CONTAINERS) and type(now) is type(value):
        # In place, so references the emulator's routes hold stay valid (and
        # a deque keeps its maxlen).
        now.clear()
        if isinstance(now, dict | set):
            now.update(copy.deepcopy(value))
        else:
            now.extend(copy.deepcopy(value))
    else:
        current[name] = copy.deepcopy(value)


async def _settle(plan: FaultPlan) -> None:
    """End requests the previous test left waiting in the emulator (a hung
    upstream call whose client has gone), so they are not counted in the next
    test: `close` answers them 503 at once, `open` lets new ones in."""
    if plan.stats.in_flight == 0:
        return
    plan.close()
    try:
        await plan.wait_for(lambda stats: stats.in_flight == 0, within_s=_DRAIN_S)
    finally:
        plan.open()

"""`server.startup_heap`: startup's objects leave the collected generations,
startup's garbage does not stay behind with them.

Each check runs in a fresh interpreter that imports the service as `serve`
does: freezing is process-wide, and the test process's own objects would
blur the counts.
"""

from __future__ import annotations

import json
import subprocess
import sys

_FREEZE = """
import gc, json, weakref
import server.app, server.rest.app  # what the two processes import to serve

class Node:
    pass

# Startup garbage: a reference cycle only the cyclic collector can free.
cycle = Node()
cycle.self = cycle
freed = []
weakref.finalize(cycle, freed.append, True)
del cycle

from server.startup_heap import freeze_startup_objects

tracked_before = len(gc.get_objects())
frozen = freeze_startup_objects()
print(json.dumps({
    "tracked_before": tracked_before,
    "tracked_after": len(gc.get_objects()),
    "frozen": frozen,
    "cycle_freed": freed == [True],
}))
"""


def _run() -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _FREEZE], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_startup_objects_leave_the_collected_generations() -> None:
    result = _run()
    before, after, frozen = result["tracked_before"], result["tracked_after"], result["frozen"]
    assert isinstance(before, int) and isinstance(after, int) and isinstance(frozen, int)
    # The service's imports alone leave tens of thousands of containers;
    # after freezing, collections see almost none of them.
    assert before > 20_000
    assert frozen > 0.9 * before
    assert after < 0.05 * before


def test_garbage_made_while_starting_is_collected_not_frozen() -> None:
    assert _run()["cycle_freed"] is True

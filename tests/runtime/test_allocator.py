"""`server.allocator`: freed image-sized buffers are reused, not faulted in again.

Each check runs in a fresh interpreter: the allocator's thresholds are
process-wide and cannot be undone.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.allocator import keep_freed_buffers

# Eight 4 MiB buffers at once (a few concurrent upstream bodies), freed and
# made again; the minor page faults of the last rounds say whether the
# memory was kept or given back to the kernel and faulted in again.
_ROUNDS = """
import resource, sys
from server.allocator import keep_freed_buffers
tuned = keep_freed_buffers() if sys.argv[1] == "tuned" else False
def round_():
    held = [bytearray(4 << 20) for _ in range(8)]
    del held
for _ in range(3):
    round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_()
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def _faults_per_round(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_buffers_are_reused_instead_of_faulted_in_again() -> None:
    tuned, tuned_faults = _faults_per_round("tuned")
    _, default_faults = _faults_per_round("default")

    assert tuned == "True"
    # 32 MiB per round is 8,192 pages: by default most are faulted in again.
    assert default_faults > 4_000
    assert tuned_faults < 100


@pytest.mark.parametrize("tunable", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operators_own_glibc_tunables_win(tunable: str) -> None:
    assert keep_freed_buffers({tunable: "1048576"}) is False

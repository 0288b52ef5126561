"""glibc's allocator, told to keep the multi-megabyte buffers images pass through.

Every image crosses a few buffers of its own size: the upstream's body, the
copy httpx keeps, the decoded image; in the sidecar the gRPC answer and its
base64. glibc serves an allocation above its mmap threshold (128 KiB at
start, raised as such blocks are freed) with a fresh `mmap`, and hands the
top of its heap back to the kernel once more than twice that is free. So
under steady load each of those buffers is new memory, faulted in and
zeroed by the kernel a page at a time: 300-1,200 page faults per 3 MiB
image in the server under the benchmark's load (BENCHMARKS.md, fix 17).

`keep_freed_buffers` raises the mmap threshold to glibc's 64-bit maximum
(32 MiB) and the trim threshold to 256 MiB, so a freed image buffer stays in
the heap and the next request's reuses it. The price is resident memory:
up to the trim threshold of free heap is kept rather than returned.

An operator's own `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_`
(glibc's environment tunables, read at process start) wins: then this does
nothing. On a C library without `mallopt` (musl) it does nothing either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

# From glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc refuses more on 64-bit
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024
_OPERATOR_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_buffers(environ: Mapping[str, str] = os.environ) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if done."""
    if any(name in environ for name in _OPERATOR_TUNABLES):
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 for a value it refuses.
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not done:
        log.warning("The C library refused the allocator thresholds; running without them.")
    return done

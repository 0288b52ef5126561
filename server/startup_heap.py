"""The objects a process made while starting, kept out of the cyclic GC's way.

Python's cyclic garbage collector traverses every container object of the
generations it collects. Starting the service leaves about 100,000 of them
that live as long as the process: modules and their functions, protobuf
descriptors, pydantic models, botocore's service models, OpenTelemetry and
Prometheus registries. Each full (oldest-generation) collection traversed
them all again, 66 ms of CPU for one in the production configuration's
16 KiB benchmark cell, while the requests it served keep making cycles
(coroutines, frames, futures) that make collections run.

`freeze_startup_objects` collects what starting left as garbage and then
moves every surviving object to the permanent generation (`gc.freeze`),
which no collection traverses: the same full collection took 7.6 ms, and
the process's GC time per request fell by about a third (BENCHMARKS.md,
round 7). Objects made later are collected as before; a frozen object
that becomes garbage is only reclaimed by reference counting, which is
how startup objects end anyway.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect startup's garbage, then freeze what is left; returns how
    many objects were frozen. Call once the process is serving (its
    modules imported and its clients, channels and servers built)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

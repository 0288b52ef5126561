"""CPU seconds and resident memory of other processes, read from /proc (Linux).

CPU time comes from each thread's `se.sum_exec_runtime` in
`/proc/<pid>/task/<tid>/sched` (nanosecond resolution) when every thread
seen at the start of a window still exists at its end; otherwise (a thread
exited, or the file is missing) from `/proc/<pid>/stat`'s utime + stime,
which include exited threads but tick only every 10 ms.

Peak RSS is the kernel's high-water mark, `VmHWM` in `/proc/<pid>/status`;
`reset_peak` sets it back to the current RSS (by writing 5 to
`/proc/<pid>/clear_refs`) so that each measurement window has its own peak.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnapshot:
    """One reading of a process's CPU time."""

    pid: int
    # Thread id -> seconds on CPU; empty when /proc/<pid>/task/*/sched is unreadable.
    threads: dict[int, float]
    # utime + stime of the whole process, exited threads included.
    total_ticks: float


def _thread_runtime(pid: int, tid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/sched") as file:
            for line in file:
                if line.startswith("se.sum_exec_runtime"):
                    return float(line.rsplit(":", 1)[1]) / 1000.0  # ms -> s
    except (OSError, ValueError):
        return None
    return None


def _stat_fields(pid: int | str) -> list[str]:
    """`/proc/<pid>/stat` after the command name: proc(5)'s field 3 is index 0."""
    with open(f"/proc/{pid}/stat") as file:
        # The command name (field 2) may contain spaces; fields after it are fixed.
        return file.read().rsplit(")", 1)[1].split()


@dataclass(frozen=True)
class CpuSplit:
    """User and system CPU seconds and minor page faults of a process so far."""

    user_s: float
    system_s: float
    minor_faults: int


def cpu_split(pid: int) -> CpuSplit:
    """`pid`'s CPU time as user and system time (clock ticks), and its minor faults."""
    fields = _stat_fields(pid)
    # minflt, utime, stime are proc(5)'s fields 10, 14 and 15.
    return CpuSplit(int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS, int(fields[7]))


def cpu_snapshot(pid: int) -> CpuSnapshot:
    """The CPU time `pid` (all its threads) has used so far."""
    fields = _stat_fields(pid)
    ticks = float(fields[11]) + float(fields[12])  # utime, stime (fields 14, 15)
    threads: dict[int, float] = {}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = []
    for tid in tids:
        runtime = _thread_runtime(pid, tid)
        if runtime is None:
            threads = {}
            break
        threads[tid] = runtime
    return CpuSnapshot(pid, threads, ticks)


def cpu_seconds_between(start: CpuSnapshot, end: CpuSnapshot) -> float:
    """CPU seconds `end.pid` used between the two snapshots."""
    if start.threads and end.threads and set(start.threads) <= set(end.threads):
        return sum(end.threads[tid] - start.threads.get(tid, 0.0) for tid in end.threads)
    return (end.total_ticks - start.total_ticks) / _CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    """Current resident set size of `pid`, MiB."""
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size of `pid` since it started or since `reset_peak`, MiB."""
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> bool:
    """Reset `pid`'s peak RSS to its current RSS; False if the kernel refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        return False
    return True


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it now (a peer's workers, say)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(entry)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found

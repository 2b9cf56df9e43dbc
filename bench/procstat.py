"""What a process costs, read from /proc: resident memory and CPU seconds (all threads, user + system).

CPU seconds rather than wall time: on this shared 2-core machine the wall clock of a benchmark depends on whoever
else is running, while the CPU a process burns for a given piece of work mostly does not.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_s", "peak_rss_mb", "rss_mb", "run_time_s"]

_TICKS = os.sysconf("SC_CLK_TCK")


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for pid {pid}")


def rss_mb(pid: int) -> float:
    """VmRSS in MiB (1024 × 1024 bytes)."""
    return _status_mb(pid, "VmRSS")


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the highest RSS the process has had, in MiB."""
    return _status_mb(pid, "VmHWM")


def cpu_s(pid: int) -> float:
    """utime + stime of every thread of the process so far, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def run_time_s(pid: int) -> float:
    """Time on CPU of the process's live threads, in seconds with nanosecond resolution (schedstat), for short idle
    windows where the 10 ms ticks of `cpu_s` are too coarse. A thread that exits between two readings takes its
    time with it: use over windows where the set of threads is stable (idle processes)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended while we were reading
    return total / 1e9

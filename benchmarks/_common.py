"""Small helpers shared by the benchmark scripts (each puts the repository root on ``sys.path``)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path


def cpu_ms(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (milliseconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e3 / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``values`` (0 <= q <= 1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def local_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, or None when it is not on this host (no /proc entry)."""
    try:
        return cpu_ms(pid) / 1e3
    except OSError:
        return None


def host_speed_ms() -> float:
    """Milliseconds for a fixed pure-Python loop (1M additions), best of 5: how fast this host runs right now.

    The latency figures scale with it. This project's 2-core VM shares its
    host with other guests: within one day the same commit's tick-to-order
    median moved from 19 to 27 ms. Lower is faster; quote it next to every
    latency, and compare runs only at similar figures.
    """
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return round(best * 1e3, 1)

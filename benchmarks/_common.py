"""Small helpers shared by the benchmark scripts (each puts the repository root on ``sys.path``)."""

from __future__ import annotations

import os
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

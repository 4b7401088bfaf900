"""Per-source clock normalization: split receive lag into latency and offset.

Every tick carries two clocks: the venue's ``source_ts`` and our ``recv_ts``.
Their difference, the receive lag, is

    lag = recv_ts - source_ts = network/processing delay + (our clock - venue clock)

What one-way timestamps can and cannot tell
-------------------------------------------
With timestamps flowing in one direction only, delay and clock offset are
*not separable*: a venue whose clock runs 100 ms behind ours and a network
that takes 100 ms longer produce exactly the same lags. NTP separates them
only because it measures a round trip and assumes the path is symmetric; a
market-data feed has no round trip. What we *can* do:

1. Estimate the floor of the lag. Queueing, bursts and GC pauses only ever add
   delay, so the minimum lag over a window is the best case: the minimum
   network delay plus the offset (NTP's clock filter uses the same minimum
   filter for the same reason). That is ``baseline``.
2. Turn the floor into an offset estimate with a configured assumption about
   the minimum network delay to that source: ``offset = baseline -
   assumed_min_latency``. With the default assumption of 0 ms the "offset" is
   an upper bound on the true offset (it still contains the whole network
   floor). With a measured floor (for example half a ping RTT to the venue's
   gateway) it is a real estimate, as good as that assumption.
3. Watch the floor move. A baseline that steps or drifts while the network
   path stays the same is a clock moving; ``drift_alert`` fires when the
   offset estimate passes ``alert_ms`` in either direction. A negative lag
   (tick "received before it was sent") can only be a clock offset.

What stays unknowable from this data alone: which of the two clocks is wrong,
and any constant part of the offset that hides inside the assumed latency.
``host_clock_status`` reports our own kernel's NTP state so an operator can
tell whether our side is synchronised.

Costs
-----
``ClockEstimator.update`` is O(1) amortised: a monotonic deque gives the
sliding minimum, and running integer sums (exact, no float drift) give the
mean lag and the jitter. Lags are kept in integer nanoseconds; milliseconds
are produced only for the returned state.

This module is pure apart from the ``adjtimex`` system call: no Django, no ORM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

_NS_PER_MS = 1_000_000


# Not frozen: a frozen dataclass sets each field through object.__setattr__,
# which tripled the cost of ``update``; the estimator never keeps or mutates
# a state it has returned, so nothing is lost.
@dataclass(slots=True)
class ClockState:
    """The estimator's view of one source after the latest sample.

    ``lag_ms``: this sample's receive lag.
    ``baseline_ms``: minimum lag over the window (min network delay + offset).
    ``offset_ms``: ``baseline_ms - assumed_min_latency_ms``; positive means
    the venue's clock is behind ours (or the network floor is larger than
    assumed).
    ``mean_lag_ms``: mean lag over the window.
    ``jitter_ms``: RMS of successive lag differences over the window, NTP's
    jitter measure (RFC 5905 section 11.2); a robust spread that needs no sort.
    ``samples``: samples currently in the window (at most ``window``).
    ``total_samples``: samples seen since creation.
    ``drift_alert``: ``abs(offset_ms) > alert_ms``.
    """

    lag_ms: float
    baseline_ms: float
    offset_ms: float
    mean_lag_ms: float
    jitter_ms: float
    samples: int
    total_samples: int
    drift_alert: bool


class ClockEstimator:
    """Sliding-window receive-lag statistics for one source (one venue feed).

    ``window``: number of most recent samples the statistics cover.
    ``alert_ms``: offset magnitude beyond which ``drift_alert`` is raised.
    ``assumed_min_latency_ms``: the network floor assumed for this source;
    0 by default, which makes ``offset_ms`` an upper bound (see module docs).
    """

    def __init__(self, window: int = 1000, alert_ms: float = 100.0, assumed_min_latency_ms: float = 0.0) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.alert_ms = alert_ms
        self.assumed_min_latency_ms = assumed_min_latency_ms
        self._index = 0
        self._lags: deque[int] = deque()
        # Monotonic deque of (index, lag) with strictly increasing lags; its
        # head is the minimum of the window. Each sample enters and leaves
        # once, hence O(1) amortised.
        self._mins: deque[tuple[int, int]] = deque()
        self._sum = 0
        # Successive differences inside the window, kept for the jitter sum.
        self._diffs_sq: deque[int] = deque()
        self._sum_diff_sq = 0

    def update(self, source_ns: int, recv_ns: int) -> ClockState:
        """Add one sample (venue timestamp, our receive timestamp, both ns) and return the new state."""
        lag = self._add(source_ns, recv_ns)
        return self._state(lag)

    def update_many(self, samples: Iterable[tuple[int, int]]) -> ClockState | None:
        """Add ``(source_ns, recv_ns)`` samples of one batch; return the state after the last.

        Identical to calling ``update`` for each sample, but builds one state
        per batch instead of one per tick (the ingest worker works in batches).
        """
        add = self._add
        lag = None
        for source_ns, recv_ns in samples:
            lag = add(source_ns, recv_ns)
        return None if lag is None else self._state(lag)

    def update_arrays(self, source_ns: np.ndarray, recv_ns: np.ndarray) -> ClockState | None:
        """``update_many`` for a batch given as two int64 arrays of ns (same state, same result).

        The state after a batch depends only on the last ``window`` lags and
        the sample count, so a batch at least a quarter of the window long
        rebuilds it from those in a few passes instead of one Python step per
        sample; shorter batches go sample by sample. Sums stay Python
        integers (exact); only the lags themselves come out of numpy.
        """
        n = len(source_ns)
        if n == 0:
            return None
        if n < max(self.window // 4, 1):
            return self.update_many(zip(source_ns.tolist(), recv_ns.tolist(), strict=True))
        new = (recv_ns[-self.window :] - source_ns[-self.window :]).tolist()
        lags = (list(self._lags) + new)[-self.window :] if len(new) < self.window else new
        self._index += n
        first = self._index - len(lags)
        diffs = [(b - a) ** 2 for a, b in pairwise(lags)]
        # The monotonic deque holds exactly the window's lags that are below
        # every later one: build it from the right.
        mins: list[tuple[int, int]] = []
        low = None
        for k in range(len(lags) - 1, -1, -1):
            if low is None or lags[k] < low:
                low = lags[k]
                mins.append((first + k, low))
        mins.reverse()
        self._lags = deque(lags)
        self._diffs_sq = deque(diffs)
        self._mins = deque(mins)
        self._sum = sum(lags)
        self._sum_diff_sq = sum(diffs)
        return self._state(lags[-1])

    def _add(self, source_ns: int, recv_ns: int) -> int:
        lag = recv_ns - source_ns
        index = self._index
        self._index += 1

        lags = self._lags
        if lags:
            diff_sq = (lag - lags[-1]) ** 2
            self._diffs_sq.append(diff_sq)
            self._sum_diff_sq += diff_sq
        lags.append(lag)
        self._sum += lag
        if len(lags) > self.window:
            self._sum -= lags.popleft()
            self._sum_diff_sq -= self._diffs_sq.popleft()

        mins = self._mins
        while mins and mins[-1][1] >= lag:
            mins.pop()
        mins.append((index, lag))
        if mins[0][0] <= index - self.window:
            mins.popleft()
        return lag

    def _state(self, lag: int) -> ClockState:
        count = len(self._lags)
        baseline_ms = self._mins[0][1] / _NS_PER_MS
        offset_ms = baseline_ms - self.assumed_min_latency_ms
        diffs = len(self._diffs_sq)
        jitter_ms = math.sqrt(self._sum_diff_sq / diffs) / _NS_PER_MS if diffs else 0.0
        return ClockState(
            lag_ms=lag / _NS_PER_MS,
            baseline_ms=baseline_ms,
            offset_ms=offset_ms,
            mean_lag_ms=self._sum / count / _NS_PER_MS,
            jitter_ms=jitter_ms,
            samples=count,
            total_samples=self._index,
            drift_alert=abs(offset_ms) > self.alert_ms,
        )

    @property
    def state(self) -> ClockState | None:
        """The state after the latest sample, or None before the first."""
        if not self._lags:
            return None
        return self._state(self._lags[-1])

    def lag_quantiles_ms(self, quantiles: tuple[float, ...] = (0.25, 0.5, 0.75)) -> dict[float, float]:
        """Quantiles of the lags in the window (nearest rank), for reports.

        This sorts the window, O(window log window): call it for a dashboard
        or an alert message, not per tick.
        """
        ordered = sorted(self._lags)
        if not ordered:
            return {}
        last = len(ordered) - 1
        return {q: ordered[round(q * last)] / _NS_PER_MS for q in quantiles}


# --------------------------------------------------------------------------
# Host clock (kernel NTP discipline) via adjtimex(2)
# --------------------------------------------------------------------------

_STA_UNSYNC = 0x0040
_STA_NANO = 0x2000
_TIME_ERROR = 5
_CLOCK_STATES = {0: "TIME_OK", 1: "TIME_INS", 2: "TIME_DEL", 3: "TIME_OOP", 4: "TIME_WAIT", 5: "TIME_ERROR"}


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    """``struct timex`` from <sys/timex.h> (Linux, glibc and musl layouts agree)."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        # The kernel reserves eleven more ints; without them it would write
        # past the end of our buffer.
        ("_reserved", ctypes.c_int * 11),
    )


def host_clock_status() -> dict[str, Any]:
    """Read this host's kernel clock-discipline state with ``adjtimex`` (read-only, modes = 0).

    Returns ``{"available": True, "synchronised": bool, "maxerror_us", "esterror_us",
    "offset_us", "status", "clock_state"}``, or ``{"available": False, "error": str}``
    where the call does not exist (not Linux, no libc, a sandbox that forbids it).
    ``synchronised`` is true when the kernel's STA_UNSYNC bit is clear and the clock
    state is not TIME_ERROR, i.e. an NTP/PTP daemon is disciplining the clock.
    """
    try:
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        libc = ctypes.CDLL(libc_name, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError) as exc:
        return {"available": False, "error": f"adjtimex unavailable: {exc}"}
    adjtimex.argtypes = (ctypes.POINTER(_Timex),)
    adjtimex.restype = ctypes.c_int
    timex = _Timex()
    timex.modes = 0
    result = adjtimex(ctypes.byref(timex))
    if result == -1:
        errno = ctypes.get_errno()
        return {"available": False, "error": f"adjtimex failed: errno {errno}"}
    # With STA_NANO the kernel reports the offset in ns, otherwise in us.
    offset_us = timex.offset / 1000 if timex.status & _STA_NANO else float(timex.offset)
    return {
        "available": True,
        "synchronised": not (timex.status & _STA_UNSYNC) and result != _TIME_ERROR,
        "maxerror_us": int(timex.maxerror),
        "esterror_us": int(timex.esterror),
        "offset_us": offset_us,
        "status": int(timex.status),
        "clock_state": _CLOCK_STATES.get(result, str(result)),
    }

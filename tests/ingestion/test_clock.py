"""Clock estimator against the recorded Tardis lags, computed here with plain Python."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pytest

from ingestion.clock import ClockEstimator, host_clock_status

QUOTES = Path("/work/shared/data/tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv")
MS = 1_000_000


def _tardis_pairs() -> list[tuple[int, int]]:
    with QUOTES.open(newline="") as handle:
        return [(int(r["timestamp"]) * 1000, int(r["local_timestamp"]) * 1000) for r in csv.DictReader(handle)]


def test_it_tracks_the_sliding_minimum_lag_of_the_recorded_quotes():
    pairs = _tardis_pairs()
    lags = [recv - source for source, recv in pairs]
    window = 1000
    estimator = ClockEstimator(window=window)

    states = [estimator.update(source, recv) for source, recv in pairs]

    for i in range(0, len(lags), 97):
        expected_min = min(lags[max(0, i - window + 1) : i + 1])
        assert states[i].baseline_ms == expected_min / MS
    final = states[-1]
    assert final.baseline_ms == min(lags[-window:]) / MS
    assert final.samples == window
    assert final.total_samples == len(lags) == 9999
    assert final.mean_lag_ms == pytest.approx(statistics.fmean(lags[-window:]) / MS)
    diffs = [b - a for a, b in zip(lags[-window:], lags[-window + 1 :], strict=False)]
    assert final.jitter_ms == pytest.approx(math.sqrt(sum(d * d for d in diffs) / len(diffs)) / MS)


def test_it_raises_the_drift_alert_on_the_recorded_quotes_with_no_assumed_latency():
    pairs = _tardis_pairs()
    lags_ms = [(recv - source) / MS for source, recv in pairs]
    estimator = ClockEstimator()

    for source, recv in pairs:
        state = estimator.update(source, recv)

    # The README's figures, recomputed: lags from ~115 ms (114.5 exactly) to 2.4 s, median ~122 ms.
    assert 114 < min(lags_ms) < 116
    assert 120 < statistics.median(lags_ms) < 124
    assert 2400 < max(lags_ms) < 2500
    assert state.offset_ms == state.baseline_ms > 100
    assert state.drift_alert is True


def test_it_clears_the_alert_when_the_assumed_network_floor_explains_the_lag():
    pairs = _tardis_pairs()
    floor_ms = min(recv - source for source, recv in pairs[-1000:]) / MS
    estimator = ClockEstimator(assumed_min_latency_ms=floor_ms - 20)

    for source, recv in pairs:
        state = estimator.update(source, recv)

    assert state.offset_ms == pytest.approx(20)
    assert state.drift_alert is False


def test_it_flags_a_venue_clock_ahead_of_ours_as_negative_offset():
    estimator = ClockEstimator(window=3, alert_ms=100)

    state = estimator.update(source_ns=1_000 * MS, recv_ns=850 * MS)

    assert state.offset_ms == -150
    assert state.drift_alert is True


def test_it_forgets_a_minimum_once_it_leaves_the_window():
    estimator = ClockEstimator(window=3)
    lags = [50, 10, 40, 30, 60, 70]
    baselines = [estimator.update(0, lag * MS).baseline_ms for lag in lags]

    assert baselines == [50, 10, 10, 10, 30, 30]


def test_it_reports_quantiles_of_the_window_on_demand():
    estimator = ClockEstimator(window=5)
    for lag in (5, 1, 4, 2, 3, 100):
        estimator.update(0, lag * MS)

    assert estimator.lag_quantiles_ms((0.0, 0.5, 1.0)) == {0.0: 1.0, 0.5: 3.0, 1.0: 100.0}


def test_it_reads_the_host_clock_state_without_crashing():
    status = host_clock_status()

    assert isinstance(status["available"], bool)
    if status["available"]:
        assert isinstance(status["synchronised"], bool)
        assert status["maxerror_us"] >= 0
        assert status["synchronised"] == (not status["status"] & 0x40 and status["clock_state"] != "TIME_ERROR")
    else:
        assert status["error"]


def test_it_reports_unavailable_when_libc_has_no_adjtimex(monkeypatch):
    import ctypes

    class NoLibc:
        def __init__(self, *args, **kwargs):
            raise OSError("no libc here")

    monkeypatch.setattr(ctypes, "CDLL", NoLibc)

    status = host_clock_status()

    assert status["available"] is False
    assert "no libc here" in status["error"]


def test_its_batch_update_gives_the_same_state_as_per_sample_updates():
    pairs = _tardis_pairs()
    one_by_one = ClockEstimator(window=500)
    batched = ClockEstimator(window=500)

    for source, recv in pairs:
        expected = one_by_one.update(source, recv)
    batch_states = [batched.update_many(pairs[i : i + 256]) for i in range(0, len(pairs), 256)]

    assert batch_states[-1] == expected
    assert batched.update_many([]) is None


def test_a_batch_of_chunks_updates_the_clock_as_its_samples_one_by_one():
    import numpy as np

    from ingestion.services import _clock_update

    rng = np.random.default_rng(7)
    source = np.cumsum(rng.integers(1, 5_000_000, 4000)).astype(np.int64)
    recv = source + rng.integers(1_000_000, 90_000_000, 4000)
    chunks = [(source[a:b], recv[a:b]) for a, b in ((0, 1700), (1700, 3400), (3400, 4000))]
    joined, one_by_one = ClockEstimator(), ClockEstimator()
    for _ in range(2):  # twice: the second batch continues the window of the first
        assert _clock_update(joined, chunks) == one_by_one.update_many(zip(source.tolist(), recv.tolist(), strict=True))
        source, recv = source + 10**9, recv + 10**9
        chunks = [(s + 10**9, r + 10**9) for s, r in chunks]

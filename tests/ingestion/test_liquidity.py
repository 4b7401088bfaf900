"""Liquidity monitor on the recorded Tardis quotes, figures recomputed here from the CSV."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import pytest

from ingestion.liquidity import LiquidityMonitor
from ingestion.parsers import iter_file_records, parse
from ingestion.types import QuoteTick

QUOTES = Path("/work/shared/data/tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv")
S = 1_000_000_000


def _rows() -> list[dict[str, str]]:
    with QUOTES.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _ticks() -> list[QuoteTick]:
    return [parse("tardis-quotes", rec, recv_ns=0)[0] for rec, _ in iter_file_records("tardis-quotes", QUOTES)]


def _spread_bps(row: dict[str, str]) -> float:
    bid, ask = float(row["bid_price"]), float(row["ask_price"])
    return (ask - bid) / ((ask + bid) / 2) * 10_000


def test_it_computes_spread_size_and_quote_rate_over_the_window_on_recorded_quotes():
    rows = _rows()
    monitor = LiquidityMonitor(window_s=10.0, max_spread_bps=1.0, min_top_notional=1_000.0, min_quote_rate=5.0)

    states = [monitor.update(tick) for tick in _ticks()]

    timestamps = [int(r["timestamp"]) * 1000 for r in rows]
    for i in (0, 500, 5000, len(rows) - 1):
        in_window = [j for j in range(i + 1) if timestamps[j] > timestamps[i] - 10 * S]
        row = rows[i]
        state = states[i]
        assert state.spread_bps == pytest.approx(_spread_bps(row))
        assert state.quotes_in_window == len(in_window)
        assert state.quote_rate == pytest.approx(len(in_window) / 10.0)
        assert state.mean_spread_bps == pytest.approx(sum(_spread_bps(rows[j]) for j in in_window) / len(in_window))
        bid_notional = float(row["bid_price"]) * float(row["bid_amount"])
        ask_notional = float(row["ask_price"]) * float(row["ask_amount"])
        assert state.top_notional == pytest.approx(min(bid_notional, ask_notional))
        assert state.thin_book == (min(bid_notional, ask_notional) < 1_000.0)


def test_it_flags_thin_books_on_the_recorded_quotes_exactly_where_the_thinner_side_is_small():
    rows = _rows()
    monitor = LiquidityMonitor(min_top_notional=1_000.0, max_spread_bps=1_000.0, min_quote_rate=0.0)

    flags = [monitor.update(tick).thin_book for tick in _ticks()]

    expected = [
        min(float(r["bid_price"]) * float(r["bid_amount"]), float(r["ask_price"]) * float(r["ask_amount"])) < 1_000.0
        for r in rows
    ]
    assert flags == expected
    assert 0 < sum(flags) < len(flags)


def _q(ts_ns: int, bid: str = "100", ask: str = "100.1", size: str = "500") -> QuoteTick:
    return QuoteTick("SIM-A", ts_ns, ts_ns, Decimal(bid), Decimal(size), Decimal(ask), Decimal(size))


def test_it_flags_a_wide_spread_on_the_window_mean_not_one_tick():
    monitor = LiquidityMonitor(window_s=10, max_spread_bps=50, min_top_notional=0, min_quote_rate=0)
    for i in range(9):
        assert monitor.update(_q(i * S // 10)).wide_spread is False

    # One quote 300 bps wide among nine at ~10 bps keeps the mean below 50.
    one_wide = monitor.update(_q(S, bid="100", ask="103"))
    assert one_wide.spread_bps > 290
    assert one_wide.wide_spread is False
    for i in range(1, 5):
        state = monitor.update(_q(S + i, bid="100", ask="103"))

    assert state.wide_spread is True
    assert state.low_liquidity is True
    assert state.reasons[0].startswith("wide_spread:")


def test_it_flags_slow_quotes_only_after_a_full_window_and_when_the_feed_goes_quiet():
    monitor = LiquidityMonitor(window_s=10, max_spread_bps=1_000, min_top_notional=0, min_quote_rate=2)
    first = monitor.update(_q(0))
    assert first.slow_quotes is False  # warming up: the window has not elapsed yet
    for i in range(1, 101):
        state = monitor.update(_q(i * S // 10))
    assert state.quote_rate == pytest.approx(10.0)
    assert state.slow_quotes is False

    quiet = monitor.state_at("SIM-A", 10 * S + 9 * S)

    assert quiet.quotes_in_window == 10  # quotes at 9.1 s .. 10.0 s are still within 10 s of 19 s
    assert quiet.quote_rate == pytest.approx(1.0)
    assert quiet.slow_quotes is True
    assert monitor.state_at("SIM-A", 100 * S).quotes_in_window == 0
    assert monitor.state_at("OTHER", 0) is None


def test_its_batch_update_gives_the_same_state_as_per_quote_updates():
    ticks = _ticks()
    one_by_one = LiquidityMonitor(window_s=5.0)
    batched = LiquidityMonitor(window_s=5.0)

    for tick in ticks:
        expected = one_by_one.update(tick)
    for i in range(0, len(ticks), 300):
        result = batched.update_many(ticks[i : i + 300])

    assert result == {"BTCUSDT": expected}
    assert expected.mean_spread_bps == pytest.approx(one_by_one.state_at("BTCUSDT", ticks[-1].source_ts_ns).mean_spread_bps)

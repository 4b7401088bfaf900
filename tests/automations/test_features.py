"""Vectorized features, checked against values worked out by hand."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from automations.features import (
    compute_features,
    efficiency_ratio,
    l2_depth_notional,
    l2_imbalance,
    log_returns,
    microprice,
    mid_price,
    price_decimals,
    realized_volatility,
    rolling_efficiency_ratio,
    signed_trade_flow,
    spread_bps,
    top_of_book_imbalance,
)
from automations.strategies import MarketWindow
from ingestion.types import BookSnapshot

A = np.array


def test_it_computes_mid_and_spread_in_bps_of_the_mid() -> None:
    bid, ask = A([99.0, 100.0]), A([101.0, 100.5])
    assert mid_price(bid, ask).tolist() == [100.0, 100.25]
    assert spread_bps(bid, ask) == pytest.approx([200.0, 0.5 / 100.25 * 1e4])


def test_it_leans_the_microprice_toward_the_thinner_side() -> None:
    # 3 on the bid, 1 on the ask: (100*1 + 101*3) / 4 = 100.75, above the 100.5 mid.
    mp = microprice(A([100.0, 100.0]), A([101.0, 101.0]), A([3.0, 0.0]), A([1.0, 0.0]))
    assert mp[0] == pytest.approx(100.75)
    # Both sides empty: fall back to the mid rather than divide by zero.
    assert mp[1] == pytest.approx(100.5)


def test_it_bounds_top_of_book_imbalance_between_minus_one_and_one() -> None:
    imb = top_of_book_imbalance(A([3.0, 0.0, 0.0, 2.0]), A([1.0, 5.0, 0.0, 2.0]))
    assert imb.tolist() == [0.5, -1.0, 0.0, 0.0]


def book(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> BookSnapshot:
    return BookSnapshot(
        symbol="X",
        ts_ns=0,
        bids=tuple((Decimal(p), Decimal(s)) for p, s in bids),
        asks=tuple((Decimal(p), Decimal(s)) for p, s in asks),
    )


def test_it_sums_l2_imbalance_and_depth_over_the_requested_levels_only() -> None:
    b = book([("10", "1"), ("9", "2"), ("8", "100")], [("11", "1"), ("12", "1"), ("13", "100")])
    # Two levels: bids 3, asks 2 -> 1/5. The third level is ignored.
    assert l2_imbalance(b, 2) == pytest.approx(0.2)
    assert l2_imbalance(b, 1) == pytest.approx(0.0)
    assert l2_depth_notional(b, 2) == pytest.approx(10 + 18 + 11 + 12)
    assert l2_imbalance(None, 5) is None
    assert l2_imbalance(book([], []), 5) is None


def test_it_measures_realized_volatility_from_log_returns() -> None:
    prices = A([100.0, 101.0, 100.0, 102.0])
    r = log_returns(prices)
    assert r == pytest.approx([math.log(1.01), math.log(100 / 101), math.log(1.02)])
    expected = math.sqrt(sum(x * x for x in r))
    assert realized_volatility(r) == pytest.approx(expected)
    # Per second: the variance is spread over the elapsed time.
    assert realized_volatility(r, duration_s=4.0) == pytest.approx(expected / 2)
    assert realized_volatility(log_returns(A([5.0]))) == 0.0


def test_it_gives_efficiency_one_for_a_straight_line_and_zero_for_a_zigzag() -> None:
    line = np.linspace(100, 110, 51)
    zigzag = A([100.0, 101.0] * 25)
    assert efficiency_ratio(line) == pytest.approx(1.0)
    assert efficiency_ratio(zigzag[:-1]) == pytest.approx(0.0)
    # Three up, one down: net 2 over a path of 4.
    assert efficiency_ratio(A([0.0, 1.0, 2.0, 3.0, 2.0])) == pytest.approx(0.5)
    assert efficiency_ratio(A([5.0, 5.0, 5.0])) == 0.0


def test_it_computes_the_rolling_efficiency_ratio_like_the_scalar_one() -> None:
    rng = np.random.default_rng(7)
    prices = 100 + np.cumsum(rng.normal(size=200))
    rolling = rolling_efficiency_ratio(prices, 20)
    assert np.isnan(rolling[:20]).all()
    for i in (20, 57, 199):
        assert rolling[i] == pytest.approx(efficiency_ratio(prices[: i + 1], 20))


def test_it_signs_trade_size_by_aggressor() -> None:
    flow = signed_trade_flow(A([1.0, 2.0, 3.0]), np.array(["buy", "sell", None], dtype=object))
    assert flow.tolist() == [1.0, -2.0, 0.0]


def test_it_infers_the_price_grid_from_the_quotes() -> None:
    assert price_decimals(A([9682.0, 9681.92, 9681.9])) == 2
    assert price_decimals(A([9682.0, 9683.0])) == 0
    assert price_decimals(A([0.5123, 0.51])) == 4


def window(quotes: pd.DataFrame, trades: pd.DataFrame, now_ns: int) -> MarketWindow:
    return MarketWindow("X", quotes, trades, None, now_ns)


QUOTES = pd.DataFrame(
    {
        "ts_ns": [1, 2, 3],
        "bid": [100.0, 100.5, 101.0],
        "ask": [100.5, 101.0, 101.5],
        "bid_size": [1.0, 2.0, 3.0],
        "ask_size": [1.0, 1.0, 1.0],
    }
)

NO_TRADES = pd.DataFrame({"ts_ns": [], "price": [], "size": [], "side": []})


def test_it_counts_trade_flow_over_a_half_open_time_window_ending_now() -> None:
    trades = pd.DataFrame(
        {
            "ts_ns": [100, 200, 300, 400, 500],
            "price": [1.0] * 5,
            "size": [1.0, 2.0, 4.0, 8.0, 16.0],
            "side": ["buy", "sell", "buy", "buy", "sell"],
        }
    )
    f = compute_features(window(QUOTES, trades, now_ns=400))
    # (200, 400]: 300 buy 4 and 400 buy 8; 200 is excluded, 500 is in the future.
    assert f.trade_flow(200) == (12.0, 12.0, 2)
    # (0, 400]: 1 - 2 + 4 + 8.
    assert f.trade_flow(400) == (11.0, 15.0, 4)
    assert f.trade_flow(50) == (8.0, 8.0, 1)
    empty = compute_features(window(QUOTES, trades.iloc[:0], now_ns=400))
    assert empty.trade_flow(1000) == (0.0, 0.0, 0)


def test_it_computes_tail_statistics_on_the_quotes_before_the_latest() -> None:
    f = compute_features(window(QUOTES, NO_TRADES, now_ns=3))
    # Mids are 100.25, 100.75, 101.25; the two before the latest average 100.5.
    assert f.tail_mean_std("mid", 2) == pytest.approx((100.5, 0.25))
    assert f.tail_high_low("mid", 2) == (100.75, 100.25)
    assert f.price_decimals == 1


def test_it_rejects_a_quotes_frame_without_the_required_columns() -> None:
    with pytest.raises(ValueError, match="ask_size"):
        compute_features(window(QUOTES.drop(columns=["ask_size"]), NO_TRADES, 3))


def test_a_frames_columns_come_back_as_the_public_path_gives_them():
    import numpy as np
    import pandas as pd

    from automations.features import _column

    frame = pd.DataFrame(
        {"ts_ns": np.arange(5, dtype=np.int64), "bid": np.linspace(1, 2, 5), "side": ["buy"] * 5, "n": np.arange(5)}
    )
    for name, dtype in (("ts_ns", np.int64), ("bid", np.float64), ("n", np.float64)):
        got = _column(frame, name, dtype)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, frame[name].to_numpy(dtype=dtype))
    # No copy when the column already has the dtype.
    assert np.shares_memory(_column(frame, "bid", np.float64), frame["bid"].to_numpy(copy=False))
    duplicated = pd.concat([frame[["bid"]], frame[["bid"]]], axis=1)
    np.testing.assert_array_equal(_column(frame.assign(x=1.0), "x", np.float64), np.ones(5))
    # A name that is not one column: whatever the public path gives.
    np.testing.assert_array_equal(_column(duplicated, "bid", np.float64), duplicated["bid"].to_numpy(dtype=np.float64))

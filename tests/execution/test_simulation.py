"""Tests of the shared fill model. Expected figures are worked out by hand here."""

from __future__ import annotations

import math
import random
import statistics
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from execution.simulation import (
    FillModelParams,
    OrderSpec,
    expected_slippage_bps,
    fee_for,
    simulate_fill,
    slippage_bps,
)
from ingestion.types import BookSnapshot, Side

D = Decimal
NO_NOISE = FillModelParams()


def make_book(ts_ns: int = 0, shift: Decimal = D(0)) -> BookSnapshot:
    """Mid 100.0; asks 100.5 x1, 101.0 x2, 101.5 x4; bids 99.5 x2, 99.0 x3, 98.5 x5."""
    return BookSnapshot(
        symbol="TEST",
        ts_ns=ts_ns,
        bids=((D("99.5") + shift, D("2")), (D("99.0") + shift, D("3")), (D("98.5") + shift, D("5"))),
        asks=((D("100.5") + shift, D("1")), (D("101.0") + shift, D("2")), (D("101.5") + shift, D("4"))),
    )


def test_it_fills_a_buy_across_three_levels_at_the_hand_computed_vwap() -> None:
    order = OrderSpec(Side.BUY, D("3.5"))
    result = simulate_fill(order, make_book(), NO_NOISE, None)

    # 1 @ 100.5 + 2 @ 101.0 + 0.5 @ 101.5 = 100.5 + 202 + 50.75 = 353.25 for 3.5.
    assert result.legs == [(D("100.5"), D("1")), (D("101.0"), D("2")), (D("101.5"), D("0.5"))]
    assert result.filled_qty == D("3.5")
    assert result.remaining_qty == 0
    assert result.avg_price == D("353.25") / D("3.5")
    assert result.status == "filled"
    assert result.arrival_mid == D("100.0")


def test_it_reports_slippage_of_a_round_buy_in_bps_against_the_arrival_mid() -> None:
    result = simulate_fill(OrderSpec(Side.BUY, D("4")), make_book(), NO_NOISE, None)

    # 100.5 + 202 + 101.5 = 404 for 4 -> 101.0, which is 1.0 above the mid of 100: 100 bps.
    assert result.avg_price == D("101")
    assert result.modelled_slippage_bps == D("100")


def test_it_fills_partially_when_the_depth_runs_out() -> None:
    result = simulate_fill(OrderSpec(Side.BUY, D("10")), make_book(), NO_NOISE, None)

    assert result.status == "partial"
    assert result.filled_qty == D("7")
    assert result.remaining_qty == D("3")
    assert result.avg_price == (D("100.5") + D("202.0") + D("406.0")) / D("7")


def test_it_stops_the_walk_at_the_limit_price_and_reports_the_remainder() -> None:
    result = simulate_fill(OrderSpec(Side.BUY, D("5"), limit_price=D("101.0")), make_book(), NO_NOISE, None)

    assert result.legs == [(D("100.5"), D("1")), (D("101.0"), D("2"))]
    assert result.filled_qty == D("3")
    assert result.remaining_qty == D("2")
    assert result.status == "partial"


def test_it_leaves_a_limit_order_that_does_not_cross_unfilled() -> None:
    result = simulate_fill(OrderSpec(Side.BUY, D("1"), limit_price=D("100.4")), make_book(), NO_NOISE, None)

    assert result.status == "unfilled"
    assert result.legs == []
    assert result.filled_qty == 0
    assert result.remaining_qty == D("1")
    assert result.avg_price is None
    assert result.fee == 0
    assert result.modelled_slippage_bps is None


def test_it_fills_a_sell_symmetrically_down_the_bids() -> None:
    result = simulate_fill(OrderSpec(Side.SELL, D("4")), make_book(), NO_NOISE, None)

    # 2 @ 99.5 + 2 @ 99.0 = 199 + 198 = 397 for 4 -> 99.25, 0.75 below the mid: +75 bps adverse.
    assert result.legs == [(D("99.5"), D("2")), (D("99.0"), D("2"))]
    assert result.avg_price == D("99.25")
    assert result.modelled_slippage_bps == D("75")


def test_it_stops_a_sell_at_its_limit() -> None:
    result = simulate_fill(OrderSpec(Side.SELL, D("10"), limit_price=D("99.0")), make_book(), NO_NOISE, None)

    assert result.filled_qty == D("5")
    assert result.remaining_qty == D("5")
    assert result.status == "partial"
    assert all(price >= D("99.0") for price, _ in result.legs)


def test_it_fills_nothing_when_fill_or_kill_cannot_complete() -> None:
    params = FillModelParams(allow_partial=False)
    result = simulate_fill(OrderSpec(Side.BUY, D("10")), make_book(), params, None)

    assert result.status == "unfilled"
    assert result.remaining_qty == D("10")


def test_it_fills_nothing_below_the_minimum_fill_quantity() -> None:
    params = FillModelParams(min_fill_qty=D("5"))
    below = simulate_fill(OrderSpec(Side.BUY, D("5"), limit_price=D("101.0")), make_book(), params, None)
    at_minimum = simulate_fill(OrderSpec(Side.BUY, D("5")), make_book(), params, None)

    assert below.status == "unfilled"
    assert at_minimum.filled_qty == D("5")


def test_zero_noise_results_are_deterministic_and_equal_the_expected_slippage() -> None:
    order = OrderSpec(Side.BUY, D("3.5"))
    first = simulate_fill(order, make_book(), NO_NOISE, np.random.default_rng(1))
    second = simulate_fill(order, make_book(), NO_NOISE, np.random.default_rng(999))

    assert first == second
    expected = expected_slippage_bps(order, make_book(), NO_NOISE)
    assert first.modelled_slippage_bps is not None
    assert float(first.modelled_slippage_bps) == expected
    # (353.25 / 3.5 - 100) / 100 * 1e4, worked with floats independently.
    assert expected == pytest.approx((353.25 / 3.5 - 100.0) / 100.0 * 1e4, rel=1e-12)


def test_expected_slippage_includes_the_impact_term_and_matches_a_zero_noise_fill() -> None:
    params = FillModelParams(impact_coef=D("70"))
    order = OrderSpec(Side.SELL, D("4"))
    result = simulate_fill(order, make_book(), params, None)

    # 4 of 10 visible on the bids -> 70 * 0.4 = 28 bps lower prices, rounded to the 0.1 tick:
    # 99.5 * (1 - 0.0028) = 99.2214 -> 99.2 ; 99.0 * 0.9972 = 98.7228 -> 98.7.
    assert result.legs == [(D("99.2"), D("2")), (D("98.7"), D("2"))]
    assert result.modelled_slippage_bps is not None
    assert float(result.modelled_slippage_bps) == expected_slippage_bps(order, make_book(), params)
    assert expected_slippage_bps(order, make_book(), params) > expected_slippage_bps(order, make_book(), NO_NOISE)


def test_expected_slippage_is_nan_when_nothing_would_fill() -> None:
    order = OrderSpec(Side.SELL, D("1"), limit_price=D("99.6"))
    assert math.isnan(expected_slippage_bps(order, make_book(), NO_NOISE))


def test_latency_median_is_exp_mu_over_many_draws() -> None:
    params = FillModelParams(latency_mu_ms=math.log(20.0), latency_sigma=0.6)
    rng = np.random.default_rng(12345)
    order = OrderSpec(Side.BUY, D("1"))
    book = make_book()
    latencies = [simulate_fill(order, book, params, rng).latency_ms for _ in range(8000)]

    # The sample median of 8000 log-normal draws has a relative standard error
    # of about 1.25 * 0.6 / sqrt(8000) = 0.8 %; 4 % is five standard errors.
    assert statistics.median(latencies) == pytest.approx(20.0, rel=0.04)
    assert statistics.stdev(math.log(x) for x in latencies) == pytest.approx(0.6, rel=0.05)


def test_it_accepts_a_stdlib_random_generator_and_is_reproducible_with_a_seed() -> None:
    params = FillModelParams(latency_mu_ms=2.0, latency_sigma=0.5, slippage_sigma_bps=5.0)
    order = OrderSpec(Side.BUY, D("3"))
    a = simulate_fill(order, make_book(), params, random.Random(7))
    b = simulate_fill(order, make_book(), params, random.Random(7))
    c = simulate_fill(order, make_book(), params, random.Random(8))

    assert a == b
    assert a != c


def test_the_same_seed_gives_the_same_latency_whatever_the_slippage_sigma() -> None:
    quiet = FillModelParams(latency_mu_ms=2.0, latency_sigma=0.5)
    noisy = FillModelParams(latency_mu_ms=2.0, latency_sigma=0.5, slippage_sigma_bps=10.0)
    order = OrderSpec(Side.BUY, D("1"))

    assert (
        simulate_fill(order, make_book(), quiet, np.random.default_rng(3)).latency_ms
        == simulate_fill(order, make_book(), noisy, np.random.default_rng(3)).latency_ms
    )


def test_it_requires_a_generator_when_the_model_is_random() -> None:
    with pytest.raises(ValueError, match="random generator"):
        simulate_fill(OrderSpec(Side.BUY, D("1")), make_book(), FillModelParams(slippage_sigma_bps=1.0), None)


def test_it_refuses_to_fill_against_another_symbols_book() -> None:
    with pytest.raises(ValueError, match="cannot fill"):
        simulate_fill(OrderSpec(Side.BUY, D("1"), symbol="OTHER"), make_book(), NO_NOISE, None)


def test_it_fills_against_the_book_at_decision_time_plus_latency() -> None:
    params = FillModelParams(latency_mu_ms=math.log(10.0))  # a fixed 10 ms latency
    decision_ts = 1_000_000_000
    asked: list[int] = []

    def moves_after_5ms(ts_ns: int) -> BookSnapshot:
        asked.append(ts_ns)
        if ts_ns >= decision_ts + 5_000_000:
            return make_book(ts_ns, shift=D("1.0"))
        return make_book(ts_ns)

    def moves_after_50ms(ts_ns: int) -> BookSnapshot:
        return make_book(ts_ns, shift=D("1.0") if ts_ns >= decision_ts + 50_000_000 else D(0))

    order = OrderSpec(Side.BUY, D("1"))
    decision_book = make_book(decision_ts)
    moved = simulate_fill(order, decision_book, params, None, price_path=moves_after_5ms, decision_ts_ns=decision_ts)
    unmoved = simulate_fill(order, decision_book, params, None, price_path=moves_after_50ms, decision_ts_ns=decision_ts)

    assert asked == [decision_ts + 10_000_000]
    assert moved.fill_ts_ns == decision_ts + 10_000_000
    # The ask moved from 100.5 to 101.5 during the latency; slippage is still
    # measured against the mid at decision (100.0): 150 bps instead of 50.
    assert moved.legs == [(D("101.5"), D("1"))]
    assert moved.arrival_mid == D("100.0")
    assert moved.modelled_slippage_bps == D("150")
    assert unmoved.legs == [(D("100.5"), D("1"))]
    assert unmoved.modelled_slippage_bps == D("50")


def test_the_taker_fee_is_exact_on_the_filled_notional() -> None:
    params = FillModelParams(taker_fee_bps=D("7.5"))
    round_fee = simulate_fill(OrderSpec(Side.BUY, D("4")), make_book(), params, None)
    # 404.0 * 7.5 / 10000 = 0.303
    assert round_fee.fee == D("0.30300000")

    odd = FillModelParams(taker_fee_bps=D("1.23456"))
    rounded = simulate_fill(OrderSpec(Side.BUY, D("3.5")), make_book(), odd, None)
    # 353.25 * 1.23456 = 436.10832 -> 0.043610832, rounded up at the 8th decimal.
    assert rounded.fee == D("0.04361084")


def test_fee_for_prices_a_maker_fill_and_never_rounds_a_rebate_up() -> None:
    assert fee_for(D("1000"), D("2")) == D("0.20000000")
    # A rebate of -0.000000015 rounds toward +infinity, i.e. to the smaller credit.
    assert fee_for(D("0.0001"), D("-1.5")) == D("-0.00000001")


def test_slippage_bps_is_positive_when_adverse_for_either_side() -> None:
    assert slippage_bps(Side.BUY, D("101"), D("100")) == D("100")
    assert slippage_bps(Side.BUY, D("99"), D("100")) == D("-100")
    assert slippage_bps(Side.SELL, D("99"), D("100")) == D("100")
    assert slippage_bps(Side.SELL, D("101"), D("100")) == D("-100")


def test_noisy_leg_prices_are_quantized_to_the_books_tick() -> None:
    book = BookSnapshot(
        symbol="XRPUSDT",
        ts_ns=0,
        bids=((D("1.9531"), D("6203")),),
        asks=((D("1.9532"), D("10480")), (D("1.9533"), D("13701"))),
    )
    params = FillModelParams(slippage_sigma_bps=3.0)
    result = simulate_fill(OrderSpec(Side.BUY, D("15000")), book, params, np.random.default_rng(5))

    assert result.filled_qty == D("15000")
    for price, _qty in result.legs:
        assert price.as_tuple().exponent == -4


def test_a_price_tick_given_by_the_source_overrides_the_written_precision() -> None:
    book = BookSnapshot(
        symbol="TEST",
        ts_ns=0,
        bids=((D("99.5"), D("2")),),
        asks=((D("100.5"), D("1")),),
        meta={"price_tick": "0.01"},
    )
    result = simulate_fill(OrderSpec(Side.BUY, D("1")), book, FillModelParams(slippage_sigma_bps=7.0), random.Random(1))

    (price, _qty) = result.legs[0]
    assert price.as_tuple().exponent == -2
    assert price != D("100.5")


levels = st.lists(
    st.tuples(
        st.decimals(min_value=D("0.01"), max_value=D("5"), places=2),
        st.decimals(min_value=D("0.001"), max_value=D("50"), places=3),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(
    side=st.sampled_from([Side.BUY, Side.SELL]),
    ask_steps=levels,
    bid_steps=levels,
    quantity=st.decimals(min_value=D("0.001"), max_value=D("200"), places=3),
    limit_offset=st.decimals(min_value=D("-3"), max_value=D("6"), places=2),
    sigma=st.floats(min_value=0.0, max_value=2000.0),
    impact=st.decimals(min_value=D("0"), max_value=D("500"), places=1),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_a_limit_order_never_fills_worse_than_its_limit_even_with_noise(
    side: Side,
    ask_steps: list[tuple[Decimal, Decimal]],
    bid_steps: list[tuple[Decimal, Decimal]],
    quantity: Decimal,
    limit_offset: Decimal,
    sigma: float,
    impact: Decimal,
    seed: int,
) -> None:
    # Build a well-formed book around 100 from positive price steps.
    asks, price = [], D("100.00")
    for step, size in ask_steps:
        price += step
        asks.append((price, size))
    bids, price = [], D("100.00")
    for step, size in bid_steps:
        price -= step
        bids.append((price, size))
    book = BookSnapshot("P", 0, tuple(bids), tuple(asks))
    # A positive offset makes the limit marketable (above the best ask for a buy).
    limit = asks[0][0] + limit_offset if side == Side.BUY else bids[0][0] - limit_offset
    limit = max(limit, D("0.01"))
    order = OrderSpec(side, quantity, limit_price=limit)
    params = FillModelParams(slippage_sigma_bps=sigma, impact_coef=impact, latency_sigma=0.3)

    result = simulate_fill(order, book, params, np.random.default_rng(seed))

    for leg_price, _qty in result.legs:
        assert leg_price <= limit if side == Side.BUY else leg_price >= limit
    if result.avg_price is not None:
        assert result.avg_price <= limit if side == Side.BUY else result.avg_price >= limit
    assert sum((q for _, q in result.legs), D(0)) == result.filled_qty
    assert result.filled_qty + result.remaining_qty == quantity

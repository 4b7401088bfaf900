"""Tests of the pure breaker arithmetic: every limit at its boundary.

Boundaries, as documented in risk/rules.py:
- count limits refuse when the current count has reached the limit (one more
  would exceed it) and pass one below;
- size limits (quantity, notional, collar) are inclusive: exactly at the limit
  passes, the smallest step above refuses;
- trailing-state limits (daily loss, drawdown, consecutive losses, slippage
  breaches) refuse once the state has reached the limit and pass just below.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from ingestion.types import Side
from risk.rules import (
    Breach,
    LimitSet,
    OrderCheck,
    RiskState,
    apply_fill_pnl,
    check_order,
    check_signal,
    collar_limit_price,
)

D = Decimal
SMALL_ORDER = OrderCheck(quantity=D("1"), limit_price=D("100"), side=Side.BUY, mid=D("100"))


def names(breaches: list[Breach]) -> list[str]:
    return [b.limit for b in breaches]


def test_it_reports_nothing_when_no_limit_is_set() -> None:
    extreme = RiskState(
        signals_last_hour=10**6,
        orders_last_minute=10**6,
        open_orders=10**6,
        daily_realized_pnl=D("-1e9"),
        daily_peak_pnl=D("1e9"),
        consecutive_losses=10**6,
        slippage_breaches_today=10**6,
    )
    market_without_mid = OrderCheck(quantity=D("1e9"), limit_price=None, side=Side.SELL, mid=None)

    assert check_order(LimitSet(), extreme, market_without_mid) == []
    assert check_signal(LimitSet(), extreme) == []


def test_signals_per_hour_refuses_at_the_limit_and_passes_just_below() -> None:
    limits = LimitSet(max_signals_per_hour=10)

    assert check_signal(limits, RiskState(signals_last_hour=9)) == []
    assert check_signal(limits, RiskState(signals_last_hour=10)) == [
        Breach("max_signals_per_hour", 10, 10, "signals in the last hour 10 would exceed the limit of 10")
    ]


def test_open_orders_refuses_at_the_limit_and_passes_just_below() -> None:
    limits = LimitSet(max_open_orders=5)

    assert check_order(limits, RiskState(open_orders=4), SMALL_ORDER) == []
    breaches = check_order(limits, RiskState(open_orders=5), SMALL_ORDER)
    assert breaches == [Breach("max_open_orders", 5, 5, "open orders 5 would exceed the limit of 5")]


def test_orders_per_minute_refuses_at_the_limit_and_passes_just_below() -> None:
    limits = LimitSet(max_orders_per_minute=3)

    assert check_order(limits, RiskState(orders_last_minute=2), SMALL_ORDER) == []
    assert names(check_order(limits, RiskState(orders_last_minute=3), SMALL_ORDER)) == ["max_orders_per_minute"]


def test_daily_loss_refuses_once_the_loss_reaches_the_limit() -> None:
    limits = LimitSet(max_daily_loss=D("100"))

    assert check_order(limits, RiskState(daily_realized_pnl=D("-99.99")), SMALL_ORDER) == []
    breaches = check_order(limits, RiskState(daily_realized_pnl=D("-100")), SMALL_ORDER)
    assert breaches == [Breach("max_daily_loss", D("100"), D("100"), "daily loss 100 has reached the limit of 100")]


def test_drawdown_from_the_days_peak_refuses_once_it_reaches_the_limit() -> None:
    limits = LimitSet(max_drawdown=D("50"))

    # Peak 80, now 30.01: a drawdown of 49.99 passes; at 30 it is exactly 50 and refuses.
    assert check_order(limits, RiskState(daily_peak_pnl=D("80"), daily_realized_pnl=D("30.01")), SMALL_ORDER) == []
    breaches = check_order(limits, RiskState(daily_peak_pnl=D("80"), daily_realized_pnl=D("30")), SMALL_ORDER)
    assert names(breaches) == ["max_drawdown"]
    assert breaches[0].value == D("50")
    assert "drawdown 50" in breaches[0].message


def test_consecutive_losses_refuse_at_the_limit_and_pass_just_below() -> None:
    limits = LimitSet(max_consecutive_losses=3)

    assert check_order(limits, RiskState(consecutive_losses=2), SMALL_ORDER) == []
    assert names(check_order(limits, RiskState(consecutive_losses=3), SMALL_ORDER)) == ["max_consecutive_losses"]


def test_slippage_breaches_refuse_at_the_limit_and_pass_just_below() -> None:
    limits = LimitSet(max_slippage_breaches_per_day=2)

    assert check_order(limits, RiskState(slippage_breaches_today=1), SMALL_ORDER) == []
    assert names(check_order(limits, RiskState(slippage_breaches_today=2), SMALL_ORDER)) == ["max_slippage_breaches_per_day"]


def test_order_quantity_passes_at_the_limit_and_refuses_just_above() -> None:
    limits = LimitSet(max_order_qty=D("10"))
    at_limit = OrderCheck(quantity=D("10"), limit_price=D("100"), side=Side.BUY, mid=D("100"))
    above = OrderCheck(quantity=D("10.0001"), limit_price=D("100"), side=Side.BUY, mid=D("100"))

    assert check_order(limits, RiskState(), at_limit) == []
    assert check_order(limits, RiskState(), above) == [
        Breach("max_order_qty", D("10.0001"), D("10"), "order quantity 10.0001 exceeds the limit of 10")
    ]


def test_order_notional_passes_at_the_limit_and_refuses_just_above() -> None:
    limits = LimitSet(max_order_notional=D("1000"))
    at_limit = OrderCheck(quantity=D("10"), limit_price=D("100"), side=Side.BUY, mid=D("99"))
    above = OrderCheck(quantity=D("10"), limit_price=D("100.01"), side=Side.BUY, mid=D("99"))

    assert check_order(limits, RiskState(), at_limit) == []
    breaches = check_order(limits, RiskState(), above)
    assert names(breaches) == ["max_order_notional"]
    assert breaches[0].value == D("1000.10")


def test_a_market_orders_notional_is_valued_at_the_mid_and_refused_without_one() -> None:
    limits = LimitSet(max_order_notional=D("1000"))
    at_mid = OrderCheck(quantity=D("10"), limit_price=None, side=Side.SELL, mid=D("100"))
    above_mid = OrderCheck(quantity=D("10"), limit_price=None, side=Side.SELL, mid=D("100.5"))
    no_mid = OrderCheck(quantity=D("1"), limit_price=None, side=Side.SELL, mid=None)

    assert check_order(limits, RiskState(), at_mid) == []
    assert names(check_order(limits, RiskState(), above_mid)) == ["max_order_notional"]
    assert "no reference price" in check_order(limits, RiskState(), no_mid)[0].message


@pytest.mark.parametrize(
    ("side", "inside", "outside"),
    [
        (Side.BUY, D("100.50"), D("100.51")),
        (Side.SELL, D("99.50"), D("99.49")),
    ],
)
def test_the_price_collar_passes_at_the_collar_and_refuses_just_beyond(side: Side, inside: Decimal, outside: Decimal) -> None:
    limits = LimitSet(price_collar_bps=D("50"))

    # 0.50 away from a mid of 100 is exactly 50 bps; 0.51 is 51 bps.
    assert check_order(limits, RiskState(), OrderCheck(D("1"), inside, side, mid=D("100"))) == []
    breaches = check_order(limits, RiskState(), OrderCheck(D("1"), outside, side, mid=D("100")))
    assert names(breaches) == ["price_collar_bps"]
    assert breaches[0].value == D("51")
    assert breaches[0].message == f"limit price {outside} is 51 bps from the mid 100, beyond the collar of 50 bps"


def test_the_price_collar_refuses_an_order_without_a_reference_price() -> None:
    limits = LimitSet(price_collar_bps=D("50"))

    for missing in (None, D("0")):
        breaches = check_order(limits, RiskState(), OrderCheck(D("1"), D("100"), Side.BUY, mid=missing))
        assert names(breaches) == ["price_collar_bps"]
        assert breaches[0].message.startswith("no reference price")


def test_the_price_collar_refuses_a_market_order_and_collar_limit_price_makes_it_pass() -> None:
    limits = LimitSet(price_collar_bps=D("50"))
    market = OrderCheck(D("1"), None, Side.BUY, mid=D("100"))

    assert names(check_order(limits, RiskState(), market)) == ["price_collar_bps"]
    capped = collar_limit_price(Side.BUY, D("100"), D("50"))
    assert capped == D("100.5")
    assert check_order(limits, RiskState(), OrderCheck(D("1"), capped, Side.BUY, mid=D("100"))) == []
    assert collar_limit_price(Side.SELL, D("100"), D("50")) == D("99.5")


def test_it_reports_every_breach_together() -> None:
    limits = LimitSet(
        max_open_orders=2,
        max_daily_loss=D("100"),
        max_order_qty=D("5"),
        price_collar_bps=D("10"),
        max_signals_per_hour=1,
    )
    state = RiskState(open_orders=2, daily_realized_pnl=D("-150"), signals_last_hour=1)
    order = OrderCheck(quantity=D("6"), limit_price=D("102"), side=Side.BUY, mid=D("100"))

    assert names(check_order(limits, state, order)) == [
        "max_open_orders",
        "max_daily_loss",
        "max_order_qty",
        "price_collar_bps",
    ]
    # The signal limit is a signal check, not an order check.
    assert names(check_signal(limits, state)) == ["max_signals_per_hour"]


def test_a_zero_limit_allows_nothing() -> None:
    assert names(check_order(LimitSet(max_open_orders=0), RiskState(), SMALL_ORDER)) == ["max_open_orders"]
    assert names(check_order(LimitSet(max_daily_loss=D("0")), RiskState(), SMALL_ORDER)) == ["max_daily_loss"]


def test_apply_fill_pnl_tracks_the_peak_and_the_run_of_losses() -> None:
    state = RiskState()
    state = apply_fill_pnl(state, D("50"))
    assert (state.daily_realized_pnl, state.daily_peak_pnl, state.consecutive_losses) == (D("50"), D("50"), 0)

    state = apply_fill_pnl(state, D("-30"))
    state = apply_fill_pnl(state, D("-5"))
    assert (state.daily_realized_pnl, state.daily_peak_pnl, state.consecutive_losses) == (D("15"), D("50"), 2)

    # A zero PnL (an opening fill) neither extends nor ends the run.
    state = apply_fill_pnl(state, D("0"))
    assert state.consecutive_losses == 2

    state = apply_fill_pnl(state, D("60"))
    assert (state.daily_realized_pnl, state.daily_peak_pnl, state.consecutive_losses) == (D("75"), D("75"), 0)


def test_the_first_loss_of_the_day_is_already_a_drawdown_from_zero() -> None:
    state = apply_fill_pnl(RiskState(), D("-40"))
    limits = LimitSet(max_drawdown=D("40"))

    assert state.daily_peak_pnl == 0
    assert names(check_order(limits, state, SMALL_ORDER)) == ["max_drawdown"]


def test_apply_fill_pnl_does_not_touch_the_other_counters() -> None:
    before = RiskState(open_orders=3, signals_last_hour=7, slippage_breaches_today=1, orders_last_minute=2)
    after = apply_fill_pnl(before, D("-1"))

    assert (after.open_orders, after.signals_last_hour, after.slippage_breaches_today, after.orders_last_minute) == (
        3,
        7,
        1,
        2,
    )


def test_limits_refuse_negative_values_and_floats_and_accept_strings() -> None:
    with pytest.raises(ValueError, match="max_daily_loss"):
        LimitSet(max_daily_loss=D("-1"))
    with pytest.raises(ValueError, match="max_open_orders"):
        LimitSet(max_open_orders=-1)
    with pytest.raises(TypeError, match="max_order_qty"):
        LimitSet(max_order_qty=1.5)  # type: ignore[arg-type]
    assert LimitSet(max_order_notional="250.5").max_order_notional == D("250.5")  # type: ignore[arg-type]


def test_an_order_check_refuses_a_non_positive_quantity_or_price() -> None:
    with pytest.raises(ValueError, match="quantity"):
        OrderCheck(quantity=D("0"), limit_price=D("100"), side=Side.BUY, mid=D("100"))
    with pytest.raises(ValueError, match="limit price"):
        OrderCheck(quantity=D("1"), limit_price=D("-1"), side=Side.BUY, mid=D("100"))

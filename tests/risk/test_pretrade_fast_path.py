"""The one-statement pre-trade path (``risk_pretrade_reserve``) against the reference arithmetic.

The SQL function decides only "passes and reserves"; every other outcome
goes to the locked Python path. These tests hold it to ``risk.rules``: over
a grid of states, limits and orders on both scopes, the function reserves
exactly when the rules find no breach, and it never passes what the
reference would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from automations.models import Automation
from ingestion.types import Side
from risk import rules
from risk.models import BreakerTrip, GlobalSlot, KillSwitch, RiskState
from risk.selectors import LIMIT_FIELDS
from risk.services import (
    _global_rules_state,
    _global_slots_take,
    _risk_lock,
    _rules_state,
    _state_refresh,
    _today,
    commits_make_durable,
    order_closed,
    pretrade_check,
    risk_limit_set,
)
from tests.risk.conftest import make_automation

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("celery_eager")]
D = Decimal
NO_LIMITS = dict.fromkeys(LIMIT_FIELDS)


@dataclass
class Case:
    name: str
    limits: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    qty: str = "1"
    price: str | None = "100"
    mid: str | None = "100"


def _cases() -> list[Case]:
    now_s = timezone.now().timestamp()
    yesterday = timezone.now().date() - timedelta(days=1)
    return [
        Case("no limits"),
        Case("open orders below", {"max_open_orders": 3}, {"open_orders": 2}),
        Case("open orders at", {"max_open_orders": 3}, {"open_orders": 3}),
        Case("open orders zero limit", {"max_open_orders": 0}),
        Case("rate below", {"max_orders_per_minute": 2}, {"order_times": [now_s - 1]}),
        Case("rate at", {"max_orders_per_minute": 2}, {"order_times": [now_s - 2, now_s - 1]}),
        Case("rate old entries leave", {"max_orders_per_minute": 2}, {"order_times": [now_s - 61, now_s - 60.5]}),
        Case("loss below", {"max_daily_loss": D("100")}, {"daily_realized_pnl": D("-99.999999999999")}),
        Case("loss at", {"max_daily_loss": D("100")}, {"daily_realized_pnl": D("-100")}),
        Case("loss yesterday", {"max_daily_loss": D("100")}, {"daily_realized_pnl": D("-500"), "trading_day": yesterday}),
        Case("drawdown below", {"max_drawdown": D("50")}, {"daily_peak_pnl": D("80"), "daily_realized_pnl": D("30.01")}),
        Case("drawdown at", {"max_drawdown": D("50")}, {"daily_peak_pnl": D("80"), "daily_realized_pnl": D("30")}),
        Case("losses below", {"max_consecutive_losses": 3}, {"consecutive_losses": 2}),
        Case("losses at", {"max_consecutive_losses": 3}, {"consecutive_losses": 3}),
        Case("losses yesterday still count", {"max_consecutive_losses": 3}, {"consecutive_losses": 3, "trading_day": yesterday}),
        Case("slippage below", {"max_slippage_breaches_per_day": 2}, {"slippage_breaches_today": 1}),
        Case("slippage at", {"max_slippage_breaches_per_day": 2}, {"slippage_breaches_today": 2}),
        Case(
            "slippage yesterday", {"max_slippage_breaches_per_day": 2}, {"slippage_breaches_today": 9, "trading_day": yesterday}
        ),
        Case("qty at", {"max_order_qty": D("2.5")}, qty="2.5"),
        Case("qty above", {"max_order_qty": D("2.5")}, qty="2.500000000001"),
        Case("notional at", {"max_order_notional": D("250")}, qty="2.5", price="100"),
        Case("notional above", {"max_order_notional": D("250")}, qty="2.5", price="100.000000000001"),
        Case("notional market at mid", {"max_order_notional": D("250")}, qty="2.5", price=None, mid="100"),
        Case("notional market no mid", {"max_order_notional": D("250")}, price=None, mid=None),
        Case("notional market mid zero", {"max_order_notional": D("250")}, price=None, mid="0"),
        Case("collar at", {"price_collar_bps": D("10")}, price="100.1", mid="100"),
        Case("collar above", {"price_collar_bps": D("10")}, price="100.100000000001", mid="100"),
        Case("collar below sell side", {"price_collar_bps": D("10")}, price="99.9", mid="100"),
        Case("collar odd mid", {"price_collar_bps": D("3.3333")}, price="100.03", mid="99.9967"),
        Case("collar no mid", {"price_collar_bps": D("10")}, mid=None),
        Case("collar market", {"price_collar_bps": D("10")}, price=None),
        Case("signal limit is not an order limit", {"max_signals_per_hour": 0}),
    ]


def _set_global_counts(open_orders: int = 0, order_times: list[float] | None = None) -> None:
    """Put a global open-order count and order times on the global slots (as checks would have left them)."""
    left = open_orders
    for slot in GlobalSlot.objects.filter(kind=GlobalSlot.Kind.OPEN_ORDERS, n__gt=0).order_by("n"):
        slot.used, left = min(slot.capacity, left), left - min(slot.capacity, left)
        slot.save(update_fields=["used"])
    GlobalSlot.objects.filter(kind=GlobalSlot.Kind.OPEN_ORDERS, n=0).update(used=left)
    rate = list(GlobalSlot.objects.filter(kind=GlobalSlot.Kind.ORDER_RATE).order_by("n"))
    for slot in rate:
        slot.times = []
    for i, t in enumerate(sorted(order_times or []) if rate else []):
        rate[i % len(rate)].times.append(t)
    for slot in rate:
        slot.save(update_fields=["times"])


def _set_state(automation_id: int | None, values: dict[str, Any]) -> None:
    if automation_id is None:
        # The global counts live on the global slots (the global row's are no longer read by the checks).
        _set_global_counts(values.get("open_orders", 0), values.get("order_times", []))
    scope = {"automation_id": automation_id} if automation_id else {"automation__isnull": True}
    base = {
        "open_orders": 0,
        "daily_realized_pnl": D(0),
        "daily_peak_pnl": D(0),
        "consecutive_losses": 0,
        "slippage_breaches_today": 0,
        "order_times": [],
        "signal_times": [],
        "tripped": False,
        "trading_day": timezone.now().date(),
    }
    RiskState.objects.filter(**scope).update(**{**base, **values})


def _reference_passes(automation_id: int, order: rules.OrderCheck, now: Any) -> bool:
    """What the locked path decides, evaluated (and rolled back) with the reference arithmetic."""
    with transaction.atomic():
        locked = _risk_lock(automation_id, now)
        for row in (locked.global_row, locked.automation_row):
            _state_refresh(row, now)
        passes = (
            not locked.kill_switch_on
            and not locked.global_row.tripped
            and not locked.automation_row.tripped
            and locked.automation_status == Automation.Status.ACTIVE
            and not rules.check_order(
                locked.global_limits,
                _global_rules_state(locked.global_row, _global_slots_take(locked.global_limits, now.timestamp())),
                order,
            )
            and not rules.check_order(locked.automation_limits, _rules_state(locked.automation_row), order)
        )
        transaction.set_rollback(True)
    return passes


def _function_passes(automation_id: int, order: rules.OrderCheck, now: Any) -> bool:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT risk_pretrade_reserve(%s, %s, %s, %s, %s, %s, false)",
                [automation_id, _today(now), now.timestamp(), order.quantity, order.limit_price, order.mid],
            )
            (reserved,) = cursor.fetchone()
        transaction.set_rollback(True)
    return bool(reserved)


@pytest.mark.parametrize("scope", ["automation", "global"])
def test_the_sql_fast_path_reserves_exactly_when_the_reference_rules_pass(scope: str) -> None:
    a = make_automation()
    risk_limit_set(actor="test", reason="grid", **NO_LIMITS)
    risk_limit_set(automation=a, actor="test", reason="grid", **NO_LIMITS)
    assert pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
    outcomes = []
    for case in _cases():
        target = a if scope == "automation" else None
        risk_limit_set(automation=target, actor="test", reason=case.name, **{**NO_LIMITS, **case.limits})
        _set_state(a.pk, {})
        _set_state(None, {})
        _set_state(target.pk if target else None, case.state)
        order = rules.OrderCheck(
            quantity=D(case.qty),
            limit_price=D(case.price) if case.price is not None else None,
            side=Side.BUY,
            mid=D(case.mid) if case.mid is not None else None,
        )
        now = timezone.now()
        expected = _reference_passes(a.pk, order, now)
        outcomes.append((case.name, expected))
        assert _function_passes(a.pk, order, now) == expected, case.name
    # The grid covers both outcomes near every boundary.
    assert {passed for _, passed in outcomes} == {True, False}
    assert sum(passed for _, passed in outcomes) >= 12


def test_the_fast_path_refuses_nothing_by_itself_when_the_switches_say_stop() -> None:
    a = make_automation()
    now = timezone.now()
    order = rules.OrderCheck(quantity=D(1), limit_price=D(100), side=Side.BUY, mid=D(100))
    assert pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
    assert _function_passes(a.pk, order, now)
    RiskState.objects.filter(automation=a).update(tripped=True)
    assert not _function_passes(a.pk, order, now)
    RiskState.objects.filter(automation=a).update(tripped=False)
    RiskState.objects.filter(automation__isnull=True).update(tripped=True)
    assert not _function_passes(a.pk, order, now)
    RiskState.objects.filter(automation__isnull=True).update(tripped=False)
    switch = KillSwitch(pk=1, engaged=True)
    switch._change_reason = "test: engaged"
    switch.save()
    assert not _function_passes(a.pk, order, now)
    switch.engaged = False
    switch._change_reason = "test: released"
    switch.save()
    Automation.objects.filter(pk=a.pk).update(status=Automation.Status.PAUSED)
    assert not _function_passes(a.pk, order, now)
    Automation.objects.filter(pk=a.pk).update(status=Automation.Status.ACTIVE)
    assert _function_passes(a.pk, order, now)
    # A scope never checked before has no rows: the locked path creates them.
    b = make_automation("fresh")
    assert not _function_passes(b.pk, order, now)
    assert pretrade_check(automation_id=b.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
    assert RiskState.objects.get(automation=b).open_orders == 1


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_reservation_commits_synchronously_unless_the_caller_asks_and_a_refusal_always_does() -> None:
    a = make_automation()
    risk_limit_set(automation=a, actor="test", reason="two at a time", max_open_orders=2)
    # The first check of a scope creates its rows (the locked path); release it.
    assert pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
    order_closed(automation_id=a.pk, realized_pnl=D(0))
    with transaction.atomic():
        assert pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
        assert _synchronous_commit() == "on"
    with transaction.atomic():
        assert _synchronous_commit() == "on"
        assert (
            pretrade_check(
                automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100), synchronous_commit=False
            )
            == []
        )
        assert _synchronous_commit() == "off"
    with transaction.atomic():
        breaches = pretrade_check(
            automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100), synchronous_commit=False
        )
        assert [b.limit for b in breaches] == ["max_open_orders"]
        # The trip is answered only once it is as durable as any other commit.
        assert _synchronous_commit() == "on"
    assert BreakerTrip.objects.filter(automation=a, limit="max_open_orders").count() == 1
    assert RiskState.objects.get(automation=a).open_orders == 2


@pytest.mark.django_db(transaction=True)
def test_the_durability_barrier_commits_on_its_own_and_refuses_inside_a_transaction() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn()")
        (before,) = cursor.fetchone()
        commits_make_durable()
        # It wrote a commit record (so its synchronous commit waited for the flush up to it) ...
        cursor.execute("SELECT pg_current_wal_flush_lsn() > %s::pg_lsn", [before])
        assert cursor.fetchone()[0] is True
        # ... and left the session's own setting as it was.
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
    with transaction.atomic(), pytest.raises(RuntimeError, match="outside a transaction"):
        commits_make_durable()


def test_the_fast_path_rolls_the_day_and_keeps_only_the_window_the_limit_needs() -> None:
    a = make_automation()
    b = make_automation("no-rate-limit")
    risk_limit_set(automation=a, actor="test", reason="rate", max_orders_per_minute=3, max_daily_loss=D(100))
    for automation in (a, b):
        assert pretrade_check(automation_id=automation.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
    yesterday = timezone.now().date() - timedelta(days=1)
    RiskState.objects.filter(automation=a).update(
        trading_day=yesterday,
        daily_realized_pnl=D(-150),
        daily_peak_pnl=D(20),
        slippage_breaches_today=4,
        consecutive_losses=2,
    )
    for _ in range(2):
        assert pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
    state = RiskState.objects.get(automation=a)
    assert (state.trading_day, state.daily_realized_pnl, state.daily_peak_pnl, state.slippage_breaches_today) == (
        timezone.now().date(),
        D(0),
        D(0),
        0,
    )
    # A losing streak does not end at midnight.
    assert state.consecutive_losses == 2
    assert state.open_orders == 3
    assert len(state.order_times) == 3
    # The fourth order within the minute is refused (by the reference path, which trips the breaker).
    breaches = pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100))
    assert [x.limit for x in breaches] == ["max_orders_per_minute"]
    # Without a rate limit anywhere, no order times are kept.
    assert RiskState.objects.get(automation=b).order_times == []
    assert RiskState.objects.get(automation__isnull=True).order_times == []


def test_a_released_order_frees_its_slot_for_the_fast_path() -> None:
    a = make_automation()
    risk_limit_set(automation=a, actor="test", reason="one at a time", max_open_orders=1)
    now = timezone.now()
    order = rules.OrderCheck(quantity=D(1), limit_price=D(100), side=Side.BUY, mid=D(100))
    assert pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
    assert not _function_passes(a.pk, order, now)
    order_closed(automation_id=a.pk, realized_pnl=D(5))
    assert _function_passes(a.pk, order, now)
    assert pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
    assert RiskState.objects.get(automation=a).open_orders == 1
    assert not BreakerTrip.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_reservation_is_undone_with_the_order_transaction_that_made_it() -> None:
    a = make_automation()
    risk_limit_set(automation=a, actor="test", reason="one at a time", max_open_orders=1)
    assert pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
    order_closed(automation_id=a.pk, realized_pnl=D(0))

    class OrderInsertFailed(Exception):
        pass

    for synchronous in (True, False):
        with pytest.raises(OrderInsertFailed), transaction.atomic():
            assert (
                pretrade_check(
                    automation_id=a.pk,
                    side="buy",
                    quantity=D(1),
                    limit_price=D(100),
                    mid=D(100),
                    synchronous_commit=synchronous,
                )
                == []
            )
            raise OrderInsertFailed
        state = RiskState.objects.get(automation=a)
        assert (state.open_orders, state.order_times, state.tripped) == (0, [], False)
    # The slot is still free: the next order takes it through the fast path.
    assert pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) == []
    assert not BreakerTrip.objects.exists()

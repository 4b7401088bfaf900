"""The global count limits on slot rows (``risk.models.GlobalSlot``): claimed and freed with the orders, exact under contention.

- after any sequence of reservations, refusals, rollbacks and releases the
  slots count exactly the automations' open orders;
- a check that finds every slot with room held by a transaction in flight
  waits for it and decides on what it committed (passes if it rolled back,
  refuses if it committed): it is never refused because a slot was locked;
- a passing check leaves the global risk-state row unwritten with every
  global limit set;
- changing a global count limit rebuilds its slots (an excess over a lowered
  limit is released first), and clearing it removes them;
- a check that read the global day unlocked and is overtaken by a booking
  in its own transaction fails with a serialization failure.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from importlib import import_module

import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from risk.models import BreakerTrip, GlobalSlot, RiskState
from risk.selectors import global_open_orders, global_slots_taken
from risk.services import GLOBAL_SLOT_STRIPES, order_closed, pretrade_check, risk_limit_set
from tests.risk.conftest import make_automation
from tests.risk.test_global_row import _check, _reactivate, _rows_exist

pytestmark = [pytest.mark.usefixtures("celery_eager")]
D = Decimal
EVERY_GLOBAL_LIMIT = {
    "max_open_orders": 100, "max_orders_per_minute": 100, "max_daily_loss": D(1000), "max_drawdown": D(1000),
    "max_consecutive_losses": 50, "max_slippage_breaches_per_day": 50, "max_order_qty": D(10),
    "max_order_notional": D(100_000), "price_collar_bps": D(100), "max_signals_per_hour": 1000,
}


def _rate_used() -> int:
    now_s = timezone.now().timestamp()
    return sum(t > now_s - 60 for slot in GlobalSlot.objects.filter(kind=GlobalSlot.Kind.ORDER_RATE) for t in slot.times)


def _global_xmin() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT xmin::text::bigint FROM risk_riskstate WHERE automation_id IS NULL")
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_the_slot_stripe_count_is_the_one_the_migration_builds_with() -> None:
    assert import_module("risk.migrations.0010_global_slots").GLOBAL_SLOT_STRIPES == GLOBAL_SLOT_STRIPES


@pytest.mark.django_db
def test_slots_claimed_and_freed_match_the_open_orders_after_reservations_refusals_rollbacks_and_releases() -> None:
    a, b = make_automation("a"), make_automation("b")
    _rows_exist([a, b])
    risk_limit_set(actor="test", reason="counts", max_open_orders=4, max_orders_per_minute=50)
    risk_limit_set(automation=b, actor="test", reason="b is small", max_order_qty=D(2))
    assert _check(a.pk) and _check(b.pk) and _check(a.pk)
    # A refusal by the automation's own limit gives its claim back.
    refused = pretrade_check(automation_id=b.pk, side="buy", quantity=D(3), limit_price=D(100), mid=D(100))
    assert [x.limit for x in refused] == ["max_order_qty"]
    _reactivate([a, b])
    # A reservation rolled back with its transaction frees its slot.
    with pytest.raises(RuntimeError), transaction.atomic():
        assert _check(a.pk)
        raise RuntimeError("the order insert failed")
    assert global_slots_taken() == global_open_orders() == 3
    assert _rate_used() == 3
    order_closed(automation_id=a.pk, realized_pnl=D(0))
    assert _check(b.pk) and _check(a.pk)
    assert global_slots_taken() == global_open_orders() == 4
    # At the limit the reference path refuses with the true count.
    refused = pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100))
    assert [(x.limit, x.value) for x in refused] == [("max_open_orders", 4)]
    assert global_slots_taken() == global_open_orders() == 4
    for automation in (a, a, b, b):
        order_closed(automation_id=automation.pk, realized_pnl=D(0))
    assert global_slots_taken() == global_open_orders() == 0
    # A release of an order never counted (the automation's count is already 0) frees nothing.
    order_closed(automation_id=a.pk, realized_pnl=D(0))
    assert global_slots_taken() == 0
    assert _rate_used() == 5


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("holder_commits", [False, True], ids=["holder_rolls_back", "holder_commits"])
def test_a_check_that_finds_every_free_slot_held_waits_and_decides_on_what_the_holder_commits(holder_commits: bool) -> None:
    holder, waiter = make_automation("holder"), make_automation("waiter")
    _rows_exist([holder, waiter])
    risk_limit_set(actor="test", reason="one order at a time", max_open_orders=1)
    claimed, finish = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def hold() -> None:
        try:
            with transaction.atomic():
                assert _check(holder.pk)  # The fast path claims the only slot and keeps it locked.
                claimed.set()
                finish.wait(10)
                if not holder_commits:
                    transaction.set_rollback(True)
        finally:
            connection.close()

    def check() -> None:
        try:
            outcome["passed"] = _check(waiter.pk)
        finally:
            outcome["done_at"] = time.monotonic()
            connection.close()

    threads = [threading.Thread(target=hold), threading.Thread(target=check)]
    threads[0].start()
    assert claimed.wait(10)
    threads[1].start()
    time.sleep(0.3)
    # The check neither passed nor refused while the slot was held.
    assert "done_at" not in outcome
    released_at = time.monotonic()
    finish.set()
    for t in threads:
        t.join(10)
    assert outcome["done_at"] >= released_at  # type: ignore[operator]
    assert outcome["passed"] is (not holder_commits)
    assert BreakerTrip.objects.filter(limit="max_open_orders").exists() is holder_commits
    assert global_slots_taken() == global_open_orders() == 1


@pytest.mark.django_db
def test_a_passing_check_with_every_global_limit_set_does_not_write_the_global_row() -> None:
    a, b = make_automation("a"), make_automation("b")
    _rows_exist([a, b])
    risk_limit_set(actor="test", reason="every global limit", **EVERY_GLOBAL_LIMIT)
    before = _global_xmin()
    with transaction.atomic():
        # The first check of the transaction is the fast path's; one the rows did not exist for yet is not.
        assert _check(a.pk)
        assert _global_xmin() == before
    assert _check(b.pk) and _check(a.pk, synchronous=False)
    assert _global_xmin() == before
    assert global_slots_taken() == 3 and _rate_used() == 3
    # The reference path's pass leaves it unwritten too.
    RiskState.objects.filter(automation=a).delete()
    assert _check(a.pk)
    assert _global_xmin() == before
    # A booking writes it.
    order_closed(automation_id=b.pk, realized_pnl=D(-5))
    assert _global_xmin() != before
    assert RiskState.objects.get(automation__isnull=True).daily_realized_pnl == D(-5)


@pytest.mark.django_db
def test_changing_a_global_count_limit_rebuilds_its_slots_and_releases_an_excess_first() -> None:
    a = make_automation()
    _rows_exist([a])
    risk_limit_set(actor="test", reason="wide", max_open_orders=40, max_orders_per_minute=40)
    assert GlobalSlot.objects.filter(kind=GlobalSlot.Kind.OPEN_ORDERS, n__gt=0).count() == GLOBAL_SLOT_STRIPES
    for _ in range(5):
        assert _check(a.pk)
    risk_limit_set(actor="test", reason="narrow", max_open_orders=3, max_orders_per_minute=7)
    slots = {(s.kind, s.n): s for s in GlobalSlot.objects.all()}
    assert sorted(s.capacity for (k, n), s in slots.items() if k == GlobalSlot.Kind.OPEN_ORDERS and n > 0) == [1, 1, 1]
    assert slots[(GlobalSlot.Kind.OPEN_ORDERS, 0)].used == 2  # 5 open over a limit of 3.
    assert sum(s.capacity for (k, _), s in slots.items() if k == GlobalSlot.Kind.ORDER_RATE) == 7
    assert _rate_used() == 5  # The last minute's orders are kept.
    refused = pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100))
    assert [(x.limit, x.value) for x in refused] == [("max_open_orders", 5)]
    _reactivate([a])
    order_closed(automation_id=a.pk, realized_pnl=D(0))
    order_closed(automation_id=a.pk, realized_pnl=D(0))
    # The excess went first: 3 open, still at the limit.
    assert global_slots_taken() == 3
    assert pretrade_check(automation_id=a.pk, side="buy", quantity=D(1), limit_price=D(100), mid=D(100)) != []
    _reactivate([a])
    order_closed(automation_id=a.pk, realized_pnl=D(0))
    assert _check(a.pk)
    assert _check(a.pk) is False
    risk_limit_set(actor="test", reason="clear", max_open_orders=None, max_orders_per_minute=None)
    assert not GlobalSlot.objects.exists() and global_slots_taken() is None


@pytest.mark.django_db(transaction=True)
def test_a_check_overtaken_by_a_booking_before_its_own_booking_fails_the_transaction() -> None:
    a, b = make_automation("a"), make_automation("b")
    _rows_exist([a, b])
    risk_limit_set(actor="test", reason="day loss", max_daily_loss=D(100))
    checked, booked = threading.Event(), threading.Event()
    errors: list[str | None] = []

    def trade() -> None:
        try:
            with transaction.atomic():
                assert _check(a.pk)  # Reads a day with no loss, without a lock.
                checked.set()
                booked.wait(10)
                order_closed(automation_id=a.pk, realized_pnl=D(-10))
        except OperationalError as exc:
            errors.append(getattr(exc.__cause__, "sqlstate", None))
        finally:
            connection.close()

    thread = threading.Thread(target=trade)
    thread.start()
    assert checked.wait(10)
    order_closed(automation_id=b.pk, realized_pnl=D(-100))  # Commits: the day is at the limit.
    booked.set()
    thread.join(10)
    assert errors == ["40001"]
    assert RiskState.objects.get(automation__isnull=True).daily_realized_pnl == D(-100)
    assert RiskState.objects.get(automation=a).open_orders == 0

"""The global scope: a passing check never writes the global row; global counts live on the global slots.

``pretrade_check`` reserves on the automation's row and, for each global
count limit, on a global slot (``risk.models.GlobalSlot``); it only reads the
global row. These tests hold the cases where the global scope matters:

- a global open-order limit set later starts from the true count (the slots
  rebuilt from the automations' rows under the counting barrier), also
  when the limit is set while checks are racing;
- with a global limit, racers on different automations pass exactly M;
- a check and the booking of a loss in one transaction, racing on
  different automations against a global daily-loss limit, stop exactly
  at the limit and never deadlock: a trade whose check was overtaken by
  another's booking fails with a serialization failure and is retried
  (see ``risk.services.order_closed``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from importlib import import_module
from typing import Any

import pytest
from django.db import OperationalError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from risk.management.commands.risk_status import risk_status_report
from risk.models import RiskState
from risk.selectors import global_slots_taken
from risk.services import COUNTING_BARRIER_KEY, order_closed, pretrade_check, risk_limit_set
from tests.risk.conftest import make_automation
from tests.risk.test_concurrency import REPS, WORKERS, race

pytestmark = [pytest.mark.usefixtures("celery_eager")]
D = Decimal


def _check(automation_id: int, synchronous: bool = True) -> bool:
    return pretrade_check(
        automation_id=automation_id, side="buy", quantity=D(1), limit_price=D(100), mid=D(100),
        synchronous_commit=synchronous,
    ) == []


def _each(callables: list[Callable[[], Any]]) -> Callable[[], Any]:
    """One function for ``race``: each thread that calls it runs the next of ``callables``."""
    pending = iter(callables)
    lock = threading.Lock()

    def run() -> Any:
        with lock:
            fn = next(pending)
        return fn()

    return run


def _global() -> RiskState:
    return RiskState.objects.get(automation__isnull=True)


def _automations_open() -> int:
    return RiskState.objects.filter(automation__isnull=False).aggregate(n=Sum("open_orders"))["n"] or 0


def _rows_exist(automations: list) -> None:  # type: ignore[type-arg]
    today = timezone.now().date()
    RiskState.objects.get_or_create(automation=None, defaults={"trading_day": today})
    for a in automations:
        RiskState.objects.get_or_create(automation=a, defaults={"trading_day": today})


@pytest.mark.django_db
def test_the_counting_barrier_key_is_the_one_the_sql_functions_take() -> None:
    migration = import_module("risk.migrations.0008_pretrade_global_row_unlocked")
    assert migration.BARRIER_KEY == COUNTING_BARRIER_KEY
    with connection.cursor() as cursor:
        for function in ("risk_pretrade_reserve", "risk_signal_record"):
            cursor.execute("SELECT prosrc FROM pg_proc WHERE proname = %s", [function])
            (source,) = cursor.fetchone()
            assert f"pg_advisory_xact_lock_shared({COUNTING_BARRIER_KEY})" in source, function


@pytest.mark.django_db
def test_without_a_global_stateful_limit_a_reservation_leaves_the_global_row_unwritten() -> None:
    a = make_automation()
    risk_limit_set(actor="test", reason="sizes only", max_order_qty=D(10), price_collar_bps=D(50))
    risk_limit_set(automation=a, actor="test", reason="counts", max_open_orders=5, max_orders_per_minute=5)
    _rows_exist([a])
    before = _global()
    assert _check(a.pk) and _check(a.pk)
    after = _global()
    assert (after.open_orders, after.order_times) == (before.open_orders, before.order_times)
    state = RiskState.objects.get(automation=a)
    assert state.open_orders == 2 and len(state.order_times) == 2
    # The status report shows the true global count all the same.
    assert risk_status_report()["global"]["open_orders"] == 2
    # A global size limit still refuses (and the refusal is the reference path's, worded and tripped).
    breaches = pretrade_check(automation_id=a.pk, side="buy", quantity=D(11), limit_price=D(100), mid=D(100))
    assert [b.limit for b in breaches] == ["max_order_qty"] and breaches[0].message.startswith("global limit")


@pytest.mark.django_db
def test_setting_a_global_open_order_limit_starts_from_the_automations_true_count() -> None:
    a, b, c = make_automation("a"), make_automation("b"), make_automation("c")
    _rows_exist([a, b, c])
    for automation_id in (a.pk, a.pk, b.pk):
        assert _check(automation_id)
    assert global_slots_taken() is None
    risk_limit_set(actor="test", reason="cap everything", max_open_orders=5)
    assert global_slots_taken() == 3
    assert [_check(x.pk) for x in (c, a, b)] == [True, True, False]
    assert global_slots_taken() == 5 == _automations_open()
    order_closed(automation_id=a.pk, realized_pnl=D(0))
    assert global_slots_taken() == 4 == _automations_open()
    # The global row counts nothing.
    assert _global().open_orders == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous_commit", "async_commit"])
def test_exactly_m_of_n_racers_on_different_automations_pass_a_global_open_order_limit(synchronous: bool) -> None:
    m = 3
    automations = [make_automation(f"g-{i}") for i in range(WORKERS)]
    _rows_exist(automations)
    passed_per_rep = []
    for rep in range(REPS // 3):
        RiskState.objects.update(open_orders=0, tripped=False)
        already_open = rep % 4
        risk_limit_set(actor="test", reason=f"race {rep}", max_open_orders=m + already_open)
        # Some orders are already open (one each on the first automations) before the race.
        for a in automations[:already_open]:
            assert _check(a.pk, synchronous)
        passed = race(WORKERS, _each([lambda a=a: _check(a.pk, synchronous) for a in automations]))
        passed_per_rep.append(sum(passed))
        assert global_slots_taken() == m + already_open == _automations_open()
        risk_limit_set(actor="test", reason="reset", max_open_orders=None)
        _reactivate(automations)
    assert passed_per_rep == [m] * (REPS // 3)


def _reactivate(automations: list) -> None:  # type: ignore[type-arg]
    # A global breach halts every automation; the next repetition starts from active ones.
    from automations.models import Automation

    Automation.objects.filter(pk__in=[a.pk for a in automations]).update(status=Automation.Status.ACTIVE)
    RiskState.objects.update(tripped=False)


@pytest.mark.django_db(transaction=True)
def test_a_global_open_order_limit_set_while_checks_race_counts_every_reservation() -> None:
    automations = [make_automation(f"t-{i}") for i in range(WORKERS - 1)]
    _rows_exist(automations)
    for rep in range(REPS // 3):
        RiskState.objects.update(open_orders=0)
        risk_limit_set(actor="test", reason="unset", max_open_orders=None)
        start = threading.Barrier(WORKERS)

        def work(i: int, start: threading.Barrier = start) -> int:
            # WORKERS - 1 threads check in a loop, one sets the global limit halfway.
            if i == WORKERS - 1:
                start.wait()
                risk_limit_set(actor="test", reason="set mid-race", max_open_orders=1_000)
                return 0
            start.wait()
            return sum(_check(automations[i].pk) for _ in range(6))

        passed = sum(race(WORKERS, _each([lambda i=i: work(i) for i in range(WORKERS)])))
        # Every reservation, before or after the limit appeared, is in the global count.
        assert passed == _automations_open() == (WORKERS - 1) * 6, rep
        assert global_slots_taken() == passed, rep


@pytest.mark.django_db(transaction=True)
def test_check_and_loss_booked_in_one_transaction_on_different_automations_stop_at_a_global_daily_loss() -> None:
    # A global daily loss of 100, losses of 30: four trades pass (0, 30, 60, 90 are below the limit).
    limit, loss, expected = D("100"), D("30"), 4
    automations = [make_automation(f"l-{i}") for i in range(WORKERS)]
    passed_per_rep = []
    for rep in range(REPS // 3):
        _rows_exist(automations)
        RiskState.objects.update(daily_realized_pnl=0, daily_peak_pnl=0, consecutive_losses=0, tripped=False)
        _reactivate(automations)
        risk_limit_set(actor="test", reason=f"race {rep}", max_daily_loss=limit)

        def trade(a) -> bool:  # type: ignore[no-untyped-def]
            # The check reads the global day without a lock; a booking that overtakes it fails this
            # transaction with a serialization failure, and it is retried as any such transaction is.
            for _attempt in range(WORKERS + 1):
                try:
                    with transaction.atomic():
                        if not _check(a.pk):
                            return False
                        order_closed(automation_id=a.pk, realized_pnl=-loss)
                        return True
                except OperationalError as exc:
                    if getattr(exc.__cause__, "sqlstate", None) != "40001":
                        raise
            raise AssertionError("a trade was overtaken more often than there are traders")

        passed_per_rep.append(sum(race(WORKERS, _each([lambda a=a: trade(a) for a in automations]))))
        assert _global().daily_realized_pnl == -loss * expected
    assert passed_per_rep == [expected] * (REPS // 3)

"""Parallel workers on separate database connections never overshoot a limit.

Each worker is a thread with its own PostgreSQL connection; all of them wait
on a barrier and are released together, then race for the same risk-state
rows. Repeated many times, the number that pass must equal the limit every
time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from risk.models import BreakerTrip, RiskState
from risk.services import order_closed, pretrade_check, risk_limit_set, signal_rate_check
from tests.risk.conftest import make_automation

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_eager")]

WORKERS = 8
REPS = 30


def race(workers: int, fn: Callable[[], Any]) -> list[Any]:
    """Run ``fn`` in ``workers`` threads released at once; return results (exceptions re-raised)."""
    barrier = threading.Barrier(workers)
    results: list[Any] = [None] * workers
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout=30)
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


# Both commit modes of pretrade_check: the asynchronous one releases the row
# locks before the WAL flush, and must be just as exact.
COMMIT_MODES = pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous_commit", "async_commit"])


@COMMIT_MODES
def test_exactly_m_of_n_parallel_orders_pass_the_open_order_limit_every_time(synchronous: bool):
    m = 3
    passed_per_rep = []
    for rep in range(REPS):
        a = make_automation(f"open-orders-{rep}")
        risk_limit_set(automation=a, actor="test", reason="race", max_open_orders=m)
        # The scope's rows exist before the race (as they do in production after
        # the first order), so the racers go through the one-statement path.
        RiskState.objects.get_or_create(automation=None, defaults={"trading_day": timezone.now().date()})
        RiskState.objects.create(automation=a, trading_day=timezone.now().date())

        def attempt(a=a) -> bool:
            return pretrade_check(
                automation_id=a.pk, side="buy", quantity=Decimal("1"), limit_price=Decimal("100"), mid=Decimal("100"),
                synchronous_commit=synchronous,
            ) == []

        passed_per_rep.append(sum(race(WORKERS, attempt)))
        assert RiskState.objects.get(automation=a).open_orders == m
        assert BreakerTrip.objects.filter(automation=a, limit="max_open_orders").count() == 1
    assert passed_per_rep == [m] * REPS


def test_exactly_m_of_n_parallel_signals_pass_the_hourly_signal_limit_every_time():
    m = 5
    passed_per_rep = []
    for rep in range(REPS):
        a = make_automation(f"signals-{rep}")
        risk_limit_set(automation=a, actor="test", reason="race", max_signals_per_hour=m)
        passed_per_rep.append(sum(r is None for r in race(WORKERS, lambda a=a: signal_rate_check(automation=a.pk))))
        assert len(RiskState.objects.get(automation=a).signal_times) == m
    assert passed_per_rep == [m] * REPS


@COMMIT_MODES
def test_parallel_losing_trades_stop_exactly_when_the_daily_loss_limit_is_reached(synchronous: bool):
    # Each worker checks and, if allowed, trades and books a loss of 30 in one
    # transaction. With a limit of 100, losses 0, 30, 60 and 90 are below it
    # (four trades pass) and the fourth loss takes the day to 120: refused after.
    limit, loss = Decimal("100"), Decimal("30")
    expected = 4
    passed_per_rep = []
    for rep in range(REPS):
        a = make_automation(f"loss-{rep}")
        risk_limit_set(automation=a, actor="test", reason="race", max_daily_loss=limit)

        def trade(a=a) -> bool:
            with transaction.atomic():
                if pretrade_check(
                    automation_id=a.pk, side="sell", quantity=Decimal("1"), limit_price=Decimal("100"), mid=Decimal("100"),
                    synchronous_commit=synchronous,
                ):
                    return False
                order_closed(automation_id=a.pk, realized_pnl=-loss)
                return True

        passed_per_rep.append(sum(race(WORKERS, trade)))
        state = RiskState.objects.get(automation=a)
        assert state.daily_realized_pnl == -loss * expected
        assert state.tripped
    assert passed_per_rep == [expected] * REPS

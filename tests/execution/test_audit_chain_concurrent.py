"""Detect passes and execute orders appending to the audit chain at once leave one unbroken chain."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.db import connection, transaction

from audit.models import AuditEvent
from audit.verify import VerifyResult, verify_events
from automations.models import Signal
from automations.services import RoutedSignal, signals_create_routed
from execution import services
from execution.models import Order
from tests.execution.conftest import BASE_NS, make_automation, make_signal

S = Signal.Status
PASSES = 6
ORDERS_PER_WORKER = 4


@pytest.mark.django_db(transaction=True)
def test_concurrent_detect_passes_and_execute_orders_leave_a_chain_that_verifies(market):
    detecting = [make_automation(name=f"detect-{i}") for i in range(2)]
    executing = make_automation(name="execute")
    queued = [[make_signal(executing, status=S.QUEUED) for _ in range(ORDERS_PER_WORKER)] for _ in range(2)]
    before = AuditEvent.objects.count()
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker(body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(10)
                body()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                connection.close()
        return run

    def detect(i: int) -> Callable[[], None]:
        def body() -> None:
            for n in range(PASSES):
                with transaction.atomic():
                    signals_create_routed(signals=[RoutedSignal(
                        automation=detecting[i], side="buy", quantity=Decimal("0.01"), limit_price=Decimal("100.10"),
                        reason="why", to_status=S.QUEUED, status_reason="routed",
                        context={"market_ts_ns": BASE_NS + n})], count_automatic=True)
        return body

    def execute(i: int) -> Callable[[], None]:
        def body() -> None:
            for signal in queued[i]:
                services.order_execute(signal_id=signal.pk)
        return body

    threads = [threading.Thread(target=worker(f(i))) for f in (detect, execute) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []

    result = VerifyResult()
    verify_events(result)
    assert result.ok, result.problems
    # No fork: every event's predecessor is a different one.
    prev = list(AuditEvent.objects.values_list("prev_hash", flat=True))
    assert len(prev) == len(set(prev))
    # Two events per detected signal; every order filled, each with its events (the signal's two moves, the order's
    # decision and its close).
    assert Signal.objects.filter(automation__in=detecting, status=S.QUEUED).count() == 2 * PASSES
    assert set(Order.objects.values_list("status", flat=True)) == {Order.Status.FILLED}
    assert Order.objects.count() == 2 * ORDERS_PER_WORKER
    assert AuditEvent.objects.count() - before == 2 * 2 * PASSES + 2 * ORDERS_PER_WORKER * 4

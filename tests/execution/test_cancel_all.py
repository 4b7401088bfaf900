"""The kill switch's cancel-all: batched settlement, one audit event per order, nothing left open."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from automations.models import Signal
from automations.services import signal_transition
from execution import services
from execution.brokers import OrderRequest
from execution.brokers.paper import PaperBroker
from execution.models import Order
from risk.models import RiskState
from risk.services import pretrade_check
from tests.execution.conftest import make_automation, make_signal

pytestmark = pytest.mark.django_db
OS = Order.Status
S = Signal.Status


def _order_events(order: Order) -> list[dict[str, Any]]:
    return list(
        AuditEvent.objects.filter(kind=AuditEvent.Kind.ORDER, subject_type="execution.order", subject_id=str(order.pk))
        .order_by("id")
        .values_list("data", flat=True)
    )


def _pending_order(automation: Any) -> Order:
    """An order decided and reserved but never claimed (born before orders were born claimed, or stuck)."""
    signal = make_signal(automation, status=S.QUEUED, limit_price="99.90")
    assert (
        pretrade_check(
            automation_id=automation.pk,
            side=signal.side,
            quantity=signal.quantity,
            limit_price=signal.limit_price,
            mid=Decimal("100.05"),
        )
        == []
    )
    signal_transition(signal=signal, to_status=S.ORDERED, actor_label="test", reason="order created")
    return Order.objects.create(
        signal=signal,
        automation=automation,
        client_order_id=f"fp-{signal.pk}",
        broker="paper",
        symbol=signal.symbol,
        side=signal.side,
        quantity=signal.quantity,
        limit_price=signal.limit_price,
        status=OS.PENDING,
        created_at=timezone.now(),
    )


def test_cancel_all_settles_every_open_order_in_a_batch_with_one_audit_event_each(market: Any) -> None:
    automation = make_automation()
    resting = []
    for _ in range(4):
        signal = make_signal(automation, status=S.QUEUED, limit_price="99.90")  # Below the ask: rests.
        order = services.order_execute(signal_id=signal.pk)
        assert order.status == OS.SUBMITTED
        resting.append(order)
    # Pending orders: decided and reserved, not yet claimed by a worker.
    pending = [_pending_order(automation) for _ in range(3)]
    # An order the venue has and the database does not (a crash between submit and record).
    PaperBroker().submit(
        OrderRequest(
            client_order_id="orphan-1",
            symbol=automation.symbol,
            side="buy",
            quantity=Decimal("0.01"),
            limit_price=Decimal("99.90"),
        )
    )
    assert RiskState.objects.get(automation=automation).open_orders == 7
    events_before = {o.pk: len(_order_events(o)) for o in resting + pending}

    result = services.orders_cancel_all(reason="test batch")

    assert (result["pending"], result["at_broker"], result["orphans"], result["errors"]) == (3, 4, 1, 0)
    assert not Order.objects.filter(status__in=Order.OPEN_STATUSES).exists()
    assert PaperBroker().open_orders() == []
    assert RiskState.objects.get(automation=automation).open_orders == 0
    assert RiskState.objects.get(automation__isnull=True).open_orders == 0
    for order in resting + pending:
        order.refresh_from_db()
        assert order.status == OS.CANCELLED and order.closed_at is not None
        assert Signal.objects.get(pk=order.signal_id).status == S.FAILED
        # Exactly one new audit event per order: its cancellation.
        new = _order_events(order)[events_before[order.pk] :]
        assert [e["status"] for e in new] == [OS.CANCELLED], new
    assert all("kill switch: test batch" in o.status_reason for o in pending)
    summary = AuditEvent.objects.filter(kind=AuditEvent.Kind.ORDER, subject_id="*").get()
    assert (summary.data["pending"], summary.data["at_broker"]) == (3, 4)


def test_cancel_all_with_nothing_open_writes_only_its_summary(market: Any) -> None:
    before = AuditEvent.objects.count()
    result = services.orders_cancel_all(reason="nothing to do")
    assert (result["pending"], result["at_broker"], result["orphans"], result["errors"]) == (0, 0, 0, 0)
    assert AuditEvent.objects.count() == before + 1


def test_an_order_that_fails_to_settle_does_not_undo_the_others(market: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    automation = make_automation()
    orders = []
    for _ in range(3):
        signal = make_signal(automation, status=S.QUEUED, limit_price="99.90")
        orders.append(services.order_execute(signal_id=signal.pk))
    bad = orders[1]
    real_cancel = PaperBroker.cancel

    # The venue edge answers nonsense for one order: its settlement raises inside the batch.
    def cancel(self: PaperBroker, client_order_id: str, *, symbol: str = "") -> Any:
        answer = real_cancel(self, client_order_id, symbol=symbol)
        if client_order_id == bad.client_order_id:
            return replace(answer, fills="not a list of fills")
        return answer

    monkeypatch.setattr(PaperBroker, "cancel", cancel)
    result = services.orders_cancel_all(reason="partial")
    assert (result["at_broker"], result["errors"]) == (2, 1)
    statuses = {o.pk: Order.objects.get(pk=o.pk).status for o in orders}
    assert statuses == {orders[0].pk: OS.CANCELLED, bad.pk: OS.SUBMITTED, orders[2].pk: OS.CANCELLED}
    # The one left open keeps its reservation; the others released theirs.
    assert RiskState.objects.get(automation=automation).open_orders == 1

"""The order path as it was written with the ORM (before the hand-written statements), kept as the reference.

``tests/execution/test_order_rows.py`` runs the same signals and broker answers
through this and through ``execution.services`` and compares the rows they
leave. Only the database side differs; the broker, the risk check, the signal
state machine and the audit chain are the production ones.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Exists
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_event_record
from automations.models import Automation, Signal
from execution.accounting import position_apply
from execution.brokers import BrokerOrder, BrokerRejected, broker_for_mode
from execution.gating import gating_required, signal_order_hash
from execution.models import Approval, Fill, Order
from execution.services import (
    _POSITION_LOCK_BASE,
    _STATUS_FROM_BROKER,
    ACTOR,
    FINAL,
    _automation_position,
    _current_mid,
    _request,
    _slippage_gap_watch,
    _submission_lock,
    pretrade_check_call,
)
from execution.simulation import OrderSpec, expected_slippage_bps, slippage_bps
from ingestion import selectors as market
from ingestion.types import Side
from risk.models import KillSwitch
from risk.selectors import kill_switch_engaged, risk_limits_for
from tests.automations.reference_transition import signal_transition_orm

logger = logging.getLogger(__name__)
S = Signal.Status
OS = Order.Status


def _position_lock(automation_id: int) -> None:
    """Book one automation's fills one transaction at a time (until this transaction ends)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_POSITION_LOCK_BASE + automation_id])


def order_execute(*, signal_id: int) -> Order | None:
    with _submission_lock(signal_id) as held:
        assert held
        order, created = _order_decide(signal_id)
        if order is None or order.status not in (OS.PENDING, OS.SUBMITTING):
            return order
        assert created
        broker = broker_for_mode(order.broker)
        try:
            result = broker.submit(_request(order))
        except BrokerRejected as exc:
            return order_finalize(order_id=order.pk, status=OS.REJECTED, reason=f"broker rejected: {exc}")
        return order_settle(order_id=order.pk, broker_order=result, answered_at=timezone.now())


def order_finalize(*, order_id: int, status: str, reason: str) -> Order:
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status in FINAL:
            return order
        order.status = status
        order.status_reason = reason
        order.save(update_fields=["status", "status_reason"])
        _order_close(order, timezone.now())
        return order


def _execution_refusal(signal: Signal, automation: Automation, now: datetime) -> tuple[str, str] | None:
    """Why this signal must not become an order, as (signal status to move to, reason); None to go ahead.

    ``automation.kill_switch_on`` is read with the automation (one round trip) when the caller annotated it.
    """
    engaged = getattr(automation, "kill_switch_on", None)
    if engaged if engaged is not None else kill_switch_engaged():
        return S.FAILED, "the kill switch is engaged"
    if automation.status != Automation.Status.ACTIVE:
        return S.FAILED, f"automation {automation.name} is {automation.status}"
    if signal.expires_at is not None and signal.expires_at <= now:
        return S.EXPIRED, f"expired at {signal.expires_at.isoformat()} before it could be executed"
    if signal.status == S.APPROVED:
        approval = Approval.objects.filter(signal=signal, decision="approve").first()
        if approval is None:
            return S.FAILED, "approved status without an approval record: refused"
        if approval.order_hash != signal_order_hash(signal):
            return S.FAILED, "the order no longer matches what was approved (order hash differs): refused"
        return None
    if signal.needs_approval or gating_required(automation):
        return S.FAILED, (f"this trade needs a trader's approval ({automation.approved_trade_count} of the first "
                          f"{automation.approval_threshold} approved) and has none: refused")
    return None


def _order_decide(signal_id: int) -> tuple[Order | None, bool]:
    """Create the signal's one Order or refuse, under the signal's row lock; return (order, created now).

    The caller holds the signal's submission lock, so a new order is born
    ``submitting`` (claimed by this worker) and goes to the broker right after
    this commit: no separate claim round trip on the way to the venue. An order
    that already exists comes back as it is (a redelivered or repeated task).
    """
    with transaction.atomic():
        signal = Signal.objects.select_for_update().filter(pk=signal_id).first()
        if signal is None:
            logger.warning("execute: no signal %s (forged or replayed message?)", signal_id)
            return None, False
        existing = Order.objects.filter(signal_id=signal_id).first()
        if existing is not None:
            return existing, False
        if signal.status not in (S.QUEUED, S.APPROVED):
            logger.info("execute: signal %s is %s; nothing to do", signal_id, signal.status)
            return None, False
        automation = (Automation.objects.annotate(kill_switch_on=Exists(KillSwitch.objects.filter(pk=1, engaged=True)))
                      .get(pk=signal.automation_id))
        signal.automation = automation  # The push payload names the automation: no second read of its row.
        now = timezone.now()
        refusal = _execution_refusal(signal, automation, now)
        if refusal is not None:
            to_status, reason = refusal
            signal_transition_orm(signal=signal, to_status=to_status, actor_label=ACTOR, reason=reason, locked=True)
            return None, False
        mid = _current_mid(signal.symbol)
        modelled = _modelled_slippage(signal)
        breaches = pretrade_check_call(automation_id=automation.pk, side=signal.side, quantity=signal.quantity,
                                       limit_price=signal.limit_price, mid=mid)
        order = Order(
            signal=signal, automation=automation, client_order_id=f"fp-{signal.pk}", broker=automation.mode,
            symbol=signal.symbol, side=signal.side, quantity=signal.quantity, limit_price=signal.limit_price,
            arrival_mid=mid, modelled_slippage_bps=modelled, gated=signal.status == S.APPROVED, created_at=now,
        )
        if breaches:
            reason = "; ".join(b.message for b in breaches)
            order.status = OS.REJECTED
            order.status_reason = f"risk: {reason}"
            order.closed_at = now
            order.save(force_insert=True)
            signal_transition_orm(signal=signal, to_status=S.FAILED, actor_label=ACTOR,
                                  reason=f"refused by risk: {reason}", locked=True)
        else:
            order.status = OS.SUBMITTING
            order.save(force_insert=True)
            signal_transition_orm(signal=signal, to_status=S.ORDERED, actor_label=ACTOR, locked=True,
                                  reason=f"order {order.client_order_id} created")
        audit_event_record(kind=AuditEvent.Kind.ORDER, actor_label=ACTOR, subject=order, reason=order.status_reason,
                           data={"status": order.status, "client_order_id": order.client_order_id,
                                 "signal_id": signal.pk, "gated": order.gated})
        return order, True


def _modelled_slippage(signal: Signal) -> float | None:
    from execution.brokers.paper import paper_fill_params

    book = market.book_snapshot(signal.symbol, n=50)
    if book is None:
        return None
    spec = OrderSpec(side=Side(signal.side), quantity=Decimal(signal.quantity), limit_price=Decimal(signal.limit_price),
                     symbol=signal.symbol)
    value = expected_slippage_bps(spec, book, paper_fill_params())
    return None if math.isnan(value) else value


def order_settle(*, order_id: int, broker_order: BrokerOrder, answered_at: datetime | None = None) -> Order:
    """Record the broker's view of an order: new fills, status, and on a final state, close it.

    ``answered_at``: when the broker's answer to the submission arrived, the
    order's ``submitted_at`` (else the time of this call).
    """
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status in FINAL:
            return order
        now = timezone.now()
        known = set(order.fills.values_list("broker_fill_id", flat=True))
        new_fills = [f for f in broker_order.fills if f.fill_id not in known]
        if new_fills:
            # The position already holds this order's earlier fills (they were booked when they came).
            _position_lock(order.automation_id)
            position = _automation_position(order.automation_id)
            for f in new_fills:
                position, pnl = position_apply(position, side=order.side, quantity=f.quantity, price=f.price, fee=f.fee)
                realized = None
                if order.arrival_mid:
                    realized = float(slippage_bps(Side(order.side), f.price, Decimal(order.arrival_mid)))
                Fill.objects.create(order=order, price=f.price, quantity=f.quantity, fee=f.fee, filled_at=f.filled_at,
                                    broker_fill_id=f.fill_id, modelled_slippage_bps=order.modelled_slippage_bps,
                                    realized_slippage_bps=realized, realized_pnl=pnl,
                                    position_after=position.quantity, avg_price_after=position.avg_price)
        order.broker_order_id = broker_order.broker_order_id or order.broker_order_id
        order.filled_qty = broker_order.filled_qty
        order.avg_fill_price = broker_order.avg_price
        order.submitted_at = order.submitted_at or answered_at or now
        status = _STATUS_FROM_BROKER[broker_order.status]
        changed = status != order.status or new_fills
        order.status = status
        order.status_reason = broker_order.reason or ""
        order.save(update_fields=["broker_order_id", "filled_qty", "avg_fill_price", "submitted_at", "status",
                                  "status_reason"])
        if status in FINAL:
            _order_close(order, now)
        elif changed:
            audit_event_record(kind=AuditEvent.Kind.ORDER, actor_label=ACTOR, subject=order,
                               data={"status": status, "client_order_id": order.client_order_id,
                                     "filled_qty": str(order.filled_qty)})
        return order


def _order_close(order: Order, now: datetime) -> None:
    """A final state: release the risk reservation with the order's PnL, settle the signal, watch slippage."""
    from risk.services import order_closed

    order.closed_at = now
    order.save(update_fields=["closed_at"])
    fills = list(order.fills.all())
    pnl = sum((f.realized_pnl for f in fills), Decimal(0))
    breach = False
    _, _, limit_row = risk_limits_for(order.automation_id)
    threshold = float(limit_row.slippage_breach_bps) if limit_row is not None else 50.0
    realized = [f.realized_slippage_bps for f in fills if f.realized_slippage_bps is not None]
    if realized and order.modelled_slippage_bps is not None:
        weights = [float(f.quantity) for f in fills if f.realized_slippage_bps is not None]
        avg_realized = sum(r * w for r, w in zip(realized, weights, strict=True)) / sum(weights)
        breach = avg_realized - order.modelled_slippage_bps > threshold
    order_closed(automation_id=order.automation_id, realized_pnl=pnl, slippage_breach=breach, actor_label=ACTOR)
    signal = Signal.objects.get(pk=order.signal_id)
    if signal.status == S.ORDERED:
        if order.filled_qty > 0:
            note = "" if order.status == OS.FILLED else f" ({order.status}: {order.status_reason})"
            reason = f"filled {order.filled_qty.normalize():f} at {order.avg_fill_price}{note}"
            signal_transition_orm(signal=signal, to_status=S.FILLED, actor_label=ACTOR, reason=reason)
        else:
            signal_transition_orm(signal=signal, to_status=S.FAILED, actor_label=ACTOR,
                                  reason=f"order {order.status}: {order.status_reason}")
    audit_event_record(kind=AuditEvent.Kind.ORDER, actor_label=ACTOR, subject=order, reason=order.status_reason,
                       data={"status": order.status, "client_order_id": order.client_order_id,
                             "filled_qty": str(order.filled_qty), "realized_pnl": str(pnl), "slippage_breach": breach})
    if fills:
        _slippage_gap_watch(order.automation_id)



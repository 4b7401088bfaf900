"""Reads of automations and signals shared by the API, the trader page and the push."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, TypedDict

from django.db.models import Count, Q, QuerySet

from automations.models import Automation, Signal


class SignalPayload(TypedDict):
    id: int
    automation_id: int
    automation_name: str
    symbol: str
    side: str
    quantity: str
    limit_price: str
    reason: str
    status: str
    status_reason: str
    needs_approval: bool
    bid: str | None
    ask: str | None
    mid: str | None
    spread_bps: float | None
    regime: dict[str, Any]
    features: dict[str, Any]
    market_ts: str | None
    created_at: str
    expires_at: str | None
    decided_at: str | None
    snapshot_id: int | None
    sequence: int


class SignalMessage(TypedDict):
    """What the ``signals`` group carries: one per change, numbered for gap detection."""

    type: str  # always "signal"
    seq: int
    signal: SignalPayload


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def signal_payload(signal: Signal) -> SignalPayload:
    """A JSON-ready view of a signal, the same for the push and the HTTP re-sync."""
    automation = signal.automation
    return SignalPayload(
        id=signal.pk,
        automation_id=signal.automation_id,
        automation_name=automation.name,
        symbol=signal.symbol,
        side=signal.side,
        quantity=_dec(signal.quantity) or "0",
        limit_price=_dec(signal.limit_price) or "0",
        reason=signal.reason,
        status=signal.status,
        status_reason=signal.status_reason,
        needs_approval=signal.needs_approval,
        bid=_dec(signal.bid),
        ask=_dec(signal.ask),
        mid=_dec(signal.mid),
        spread_bps=signal.spread_bps,
        regime=signal.regime or {},
        features=signal.features or {},
        market_ts=_iso(signal.market_ts),
        created_at=_iso(signal.created_at) or "",
        expires_at=_iso(signal.expires_at),
        decided_at=_iso(signal.decided_at),
        snapshot_id=signal.snapshot_id,
        sequence=signal.sequence,
    )


def signals_filtered(
    *,
    status: str | None = None,
    automation_id: int | None = None,
    symbol: str | None = None,
    since: datetime | None = None,
    since_seq: int | None = None,
) -> QuerySet[Signal]:
    """Signals matching the filters, newest first (by sequence when re-syncing, else by id)."""
    qs = Signal.objects.select_related("automation")
    if status:
        qs = qs.filter(status__in=status.split(","))
    if automation_id is not None:
        qs = qs.filter(automation_id=automation_id)
    if symbol:
        qs = qs.filter(symbol=symbol)
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if since_seq is not None:
        # A re-sync wants every signal changed after the last number the
        # client saw, oldest change first so it can apply them in order.
        return qs.filter(sequence__gt=since_seq).order_by("sequence")
    return qs.order_by("-id")


def signals_pending() -> QuerySet[Signal]:
    return Signal.objects.select_related("automation").filter(status=Signal.Status.PENDING_APPROVAL).order_by("id")


def automations_with_counts() -> QuerySet[Automation]:
    return Automation.objects.annotate(
        pending_count=Count("signals", filter=Q(signals__status=Signal.Status.PENDING_APPROVAL)),
    ).order_by("name")


def trade_counters() -> dict[str, int]:
    """Approved vs automatic trades over all automations, for the trader page."""
    from django.db.models import Sum

    totals = Automation.objects.aggregate(approved=Sum("approved_trade_count"), automatic=Sum("automatic_trade_count"))
    return {"approved": int(totals["approved"] or 0), "automatic": int(totals["automatic"] or 0)}


def push_sequence_current() -> int:
    """The highest push sequence any signal carries (0 when none)."""
    from django.db.models import Max

    return int(Signal.objects.aggregate(m=Max("sequence"))["m"] or 0)

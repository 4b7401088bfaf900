"""Reads of risk data shared by services, views, commands and other apps."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet, Sum

from risk import rules
from risk.models import Alert, BreakerTrip, GlobalSlot, KillSwitch, RiskLimit, RiskState

RISK_OFFICER_GROUP = "risk_officer"
TRADER_GROUP = "trader"

# Fields of ``RiskLimit`` that are limits (the arithmetic's ``LimitSet``).
LIMIT_FIELDS: tuple[str, ...] = (
    "max_signals_per_hour",
    "max_daily_loss",
    "max_drawdown",
    "max_open_orders",
    "max_order_qty",
    "max_order_notional",
    "price_collar_bps",
    "max_orders_per_minute",
    "max_consecutive_losses",
    "max_slippage_breaches_per_day",
)
# Settings of a limit row that are not limits themselves but may be changed the same way.
LIMIT_SETTING_FIELDS: tuple[str, ...] = (*LIMIT_FIELDS, "slippage_breach_bps")


def kill_switch_engaged() -> bool:
    """True while the global kill switch is on.

    One primary-key read of a single row. There is deliberately no cache in
    front of it: the database row is the truth, and a cache could only ever
    be wrong in the dangerous direction (saying "off" after it was engaged).
    """
    return KillSwitch.objects.filter(pk=1, engaged=True).exists()


def kill_switch_state() -> KillSwitch:
    """The kill switch row, or an unsaved "off" one when it was never touched."""
    return KillSwitch.objects.filter(pk=1).first() or KillSwitch(pk=1, engaged=False)


def limit_set_from_row(row: RiskLimit | None) -> rules.LimitSet:
    if row is None:
        return rules.LimitSet()
    return rules.LimitSet(**{name: getattr(row, name) for name in LIMIT_FIELDS})


def risk_limits_for(automation_id: int | None) -> tuple[rules.LimitSet, rules.LimitSet, RiskLimit | None]:
    """The global limits, the automation's limits, and the automation's row (for its slippage threshold)."""
    rows = list(RiskLimit.objects.filter(Q(automation__isnull=True) | Q(automation_id=automation_id)))
    global_row = next((r for r in rows if r.automation_id is None), None)
    automation_row = next((r for r in rows if r.automation_id is not None), None) if automation_id else None
    return limit_set_from_row(global_row), limit_set_from_row(automation_row), automation_row


def breaker_trips_open(*, automation_id: int | None = None, include_global: bool = True) -> QuerySet[BreakerTrip]:
    """Trips not yet reset; for one automation (plus the global ones) or all of them."""
    qs = BreakerTrip.objects.filter(reset_at__isnull=True).select_related("automation")
    if automation_id is not None:
        scope = Q(automation_id=automation_id)
        if include_global:
            scope |= Q(automation__isnull=True)
        qs = qs.filter(scope)
    return qs.order_by("tripped_at", "id")


def alerts_recent(*, limit: int = 50) -> QuerySet[Alert]:
    return Alert.objects.order_by("-id")[:limit]


def risk_states() -> QuerySet[RiskState]:
    return RiskState.objects.select_related("automation").order_by("automation_id")


def global_open_orders() -> int:
    """The global open-order count: the sum of the automations' counts (each written under its row's lock).

    The global risk-state row does not keep it (see ``risk.services.pretrade_check``).
    """
    return RiskState.objects.filter(automation__isnull=False).aggregate(n=Sum("open_orders"))["n"] or 0


def global_slots_taken() -> int | None:
    """The open orders the global slots count (the excess row included), or None without a global open-order limit.

    Equal to ``global_open_orders()`` whenever no check or release is in flight.
    """
    if not GlobalSlot.objects.filter(kind=GlobalSlot.Kind.OPEN_ORDERS).exists():
        return None
    return GlobalSlot.objects.filter(kind=GlobalSlot.Kind.OPEN_ORDERS).aggregate(n=Sum("used"))["n"] or 0


def user_in_group(user: Any, group: str) -> bool:
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    return user.groups.filter(name=group).exists()


def user_is_risk_officer(user: Any) -> bool:
    return user_in_group(user, RISK_OFFICER_GROUP)


def user_may_engage_kill_switch(user: Any) -> bool:
    """Anyone who trades, oversees trading or runs the platform may stop it; releasing needs more (see services)."""
    return (user_in_group(user, RISK_OFFICER_GROUP) or user_in_group(user, TRADER_GROUP)
            or user_in_group(user, "admin") or bool(getattr(user, "is_superuser", False)))

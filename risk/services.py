"""Risk writes: limits, atomic pre-trade checks, breakers, the kill switch, alerts.

Locking rules (every path follows them, so no two paths can deadlock each other):

0. The counting barrier (an advisory lock, ``COUNTING_BARRIER_KEY``) comes
   first: every path that locks ``RiskState`` rows takes it shared (inside the
   same statement or function), ``risk_limit_set`` exclusively.
1. ``RiskState`` rows are locked with ``SELECT ... FOR UPDATE``, the
   automation's row before the global row, and at most one automation's row
   per transaction. (This order lets a transaction that holds only its
   automation's row, after a pre-trade check that left the global row alone,
   go on to lock the global row, e.g. to book a closed order, without
   deadlocking against a path that holds the global row.)
1a. ``GlobalSlot`` rows come after both: a path waits for a slot only while
   holding at most the two risk-state rows, and locks several slots in
   ``(kind, n)`` order. Claiming or freeing a slot with ``SKIP LOCKED``
   never waits, so the fast path may do it with its automation's row held.
2. ``Automation`` rows are only written after the risk-state rows are held.
   A caller of ``pretrade_check``/``order_closed`` must not lock the
   automation row ``FOR UPDATE`` before calling them (a plain read or the
   implicit key-share lock of inserting an order is fine).
3. The kill switch row is locked before the automations it halts.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import requests
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_event_record
from automations.models import Automation, Signal, SignalTransition
from ingestion.types import Side
from risk import rules
from risk.models import Alert, BreakerTrip, GlobalSlot, KillSwitch, RiskLimit, RiskState
from risk.selectors import (
    LIMIT_FIELDS,
    LIMIT_SETTING_FIELDS,
    user_is_risk_officer,
    user_may_engage_kill_switch,
)
from trading.api import DomainError
from trading.db import prepared_rows
from trading.queues import ORDERS_CANCEL_ALL_TASK

logger = logging.getLogger(__name__)

SIGNAL_WINDOW_S = 3600.0
ORDER_WINDOW_S = 60.0
# The limits that describe the day's record rather than the order at hand:
# booking a fill re-checks only these.
TRAILING_LIMITS = ("max_daily_loss", "max_drawdown", "max_consecutive_losses", "max_slippage_breaches_per_day")
# Refusals that are not breaches of a limit: they refuse without tripping.
REFUSAL_KILL_SWITCH = "kill_switch"
REFUSAL_BREAKER_OPEN = "breaker_tripped"
REFUSAL_NOT_ACTIVE = "automation_not_active"

_KILL_SWITCH_SIGNAL_STATUSES = (
    Signal.Status.PENDING_APPROVAL,
    Signal.Status.QUEUED,
    Signal.Status.APPROVED,
)


class AlertKind:
    BREAKER_TRIP = "breaker_trip"
    BREAKER_RESET = "breaker_reset"
    AUTO_PAUSE = "auto_pause"
    GLOBAL_HALT = "global_halt"
    KILL_SWITCH_ON = "kill_switch_on"
    KILL_SWITCH_OFF = "kill_switch_off"
    CLOCK_DRIFT = "clock_drift"


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _require_reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise DomainError("a reason is required", code="reason_required", status_code=400)
    return text


def _actor_parts(actor: Any) -> tuple[Any, str]:
    """(user or None, label) from a user object or a plain label such as 'cli:alice'."""
    if getattr(actor, "is_authenticated", False):
        return actor, actor.get_username()
    return None, str(actor or "system")


def _advisory_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def _today(now: datetime) -> date:
    # The trading day is the UTC calendar day; timezone.now() is UTC.
    return now.astimezone(UTC).date()


def _fmt(value: Decimal | int | float) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


# The counting barrier (an advisory lock key; migration risk/0008 repeats the
# number). Every path that locks risk-state rows takes it shared first, so it
# comes before the global row and the automation's row in the lock order;
# ``risk_limit_set`` takes it exclusively to change a global stateful limit.
# See ``pretrade_check`` for why.
COUNTING_BARRIER_KEY = -4191232955067919317
# Global count limits kept in ``GlobalSlot`` rows rather than on the global
# row: changing one takes the counting barrier exclusively and rebuilds its
# slots. The global trailing limits need neither: a check only reads them.
GLOBAL_SLOT_LIMITS = ("max_open_orders", "max_orders_per_minute")
# How many slot rows a global count limit is split into (fewer when the limit
# is smaller): enough that concurrent checks find one not held by another.
# Migration risk/0010 repeats the number.
GLOBAL_SLOT_STRIPES = 16


def _fast_path_call(sql: str, params: list[Any]) -> bool:
    """Run one risk function (``sql`` with ``%s`` placeholders) as a server-side prepared statement; its boolean.

    The same connection and transaction as Django's cursor (inside an atomic
    block the statement joins the caller's transaction; outside one it
    commits by itself), without the per-call cost of Django's cursor wrapper
    and of parsing and planning the statement again: the checks run once per
    order and once per signal. ``trading.db.prepared_rows``: psycopg names
    and caches the statement per connection, and prepares it again after it
    drops its statements (``DEALLOCATE ALL`` on a rollback), which statements
    prepared under names of our own would not survive.
    """
    rows = prepared_rows(sql, params)
    return bool(rows and rows[0][0])


# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------


@transaction.atomic
def risk_limit_set(*, automation: Automation | None = None, actor: Any, reason: str, **values: Any) -> RiskLimit:
    """Change global (``automation=None``) or per-automation limits, with a reason.

    ``values`` name ``RiskLimit`` limit fields; ``None`` clears a limit. The
    values are validated by the breaker arithmetic itself (``LimitSet``), so
    a limit the checks cannot use is refused before it is saved.
    """
    reason = _require_reason(reason)
    unknown = sorted(set(values) - set(LIMIT_SETTING_FIELDS))
    if unknown:
        raise DomainError(f"unknown limit(s): {', '.join(unknown)}", code="invalid", status_code=400)
    if not values:
        raise DomainError("no limit to change", code="invalid", status_code=400)
    user, label = _actor_parts(actor)
    automation_id = automation.pk if automation is not None else None
    counting_change = automation_id is None and any(name in GLOBAL_SLOT_LIMITS for name in values)
    if counting_change:
        # The counting barrier, exclusively: waits for every check in flight
        # and holds new ones until this commits (see pretrade_check).
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [COUNTING_BARRIER_KEY])
    # history-ok: creates the empty (all-unlimited) row at most once; every change to it is a save() with a reason.
    RiskLimit.objects.bulk_create([RiskLimit(automation_id=automation_id)], ignore_conflicts=True)  # history-ok: see above
    row = RiskLimit.objects.select_for_update().get(
        Q(automation_id=automation_id) if automation_id else Q(automation__isnull=True)
    )
    before = {name: getattr(row, name) for name in values}
    for name, value in values.items():
        if isinstance(value, float):
            raise DomainError(f"{name} must be given as a Decimal or string, not a float", code="invalid", status_code=400)
        setattr(row, name, value)
    try:
        rules.LimitSet(**{name: getattr(row, name) for name in LIMIT_FIELDS})
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise DomainError(f"invalid limit: {exc}", code="invalid", status_code=400) from exc
    if row.slippage_breach_bps is None or Decimal(row.slippage_breach_bps) < 0:
        raise DomainError("slippage_breach_bps must be zero or more", code="invalid", status_code=400)
    row._change_reason = reason  # type: ignore[attr-defined]
    if user is not None:
        row._history_user = user  # type: ignore[attr-defined]
    row.full_clean(exclude=["automation"])
    row.save()
    row.refresh_from_db()
    if counting_change:
        _global_slots_rebuild()
    after = {name: getattr(row, name) for name in values}
    audit_event_record(
        kind=AuditEvent.Kind.LIMIT_CHANGE,
        actor=user,
        actor_label=label,
        subject=row,
        reason=reason,
        data={"scope": automation.name if automation else "global", "before": before, "after": after},
    )
    return row


def _global_slots_rebuild() -> None:
    """Rebuild the slots of the global count limits as they are now set (``risk_global_slots_rebuild``).

    Run under the counting barrier held exclusively: no check or release is
    in flight. The open-order slots start from the sum of the automations'
    counts (exact: every reservation and release writes the automation's row
    under its lock), what exceeds a limit set below it on the excess row;
    the order-rate slots keep the order times of the last minute.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT risk_global_slots_rebuild(%s, %s)", [GLOBAL_SLOT_STRIPES, timezone.now().timestamp()])


@dataclass
class _Slots:
    """What the locked path took of the global count limits: the counts ``risk.rules`` sees and the slots claimed."""

    open_orders: int = 0
    order_times: list[float] = field(default_factory=list)
    claimed: list[tuple[str, int]] = field(default_factory=list)


def _global_slots_lock(kind: str, now_s: float) -> tuple[int, list[float], int | None]:
    """Lock every slot of ``kind`` (waiting for the checks and releases in flight) and count them exactly.

    Returns the count (open orders, the excess row included; or orders in
    the last minute), those order times, and a slot with room (None when
    the count is at the limit).
    """
    table = GlobalSlot._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT n, id, capacity, used, times FROM {table} WHERE kind = %s ORDER BY n FOR UPDATE",  # noqa: S608
                       [kind])
        rows = cursor.fetchall()
    if kind == GlobalSlot.Kind.OPEN_ORDERS:
        free = next((r[1] for r in rows if r[0] > 0 and r[3] < r[2]), None)
        total = sum(r[3] for r in rows)
        return total, [], free if total < sum(r[2] for r in rows) else None
    recent = [[t for t in _float_list(r[4]) if t > now_s - ORDER_WINDOW_S] for r in rows]
    free = next((r[1] for r, times in zip(rows, recent, strict=True) if len(times) < r[2]), None)
    return sum(len(times) for times in recent), sorted(t for times in recent for t in times), free


def _global_slots_take(limits: rules.LimitSet, now_s: float) -> _Slots | None:
    """Claim a unit of each global count limit for the locked path, or count exactly why it cannot be had.

    Per kind (open orders, then orders per minute, the slots' lock order):
    first a claim that does not wait (``risk_global_slot_claim``, the fast
    path's); a claimed slot proves the count below the limit, and ``rules``
    is given 0. Otherwise every slot of the kind is locked and counted, and
    a slot with room, if the count leaves one, is claimed. Locking every
    slot only when the quick claim fails keeps a locked check from making
    concurrent checks miss a free slot. ``_global_slots_undo`` gives the
    claims back when the check refuses. None without a global count limit.
    """
    kinds = [(GlobalSlot.Kind.OPEN_ORDERS, limits.max_open_orders), (GlobalSlot.Kind.ORDER_RATE, limits.max_orders_per_minute)]
    if all(limit is None for _, limit in kinds):
        return None
    taken = _Slots()
    table = GlobalSlot._meta.db_table
    with connection.cursor() as cursor:
        for kind, limit in kinds:
            if limit is None:
                continue
            cursor.execute("SELECT risk_global_slot_claim(%s, %s)", [kind, now_s])
            (slot_id,) = cursor.fetchone()
            if slot_id is None:
                count, times, slot_id = _global_slots_lock(kind, now_s)
                if kind == GlobalSlot.Kind.OPEN_ORDERS:
                    taken.open_orders = count
                else:
                    taken.order_times = times
                if slot_id is not None:
                    sql = (f"UPDATE {table} SET used = used + 1 WHERE id = %s" if kind == GlobalSlot.Kind.OPEN_ORDERS  # noqa: S608
                           else f"UPDATE {table} SET times = risk_window_push(times, %s, 60.0, capacity) WHERE id = %s")  # noqa: S608
                    cursor.execute(sql, [slot_id] if kind == GlobalSlot.Kind.OPEN_ORDERS else [now_s, slot_id])
            if slot_id is not None:
                taken.claimed.append((kind, slot_id))
    return taken


def _global_slots_undo(slots: _Slots | None) -> None:
    """Give back the slots ``_global_slots_take`` claimed (a refusal); this transaction still holds them."""
    if slots is None or not slots.claimed:
        return
    table = GlobalSlot._meta.db_table
    with connection.cursor() as cursor:
        for kind, slot_id in slots.claimed:
            # A claim of the order rate appended this order's time and dropped only entries older than a minute.
            sql = (f"UPDATE {table} SET used = used - 1 WHERE id = %s" if kind == GlobalSlot.Kind.OPEN_ORDERS  # noqa: S608
                   else f"UPDATE {table} SET times = times[1:cardinality(times) - 1] WHERE id = %s")  # noqa: S608
            cursor.execute(sql, [slot_id])


# ---------------------------------------------------------------------------
# Risk state: locking, rollover, windows
# ---------------------------------------------------------------------------


_STATE_COLUMNS = (
    "id", "automation_id", "trading_day", "open_orders", "daily_realized_pnl", "daily_peak_pnl", "consecutive_losses",
    "slippage_breaches_today", "signal_times", "order_times", "tripped",
)


@dataclass
class _Locked:
    """What one locked read of the risk state returns: the rows, their limits and the switches around them."""

    global_row: RiskState
    automation_row: RiskState | None
    global_limits: rules.LimitSet
    automation_limits: rules.LimitSet
    automation_limit_row: dict[str, Any] | None
    automation_status: str | None
    kill_switch_on: bool
    # This transaction passed a fast-path check that read the global trailing limits' state unlocked.
    global_read_unlocked: bool = False


# The transaction-local setting ``risk_pretrade_reserve`` turns on when it passed a check on the
# global trailing limits' state read without a lock (migration risk/0010).
_UNLOCKED_READ_SETTING = "risk.global_read_unlocked"


def _lock_sql() -> str:
    state = RiskState._meta.db_table
    limit = RiskLimit._meta.db_table
    automation = Automation._meta.db_table
    switch = KillSwitch._meta.db_table
    state_cols = ", ".join(f"s.{c}" for c in _STATE_COLUMNS)
    limit_cols = ", ".join(f"l.{c}" for c in (*LIMIT_SETTING_FIELDS, "id"))
    # The CTE is materialized and sorted before its FOR UPDATE, so the rows
    # are locked in the order every other path takes: the automation's row,
    # then the global one. The limits, the automation's
    # status and the kill switch are plain reads joined in the same round trip.
    # The counting barrier is taken (shared) before any row lock: the sort
    # under the FOR UPDATE needs every joined row, so b runs first.
    return (
        f"WITH b AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared({COUNTING_BARRIER_KEY})), "  # noqa: S608 - model table names
        f"s AS MATERIALIZED (SELECT st.* FROM b, {state} AS st "
        f"WHERE st.automation_id = %s OR (st.automation_id IS NULL AND (%s = 0 OR EXISTS "
        f"(SELECT 1 FROM {state} AS x WHERE x.automation_id = %s))) ORDER BY st.automation_id IS NULL, st.id "
        f"FOR UPDATE OF st) "
        f"SELECT {state_cols}, {limit_cols}, a.status, "
        f"EXISTS (SELECT 1 FROM {switch} k WHERE k.id = 1 AND k.engaged), "
        f"current_setting('{_UNLOCKED_READ_SETTING}', true) = 'on' "
        f"FROM s LEFT JOIN {limit} l ON l.automation_id IS NOT DISTINCT FROM s.automation_id "
        f"LEFT JOIN {automation} a ON a.id = s.automation_id ORDER BY s.id"
    )


def _float_list(value: Any) -> list[float]:
    # A double precision[] column arrives as a list (or None for a NULL array).
    return list(value or [])


def _risk_lock(automation_id: int | None, now: datetime) -> _Locked:
    """Lock the automation's and then the global risk-state row (creating them if missing), in one round trip.

    Returns the rows with the limits of both scopes, the automation's status
    and the kill switch, read in the same statement that takes the locks.
    While the automation's row does not exist the statement locks nothing
    (not even the global row, which would put it before the automation's in
    the lock order); the rows are created and the statement runs again.
    """
    wanted = 2 if automation_id else 1
    sql = _lock_sql()
    n_state = len(_STATE_COLUMNS)
    n_limit = len(LIMIT_SETTING_FIELDS) + 1

    def load() -> list[tuple[Any, ...]]:
        with connection.cursor() as cursor:
            cursor.execute(sql, [automation_id or 0] * 3)
            return cursor.fetchall()

    rows = load()
    if len(rows) < wanted:
        # Insert-if-absent never blocks on an existing row (it waits only for
        # a competing insert of the same row to commit).
        today = _today(now)
        RiskState.objects.bulk_create([RiskState(automation_id=None, trading_day=today)], ignore_conflicts=True)
        if automation_id:
            RiskState.objects.bulk_create([RiskState(automation_id=automation_id, trading_day=today)], ignore_conflicts=True)
        rows = load()
    result = _Locked(global_row=None, automation_row=None, global_limits=rules.LimitSet(),  # type: ignore[arg-type]
                     automation_limits=rules.LimitSet(), automation_limit_row=None, automation_status=None,
                     kill_switch_on=False)
    for row in rows:
        values = list(row[:n_state])
        values[8], values[9] = _float_list(values[8]), _float_list(values[9])
        state = RiskState.from_db("default", list(_STATE_COLUMNS), values)
        limit_values = row[n_state:n_state + n_limit]
        limit_row = None if limit_values[-1] is None else dict(zip(LIMIT_SETTING_FIELDS, limit_values, strict=False))
        limits = rules.LimitSet(**{n: limit_row[n] for n in LIMIT_FIELDS}) if limit_row else rules.LimitSet()
        result.kill_switch_on = bool(row[-2])
        result.global_read_unlocked = bool(row[-1])
        if state.automation_id is None:
            result.global_row, result.global_limits = state, limits
        else:
            result.automation_row, result.automation_limits = state, limits
            result.automation_limit_row = limit_row
            result.automation_status = row[-3]
    return result


def _states_lock(automation_id: int | None, now: datetime) -> tuple[RiskState, RiskState | None]:
    """Lock the global and the automation's risk-state rows in pk order, creating them if missing."""
    locked = _risk_lock(automation_id, now)
    return locked.global_row, locked.automation_row


def _state_refresh(row: RiskState, now: datetime) -> None:
    """Roll the trading day over and prune the rolling windows (row is locked)."""
    today = _today(now)
    if row.trading_day != today:
        # A new UTC day starts a new daily record. The run of consecutive
        # losses is not a daily counter: a losing streak does not end at
        # midnight. A tripped breaker stays tripped until a person resets it.
        row.trading_day = today
        row.daily_realized_pnl = Decimal(0)
        row.daily_peak_pnl = Decimal(0)
        row.slippage_breaches_today = 0
    now_s = now.timestamp()
    row.signal_times = [t for t in row.signal_times if t > now_s - SIGNAL_WINDOW_S]
    row.order_times = [t for t in row.order_times if t > now_s - ORDER_WINDOW_S]


# How many window entries a row keeps when its scope has no limit for that
# window. Signals: enough history that a limit set later starts from real
# data. Orders: none. The order window is rewritten by every pre-trade check
# with the global row locked, and 100 timestamps per row made the row (and
# so every update of it) several times larger than everything else in it.
# Trade-off: an orders-per-minute limit set on a scope that had none starts
# counting from that moment, so in its first minute up to M orders pass even
# if orders were flowing just before. The risk_pretrade_reserve function
# (migration 0005) keeps the same numbers.
SIGNAL_WINDOW_UNSET_KEEP = 100
ORDER_WINDOW_UNSET_KEEP = 0


def _window_trim(row: RiskState, *, signal_limit: int | None, order_limit: int | None) -> None:
    """Keep only the newest entries that can matter.

    With a count limit of M, whether one more is allowed depends only on the
    newest M entries in the window (older ones leave the window first), so
    the row never needs more than M.
    """
    row.signal_times = _newest(row.signal_times, SIGNAL_WINDOW_UNSET_KEEP if signal_limit is None else signal_limit)
    row.order_times = _newest(row.order_times, ORDER_WINDOW_UNSET_KEEP if order_limit is None else order_limit)


def _newest(times: list[float], keep: int) -> list[float]:
    # A slice of [-0:] would keep everything; a limit of 0 keeps nothing.
    return times[-keep:] if keep > 0 else []


def _rules_state(row: RiskState) -> rules.RiskState:
    return rules.RiskState(
        signals_last_hour=len(row.signal_times),
        orders_last_minute=len(row.order_times),
        open_orders=row.open_orders,
        daily_realized_pnl=Decimal(row.daily_realized_pnl),
        daily_peak_pnl=Decimal(row.daily_peak_pnl),
        consecutive_losses=row.consecutive_losses,
        slippage_breaches_today=row.slippage_breaches_today,
    )


_STATE_FIELDS = [
    "trading_day", "open_orders", "daily_realized_pnl", "daily_peak_pnl", "consecutive_losses",
    "slippage_breaches_today", "signal_times", "order_times", "tripped",
]


def _state_save(*rows: RiskState | None) -> None:
    """Write the counters of the given (locked) rows in one UPDATE statement."""
    present = [r for r in rows if r is not None]
    if not present:
        return
    table = RiskState._meta.db_table
    values = ", ".join(["(%s::bigint, %s::date, %s::integer, %s::numeric, %s::numeric, %s::integer, %s::integer, "
                        "%s::double precision[], %s::double precision[], %s::boolean)"] * len(present))
    params: list[Any] = []
    for r in present:
        params += [r.pk, r.trading_day, r.open_orders, Decimal(r.daily_realized_pnl), Decimal(r.daily_peak_pnl),
                   r.consecutive_losses, r.slippage_breaches_today, [float(t) for t in r.signal_times],
                   [float(t) for t in r.order_times], r.tripped]
    assignments = ", ".join(f"{name} = v.{name}" for name in _STATE_FIELDS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS s SET {assignments} FROM (VALUES {values}) AS v(id, {', '.join(_STATE_FIELDS)}) "  # noqa: S608
            "WHERE s.id = v.id",
            params,
        )


def _globalize(breaches: Iterable[rules.Breach]) -> list[rules.Breach]:
    return [replace(b, message=f"global limit: {b.message}") for b in breaches]


def _open_trip_refusal(automation_id: int | None) -> rules.Breach:
    scope = Q(automation_id=automation_id) if automation_id else Q(automation__isnull=True)
    trip = BreakerTrip.objects.filter(scope, reset_at__isnull=True).order_by("-id").first()
    where = "the global" if automation_id is None else "this automation's"
    detail = f"{trip.limit} at {trip.tripped_at:%Y-%m-%d %H:%M:%S} UTC: {trip.message}" if trip else "reset pending"
    return rules.Breach(
        REFUSAL_BREAKER_OPEN, 1, 0,
        f"{where} circuit breaker is tripped ({detail}); a risk officer must reset it",
    )


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------


def pretrade_check(
    *,
    automation_id: int,
    side: str,
    quantity: Decimal,
    limit_price: Decimal | None,
    mid: Decimal | None,
    actor_label: str = "worker-execute",
    synchronous_commit: bool = True,
) -> list[rules.Breach]:
    """Check one order against every limit and reserve it, atomically. Returns the breaches ([] = reserved).

    Two paths, each atomic on its own:

    1. The fast path, one statement: ``risk_pretrade_reserve`` (migrations
       ``risk/0005`` to ``0010``), called as a server-side prepared statement.
       After the counting barrier (shared) it runs one UPDATE of the
       automation's row that checks every limit of that scope, the global
       size limits, the global trailing limits (daily loss, drawdown, losing
       streak, slippage breaches) on the global row *read without a lock*,
       both trip flags, the kill switch and the automation's status, and
       reserves on that row (one more open order, its time in the window).
       Then, for each global count limit set (open orders, orders per
       minute), it claims one global slot (``GlobalSlot``) with ``FOR UPDATE
       SKIP LOCKED``. It never locks or writes the global row, so checks of
       different automations wait for nothing of each other's. When no slot
       is found it undoes its reservation and answers false; it decides
       only "passes".
    2. Otherwise the locked path (``_pretrade_check_locked``), the reference:
       the automation's and the global row locked, the slots taken (a claim
       that does not wait, else every slot of the kind locked, waiting for
       the transactions in flight that hold any, and counted), evaluated
       with ``risk.rules``, a refusal with a readable reason per breach, the
       breaker tripped. It may still pass (the state moved on, or a slot was
       only held), then it reserves on the automation's row and the slots.

    Why it is exact.

    - Per-automation limits: the automation's row is locked by the UPDATE
      (as before); N racing checks of one automation cannot pass a limit
      of M < N.
    - Global count limits: a limit of M is split into up to
      ``GLOBAL_SLOT_STRIPES`` slots whose capacities add up to M. A check
      claims a unit of a slot with room, ``order_closed`` frees a unit of
      any slot that holds one, each under that slot's row lock; the slots'
      counts add up to the committed global count (M at most, plus the
      excess row when a limit was set below the count of the moment; while
      that row holds anything no slot is claimable by the fast path, and
      releases empty it first). So a claim succeeds only while the count is
      below M. A claim that finds no slot has not decided: slots with room
      may be held by transactions in flight. The locked path then waits for
      them and counts what they committed, so no check is refused (and no
      breaker tripped) because another transaction held a slot. The locked
      path locks every slot only when its own quick claim fails, so one
      refusal does not make concurrent checks miss free slots in turn.
    - Global trailing limits: a check writes nothing they depend on; only
      bookings (``order_closed``, which locks the global row) move them. A
      check that reads the committed global row without a lock is
      linearized before any booking it did not see. A transaction that
      booked first holds the global row's lock and sees its own booking. A
      transaction that checks *and then* books (a test's trade, not the
      execute path, which books in a later transaction) is marked by the
      fast path (``risk.global_read_unlocked``); its booking re-checks the
      trailing limits on the locked global row and fails the transaction
      with a serialization failure (40001, to retry) when a booking that
      committed in between would have refused the check.
    - The tripped flags, like the kill switch and the automation's status,
      are plain reads: a check racing a trip that commits in the same
      instant may pass; counted limits are never overshot.
    - Limit changes: ``risk_limit_set`` takes the counting barrier
      exclusively to change a global count limit (each check and release
      holds it shared until it commits), then rebuilds the slots from the
      automations' open-order counts (exact: each is written under its row
      lock) and the last minute's order times. The fast path reads the
      limits after the barrier, so it claims on the slots of the limit it
      saw. Trade-off: such a change waits for the checks in flight and
      briefly holds new ones back.

    The global row is written only by bookings, trips and resets; its
    ``open_orders`` and ``order_times`` columns are no longer kept (the
    true global count is ``risk.selectors.global_open_orders``).

    Lock order (no deadlock between any two single-check transactions): the
    counting barrier, the automation's row, the global row, the slots in
    ``(kind, n)`` order. Claims and releases with ``SKIP LOCKED`` never
    wait. A transaction that reserves twice, or reserves and releases, may
    in a rare race with a locked check end in a deadlock error (retry).

    The fast path's SQL repeats the boundaries of ``risk.rules.check_order``
    (the backtester's arithmetic) for the passing outcome only; every refusal
    is decided again, and worded, by ``risk.rules``. The two are held equal
    by ``tests/risk/test_pretrade_fast_path.py`` over a grid of states,
    limits and orders. Money compares exactly in numeric.

    Why not a Redis script as the atomic primitive: it would be cheaper per
    check, but the daily-loss and drawdown limits are exact only because the
    check reads, and the booking of a closed order's PnL (``order_closed``)
    writes, the same committed global row in the same database; a counter in Redis next to PnL booked in PostgreSQL could let a check see
    the day before a loss that is already committed. Rebuilding Redis counters
    from the database would also need the order table, which risk must not
    read (layer contract), and a lost Redis would have to refuse all trading.

    Commit mode (``synchronous_commit``). With the default (True) the
    transaction the check runs in commits as usual: its commit waits for the
    WAL flush (fsync) while the automation's row and its slots are still
    locked, so parallel checks of one automation queue behind each other's
    flush (checks of different automations flush together). That is the bound on throughput
    and on latency with many workers. ``synchronous_commit=False`` sets
    ``synchronous_commit = off`` for that transaction when the fast path
    reserves: the commit returns before the flush and releases the locks at
    once. It stays atomic; a PostgreSQL crash within ~3 x
    ``wal_writer_delay`` of it can lose it, and then loses the whole
    transaction together (the reservation, and with it the order row and the
    signal's move written in the same transaction). The caller then owes one
    thing: no order may reach a broker before a later synchronous commit, e.g.
    ``commits_make_durable()``, which waits (holding no lock) until the WAL is
    flushed up to it, and WAL is flushed in order, so the reservation is
    durable first. Then no order reaches a broker whose reservation could be
    lost; a lost decision leaves its signal queued without an order, and
    ``orders_reconcile`` sends it again. Refusals always keep synchronous
    commit: a breaker trip is durable when it is answered.

    Call it inside the order's transaction (the execute worker does) or on
    its own (it then commits by itself). The trip itself survives a rollback
    of the caller's transaction: see ``breaker_trip``.
    """
    order = rules.OrderCheck(
        quantity=Decimal(quantity),
        limit_price=Decimal(limit_price) if limit_price is not None else None,
        side=Side(side),
        mid=Decimal(mid) if mid is not None else None,
    )
    now = timezone.now()
    if _fast_paths_ready() and _fast_path_call(
        _PRETRADE_RESERVE_SQL,
        [automation_id, _today(now), now.timestamp(), order.quantity, order.limit_price, order.mid, not synchronous_commit],
    ):
        return []
    return _pretrade_check_locked(automation_id=automation_id, order=order, actor_label=actor_label)


# Typed parameters, so one prepared statement serves a limit or a market order (a None price) alike.
_PRETRADE_RESERVE_SQL = (
    "SELECT risk_pretrade_reserve(%s::bigint, %s::date, %s::double precision, %s::numeric, %s::numeric, "
    "%s::numeric, %s::boolean)"
)
_SIGNAL_RECORD_SQL = "SELECT risk_signal_record(%s::bigint, %s::date, %s::double precision)"


def commits_make_durable() -> None:
    """Return once every commit made so far (by any session) is flushed to disk.

    The barrier a caller of ``pretrade_check(synchronous_commit=False)`` runs
    before the order reaches a broker. Run it outside any transaction: it
    commits a transaction that writes WAL (a transactional logical message,
    no table row, so no lock and no contention) with synchronous commit on,
    whose commit waits until the WAL is flushed up to its commit record, and
    WAL is flushed in order. A transaction that only takes an id writes no
    WAL of its own and would not wait.
    """
    if connection.in_atomic_block:
        raise RuntimeError("commits_make_durable() must run outside a transaction: it is a commit of its own")
    with connection.cursor() as cursor:
        # One statement, so one transaction: set_config(..., true) applies to it alone.
        cursor.execute("SELECT set_config('synchronous_commit', 'on', true), "
                       "pg_logical_emit_message(true, 'fp.durability_barrier', '')")


# No savepoint: the check runs inside the order's transaction and fails with it.
@transaction.atomic(savepoint=False)
def _pretrade_check_locked(*, automation_id: int, order: rules.OrderCheck, actor_label: str) -> list[rules.Breach]:
    """The reference check, in Python under the row locks; runs when the fast path did not pass.

    Steps, all under the risk-state row locks (the automation's, then the
    global one) and, with a global count limit set, every global slot:

    1. Roll the trading day over and prune the orders-per-minute window.
    2. Take a unit of each global count limit (``_global_slots_take``): a
       slot claimed without waiting, or, when none is free, every slot of
       the kind locked (waiting for the checks and releases in flight that
       hold any) and counted: the committed truth.
    3. Refuse without tripping when the kill switch is on, a breaker is
       already tripped, or the automation is not active.
    4. Evaluate the global and the automation's limits with ``risk.rules``.
    5. On any breach: trip the breaker(s) and return the breaches; the caller
       marks the order rejected with the messages (and commits).
    6. Otherwise reserve: ``open_orders += 1`` and the order time on the
       automation's row, a unit of each global count limit on its slots.
       The global row is not written.
    """
    now = timezone.now()
    now_s = now.timestamp()
    locked = _risk_lock(automation_id, now)
    global_row, automation_row = locked.global_row, locked.automation_row
    assert automation_row is not None
    _state_refresh(global_row, now)
    _state_refresh(automation_row, now)
    global_limits, automation_limits = locked.global_limits, locked.automation_limits
    slots = _global_slots_take(global_limits, now_s)

    refusal: rules.Breach | None = None
    if locked.kill_switch_on:
        refusal = rules.Breach(REFUSAL_KILL_SWITCH, 1, 0, "the kill switch is engaged: all trading is halted")
    elif global_row.tripped:
        refusal = _open_trip_refusal(None)
    elif automation_row.tripped:
        refusal = _open_trip_refusal(automation_id)
    else:
        status = locked.automation_status
        if status != Automation.Status.ACTIVE:
            refusal = rules.Breach(REFUSAL_NOT_ACTIVE, 0, 0, f"the automation is {status or 'missing'}, not active")
    if refusal is not None:
        _global_slots_undo(slots)
        _state_save(automation_row)
        return [refusal]

    global_breaches = rules.check_order(global_limits, _global_rules_state(global_row, slots), order)
    automation_breaches = rules.check_order(automation_limits, _rules_state(automation_row), order)
    if global_breaches or automation_breaches:
        _global_slots_undo(slots)
        _state_save(automation_row)
        if global_breaches:
            breaker_trip(automation_id=None, breaches=global_breaches, actor_label=actor_label, state=global_row)
        if automation_breaches:
            breaker_trip(
                automation_id=automation_id, breaches=automation_breaches, actor_label=actor_label, state=automation_row
            )
        return _globalize(global_breaches) + automation_breaches

    automation_row.open_orders += 1
    automation_row.order_times.append(now_s)
    _window_trim(automation_row, signal_limit=automation_limits.max_signals_per_hour,
                 order_limit=automation_limits.max_orders_per_minute)
    _state_save(automation_row)
    return []


def _global_rules_state(global_row: RiskState, slots: _Slots | None) -> rules.RiskState:
    """The global scope's state for ``risk.rules``: the day's record from the global row, the counts from the slots.

    Without a global count limit the counts are not kept anywhere global and
    no global limit reads them; a kind whose slot was claimed counts 0 (it
    is known to be below its limit).
    """
    state = _rules_state(global_row)
    if slots is None:
        return replace(state, open_orders=0, orders_last_minute=0)
    return replace(state, open_orders=slots.open_orders, orders_last_minute=len(slots.order_times))


def signal_rate_check(*, automation: Automation | int, actor_label: str = "worker-detect") -> rules.Breach | None:
    """The signals-per-hour breaker, in the detect worker inside the signal's transaction.

    Under the risk-state locks (global, then the automation's): prune the
    hour window, check the global and the automation's hourly limits, and
    record this signal's time when it passes. When it does not, trip the
    breaker and return the breach.

    Two paths, as in ``pretrade_check``: ``risk_signal_record`` (migration
    ``risk/0008``) does all of it in one statement when both scopes pass, and
    writes the rows exactly as the locked path would (held equal by
    ``tests/risk/test_signal_fast_path.py``); anything else (a breach, or a
    scope without its rows yet) goes to ``_signal_rate_check_locked``, the
    reference, which words and trips.
    """
    automation_id = automation if isinstance(automation, int) else automation.pk
    now = timezone.now()
    if _fast_paths_ready() and _fast_path_call(_SIGNAL_RECORD_SQL, [automation_id, _today(now), now.timestamp()]):
        return None
    return _signal_rate_check_locked(automation_id=automation_id, actor_label=actor_label)


_fast_paths: list[bool] = []


def _fast_paths_ready() -> bool:
    """Whether the database has the fast paths this code expects (migration risk/0011); asked once per process.

    Code that runs before ``migrate`` (a rolling deploy, a database migrated
    by an older checkout) takes the locked paths instead: a missing
    ``risk_signal_record`` would fail every signal's transaction, and the
    ``risk_pretrade_reserve`` of 0009 counts global open orders on the
    global row rather than on the global slots this code reads.
    """
    if not _fast_paths:
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regprocedure('risk_global_slot_claim(text, double precision)') IS NOT NULL")
            (ready,) = cursor.fetchone()
        if not ready:
            logger.warning("risk migrations are behind (run migrate): the risk checks take the locked paths")
        _fast_paths.append(bool(ready))
    return _fast_paths[0]


@transaction.atomic
def _signal_rate_check_locked(*, automation_id: int, actor_label: str) -> rules.Breach | None:
    """The reference signal-rate check, in Python under the row locks."""
    now = timezone.now()
    locked = _risk_lock(automation_id, now)
    global_row, automation_row = locked.global_row, locked.automation_row
    assert automation_row is not None
    _state_refresh(global_row, now)
    _state_refresh(automation_row, now)
    global_limits, automation_limits = locked.global_limits, locked.automation_limits
    global_breaches = rules.check_signal(global_limits, _rules_state(global_row))
    automation_breaches = rules.check_signal(automation_limits, _rules_state(automation_row))
    if not global_breaches and not automation_breaches:
        now_s = now.timestamp()
        for row, limits in ((global_row, global_limits), (automation_row, automation_limits)):
            row.signal_times.append(now_s)
            _window_trim(row, signal_limit=limits.max_signals_per_hour, order_limit=limits.max_orders_per_minute)
        _state_save(global_row, automation_row)
        return None
    _state_save(global_row, automation_row)
    # A scope already tripped by this same limit is not tripped again: one
    # runaway strategy makes one trip and one alert, not one per signal.
    if global_breaches and not _open_trip_exists(None, global_breaches[0].limit):
        breaker_trip(automation_id=None, breaches=global_breaches, actor_label=actor_label, state=global_row)
    if automation_breaches and not _open_trip_exists(automation_id, automation_breaches[0].limit):
        breaker_trip(automation_id=automation_id, breaches=automation_breaches, actor_label=actor_label, state=automation_row)
    return (_globalize(global_breaches) + automation_breaches)[0]


def _open_trip_exists(automation_id: int | None, limit: str) -> bool:
    scope = Q(automation_id=automation_id) if automation_id else Q(automation__isnull=True)
    return BreakerTrip.objects.filter(scope, limit=limit, reset_at__isnull=True).exists()


# No savepoint: the release runs inside the order's closing transaction and fails with it.
@transaction.atomic(savepoint=False)
def order_closed(
    *, automation_id: int, realized_pnl: Decimal, slippage_breach: bool = False, actor_label: str = "worker-execute"
) -> list[rules.Breach]:
    """Release an order's reservation and book its realized PnL.

    Call once per order when it reaches a final state (filled, cancelled,
    rejected after reservation, failed). Frees the order's unit of the
    automation's open-order count and, with a global open-order limit set,
    of the global slots; books the PnL on the global and the automation's
    day, updates the peak, the losing streak and the slippage breach count,
    then re-checks the day's limits (loss, drawdown, losing streak, slippage
    breaches); a breach trips the breaker. Returns the breaches.

    When a pre-trade check earlier in this same transaction passed on the
    global trailing limits read without a lock, and the global row (locked
    now) would refuse that check, a booking committed in between overtook
    it: the transaction fails with a serialization failure (SQLSTATE 40001)
    and is to be retried, so a check and a loss booked in one transaction
    stop exactly at the limit (see ``pretrade_check``).
    """
    pnl = Decimal(realized_pnl)
    now = timezone.now()
    locked = _risk_lock(automation_id, now)
    global_row, automation_row = locked.global_row, locked.automation_row
    assert automation_row is not None
    tripped: list[rules.Breach] = []
    global_limits, automation_limits = locked.global_limits, locked.automation_limits
    _state_refresh(global_row, now)
    _state_refresh(automation_row, now)
    if locked.global_read_unlocked:
        _unlocked_read_confirm(global_row, global_limits)
    if automation_row.open_orders > 0:
        automation_row.open_orders -= 1
        if global_limits.max_open_orders is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT risk_global_slot_release()")
    for row in (global_row, automation_row):
        after = rules.apply_fill_pnl(_rules_state(row), pnl)
        row.daily_realized_pnl = after.daily_realized_pnl
        row.daily_peak_pnl = after.daily_peak_pnl
        row.consecutive_losses = after.consecutive_losses
        if slippage_breach:
            row.slippage_breaches_today += 1
    _state_save(global_row, automation_row)
    # Only the day's record is re-checked here; the order-shaped limits belong
    # to the next order. With only the trailing limits set, the size of this
    # stand-in order cannot breach anything.
    empty = rules.OrderCheck(quantity=Decimal(1), limit_price=None, side=Side.BUY, mid=None)
    for scope_id, row, limits in ((None, global_row, global_limits), (automation_id, automation_row, automation_limits)):
        trailing = rules.LimitSet(**{name: getattr(limits, name) for name in TRAILING_LIMITS})
        breaches = [b for b in rules.check_order(trailing, _rules_state(row), empty) if not row.tripped]
        if breaches:
            breaker_trip(automation_id=scope_id, breaches=breaches, actor_label=actor_label, state=row)
            tripped.extend(_globalize(breaches) if scope_id is None else breaches)
    return tripped


def _unlocked_read_confirm(global_row: RiskState, global_limits: rules.LimitSet) -> None:
    """Hold a fast-path pass on the global trailing limits, read unlocked earlier in this transaction, to the locked row.

    The global row is locked now and not yet booked by this call: if its
    trailing limits still let an order pass, the check is as if made now;
    if not, a booking that committed after the check's read overtook it, and
    the transaction must not book on top of it (it fails, to be retried).
    """
    trailing = rules.LimitSet(**{name: getattr(global_limits, name) for name in TRAILING_LIMITS})
    empty = rules.OrderCheck(quantity=Decimal(1), limit_price=None, side=Side.BUY, mid=None)
    with connection.cursor() as cursor:
        if rules.check_order(trailing, _rules_state(global_row), empty):
            cursor.execute(
                "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = 'a pre-trade check in "
                "this transaction read the global day before a booking that committed since; retry the transaction'; "
                "END $$"
            )
        cursor.execute("SELECT set_config(%s, '', true)", [_UNLOCKED_READ_SETTING])


# ---------------------------------------------------------------------------
# Breakers
# ---------------------------------------------------------------------------


def breaker_trip(
    *,
    automation_id: int | None,
    breaches: list[rules.Breach],
    actor_label: str = "system",
    state: RiskState | None = None,
) -> list[BreakerTrip]:
    """Record a trip per breach, stop the scope, and alert; durable even if the caller rolls back.

    1. In the caller's transaction: BreakerTrip rows, ``RiskState.tripped``,
       the automation paused (or every automation halted for a global limit),
       audit events, alerts. When the caller commits (the normal path: it
       commits the order's rejection), all of it lands at once.
    2. Right away, not on commit, one ``risk.tasks.breaker_trip_ensure_task``
       per trip carrying the same ``trip_key``. The detect worker inserts the
       trip with that key: the insert waits on the unique index until the
       caller's transaction ends; if the caller committed, the key exists and
       the task does nothing; if the caller rolled back (crash, exception),
       the task writes the trip and its effects in its own transaction.
    """
    now = timezone.now()
    trips = [
        BreakerTrip(
            trip_key=uuid.uuid4(), automation_id=automation_id, limit=b.limit, value=_fmt(b.value),
            threshold=_fmt(b.threshold), message=b.message, tripped_at=now,
        )
        for b in breaches
    ]
    with transaction.atomic():
        for trip in trips:
            trip.save(force_insert=True)
        _trip_effects(automation_id=automation_id, trips=trips, actor_label=actor_label, state=state)
    for trip in trips:
        _send_trip_backup(trip)
    return trips


def _send_trip_backup(trip: BreakerTrip) -> None:
    from risk.tasks import breaker_trip_ensure_task

    payload = {
        "trip_key": str(trip.trip_key), "automation_id": trip.automation_id, "limit": trip.limit,
        "value": trip.value, "threshold": trip.threshold, "message": trip.message,
        "tripped_at": trip.tripped_at.isoformat(),
    }
    try:
        breaker_trip_ensure_task.apply_async(kwargs=payload, retry=False)
    # The broker being down must not hide the trip itself: it is still in
    # the caller's transaction.
    except Exception:
        logger.exception("could not queue the durable copy of breaker trip %s", trip.trip_key)


def breaker_trip_ensure(
    *, trip_key: str, automation_id: int | None, limit: str, value: str, threshold: str, message: str, tripped_at: str,
    actor_label: str = "worker-detect",
) -> bool:
    """Write a trip (and its effects) unless its original transaction already did. True if written here."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                trip = BreakerTrip.objects.create(
                    trip_key=uuid.UUID(trip_key), automation_id=automation_id, limit=limit, value=value,
                    threshold=threshold, message=message, tripped_at=datetime.fromisoformat(tripped_at),
                )
        except IntegrityError:
            return False
        now = timezone.now()
        global_row, automation_row = _states_lock(automation_id, now)
        state = automation_row if automation_id else global_row
        _trip_effects(
            automation_id=automation_id, trips=[trip], actor_label=actor_label, state=state,
            note=" (recorded by the backup path: the order transaction was rolled back)",
        )
    return True


def _trip_effects(
    *, automation_id: int | None, trips: list[BreakerTrip], actor_label: str, state: RiskState | None, note: str = ""
) -> None:
    if state is not None and not state.tripped:
        state.tripped = True
        state.save(update_fields=["tripped"])
    elif state is None:
        scope = Q(automation_id=automation_id) if automation_id else Q(automation__isnull=True)
        RiskState.objects.filter(scope).update(tripped=True)
    name = "global"
    if automation_id is not None:
        name = Automation.objects.filter(pk=automation_id).values_list("name", flat=True).first() or str(automation_id)
    summary = "; ".join(t.message for t in trips)
    for trip in trips:
        audit_event_record(
            kind=AuditEvent.Kind.BREAKER_TRIP, actor_label=actor_label, subject=trip, reason=trip.message + note,
            data={"limit": trip.limit, "value": trip.value, "threshold": trip.threshold, "scope": name,
                  "trip_key": str(trip.trip_key)},
        )
    alert_raise(
        kind=AlertKind.BREAKER_TRIP, severity=Alert.Severity.CRITICAL,
        subject=f"Breaker tripped: {', '.join(t.limit for t in trips)} on {name}",
        message=summary + note,
        dedup_key=f"breaker:{automation_id or 'global'}:{','.join(sorted(t.limit for t in trips))}",
    )
    reason = f"circuit breaker tripped: {summary}"
    if automation_id is None:
        halted = automations_halt_all(reason=reason, actor_label=actor_label)
        if halted:
            alert_raise(
                kind=AlertKind.GLOBAL_HALT, severity=Alert.Severity.CRITICAL,
                subject=f"All automations halted by a global breaker ({len(halted)})",
                message=reason + note, dedup_key=f"global-halt:{','.join(sorted(t.limit for t in trips))}",
            )
    else:
        automation = Automation.objects.filter(pk=automation_id).first()
        if automation is not None and automation.status == Automation.Status.ACTIVE and automation_status_set(
            automation=automation, status=Automation.Status.PAUSED, reason=reason, actor_label=actor_label
        ):
            alert_raise(
                kind=AlertKind.AUTO_PAUSE, severity=Alert.Severity.WARNING,
                subject=f"Automation {automation.name} auto-paused",
                message=reason + note, dedup_key=f"auto-pause:{automation_id}",
            )


def automation_status_set(*, automation: Automation, status: str, reason: str, actor_label: str, actor: Any = None) -> bool:
    """Change an automation's status with a versioned reason and an audit event. False if unchanged.

    The automations app owns the trader-facing pause/resume; this is the
    risk layer's own stop, used by breakers and the kill switch.
    """
    before = automation.status
    if before == status:
        return False
    automation.status = status
    automation._change_reason = reason  # type: ignore[attr-defined]
    user, _ = _actor_parts(actor)
    if user is not None:
        automation._history_user = user  # type: ignore[attr-defined]
    automation.save(update_fields=["status", "updated_at"])
    audit_event_record(
        kind=AuditEvent.Kind.AUTOMATION_STATE, actor=user, actor_label=actor_label, subject=automation, reason=reason,
        data={"from": before, "to": status},
    )
    return True


def automations_halt_all(*, reason: str, actor_label: str, actor: Any = None) -> list[int]:
    """Halt every automation not already halted (rows locked in pk order). Returns their ids."""
    halted = []
    for automation in Automation.objects.select_for_update().exclude(status=Automation.Status.HALTED).order_by("pk"):
        automation_status_set(
            automation=automation, status=Automation.Status.HALTED, reason=reason, actor_label=actor_label, actor=actor
        )
        halted.append(automation.pk)
    return halted


def otp_verify(*, user: Any, token: str) -> bool:
    """True when ``token`` is a fresh code of one of the user's confirmed TOTP devices.

    django-otp rejects a code whose time step was already used and throttles
    repeated failures; both are saved on the device in their own writes.
    """
    from django_otp.plugins.otp_totp.models import TOTPDevice

    token = (token or "").strip()
    if not token or not getattr(user, "is_authenticated", False):
        return False
    return any(device.verify_token(token) for device in TOTPDevice.objects.devices_for_user(user, confirmed=True))


def _refuse(*, user: Any, kind: str, reason: str, message: str, code: str, status_code: int, data: dict | None = None) -> None:
    # The refusal is audited in its own transaction so raising cannot undo it.
    audit_event_record(kind=kind, actor=user, reason=reason, data={"refused": message, **(data or {})})
    raise DomainError(message, code=code, status_code=status_code)


def breaker_reset(*, trip: BreakerTrip, user: Any, otp_token: str, reason: str) -> BreakerTrip:
    """Reset a tripped breaker: risk-officer role, a fresh TOTP and a reason. Audited.

    Resetting does not resume the automation: it stays paused (or halted)
    until someone resumes it deliberately, so a reset never restarts trading
    by itself.
    """
    if not user_is_risk_officer(user):
        _refuse(user=user, kind=AuditEvent.Kind.PERMISSION_DENIED, reason=reason or "",
                message="only a risk officer may reset a breaker", code="forbidden", status_code=403,
                data={"trip": trip.pk})
    reason = _require_reason(reason)
    if not otp_verify(user=user, token=otp_token):
        _refuse(user=user, kind=AuditEvent.Kind.OTP_FAILED, reason=reason,
                message="the one-time password is not valid (or was already used)", code="otp_invalid",
                status_code=403, data={"trip": trip.pk, "action": "breaker_reset"})
    with transaction.atomic():
        global_row, automation_row = _states_lock(trip.automation_id, timezone.now())
        locked = BreakerTrip.objects.select_for_update().get(pk=trip.pk)
        if locked.reset_at is not None:
            raise DomainError(f"this breaker was already reset by {locked.reset_by}", code="already_reset")
        locked.reset_at = timezone.now()
        locked.reset_by = user.get_username()
        locked.reset_reason = reason
        locked.save(update_fields=["reset_at", "reset_by", "reset_reason"])
        state = automation_row if trip.automation_id else global_row
        scope = Q(automation_id=trip.automation_id) if trip.automation_id else Q(automation__isnull=True)
        still_open = BreakerTrip.objects.filter(scope, reset_at__isnull=True).exists()
        if not still_open and state.tripped:
            state.tripped = False
            state.save(update_fields=["tripped"])
        audit_event_record(
            kind=AuditEvent.Kind.BREAKER_RESET, actor=user, subject=locked, reason=reason,
            data={"limit": locked.limit, "scope": str(locked.automation or "global"), "breaker_clear": not still_open},
        )
        alert_raise(
            kind=AlertKind.BREAKER_RESET, severity=Alert.Severity.INFO,
            subject=f"Breaker reset: {locked.limit} on {locked.automation or 'global'}",
            message=f"reset by {locked.reset_by}: {reason}",
        )
    return locked


# ---------------------------------------------------------------------------
# Kill switch
# ---------------------------------------------------------------------------


def _kill_switch_lock() -> KillSwitch:
    # The disengaged singleton row is created at most once; engaging and releasing are save()s with a reason.
    KillSwitch.objects.bulk_create([KillSwitch(pk=1, engaged=False)], ignore_conflicts=True)  # history-ok: see above
    return KillSwitch.objects.select_for_update().get(pk=1)


def _signals_stop(*, reason: str, actor_label: str, actor: Any) -> list[int]:
    """Expire every signal waiting to trade; a signal still ``new`` is filtered (its only legal way out)."""
    stopped: list[int] = []
    try:
        from automations.services import signal_transition  # type: ignore[attr-defined]
    except ImportError:
        signal_transition = None
    now = timezone.now()
    waiting = (*_KILL_SWITCH_SIGNAL_STATUSES, Signal.Status.NEW)
    for signal in Signal.objects.select_for_update().filter(status__in=waiting).order_by("pk"):
        to_status = Signal.Status.FILTERED if signal.status == Signal.Status.NEW else Signal.Status.EXPIRED
        if signal_transition is not None:
            signal_transition(signal=signal, to_status=to_status, actor_label=actor_label, reason=reason, actor=actor)
        else:
            SignalTransition.objects.create(
                signal=signal, at=now, from_status=signal.status, to_status=to_status, actor_label=actor_label, reason=reason
            )
            signal.status = to_status
            signal.status_reason = reason
            signal.decided_at = signal.decided_at or now
            signal.save(update_fields=["status", "status_reason", "decided_at"])
        stopped.append(signal.pk)
    return stopped


def _cancel_all_send(reason: str) -> None:
    from trading.celery import app

    app.send_task(ORDERS_CANCEL_ALL_TASK, args=[reason])


KILL_SWITCH_SWEEP_ATTEMPTS = 5
# deadlock_detected, serialization_failure, lock_not_available
_LOCK_CONFLICT_STATES = {"40P01", "40001", "55P03"}


def _is_lock_conflict(exc: OperationalError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) in _LOCK_CONFLICT_STATES


def kill_switch_engage(*, actor: Any, reason: str) -> KillSwitch:
    """Stop everything: cancel every open order, halt every automation, stop waiting signals.

    Two transactions, so the orders are cancelled as early as possible:

    1. Lock the kill switch row and turn it on (versioned, with the reason),
       audit it, and on commit send ``execution.tasks.orders_cancel_all_task``
       by name to the execute worker, which cancels every open order at the
       broker. From this commit on, ``kill_switch_engaged()`` is true and the
       execute worker (and ``pretrade_check``) refuses every order.
    2. Halt every automation (status ``halted``, versioned, audited), expire
       every signal pending approval, queued or approved, and raise the
       critical ``kill_switch_on`` alert. If this step failed, trading would
       still be stopped by step 1; engaging again repeats it.

    Call it outside any transaction: inside one, the cancel-all waits for the
    caller's commit. Engaging again while engaged repeats both steps (a fresh sweep).
    """
    reason = _require_reason(reason)
    user, label = _actor_parts(actor)
    started = time.monotonic()
    halt_reason = f"kill switch engaged by {label}: {reason}"
    with transaction.atomic():
        switch = _kill_switch_lock()
        was_engaged = switch.engaged
        switch.engaged = True
        switch.reason = reason
        switch.changed_at = timezone.now()
        switch.changed_by = label
        switch._change_reason = reason  # type: ignore[attr-defined]
        if user is not None:
            switch._history_user = user  # type: ignore[attr-defined]
        switch.save()
        audit_event_record(
            kind=AuditEvent.Kind.KILL_SWITCH, actor=user, actor_label=label, subject=switch, reason=reason,
            data={"engaged": True, "was_engaged": was_engaged},
        )
        transaction.on_commit(lambda: _cancel_all_send(halt_reason))
    # The sweep runs while detect and execute workers hold row locks of their
    # own; a deadlock or lock conflict aborts it, so it is retried: the kill
    # switch must not fail because the pipeline was busy.
    for attempt in range(1, KILL_SWITCH_SWEEP_ATTEMPTS + 1):
        try:
            with transaction.atomic():
                halted = automations_halt_all(reason=halt_reason, actor_label=label, actor=user)
                stopped = _signals_stop(reason=halt_reason, actor_label=label, actor=user)
                alert_raise(
                    kind=AlertKind.KILL_SWITCH_ON, severity=Alert.Severity.CRITICAL,
                    subject=f"KILL SWITCH ENGAGED by {label}",
                    message=f"{reason}\nAutomations halted: {len(halted)}. Signals stopped: {len(stopped)}. "
                            f"Every open order is being cancelled.",
                )
            break
        except OperationalError as exc:
            if attempt == KILL_SWITCH_SWEEP_ATTEMPTS or not _is_lock_conflict(exc):
                raise
            logger.warning("kill switch sweep hit a lock conflict (attempt %d), retrying: %s", attempt, exc)
            time.sleep(0.05 * attempt)
    logger.warning("kill switch engaged by %s in %.1f ms (%d automations halted, %d signals stopped): %s",
                   label, (time.monotonic() - started) * 1e3, len(halted), len(stopped), reason)
    return switch


@transaction.atomic
def kill_switch_release(*, actor: Any, reason: str) -> KillSwitch:
    """Turn the kill switch off. Automations stay halted: each is resumed deliberately."""
    reason = _require_reason(reason)
    user, label = _actor_parts(actor)
    switch = _kill_switch_lock()
    if not switch.engaged:
        raise DomainError("the kill switch is not engaged", code="not_engaged")
    switch.engaged = False
    switch.reason = reason
    switch.changed_at = timezone.now()
    switch.changed_by = label
    switch._change_reason = reason  # type: ignore[attr-defined]
    if user is not None:
        switch._history_user = user  # type: ignore[attr-defined]
    switch.save()
    audit_event_record(
        kind=AuditEvent.Kind.KILL_SWITCH, actor=user, actor_label=label, subject=switch, reason=reason,
        data={"engaged": False},
    )
    alert_raise(
        kind=AlertKind.KILL_SWITCH_OFF, severity=Alert.Severity.WARNING,
        subject=f"Kill switch released by {label}",
        message=f"{reason}\nAutomations remain halted until each is resumed.",
    )
    return switch


def kill_switch_engage_by_user(*, user: Any, reason: str) -> KillSwitch:
    """The UI/API/admin path: any trader or risk officer may stop trading."""
    if not user_may_engage_kill_switch(user):
        _refuse(user=user, kind=AuditEvent.Kind.PERMISSION_DENIED, reason=reason or "",
                message="only a trader or a risk officer may engage the kill switch", code="forbidden", status_code=403)
    return kill_switch_engage(actor=user, reason=reason)


def kill_switch_release_by_user(*, user: Any, reason: str, otp_token: str) -> KillSwitch:
    """The UI/API/admin path: only a risk officer with a fresh TOTP may restart trading."""
    if not user_is_risk_officer(user):
        _refuse(user=user, kind=AuditEvent.Kind.PERMISSION_DENIED, reason=reason or "",
                message="only a risk officer may release the kill switch", code="forbidden", status_code=403)
    reason = _require_reason(reason)
    if not otp_verify(user=user, token=otp_token):
        _refuse(user=user, kind=AuditEvent.Kind.OTP_FAILED, reason=reason,
                message="the one-time password is not valid (or was already used)", code="otp_invalid",
                status_code=403, data={"action": "kill_switch_release"})
    return kill_switch_release(actor=user, reason=reason)


# ---------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------


@transaction.atomic
def alert_raise(*, kind: str, severity: str, subject: str, message: str, dedup_key: str | None = None) -> Alert:
    """Record an alert and deliver it after commit; an alert with the same key inside the window is reused."""
    if severity not in Alert.Severity.values:
        raise ValueError(f"unknown severity {severity!r}")
    now = timezone.now()
    key = (dedup_key or "")[:200]
    if key:
        window = float(_setting("ALERT_DEDUP_SECONDS", 300))
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_advisory_key("alert:" + key)])
        existing = (
            Alert.objects.filter(dedup_key=key, created_at__gte=now - timedelta(seconds=window))
            .order_by("-id").first()
        )
        if existing is not None:
            return existing
    alert = Alert.objects.create(
        kind=kind[:48], severity=severity, subject=subject[:200], message=message, created_at=now, dedup_key=key
    )
    transaction.on_commit(lambda: _alert_delivery_enqueue(alert.pk))
    return alert


def _alert_delivery_enqueue(alert_id: int) -> None:
    from risk.tasks import alert_deliver_task

    try:
        alert_deliver_task.apply_async(args=[alert_id], retry=False)
    # The alert row stays pending; alerts_redeliver_pending picks it up.
    except Exception:
        logger.exception("could not queue delivery of alert %s", alert_id)


def _slack_payload(alert: Alert) -> dict[str, Any]:
    colour = {"critical": "#d40e0d", "warning": "#f2c744", "info": "#2eb886"}.get(alert.severity, "#888888")
    text = f"[{alert.severity.upper()}] {alert.subject}"
    return {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": text[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": alert.message[:2900] or "-"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text":
                f"kind `{alert.kind}` · alert #{alert.pk} · {alert.created_at:%Y-%m-%d %H:%M:%S} UTC"}]},
        ],
        "attachments": [{"color": colour, "fallback": text}],
    }


def _webhook_send(url: str, alert: Alert) -> None:
    if not url.startswith(("http://", "https://")):
        raise ValueError("ALERT_WEBHOOK_URL must be an http(s) URL")
    response = requests.post(url, json=_slack_payload(alert), timeout=float(_setting("ALERT_WEBHOOK_TIMEOUT_S", 5)))
    if response.status_code >= 300:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text[:200]}")


def _email_send(recipients: list[str], alert: Alert) -> None:
    body = f"{alert.message}\n\nkind: {alert.kind}\nseverity: {alert.severity}\nraised: {alert.created_at.isoformat()}\n"
    send_mail(
        subject=f"[{alert.severity.upper()}] {alert.subject}", message=body,
        from_email=settings.DEFAULT_FROM_EMAIL, recipient_list=recipients, fail_silently=False,
    )


def alert_deliver(*, alert_id: int) -> str:
    """One delivery attempt on every channel not yet delivered. Returns the new delivery state.

    The network calls happen outside any transaction; only the outcome is
    written, under the row lock. ``pending`` means "try again later".
    """
    alert = Alert.objects.get(pk=alert_id)
    if alert.delivery_state != Alert.Delivery.PENDING:
        return alert.delivery_state
    webhook = _setting("ALERT_WEBHOOK_URL", "") or ""
    emails = list(_setting("ALERT_EMAILS", []) or [])
    channels = {"webhook": bool(webhook), "email": bool(emails)}
    configured = [name for name, on in channels.items() if on]
    done = set(alert.delivered_channels)
    errors: list[str] = []
    for name in configured:
        if name in done:
            continue
        try:
            if name == "webhook":
                _webhook_send(webhook, alert)
            else:
                _email_send(emails, alert)
            done.add(name)
        # Any failure of a channel is recorded and retried.
        except Exception as exc:
            errors.append(f"{name}: {exc}"[:500])
    max_attempts = int(_setting("ALERT_MAX_ATTEMPTS", 6))
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert_id)
        alert.attempts += 1
        alert.delivered_channels = sorted(done | set(alert.delivered_channels))
        if not configured:
            alert.delivery_state = Alert.Delivery.NOT_CONFIGURED
        elif not errors:
            alert.delivery_state = Alert.Delivery.DELIVERED
            alert.delivered_at = timezone.now()
            alert.last_error = ""
        else:
            alert.last_error = "; ".join(errors)
            alert.delivery_state = Alert.Delivery.FAILED if alert.attempts >= max_attempts else Alert.Delivery.PENDING
        alert.save(update_fields=["attempts", "delivered_channels", "delivery_state", "delivered_at", "last_error"])
    if alert.delivery_state == Alert.Delivery.FAILED:
        logger.error("alert %s could not be delivered after %s attempts: %s", alert_id, alert.attempts, alert.last_error)
    return alert.delivery_state


def alert_retry_delay_s(attempts: int) -> float:
    """Exponential backoff between delivery attempts: base * 2^(attempts-1), capped."""
    base = float(_setting("ALERT_RETRY_BASE_S", 2))
    return min(base * (2 ** max(0, attempts - 1)), float(_setting("ALERT_RETRY_MAX_S", 300)))


def alerts_redeliver_pending(*, older_than_s: float = 600) -> int:
    """Queue delivery again for alerts stuck pending (e.g. the broker was down). Returns how many."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    ids = list(Alert.objects.filter(delivery_state=Alert.Delivery.PENDING, created_at__lt=cutoff).values_list("pk", flat=True)[:500])
    for alert_id in ids:
        _alert_delivery_enqueue(alert_id)
    return len(ids)

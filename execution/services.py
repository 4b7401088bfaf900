"""Execution writes: approvals, rejections, mode changes, orders, fills, cancel-all, reconcile.

Two halves live here.

Human decisions (web process): ``signal_approve``, ``signal_reject`` and
``automation_mode_set``. Each checks the role, verifies a fresh TOTP with the
device row locked inside the decision's transaction, writes its audit event
and, for an approval, sends the execute task by name once it commits. A
refused decision is committed as a refusal (audit event, the device's
throttle counter) and then raised, so the throttle of failed codes cannot be
undone by the rollback of the refused transaction.

Orders (execute worker): ``order_execute(signal_id)`` trusts nothing but the
id. It locks the signal, reloads everything and decides again (kill switch,
automation status, expiry, gating and the approval's order hash, then the
risk pre-trade check), creates the one Order of the signal, claims it with a
conditional update and submits it with ``client_order_id = fp-<signal id>``.
The claim is held with a session-level PostgreSQL advisory lock for the whole
broker call: a worker that dies loses its connection and therefore the lock,
so a later worker that finds the order ``submitting`` AND gets the lock knows
the submitter is dead and asks the broker by client order id before doing
anything else. A worker that cannot get the lock leaves the order alone: its
submitter is alive.

The order path is the execute worker's whole cost per order, so its own
statements are written by hand (``execution.rows`` turns rows into model
instances through the fields' converters) and grouped: several statements
go in one round trip where each must see the locks the previous ones took
(a statement of its own takes its snapshot after them). From the task's
receipt to the broker's answer: the submission lock, the signal's row lock
and everything the decision reads (one round trip), the quote and the book
(one Redis MGET), the pre-trade check, the order's insert with the signal's
move (``automations.services.signal_move_prepare``) and the audit chain's
lock and head (one round trip), both audit events (one insert), the commit,
the broker. The signal's live push is held back until the broker has
answered, so the push thread does not compete with the call. Settling the
answer (fills, position, the order's state, the risk release, the signal's
move) follows; ``tests/execution/test_order_rows.py`` holds it row for row
to the ORM version it replaced (``tests/execution/reference_orders.py``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache, partial
from typing import Any

from celery import current_app
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import (
    AUDIT_CHAIN_LOCK_HEAD_SQL,
    audit_event_record,
    audit_event_record_autonomous,
    audit_events_record,
)
from automations.models import Automation, Signal
from automations.services import SignalMove, signal_move_prepare, signal_push, signal_transition
from execution.accounting import Position, position_apply
from execution.brokers import BrokerError, BrokerOrder, BrokerOrderStatus, BrokerRejected, OrderRequest, broker_for_mode
from execution.gating import gating_required, signal_order_hash
from execution.models import Approval, BrokerAccount, Fill, Order
from execution.rows import RowLoader, insert_params, insert_sql, mark_saved
from execution.selectors import slippage_gap
from execution.simulation import OrderSpec, expected_slippage_bps, slippage_bps
from ingestion import selectors as market
from ingestion.types import BookSnapshot, Side
from risk import rules
from risk.models import KillSwitch, RiskLimit
from risk.selectors import RISK_OFFICER_GROUP, TRADER_GROUP, kill_switch_engaged, risk_limits_for, user_in_group
from trading import redis_keys
from trading.api import DomainError
from trading.permissions import user_roles
from trading.queues import ORDER_EXECUTE_TASK
from trading.redis_client import redis_client

logger = logging.getLogger(__name__)

ACTOR = "worker-execute"
S = Signal.Status
OS = Order.Status
OPEN_AT_BROKER = (OS.SUBMITTING, OS.SUBMITTED, OS.PARTIALLY_FILLED)
FINAL = (OS.FILLED, OS.CANCELLED, OS.REJECTED, OS.FAILED)
# Without a configured collar, an approval is refused when the price moved this far from the signal's limit.
DEFAULT_APPROVAL_COLLAR_BPS = Decimal(os.environ.get("FP_APPROVAL_COLLAR_BPS", "100"))
SLIPPAGE_GAP_RATIO = 0.5
# The decision's commit mode. False: it commits synchronously (the order, its reservation and the signal's
# move are on disk when the commit returns), so the broker may be called right away. True: the pre-trade
# check asks for an asynchronous commit (``risk.services.pretrade_check(synchronous_commit=False)``: the risk
# rows are unlocked without waiting for the WAL flush) and ``commits_make_durable()`` runs before the broker
# call. One worker waits for the same flush either way (plus a round trip when True); True shortens the time
# the risk rows and the audit chain stay locked, which matters once several workers trade the same rows.
PRETRADE_ASYNC_COMMIT = False
_ADVISORY_BASE = 0x46505F4F52440000  # "FP_ORD" followed by the signal id (one order per signal).
_POSITION_LOCK_BASE = 0x46505F504F530000  # "FP_POS" followed by the automation id.


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _refusal(message: str, *, code: str, status_code: int = 409) -> DomainError:
    return DomainError(message, code=code, status_code=status_code)


def _otp_verify_locked(user: Any, token: str) -> Any | None:
    """The user's confirmed TOTP device that accepts ``token``, verified with the device rows locked.

    The lock makes two concurrent uses of one code serialise: the second
    reads the first's ``last_t`` and is refused (django-otp accepts a time
    step once). Failures increment django-otp's throttle on the device.
    """
    from django_otp.plugins.otp_totp.models import TOTPDevice

    token = (token or "").strip()
    if not token:
        return None
    devices = list(TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).order_by("pk"))
    for device in devices:
        if device.verify_token(token):
            return device
    return None


def _send_execute(signal_id: int) -> None:
    try:
        current_app.send_task(ORDER_EXECUTE_TASK, args=[signal_id])
    except Exception:
        # The reconciler picks up approved signals whose task was lost.
        logger.exception("could not send %s for signal %s", ORDER_EXECUTE_TASK, signal_id)


def _collar_bps(automation_id: int) -> Decimal:
    """The tightest configured price collar for the automation, else the approval default."""
    global_limits, automation_limits, _ = risk_limits_for(automation_id)
    collars = [c for c in (global_limits.price_collar_bps, automation_limits.price_collar_bps) if c is not None]
    return min(collars) if collars else DEFAULT_APPROVAL_COLLAR_BPS


def _current_mid(symbol: str) -> Decimal | None:
    quote = market.latest_quote(symbol)
    if quote is None or quote.bid <= 0 or quote.ask <= 0:
        return None
    return (quote.bid + quote.ask) / 2


# ---------------------------------------------------------------------------
# Human decisions
# ---------------------------------------------------------------------------


def _require_trader(user: Any, signal_id: int, action: str) -> None:
    # The request's permission check read the roles already (trading.permissions caches them on the user).
    if TRADER_GROUP not in user_roles(user):
        message = f"only a trader may {action} a signal"
        audit_event_record_autonomous(
            kind=AuditEvent.Kind.PERMISSION_DENIED, actor=user, subject_type="automations.signal",
            subject_id=signal_id, data={"action": action, "refused": message},
        )
        raise _refusal(message, code="forbidden", status_code=403)


def _signal_automation_id(signal_id: int) -> int:
    automation_id = Signal.objects.filter(pk=signal_id).values_list("automation_id", flat=True).first()
    if automation_id is None:
        raise _refusal(f"signal {signal_id} does not exist", code="not_found", status_code=404)
    return automation_id


def signal_approve(*, signal_id: int, user: Any, otp_token: str) -> Signal:
    """Approve a pending signal with a fresh TOTP; on commit, send it to the execute worker.

    Steps, in one transaction (automation row, then signal row, then the
    user's TOTP devices locked, the order the kill switch also uses):

    1. The signal must be pending approval and not past ``expires_at``.
    2. Four-eyes: when the automation asks for it, the approver must not be
       the person who last changed the automation.
    3. Freshness: the signal's limit price must be within the price collar
       of the current mid (the automation's or global collar, else
       ``FP_APPROVAL_COLLAR_BPS``), so a trader cannot approve a trade the
       market has left behind.
    4. The TOTP code is verified against the user's device; a code is
       accepted once, failures are throttled.
    5. Record the Approval (who, when, device, order hash), count the
       approved trade, move the signal to ``approved``, audit.

    Refusals are recorded and committed, then raised as ``DomainError``.
    """
    _require_trader(user, signal_id, "approve")
    automation_id = _signal_automation_id(signal_id)
    refusal: DomainError | None = None
    with transaction.atomic():
        automation = Automation.objects.select_for_update().get(pk=automation_id)
        signal = Signal.objects.select_for_update().get(pk=signal_id)
        now = timezone.now()
        order_hash = signal_order_hash(signal)
        base = {"action": "approve", "order_hash": order_hash, "automation_id": automation_id}
        if signal.status == S.EXPIRED or (signal.expires_at is not None and signal.expires_at <= now):
            when = signal.expires_at.isoformat() if signal.expires_at else "earlier"
            refusal = _refusal(f"signal {signal_id} expired at {when}; it can no longer be approved", code="expired")
        elif signal.status != S.PENDING_APPROVAL:
            refusal = _refusal(f"signal {signal_id} is {signal.status}, not pending approval", code="not_pending")
        elif automation.four_eyes and automation.last_changed_by_id is not None \
                and automation.last_changed_by_id == user.pk:
            refusal = _refusal(
                f"four-eyes rule: you last changed automation {automation.name}, so another trader must approve",
                code="four_eyes", status_code=403,
            )
        if refusal is None:
            mid = _current_mid(signal.symbol)
            collar = _collar_bps(automation_id)
            if mid is None:
                refusal = _refusal(f"no current price for {signal.symbol}: the signal cannot be checked for staleness",
                                   code="stale")
            else:
                distance = rules.collar_bps(signal.limit_price, mid)
                if distance > collar:
                    refusal = _refusal(
                        f"price moved: the limit {signal.limit_price.normalize():f} is {distance:.1f} bps from the "
                        f"current mid {mid.normalize():f}, beyond the {collar.normalize():f} bps collar; the signal is stale",
                        code="stale",
                    )
        if refusal is not None:
            audit_event_record(kind=AuditEvent.Kind.APPROVAL, actor=user, subject=signal, reason=refusal.message,
                               data={**base, "outcome": "refused", "code": refusal.code})
        else:
            device = _otp_verify_locked(user, otp_token)
            if device is None:
                why = "missing" if not (otp_token or "").strip() else "invalid, reused or throttled"
                refusal = _refusal(f"the one-time password is {why}", code="otp_invalid", status_code=403)
                audit_event_record(kind=AuditEvent.Kind.OTP_FAILED, actor=user, subject=signal, reason=refusal.message,
                                   data=base)
            else:
                _approval_record(signal=signal, automation=automation, user=user, device=device,
                                 order_hash=order_hash, now=now)
    if refusal is not None:
        raise refusal
    return signal


def _approval_record(*, signal: Signal, automation: Automation, user: Any, device: Any, order_hash: str,
                     now: datetime) -> None:
    # One statement, no savepoint: a clash on the signal or the order hash inserts nothing and is refused.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO execution_approval (signal_id, user_id, device_id, decision, reason, order_hash, "
            "decided_at) VALUES (%s, %s, %s, 'approve', '', %s, %s) ON CONFLICT DO NOTHING RETURNING id",
            [signal.pk, user.pk, device.persistent_id, order_hash, now],
        )
        if cursor.fetchone() is None:
            raise _refusal(f"signal {signal.pk} already has a decision or this order was already approved",
                           code="duplicate")
    # The execute task goes first among the on-commit callbacks: the live pushes
    # (several milliseconds each over the channel layer) follow it instead of delaying the order.
    signal_id = signal.pk
    transaction.on_commit(lambda: _send_execute(signal_id))
    # A counter, not configuration: no history row and no reason are needed. One statement, new value back.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE automations_automation SET approved_trade_count = approved_trade_count + 1 "
            "WHERE id = %s RETURNING approved_trade_count",
            [automation.pk],
        )
        (automation.approved_trade_count,) = cursor.fetchone()
    username = user.get_username()
    signal.automation = automation  # The push payload names the automation: no second read of its row.
    signal_transition(signal=signal, to_status=S.APPROVED, actor_label=username, actor=user, locked=True,
                      reason=f"approved by {username} with OTP (order {order_hash[:12]})")
    audit_event_record(
        kind=AuditEvent.Kind.APPROVAL, actor=user, subject=signal, reason="approved with OTP",
        data={"action": "approve", "outcome": "approved", "order_hash": order_hash, "device": device.persistent_id,
              "automation_id": automation.pk, "approved_trade_count": automation.approved_trade_count},
    )


def signal_reject(*, signal_id: int, user: Any, reason: str) -> Signal:
    """Reject a pending signal; a reason is required. Audited, never executed."""
    _require_trader(user, signal_id, "reject")
    reason = (reason or "").strip()
    if not reason:
        raise _refusal("a reason is required to reject a signal", code="reason_required", status_code=400)
    automation_id = _signal_automation_id(signal_id)
    with transaction.atomic():
        Automation.objects.select_for_update().get(pk=automation_id)
        signal = Signal.objects.select_for_update().get(pk=signal_id)
        if signal.status != S.PENDING_APPROVAL:
            raise _refusal(f"signal {signal_id} is {signal.status}, not pending approval", code="not_pending")
        order_hash = signal_order_hash(signal)
        now = timezone.now()
        Approval.objects.create(signal=signal, user=user, device_id="", decision="reject", reason=reason,
                                order_hash=order_hash, decided_at=now)
        username = user.get_username()
        signal_transition(signal=signal, to_status=S.REJECTED, actor_label=username, actor=user,
                          reason=f"rejected by {username}: {reason}")
        audit_event_record(kind=AuditEvent.Kind.REJECTION, actor=user, subject=signal, reason=reason,
                           data={"order_hash": order_hash, "automation_id": automation_id})
    return signal


def automation_mode_set(*, automation_id: int, user: Any, mode: str, otp_token: str, reason: str) -> Automation:
    """Switch an automation between paper and live: risk officer, fresh TOTP and a reason.

    Going live also needs an active ccxt broker account (its credentials
    live only in the execute worker, which is checked when it trades).
    """
    if not user_in_group(user, RISK_OFFICER_GROUP):
        message = "only a risk officer may change an automation's trading mode"
        audit_event_record_autonomous(kind=AuditEvent.Kind.PERMISSION_DENIED, actor=user,
                                      subject_type="automations.automation", subject_id=automation_id,
                                      data={"action": "mode", "refused": message})
        raise _refusal(message, code="forbidden", status_code=403)
    reason = (reason or "").strip()
    if not reason:
        raise _refusal("a reason is required to change the trading mode", code="reason_required", status_code=400)
    if mode not in Automation.Mode.values:
        raise _refusal(f"mode must be one of {', '.join(Automation.Mode.values)}", code="invalid", status_code=400)
    if mode == Automation.Mode.LIVE and not BrokerAccount.objects.filter(
            active=True, kind=BrokerAccount.Kind.CCXT).exists():
        raise _refusal("no active live broker account is configured", code="no_live_broker", status_code=409)
    automation = Automation.objects.filter(pk=automation_id).first()
    if automation is None:
        raise _refusal(f"automation {automation_id} does not exist", code="not_found", status_code=404)
    refusal: DomainError | None = None
    with transaction.atomic():
        device = _otp_verify_locked(user, otp_token)
        if device is None:
            refusal = _refusal("the one-time password is missing, invalid, reused or throttled", code="otp_invalid",
                               status_code=403)
            audit_event_record(kind=AuditEvent.Kind.OTP_FAILED, actor=user, subject=automation, reason=reason,
                               data={"action": "mode", "to": mode})
        else:
            automation = _automation_mode_write(automation_id=automation_id, user=user, mode=mode, reason=reason)
    if refusal is not None:
        raise refusal
    return automation


def _automation_mode_write(*, automation_id: int, user: Any, mode: str, reason: str) -> Automation:
    """The versioned write of the mode (simple-history row with the reason, audit events)."""
    locked = Automation.objects.select_for_update().get(pk=automation_id)
    before = locked.mode
    if before == mode:
        raise _refusal(f"automation {locked.name} is already in {mode} mode", code="no_change", status_code=400)
    locked.mode = mode
    locked.last_changed_by = user
    locked._change_reason = reason  # type: ignore[attr-defined]
    locked._history_user = user  # type: ignore[attr-defined]
    locked.save(update_fields=["mode", "last_changed_by", "updated_at"])
    audit_event_record(kind=AuditEvent.Kind.CONFIG_CHANGE, actor=user, subject=locked, reason=reason,
                       data={"action": "update", "changes": {"mode": [before, mode]}})
    audit_event_record(kind=AuditEvent.Kind.MODE_CHANGE, actor=user, subject=locked, reason=reason,
                       data={"from": before, "to": mode, "otp_verified": True})
    return locked


# ---------------------------------------------------------------------------
# Orders: decide, claim, submit, settle
# ---------------------------------------------------------------------------


def _fault_hook(point: str) -> None:
    """Fault injection for the crash tests: ``FP_TEST_CRASH_AT=<point>`` kills this process there.

    Points: ``submitting`` (the order is claimed, nothing sent to the
    broker) and ``after_broker`` (the broker accepted, nothing recorded).
    ``os._exit`` skips every cleanup, like SIGKILL: the task is not acked and
    the database connection (with its advisory lock) simply drops. Never set
    outside tests.
    """
    if os.environ.get("FP_TEST_CRASH_AT") == point:
        logger.warning("fault injection: exiting at %s", point)
        os._exit(137)


_UNREAD: Any = object()


def _execution_refusal(signal: Signal, automation: Automation, now: datetime,
                       approval_hash: str | None = _UNREAD) -> tuple[str, str] | None:
    """Why this signal must not become an order, as (signal status to move to, reason); None to go ahead.

    ``automation.kill_switch_on`` is read with the automation (one round trip) when the caller annotated it;
    ``approval_hash`` is the order hash of the signal's approval (None: there is none) when the caller read it.
    """
    engaged = getattr(automation, "kill_switch_on", None)
    if engaged if engaged is not None else kill_switch_engaged():
        return S.FAILED, "the kill switch is engaged"
    if automation.status != Automation.Status.ACTIVE:
        return S.FAILED, f"automation {automation.name} is {automation.status}"
    if signal.expires_at is not None and signal.expires_at <= now:
        return S.EXPIRED, f"expired at {signal.expires_at.isoformat()} before it could be executed"
    if signal.status == S.APPROVED:
        if approval_hash is _UNREAD:
            approval = Approval.objects.filter(signal=signal, decision="approve").first()
            approval_hash = None if approval is None else approval.order_hash
        if approval_hash is None:
            return S.FAILED, "approved status without an approval record: refused"
        if approval_hash != signal_order_hash(signal):
            return S.FAILED, "the order no longer matches what was approved (order hash differs): refused"
        return None
    if signal.needs_approval or gating_required(automation):
        return S.FAILED, (f"this trade needs a trader's approval ({automation.approved_trade_count} of the first "
                          f"{automation.approval_threshold} approved) and has none: refused")
    return None


_SIGNAL_ROWS = RowLoader(Signal, "s")
_AUTOMATION_ROWS = RowLoader(Automation, "a")
_ORDER_ROWS = RowLoader(Order, "o")


@cache
def _decide_sql(claim: bool) -> str:
    """Lock the signal, then (a statement of its own, so its snapshot is taken once the lock is held) read it
    with its automation, the kill switch, its order's id and its approval's order hash: one round trip.

    ``claim``: first of all, try the signal's submission lock (``_Claim``).
    """
    signal, automation = Signal._meta.db_table, Automation._meta.db_table
    claim_sql = "SELECT pg_try_advisory_lock(%s); " if claim else ""
    return (
        f'{claim_sql}SELECT 1 FROM "{signal}" WHERE "id" = %s FOR UPDATE; '  # noqa: S608 - model table names
        f"SELECT {_SIGNAL_ROWS.columns}, {_AUTOMATION_ROWS.columns}, "
        f'EXISTS (SELECT 1 FROM "{KillSwitch._meta.db_table}" k WHERE k."id" = 1 AND k."engaged"), '
        f'(SELECT o."id" FROM "{Order._meta.db_table}" o WHERE o."signal_id" = s."id"), '
        f'(SELECT ap."order_hash" FROM "{Approval._meta.db_table}" ap WHERE ap."signal_id" = s."id" '
        "AND ap.\"decision\" = 'approve' ORDER BY ap.\"id\" LIMIT 1) "
        f'FROM "{signal}" s JOIN "{automation}" a ON a."id" = s."automation_id" WHERE s."id" = %s'
    )


class _Claim:
    """The signal's submission lock, tried in the first round trip of the decision instead of one of its own.

    It is PostgreSQL's session-level advisory lock (``_submission_lock``):
    taken inside the decision's transaction it still outlives it. ``release``
    gives it back; after a failure that may have come after it was taken, it
    is given back all the same (unlocking a lock not held only warns).
    """

    def __init__(self, signal_id: int) -> None:
        self.key = _ADVISORY_BASE + signal_id
        self.held = False
        self.unsure = False

    def release(self) -> None:
        if not (self.held or self.unsure):
            return
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [self.key])
        except DatabaseError:
            # A broken connection took the lock with it.
            logger.exception("execute: could not release the submission lock %s", self.key)
        self.held = self.unsure = False


def _signal_read_locked(signal_id: int, claim: _Claim | None = None
                        ) -> tuple[Signal, Automation, bool, int | None, str | None] | None:
    """(signal with its automation, kill switch engaged, order id or None, approval hash or None), the signal
    row locked until the transaction ends; None when there is no such signal.

    With ``claim``, the submission lock is tried first and ``claim.held`` says whether it was taken.
    """
    with connection.cursor() as cursor:
        if claim is None:
            cursor.execute(_decide_sql(False), [signal_id, signal_id])
        else:
            claim.unsure = True
            cursor.execute(_decide_sql(True), [claim.key, signal_id, signal_id])
            claim.held, claim.unsure = bool(cursor.fetchone()[0]), False
            cursor.cursor.nextset()
        cursor.cursor.nextset()
        row = cursor.fetchone()
    if row is None:
        return None
    signal = _SIGNAL_ROWS.load(row)
    automation = _AUTOMATION_ROWS.load(row, _SIGNAL_ROWS.width)
    signal.automation = automation  # The push payload names the automation: no second read of its row.
    kill_switch_on, order_id, approval_hash = row[_SIGNAL_ROWS.width + _AUTOMATION_ROWS.width:]
    return signal, automation, bool(kill_switch_on), order_id, approval_hash


def _market_read(symbol: str) -> tuple[Decimal | None, BookSnapshot | None]:
    """The current mid (latest quote) and the top 50 levels of the book: one Redis round trip."""
    raw_quote, raw_book = redis_client().mget(redis_keys.quote(symbol), redis_keys.book(symbol))
    quote = market.quote_from_json(raw_quote)
    mid = None if quote is None or quote.bid <= 0 or quote.ask <= 0 else (quote.bid + quote.ask) / 2
    return mid, market.book_from_json(raw_book, 50)


def _order_insert(order: Order) -> Order:
    """``order.save(force_insert=True)``, as one hand-written statement."""
    with connection.cursor() as cursor:
        cursor.execute(insert_sql(Order), insert_params(order))
        return mark_saved(order, cursor.fetchone()[0])


def _order_decide(signal_id: int, *, claim: _Claim | None = None, pushes: list[dict[str, Any]] | None = None
                  ) -> tuple[Order | None, bool]:
    """Create the signal's one Order or refuse, under the signal's row lock; return (order, created now).

    With ``claim``, the signal's submission lock is tried in the same round
    trip as the read; when another worker holds it, nothing is decided and the
    signal's order (None if there is none yet) comes back as it is.

    The caller holds the signal's submission lock, so a new order is born
    ``submitting`` (claimed by this worker) and goes to the broker right after
    this commit: no separate claim round trip on the way to the venue. An order
    that already exists comes back as it is (a redelivered or repeated task).

    Round trips: the signal locked and read with everything the decision needs
    (``_decide_sql``), the market (Redis), the pre-trade check, the order's
    insert with the signal's move and the audit chain's head, the audit
    events (``_order_submitting_record``), the commit. With ``pushes``, the
    live push of the signal's move is left there for the caller to send
    after the broker's answer instead of on commit.
    """
    with transaction.atomic():
        found = _signal_read_locked(signal_id, claim)
        if claim is not None and not claim.held:
            logger.info("execute: signal %s is being executed by another worker", signal_id)
            return (None if found is None or found[3] is None else Order.objects.get(pk=found[3])), False
        if found is None:
            logger.warning("execute: no signal %s (forged or replayed message?)", signal_id)
            return None, False
        signal, automation, kill_switch_on, order_id, approval_hash = found
        if order_id is not None:
            return Order.objects.get(pk=order_id), False
        if signal.status not in (S.QUEUED, S.APPROVED):
            logger.info("execute: signal %s is %s; nothing to do", signal_id, signal.status)
            return None, False
        automation.kill_switch_on = kill_switch_on
        now = timezone.now()
        refusal = _execution_refusal(signal, automation, now, approval_hash)
        if refusal is not None:
            to_status, reason = refusal
            signal_transition(signal=signal, to_status=to_status, actor_label=ACTOR, reason=reason, locked=True)
            return None, False
        mid, book = _market_read(signal.symbol)
        modelled = _modelled_slippage(signal, book)
        breaches = pretrade_check_call(automation_id=automation.pk, side=signal.side, quantity=signal.quantity,
                                       limit_price=signal.limit_price, mid=mid,
                                       synchronous_commit=not PRETRADE_ASYNC_COMMIT)
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
            _order_insert(order)
            signal_transition(signal=signal, to_status=S.FAILED, actor_label=ACTOR, reason=f"refused by risk: {reason}",
                              locked=True)
        else:
            order.status = OS.SUBMITTING
            _order_submitting_record(order, signal, pushes)
            return order, True
        audit_event_record(**_order_order_event(order))
        return order, True


def _order_order_event(order: Order) -> dict[str, Any]:
    """The ``order`` audit event of a decided order (``audit_event_record``'s arguments)."""
    return {"kind": AuditEvent.Kind.ORDER, "actor_label": ACTOR, "subject": order, "reason": order.status_reason,
            "data": {"status": order.status, "client_order_id": order.client_order_id, "signal_id": order.signal_id,
                     "gated": order.gated}}


def _order_submitting_record(order: Order, signal: Signal, pushes: list[dict[str, Any]] | None) -> None:
    """Insert the claimed order, move its locked signal to ``ordered`` and audit both: two round trips.

    The same rows as ``_order_insert`` + ``signal_transition(locked=True)`` +
    ``audit_event_record`` (tests/execution/test_order_rows.py): the order's
    insert, the signal's move (``signal_move_prepare``), the audit chain's
    lock and its head in one round trip, then both audit events in one
    insert. The signal's push goes to ``pushes`` (sent once the broker has
    answered, ``_pushes_send``) when given, else on commit.
    """
    move = signal_move_prepare(signal=signal, to_status=S.ORDERED, actor_label=ACTOR,
                               reason=f"order {order.client_order_id} created")
    (order_pk,), seq, head = _signal_move_write(move, insert_sql(Order), insert_params(order))
    mark_saved(order, order_pk)
    event, message = move.applied(seq)
    audit_events_record([event, _order_order_event(order)], head=head)
    if pushes is None:
        transaction.on_commit(partial(signal_push, message))
    else:
        pushes.append(message)


def _signal_move_write(move: SignalMove, before_sql: str = "", before_params: list[Any] | None = None
                       ) -> tuple[Any, int, str]:
    """One round trip: ``before_sql`` (one statement; its first row comes back), the signal's move (its push
    number comes back) and the audit chain's lock and head (for ``audit_events_record(head=...)``)."""
    sql = f"{move.sql}; {AUDIT_CHAIN_LOCK_HEAD_SQL}"
    with connection.cursor() as cursor:
        if before_sql:
            cursor.execute(f"{before_sql}; {sql}", [*(before_params or []), *move.params])
            first = cursor.fetchone()
            cursor.cursor.nextset()
        else:
            cursor.execute(sql, move.params)
            first = None
        (seq,) = cursor.fetchone()
        cursor.cursor.nextset()
        (head,) = cursor.fetchone()
    return first, seq, head


def _pushes_send(pushes: list[dict[str, Any]] | None) -> None:
    """Queue the live pushes held back until the broker's answer (they are a courtesy: a lost one is a gap the
    client re-syncs over HTTP), in the order they were made, before anything settled later pushes its own."""
    while pushes:
        signal_push(pushes.pop(0))


def pretrade_check_call(**kwargs: Any) -> list[Any]:
    """risk.services.pretrade_check (imported late: risk is built alongside)."""
    from risk.services import pretrade_check

    return pretrade_check(**kwargs)


def _commits_make_durable() -> None:
    """risk.services.commits_make_durable (imported late, like the pre-trade check)."""
    from risk.services import commits_make_durable

    commits_make_durable()


def _modelled_slippage(signal: Signal, book: BookSnapshot | None) -> float | None:
    from execution.brokers.paper import paper_fill_params

    if book is None:
        return None
    spec = OrderSpec(side=Side(signal.side), quantity=Decimal(signal.quantity), limit_price=Decimal(signal.limit_price),
                     symbol=signal.symbol)
    value = expected_slippage_bps(spec, book, paper_fill_params())
    return None if math.isnan(value) else value


@contextmanager
def _submission_lock(signal_id: int) -> Iterator[bool]:
    """The signal's session-level advisory lock: it lives exactly as long as this process's connection.

    Whoever holds it owns the signal's order on its way to the broker; an
    order found ``submitting`` while the lock is free lost its submitter.
    """
    key = _ADVISORY_BASE + signal_id
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        held = bool(cursor.fetchone()[0])
    try:
        yield held
    finally:
        if held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def _request(order: Order) -> OrderRequest:
    return OrderRequest(client_order_id=order.client_order_id, symbol=order.symbol, side=order.side,
                        quantity=Decimal(order.quantity), limit_price=Decimal(order.limit_price))


def order_submit(order: Order) -> Order:
    """Submit an order not yet at the broker, or recover one whose submitter died. Idempotent.

    Takes the signal's submission lock; without it another live worker owns
    the order: leave it. See ``_order_submit_locked`` for the rest.
    """
    # Run it outside any transaction (the task does): the claim must be committed before the broker call.
    with _submission_lock(order.signal_id) as held:
        if not held:
            return order
        order.refresh_from_db()
        return _order_submit_locked(order, claimed=False)


def _order_submit_locked(order: Order, *, claimed: bool, pushes: list[dict[str, Any]] | None = None) -> Order:
    """The order's way to the broker, under its signal's submission lock.

    1. ``claimed``: this worker just created it ``submitting``: submit. A
       ``pending`` order (from before orders were born claimed) is claimed by
       conditional update first.
    2. Found ``submitting`` otherwise: its submitter died (we hold its lock),
       so ask the broker by client order id; submit only if the broker never
       saw it (the same id makes a second submit harmless anyway).
    3. Record what the broker says, stamped with the time its answer arrived;
       if the kill switch went on meanwhile, cancel.

    ``pushes``: live pushes held back from the decision's commit; they are
    queued once the broker has answered (or failed), before anything
    settled here queues its own, so clients see them in order.
    """
    if not claimed and order.status == OS.PENDING:
        claimed = Order.objects.filter(pk=order.pk, status=OS.PENDING).update(status=OS.SUBMITTING) == 1
        if claimed:
            order.status = OS.SUBMITTING  # Ours by the conditional update: no need to read it back.
        else:
            order.refresh_from_db()
    if order.status != OS.SUBMITTING:
        return order
    broker = broker_for_mode(order.broker)
    result: BrokerOrder | None = None
    if claimed:
        if PRETRADE_ASYNC_COMMIT:
            _commits_make_durable()  # The decision may have committed asynchronously: on disk before the venue.
        _fault_hook("submitting")
    else:
        try:
            result = broker.fetch_order(order.client_order_id, symbol=order.symbol)
        except BrokerError as exc:
            logger.warning("execute: cannot ask the broker about %s: %s", order.client_order_id, exc)
            return _order_note(order, f"recovery: broker unreachable ({exc}); the reconciler retries")
    if result is None:
        try:
            result = broker.submit(_request(order))
        except BrokerRejected as exc:
            _pushes_send(pushes)
            return order_finalize(order_id=order.pk, status=OS.REJECTED, reason=f"broker rejected: {exc}")
        except Exception as exc:
            _pushes_send(pushes)
            logger.exception("execute: submission of %s has an unknown outcome", order.client_order_id)
            return _order_note(order, f"submission outcome unknown ({exc}); the reconciler asks the broker")
        _fault_hook("after_broker")
    answered_at = timezone.now()
    _pushes_send(pushes)
    order = order_settle(order_id=order.pk, broker_order=result, answered_at=answered_at)
    if not result.is_final and kill_switch_engaged():
        cancelled = broker.cancel(order.client_order_id, symbol=order.symbol)
        if cancelled is not None:
            order = order_settle(order_id=order.pk, broker_order=cancelled)
    return order


def _order_note(order: Order, note: str) -> Order:
    Order.objects.filter(pk=order.pk).update(status_reason=note)
    order.status_reason = note
    return order


def order_execute(*, signal_id: int) -> Order | None:
    """The execute task's body: decide again from the database, then submit; one order per signal.

    A second task for the same signal while the first holds the signal's
    submission lock does nothing (the first one owns the order).
    """
    claim = _Claim(signal_id)
    pushes: list[dict[str, Any]] = []
    try:
        try:
            order, created = _order_decide(signal_id, claim=claim, pushes=pushes)
        except BaseException:
            pushes.clear()  # The decision did not commit (a failed COMMIT included): nothing to announce.
            raise
        if not claim.held or order is None or order.status not in (OS.PENDING, OS.SUBMITTING):
            return order
        return _order_submit_locked(order, claimed=created, pushes=pushes)
    finally:
        _pushes_send(pushes)
        claim.release()


_STATUS_FROM_BROKER = {
    BrokerOrderStatus.OPEN: OS.SUBMITTED,
    BrokerOrderStatus.PARTIALLY_FILLED: OS.PARTIALLY_FILLED,
    BrokerOrderStatus.FILLED: OS.FILLED,
    BrokerOrderStatus.CANCELLED: OS.CANCELLED,
    BrokerOrderStatus.REJECTED: OS.REJECTED,
}


def _automation_position(automation_id: int) -> Position:
    """The automation's position after its latest booked fill; call it under the automation's booking lock
    (``pg_advisory_xact_lock(_POSITION_LOCK_BASE + automation id)``, taken in ``_settle_read_sql``).

    One row: each fill stores the position it left. Fills booked before that
    column existed are replayed once, in booking (id) order.
    """
    fills = Fill.objects.filter(order__automation_id=automation_id)
    latest = (Fill.objects.filter(automation_id=automation_id).order_by("-id")
              .values_list("position_after", "avg_price_after").first())
    if latest is None:
        return Position()
    if latest[0] is not None and latest[1] is not None:
        return Position(latest[0], latest[1])
    position = Position()
    for side, quantity, price in fills.order_by("id").values_list("order__side", "quantity", "price"):
        position, _ = position_apply(position, side=side, quantity=quantity, price=price)
    return position


@cache
def _settle_read_sql(with_position: bool) -> str:
    """Lock the order and read it with its automation's slippage threshold; its booked fill ids; with
    ``with_position``, the automation's booking lock and then its position after its latest fill.

    One round trip, one statement per step: each statement takes its snapshot after the locks before it are
    held, so the fills and the position read are those of the last holder's commit.
    """
    order, fill, limit = Order._meta.db_table, Fill._meta.db_table, RiskLimit._meta.db_table
    sql = (
        f"SELECT {_ORDER_ROWS.columns}, "  # noqa: S608 - model table names
        f'(SELECT l."slippage_breach_bps" FROM "{limit}" l WHERE l."automation_id" = o."automation_id") '
        f'FROM "{order}" o WHERE o."id" = %(order)s FOR UPDATE; '
        f'SELECT "broker_fill_id" FROM "{fill}" WHERE "order_id" = %(order)s'
    )
    if with_position:
        sql += (
            f'; SELECT pg_advisory_xact_lock({_POSITION_LOCK_BASE} + o."automation_id") '  # noqa: S608
            f'FROM "{order}" o WHERE o."id" = %(order)s; '
            # The automation's latest fill: one entry of the index fill_automation_latest (automation, id desc).
            f'SELECT f."position_after", f."avg_price_after" FROM "{fill}" f '
            f'WHERE f."automation_id" = (SELECT "automation_id" FROM "{order}" WHERE "id" = %(order)s) '
            'ORDER BY f."id" DESC LIMIT 1'
        )
    return sql


_ORDER_SETTLE_FIELDS = ("broker_order_id", "filled_qty", "avg_fill_price", "submitted_at", "status", "status_reason",
                        "closed_at")


@cache
def _order_update_sql() -> str:
    fields = [Order._meta.get_field(name) for name in _ORDER_SETTLE_FIELDS]
    assignments = ", ".join(f'"{f.column}" = %s' for f in fields)
    return f'UPDATE "{Order._meta.db_table}" SET {assignments} WHERE "id" = %s'  # noqa: S608 - model table name


def _order_update_params(order: Order) -> list[Any]:
    return [*(Order._meta.get_field(name).get_db_prep_save(getattr(order, name), connection)
              for name in _ORDER_SETTLE_FIELDS), order.pk]


def order_settle(*, order_id: int, broker_order: BrokerOrder, answered_at: datetime | None = None) -> Order:
    """Record the broker's view of an order: new fills, status, and on a final state, close it.

    ``answered_at``: when the broker's answer to the submission arrived, the
    order's ``submitted_at`` (else the time of this call).

    Round trips (``_settle_read_sql``): the order locked and read with what the
    booking needs, then the new fills and the order's new state written
    together, then, on a final state, the close (``_order_close``).
    """
    with transaction.atomic():
        with_position = bool(broker_order.fills)
        with connection.cursor() as cursor:
            cursor.execute(_settle_read_sql(with_position), {"order": order_id})
            row = cursor.fetchone()
            if row is None:
                raise Order.DoesNotExist(f"no order {order_id}")
            order = _ORDER_ROWS.load(row)
            threshold = row[_ORDER_ROWS.width]
            cursor.cursor.nextset()
            known = {fill_id for (fill_id,) in cursor.fetchall()}
            latest = None
            if with_position:
                cursor.cursor.nextset()
                cursor.cursor.nextset()
                latest = cursor.fetchone()
        if order.status in FINAL:
            return order
        now = timezone.now()
        new_fills = [f for f in broker_order.fills if f.fill_id not in known]
        fills: list[Fill] = []
        if new_fills:
            # The position already holds this order's earlier fills (they were booked when they came).
            if latest is None:
                position = Position()
            elif latest[0] is not None and latest[1] is not None:
                position = Position(latest[0], latest[1])
            else:
                position = _automation_position(order.automation_id)  # Fills from before positions were stored.
            for f in new_fills:
                position, pnl = position_apply(position, side=order.side, quantity=f.quantity, price=f.price, fee=f.fee)
                realized = None
                if order.arrival_mid:
                    realized = float(slippage_bps(Side(order.side), f.price, Decimal(order.arrival_mid)))
                fills.append(Fill(order=order, automation_id=order.automation_id, price=f.price, quantity=f.quantity, fee=f.fee, filled_at=f.filled_at,
                                  broker_fill_id=f.fill_id, modelled_slippage_bps=order.modelled_slippage_bps,
                                  realized_slippage_bps=realized, realized_pnl=pnl,
                                  position_after=position.quantity, avg_price_after=position.avg_price))
        order.broker_order_id = broker_order.broker_order_id or order.broker_order_id
        order.filled_qty = broker_order.filled_qty
        order.avg_fill_price = broker_order.avg_price
        order.submitted_at = order.submitted_at or answered_at or now
        status = _STATUS_FROM_BROKER[broker_order.status]
        changed = status != order.status or new_fills
        order.status = status
        order.status_reason = broker_order.reason or ""
        if status in FINAL:
            order.closed_at = now
        with connection.cursor() as cursor:
            # The new fills and the order's new state: one round trip.
            sql, params = _order_update_sql(), _order_update_params(order)
            if fills:
                sql = f"{insert_sql(Fill, len(fills))}; {sql}"
                params = [*(value for fill in fills for value in insert_params(fill)), *params]
            cursor.execute(sql, params)
            if fills:
                for fill, (fill_pk,) in zip(fills, cursor.fetchall(), strict=True):
                    mark_saved(fill, fill_pk)
        if status in FINAL:
            # Every fill of the order, in booking order: the earlier ones are read only when there were some.
            all_fills = list(order.fills.all()) if known else fills
            _order_close(order, now, fills=all_fills, threshold=threshold, closed_saved=True)
        elif changed:
            audit_event_record(kind=AuditEvent.Kind.ORDER, actor_label=ACTOR, subject=order,
                               data={"status": status, "client_order_id": order.client_order_id,
                                     "filled_qty": str(order.filled_qty)})
        return order


def order_finalize(*, order_id: int, status: str, reason: str) -> Order:
    """Close an order that will never be (or no longer is) at the broker: rejected, failed or cancelled."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status in FINAL:
            return order
        order.status = status
        order.status_reason = reason
        order.save(update_fields=["status", "status_reason"])
        _order_close(order, timezone.now())
        return order


@cache
def _signal_lock_sql() -> str:
    """Lock a signal, then read it with its automation (a statement of its own, after the lock): one round trip."""
    signal, automation = Signal._meta.db_table, Automation._meta.db_table
    return (
        f'SELECT 1 FROM "{signal}" WHERE "id" = %s FOR UPDATE; '  # noqa: S608 - model table names
        f"SELECT {_SIGNAL_ROWS.columns}, {_AUTOMATION_ROWS.columns} "
        f'FROM "{signal}" s JOIN "{automation}" a ON a."id" = s."automation_id" WHERE s."id" = %s'
    )


def _signal_lock(signal_id: int) -> Signal:
    """The signal, locked until the transaction ends, with its automation (for the push payload)."""
    with connection.cursor() as cursor:
        cursor.execute(_signal_lock_sql(), [signal_id, signal_id])
        cursor.cursor.nextset()
        row = cursor.fetchone()
    if row is None:
        raise Signal.DoesNotExist(f"no signal {signal_id}")
    signal = _SIGNAL_ROWS.load(row)
    signal.automation = _AUTOMATION_ROWS.load(row, _SIGNAL_ROWS.width)
    return signal


def _order_close(order: Order, now: datetime, *, fills: list[Fill] | None = None, threshold: Any = _UNREAD,
                 closed_saved: bool = False) -> None:
    """A final state: release the risk reservation with the order's PnL, settle the signal, watch slippage.

    ``fills`` (every fill of the order) and ``threshold`` (the automation's
    slippage breach limit in bps, None without a limit row) when the caller
    read them; ``closed_saved`` when the caller wrote ``closed_at`` already.
    The slippage watch runs once this commits: it only reads, and raises an
    alert in a transaction of its own when the gap is too wide.
    """
    from risk.services import order_closed

    order.closed_at = now
    if not closed_saved:
        order.save(update_fields=["closed_at"])
    if fills is None:
        fills = list(order.fills.all())
    pnl = sum((f.realized_pnl for f in fills), Decimal(0))
    breach = False
    if threshold is _UNREAD:
        _, _, limit_row = risk_limits_for(order.automation_id)
        threshold = None if limit_row is None else limit_row.slippage_breach_bps
    threshold_bps = float(threshold) if threshold is not None else 50.0
    realized = [f.realized_slippage_bps for f in fills if f.realized_slippage_bps is not None]
    if realized and order.modelled_slippage_bps is not None:
        weights = [float(f.quantity) for f in fills if f.realized_slippage_bps is not None]
        avg_realized = sum(r * w for r, w in zip(realized, weights, strict=True)) / sum(weights)
        breach = avg_realized - order.modelled_slippage_bps > threshold_bps
    order_closed(automation_id=order.automation_id, realized_pnl=pnl, slippage_breach=breach, actor_label=ACTOR)
    signal = _signal_lock(order.signal_id)
    events: list[dict[str, Any]] = []
    head = None
    if signal.status == S.ORDERED:
        # What signal_transition(locked=True) writes, with the order's event in the same audit insert.
        if order.filled_qty > 0:
            note = "" if order.status == OS.FILLED else f" ({order.status}: {order.status_reason})"
            move = signal_move_prepare(signal=signal, to_status=S.FILLED, actor_label=ACTOR,
                                       reason=f"filled {order.filled_qty.normalize():f} at {order.avg_fill_price}{note}")
        else:
            move = signal_move_prepare(signal=signal, to_status=S.FAILED, actor_label=ACTOR,
                                       reason=f"order {order.status}: {order.status_reason}")
        _, seq, head = _signal_move_write(move)
        event, message = move.applied(seq)
        events.append(event)
        transaction.on_commit(partial(signal_push, message))
    events.append({"kind": AuditEvent.Kind.ORDER, "actor_label": ACTOR, "subject": order, "reason": order.status_reason,
                   "data": {"status": order.status, "client_order_id": order.client_order_id,
                            "filled_qty": str(order.filled_qty), "realized_pnl": str(pnl), "slippage_breach": breach}})
    audit_events_record(events, head=head)
    if fills:
        automation_id = order.automation_id
        transaction.on_commit(lambda: _slippage_gap_watch(automation_id), robust=True)


def _slippage_gap_watch(automation_id: int) -> None:
    """Alert when an automation's realized slippage departs from the model by more than 50 %."""
    from risk.services import alert_raise

    gap = slippage_gap(automation_id)
    if gap is None or gap.ratio is None or gap.ratio <= SLIPPAGE_GAP_RATIO:
        return
    alert_raise(
        kind="slippage_gap", severity="warning",
        subject=f"Slippage gap {gap.ratio:.0%} on {gap.automation_name}",
        message=(f"Over its last {gap.fills} fills, automation {gap.automation_name} paid {gap.realized_bps:.2f} bps of "
                 f"slippage against a modelled {gap.modelled_bps:.2f} bps (gap {gap.ratio:.0%}, limit "
                 f"{SLIPPAGE_GAP_RATIO:.0%}). Recalibrate the fill model or reduce size."),
        dedup_key=f"slippage_gap:{automation_id}",
    )


# ---------------------------------------------------------------------------
# Reconcile and cancel-all
# ---------------------------------------------------------------------------


def orders_reconcile(*, pending_older_than_s: float = 5.0) -> dict[str, int]:
    """Settle every order not final: ask the broker about open ones, finish stuck submissions.

    Also sends the execute task again for approved or queued signals that
    have no order after ``pending_older_than_s`` (a task lost between commit
    and the broker).
    """
    counts = {"checked": 0, "settled": 0, "resubmitted": 0, "requeued": 0}
    now = timezone.now()
    cutoff = now - timedelta(seconds=pending_older_than_s)
    for order in Order.objects.filter(status__in=(OS.PENDING, *OPEN_AT_BROKER)).order_by("id"):
        counts["checked"] += 1
        if order.status in (OS.PENDING, OS.SUBMITTING):
            if order.created_at <= cutoff:
                before = order.status
                order = order_submit(order)
                counts["resubmitted"] += int(order.status != before)
            continue
        try:
            result = broker_for_mode(order.broker).fetch_order(order.client_order_id, symbol=order.symbol)
        except BrokerError as exc:
            logger.warning("reconcile: broker unreachable for %s: %s", order.client_order_id, exc)
            continue
        if result is None:
            order_finalize(order_id=order.pk, status=OS.FAILED, reason="the broker does not know this order")
            counts["settled"] += 1
            continue
        settled = order_settle(order_id=order.pk, broker_order=result)
        counts["settled"] += int(settled.status in FINAL)
    orphans = Signal.objects.filter(status__in=(S.QUEUED, S.APPROVED), order__isnull=True, decided_at__lte=cutoff)
    for signal_id in orphans.values_list("id", flat=True)[:500]:
        _send_execute(signal_id)
        counts["requeued"] += 1
    return counts


def orders_cancel_all(*, reason: str) -> dict[str, Any]:
    """Cancel every open order (the kill switch's last step). Returns counts and the time taken.

    The settlements are batched: one transaction per step below instead of
    one (with its own commit flush) per order. Each order still gets its own
    audit event and risk release in the same transaction as its state change,
    inside a savepoint, so one order that fails to settle (logged, counted in
    ``errors``, left for the reconciler) does not undo the others.

    1. Orders not yet at the broker (pending): in one transaction, lock the
       pending rows in primary-key order and cancel each with a conditional
       update (it races the execute worker's claim, pending -> submitting:
       one wins), releasing its reservation and settling its signal.
    2. Orders at the broker: cancelled there by client order id, outside
       any transaction.
    3. The brokers' answers: recorded in one transaction that first locks all
       those orders in primary-key order (a worker settling one of them locks
       that one order, then the risk rows, so it cannot deadlock with the
       batch), then settles each (an order the broker never saw is closed as
       cancelled).
    4. Every order the brokers still report open (an orphan from a crash) is
       cancelled too.
    """
    started = time.perf_counter()
    counts = {"pending": 0, "at_broker": 0, "orphans": 0, "errors": 0}
    note = f"kill switch: {reason}"
    with transaction.atomic():
        for order in Order.objects.select_for_update().filter(status=OS.PENDING).order_by("id"):
            try:
                with transaction.atomic():
                    if Order.objects.filter(pk=order.pk, status=OS.PENDING).update(status=OS.CANCELLED,
                                                                                  status_reason=note) == 1:
                        order.status, order.status_reason = OS.CANCELLED, note
                        _order_close(order, timezone.now())
                        counts["pending"] += 1
            except Exception:
                logger.exception("cancel-all: could not cancel pending order %s", order.client_order_id)
                counts["errors"] += 1
    modes: set[str] = {"paper"}
    answers: list[tuple[Order, BrokerOrder | None]] = []
    for order in Order.objects.filter(status__in=OPEN_AT_BROKER).order_by("id"):
        modes.add(order.broker)
        try:
            answers.append((order, broker_for_mode(order.broker).cancel(order.client_order_id, symbol=order.symbol)))
        except BrokerError as exc:
            logger.error("cancel-all: could not cancel %s: %s", order.client_order_id, exc)
            counts["errors"] += 1
    if answers:
        with transaction.atomic():
            list(Order.objects.select_for_update().filter(pk__in=[o.pk for o, _ in answers]).order_by("id")
                 .values_list("id", flat=True))
            for order, result in answers:
                try:
                    if result is None:
                        order_finalize(order_id=order.pk, status=OS.CANCELLED, reason=f"{note} (never reached the broker)")
                    else:
                        order_settle(order_id=order.pk, broker_order=result)
                    counts["at_broker"] += 1
                except Exception:
                    logger.exception("cancel-all: could not record the cancellation of %s", order.client_order_id)
                    counts["errors"] += 1
    for mode in sorted(modes):
        try:
            broker = broker_for_mode(mode)
            for left in broker.open_orders():
                broker.cancel(left.client_order_id, symbol=left.symbol)
                counts["orphans"] += 1
        except Exception:
            logger.exception("cancel-all: could not list open orders at %s", mode)
            counts["errors"] += 1
    elapsed_ms = (time.perf_counter() - started) * 1e3
    audit_event_record(kind=AuditEvent.Kind.ORDER, actor_label=ACTOR, subject_type="execution.order", subject_id="*",
                       reason=f"cancel all: {reason}", data={**counts, "elapsed_ms": round(elapsed_ms, 1)})
    return {**counts, "elapsed_ms": elapsed_ms}

"""Writes for automations and signals: the only paths that change them.

Signal lifecycle (``signal_transition``)
----------------------------------------
One state machine, enforced under the signal's row lock::

    new -> filtered | pending_approval | queued
    pending_approval -> approved | rejected | expired
    queued | approved -> ordered | failed | expired
    ordered -> filled | failed

``filtered``, ``rejected``, ``expired``, ``filled`` and ``failed`` are final.
Approving a pending signal whose ``expires_at`` has passed is refused even
before the expiry sweep has marked it: an expired signal can never be
approved. Every change writes a ``SignalTransition`` row and a
``signal_state`` audit event in the caller's transaction, takes the next
number of the push sequence (a PostgreSQL sequence, durable across Redis
restarts) and pushes the signal to the ``signals`` channel group on commit.

Automation changes need a reason: it goes to simple-history
(``_change_reason``), to an audit event with the field diff, and the actor to
``last_changed_by``. New automations start paused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from celery import current_app
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from audit.history import acting_as
from audit.models import AuditEvent
from audit.services import AUDIT_CHAIN_LOCK_HEAD, AUDIT_CHAIN_LOCK_HEAD_SQL, audit_event_record, audit_events_record
from automations.models import Automation, L2Snapshot, Signal, SignalTransition
from automations.regime import validate_allowed_regimes
from automations.selectors import signal_payload
from automations.strategies import InvalidParameters, UnknownStrategy, get_strategy
from trading.api import DomainError
from trading.db import prepared_rows
from trading.push import push
from trading.queues import ALERT_RAISE_TASK

logger = logging.getLogger(__name__)

SIGNALS_GROUP = "signals"
MAX_SNAPSHOT_LEVELS = 50  # The ingest worker keeps the top 50 levels per book in Redis.
SNAPSHOT_MISSING_ALERT_RATIO = 0.01

S = Signal.Status
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.NEW: frozenset({S.FILTERED, S.PENDING_APPROVAL, S.QUEUED}),
    S.PENDING_APPROVAL: frozenset({S.APPROVED, S.REJECTED, S.EXPIRED}),
    S.QUEUED: frozenset({S.ORDERED, S.FAILED, S.EXPIRED}),
    S.APPROVED: frozenset({S.ORDERED, S.FAILED, S.EXPIRED}),
    S.ORDERED: frozenset({S.FILLED, S.FAILED}),
}
# A decision by a person or a final outcome stamps ``decided_at``.
_DECIDING = frozenset({S.FILTERED, S.APPROVED, S.REJECTED, S.EXPIRED, S.FILLED, S.FAILED})


def push_sequence_next() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval('automations_signal_push_seq')")
        return int(cursor.fetchone()[0])


def signal_push(message: dict[str, Any]) -> None:
    """Send one message to every connected trader. Never raises: clients re-sync on a gap."""
    # Queued, not awaited (trading.push): a push must not delay the order that follows a commit.
    push(SIGNALS_GROUP, message)


def _apply_transition(
    signal: Signal, to_status: str, *, actor_label: str, reason: str, actor: Any, now: datetime, insert: bool = False
) -> Signal:
    """Record one transition of a signal the caller holds locked (or just inserted)."""
    from_status = signal.status
    seq = push_sequence_next()
    signal.status = to_status
    signal.status_reason = reason
    signal.sequence = seq
    fields = ["status", "status_reason", "sequence"]
    if to_status in _DECIDING:
        signal.decided_at = now
        fields.append("decided_at")
    if insert:
        signal.save(force_insert=True)
    else:
        signal.save(update_fields=fields)
    SignalTransition.objects.create(
        signal=signal, at=now, from_status=from_status, to_status=to_status, actor_label=actor_label, reason=reason, sequence=seq
    )
    _transition_announce(
        signal,
        signal_payload(signal),
        from_status=from_status,
        to_status=to_status,
        reason=reason,
        seq=seq,
        actor=actor,
        actor_label=actor_label,
    )
    return signal


def _transition_announce(
    signal: Signal,
    payload: dict[str, Any],
    *,
    from_status: str,
    to_status: str,
    reason: str,
    seq: int,
    actor: Any,
    actor_label: str,
) -> None:
    """A recorded transition's audit event (in the caller's transaction) and its numbered push (on commit)."""
    audit_event_record(
        **_transition_event(
            signal, from_status=from_status, to_status=to_status, reason=reason, seq=seq, actor=actor, actor_label=actor_label
        )
    )
    message = {"type": "signal", "seq": seq, "signal": payload}
    transaction.on_commit(lambda: signal_push(message))


def _transition_event(
    signal: Signal, *, from_status: str, to_status: str, reason: str, seq: int, actor: Any, actor_label: str
) -> dict[str, Any]:
    """The ``signal_state`` audit event of one transition (``audit_event_record``'s arguments)."""
    return {
        "kind": AuditEvent.Kind.SIGNAL_STATE,
        "actor": actor,
        "actor_label": actor_label,
        "subject": signal,
        "reason": reason,
        "data": {"from": from_status, "to": to_status, "sequence": seq, "automation_id": signal.automation_id},
    }


def _signal_times(automation: Automation, context: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``context`` with ``created_at`` (now) and ``expires_at`` (the automation's expiry later) unless given."""
    context.setdefault("created_at", now)
    context.setdefault("expires_at", context["created_at"] + timedelta(seconds=automation.signal_expiry_seconds))
    return context


def signal_transition(
    *, signal: Signal, to_status: str, actor_label: str, reason: str = "", actor: Any = None, locked: bool = False
) -> Signal:
    """Move ``signal`` to ``to_status`` if the state machine allows it; raise DomainError otherwise.

    The row is locked first and the legality judged on the locked state, so
    two workers racing (the expiry sweep and an approval) cannot both win.
    The passed instance is updated in place and returned.

    ``locked=True``: the caller read ``signal`` with ``select_for_update`` in
    the transaction it is still in, so the instance is the locked row; it is
    judged and written as it is (one round trip saved). Refused outside a
    transaction, where no lock can be held.

    Inside a caller's transaction no savepoint is taken (two round trips
    saved): an illegal transition is refused before anything is written, so
    the caller's transaction stays usable, and a failing write fails it.

    Round trips for a locked row: the push number, the status update, the
    ``SignalTransition`` row, the audit chain's lock and its head in one
    (``SignalMove.sql``), then the audit event's insert.
    """
    if not connection.in_atomic_block:
        if locked:
            raise RuntimeError("signal_transition(locked=True) outside a transaction: no row lock can be held")
        with transaction.atomic():
            return _signal_transition(
                signal=signal, to_status=to_status, actor_label=actor_label, reason=reason, actor=actor, held=False
            )
    return _signal_transition(
        signal=signal, to_status=to_status, actor_label=actor_label, reason=reason, actor=actor, held=locked
    )


def _signal_transition(*, signal: Signal, to_status: str, actor_label: str, reason: str, actor: Any, held: bool) -> Signal:
    locked = signal if held else Signal.objects.select_for_update().get(pk=signal.pk)
    if locked is not signal and Signal.automation.is_cached(signal) and signal.automation_id == locked.automation_id:
        # The caller already holds the automation: the push payload reuses it.
        locked.automation = signal.automation
    move = signal_move_prepare(signal=locked, to_status=to_status, actor_label=actor_label, reason=reason, actor=actor)
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.execute(f"{move.sql}; {AUDIT_CHAIN_LOCK_HEAD_SQL}", move.params)
        (seq,) = cursor.fetchone()
        cursor.cursor.nextset()
        (head,) = cursor.fetchone()
        event, message = move.applied(seq)
        audit_events_record([event], head=head)
    transaction.on_commit(partial(signal_push, message))
    if locked is not signal:
        for name in ("status", "status_reason", "sequence", "decided_at"):
            setattr(signal, name, getattr(locked, name))
    return signal


# A locked signal's move in ONE statement: its push number, its new state, its SignalTransition row.
_MOVE_SQL = (
    "WITH seq AS (SELECT nextval('automations_signal_push_seq') AS n), "  # noqa: S608 - the models' tables
    f'moved AS (UPDATE "{Signal._meta.db_table}" SET "status" = %s, "status_reason" = %s, {{decided}}'
    '"sequence" = (SELECT n FROM seq) WHERE "id" = %s RETURNING "sequence") '
    f'INSERT INTO "{SignalTransition._meta.db_table}" ("signal_id", "at", "from_status", "to_status", "actor_label", '
    '"reason", "sequence") SELECT %s, %s, %s, %s, %s, %s, "sequence" FROM moved RETURNING "sequence"'
)
_MOVE_SQL_DECIDING = _MOVE_SQL.format(decided='"decided_at" = %s, ')
_MOVE_SQL_OPEN = _MOVE_SQL.format(decided="")


@dataclass
class SignalMove:
    """A legal move of a signal the caller holds locked, written by ``sql`` with ``params`` (one statement,
    which may share a round trip with the caller's own), then completed by ``applied``.

    It writes exactly what ``signal_transition`` writes: the signal's status, reason, push number (and
    ``decided_at`` for a deciding move), one ``SignalTransition`` row; ``applied`` gives the ``signal_state``
    audit event to append and the numbered push message to send once it commits.
    """

    signal: Signal
    from_status: str
    to_status: str
    reason: str
    actor: Any
    actor_label: str
    now: datetime
    sql: str
    params: list[Any]

    def applied(self, seq: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Set the instance's new state (``seq``: the push number the statement returned); (event, message)."""
        signal = self.signal
        signal.status = self.to_status
        signal.status_reason = self.reason
        signal.sequence = seq
        if self.to_status in _DECIDING:
            signal.decided_at = self.now
        event = _transition_event(
            signal, from_status=self.from_status, to_status=self.to_status, reason=self.reason, seq=seq, actor=self.actor,
            actor_label=self.actor_label,
        )
        return event, {"type": "signal", "seq": seq, "signal": signal_payload(signal)}


def signal_move_prepare(*, signal: Signal, to_status: str, actor_label: str, reason: str = "", actor: Any = None) -> SignalMove:
    """Judge the move of ``signal`` (a row the caller holds locked, as read) to ``to_status``; its statement.

    Raises DomainError, writing nothing, when the state machine forbids it or
    an approval comes after the signal's expiry.
    """
    now = timezone.now()
    allowed = ALLOWED_TRANSITIONS.get(signal.status, frozenset())
    if to_status not in allowed:
        raise DomainError(f"signal {signal.pk} cannot go from {signal.status} to {to_status}", code="illegal_transition")
    if to_status == S.APPROVED and signal.expires_at is not None and signal.expires_at <= now:
        raise DomainError(f"signal {signal.pk} expired at {signal.expires_at.isoformat()}; it cannot be approved", code="expired")
    from_status = signal.status
    if to_status in _DECIDING:
        sql, params = _MOVE_SQL_DECIDING, [to_status, reason, now]
    else:
        sql, params = _MOVE_SQL_OPEN, [to_status, reason]
    params += [signal.pk, signal.pk, now, from_status, to_status, actor_label, reason]
    return SignalMove(signal=signal, from_status=from_status, to_status=to_status, reason=reason, actor=actor,
                      actor_label=actor_label, now=now, sql=sql, params=params)


@transaction.atomic
def signal_create(
    *,
    automation: Automation,
    side: str,
    quantity: Decimal,
    limit_price: Decimal,
    reason: str,
    actor_label: str = "worker-detect",
    **context: Any,
) -> Signal:
    """Insert a new signal (status ``new``) with its context and record its birth.

    ``context`` holds the optional Signal fields (features, regime, bid, ask,
    mid, spread_bps, market_ts, market_ts_ns, snapshot, created_at,
    expires_at, needs_approval).
    """
    now = timezone.now()
    signal = Signal(
        automation=automation,
        symbol=automation.symbol,
        side=side,
        quantity=quantity,
        limit_price=limit_price,
        reason=reason,
        status="",
        **_signal_times(automation, context, now),
    )
    return _apply_transition(signal, S.NEW, actor_label=actor_label, reason=reason, actor=None, now=now, insert=True)


@dataclass
class RoutedSignal:
    """A signal to create together with its first move out of ``new`` (see ``signals_create_routed``)."""

    automation: Automation
    side: str
    quantity: Decimal
    limit_price: Decimal
    reason: str
    to_status: str
    status_reason: str
    context: dict[str, Any]


def signals_create_routed(
    *,
    signals: list[RoutedSignal],
    actor_label: str = "worker-detect",
    count_automatic: bool = False,
    synchronous_commit: bool = True,
) -> list[Signal]:
    """Create several signals and move each out of ``new``, in the caller's transaction, in few round trips.

    Writes exactly the rows that ``signal_create`` followed by
    ``signal_transition(to_status=...)`` writes for each signal: the Signal in
    its routed state, two ``SignalTransition`` rows (birth, then the move), two
    ``signal_state`` audit events on the hash chain (in that order, per
    signal) and two numbered pushes on commit. The push numbers, the signals'
    new L2 snapshots (a context's ``snapshot`` may be an unsaved
    ``L2Snapshot``), the Signal rows and the transitions are written by ONE
    prepared statement, which then takes the audit chain's lock and reads its
    head (``AUDIT_CHAIN_LOCK_HEAD``); the audit events are appended in order
    by ONE ``audit_events_record`` call. The signals are new rows nobody else can
    hold, so no row lock is needed.

    ``count_automatic``: the same statement adds each automation's number of
    ``queued`` signals to its ``automatic_trade_count`` (the detect worker's
    routing; the counter is excluded from history).

    ``synchronous_commit=False``: the same statement sets ``synchronous_commit
    = off`` for the caller's transaction (``SET LOCAL``): its COMMIT returns
    without waiting for the WAL flush (an fsync, milliseconds on a disk). The
    transaction stays atomic and is visible at once; only a crash of
    PostgreSQL itself within a fraction of a second can lose it, together
    with everything committed after it (the WAL is one sequence). The detect
    worker may ask for it: see ``automations.detection.SIGNALS_SYNCHRONOUS_COMMIT``.

    Raises ``DomainError`` before writing anything when a move is not a legal
    first move; an ``IntegrityError`` (a signal already exists for the same
    automation, market time and side) fails the caller's transaction.
    """
    allowed = ALLOWED_TRANSITIONS[S.NEW]
    for item in signals:
        if item.to_status not in allowed:
            raise DomainError(f"a new signal cannot go to {item.to_status}", code="illegal_transition")
    if not signals:
        return []
    return _signals_create_routed(signals, actor_label, count_automatic, synchronous_commit)


# One statement for every row of a batch of new signals (see _signals_create_routed):
# the push numbers, the new L2 snapshots, the signals (in their routed state), their
# two transitions each and, when asked, the automations' automatic-trade counters.
# The rows come as ONE JSON parameter per table (a JSON array of objects: one dump
# in C instead of binding some twenty arrays in Python); every value is exact in it
# (decimals and times as text, floats in their round-trip repr, bytes in hex).
# Rows are inserted in input order, so within the statement their ids ascend in that
# order (the same assumption as Django's bulk_create); a signal's moved push number
# (unique, from the sequence) ties its returned id to its input row.
_CREATE_ROUTED_SQL = f"""
WITH seq AS (
    SELECT array_agg(n ORDER BY n) AS ns
    FROM (SELECT nextval('automations_signal_push_seq') AS n
          FROM generate_series(1, 2 * jsonb_array_length(%(signals)s::jsonb))) q
), snap AS (
    INSERT INTO {L2Snapshot._meta.db_table} (symbol, ts, levels, data, sha256, storage, archive_ref, archived_at)
    SELECT d->>'symbol', (d->>'ts')::timestamptz, (d->>'levels')::int, decode(d->>'data', 'hex'), d->>'sha256',
           d->>'storage', '', NULL
    FROM jsonb_array_elements(%(snapshots)s::jsonb) WITH ORDINALITY AS u(d, ord)
    ORDER BY u.ord
    RETURNING id
), snap_ids AS (
    SELECT array_agg(id ORDER BY id) AS ids FROM snap
), input AS (
    SELECT u.d, u.ord, d->>'status' AS status, (d->>'automation_id')::bigint AS automation_id,
           (SELECT ns FROM seq)[2 * u.ord - 1] AS born_seq, (SELECT ns FROM seq)[2 * u.ord] AS moved_seq
    FROM jsonb_array_elements(%(signals)s::jsonb) WITH ORDINALITY AS u(d, ord)
), sig AS (
    INSERT INTO {Signal._meta.db_table} (automation_id, symbol, side, quantity, limit_price, reason, features, regime,
        status, status_reason, needs_approval, bid, ask, mid, spread_bps, market_ts, market_ts_ns, snapshot_id,
        created_at, expires_at, decided_at, sequence)
    SELECT i.automation_id, d->>'symbol', d->>'side', (d->>'quantity')::numeric, (d->>'limit_price')::numeric,
           d->>'reason', d->'features', d->'regime', i.status, d->>'status_reason', (d->>'needs_approval')::bool,
           (d->>'bid')::numeric, (d->>'ask')::numeric, (d->>'mid')::numeric, (d->>'spread_bps')::float8,
           (d->>'market_ts')::timestamptz, (d->>'market_ts_ns')::bigint,
           coalesce((d->>'snapshot_id')::bigint, (SELECT ids FROM snap_ids)[(d->>'snap_index')::int]),
           (d->>'created_at')::timestamptz, (d->>'expires_at')::timestamptz, (d->>'decided_at')::timestamptz,
           i.moved_seq
    FROM input i ORDER BY i.ord
    RETURNING id, sequence
), tr AS (
    INSERT INTO {SignalTransition._meta.db_table} (signal_id, at, from_status, to_status, actor_label, reason, sequence)
    SELECT s.id, %(now)s::timestamptz, x.from_status, x.to_status, %(actor_label)s::text, x.reason, x.seq
    FROM sig s JOIN input i ON i.moved_seq = s.sequence
    CROSS JOIN LATERAL (VALUES (1, '', %(new)s::text, i.d->>'reason', i.born_seq),
                               (2, %(new)s::text, i.status, i.d->>'status_reason', i.moved_seq))
        AS x(k, from_status, to_status, reason, seq)
    ORDER BY i.ord, x.k
    RETURNING 1
), counted AS (
    UPDATE {Automation._meta.db_table} AS a SET automatic_trade_count = a.automatic_trade_count + c.n
    FROM (SELECT automation_id, count(*) AS n FROM input WHERE %(count_automatic)s::bool AND status = %(queued)s::text
          GROUP BY automation_id) AS c
    WHERE a.id = c.automation_id
    RETURNING 1
), commit_mode AS (
    SELECT set_config('synchronous_commit', coalesce(%(commit_mode)s::text, current_setting('synchronous_commit')), true)
        AS mode
), head AS (
    -- The audit chain's lock and head, taken once every row above is written: its FROM reads the
    -- transitions (which read the signals, which read the snapshots) and the counters to the end
    -- first. Row locks before the chain lock, as every other writer takes them (a worker waiting on
    -- an automation's row or on another's duplicate signal must not hold the chain meanwhile), and
    -- the chain held for the least time: from here to the commit.
    SELECT {AUDIT_CHAIN_LOCK_HEAD} AS hash FROM (SELECT count(*) FROM tr) AS t, (SELECT count(*) FROM counted) AS c
)
SELECT (SELECT array_agg(id ORDER BY id) FROM sig), (SELECT ids FROM snap_ids), (SELECT ns FROM seq),
       (SELECT mode FROM commit_mode), (SELECT hash FROM head)
"""  # noqa: S608 - the models' own tables and columns.


def _text(value: Any) -> str | None:
    """A Decimal or datetime as the exact text PostgreSQL parses back (None stays None)."""
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _signal_doc(signal: Signal, snap_index: int | None) -> dict[str, Any]:
    return {
        "automation_id": signal.automation_id,
        "symbol": signal.symbol,
        "side": signal.side,
        "quantity": _text(signal.quantity),
        "limit_price": _text(signal.limit_price),
        "reason": signal.reason,
        "features": signal.features,
        "regime": signal.regime,
        "status": signal.status,
        "status_reason": signal.status_reason,
        "needs_approval": bool(signal.needs_approval),
        "bid": _text(signal.bid),
        "ask": _text(signal.ask),
        "mid": _text(signal.mid),
        "spread_bps": None if signal.spread_bps is None else float(signal.spread_bps),
        "market_ts": _text(signal.market_ts),
        "market_ts_ns": None if signal.market_ts_ns is None else int(signal.market_ts_ns),
        "snapshot_id": signal.snapshot_id if snap_index is None else None,
        "snap_index": snap_index,
        "created_at": _text(signal.created_at),
        "expires_at": _text(signal.expires_at),
        "decided_at": _text(signal.decided_at),
    }


def _snapshot_doc(snapshot: L2Snapshot) -> dict[str, Any]:
    return {
        "symbol": snapshot.symbol,
        "ts": _text(snapshot.ts),
        "levels": snapshot.levels,
        "data": bytes(snapshot.data).hex(),
        "sha256": snapshot.sha256,
        "storage": snapshot.storage,
    }


# No savepoint: the rows are part of the caller's transaction and fail with it.
@transaction.atomic(savepoint=False)
def _signals_create_routed(
    signals: list[RoutedSignal], actor_label: str, count_automatic: bool = False, synchronous_commit: bool = True
) -> list[Signal]:
    """The rows in ONE statement (``_CREATE_ROUTED_SQL``), then the audit events in order and the pushes on commit.

    A ``snapshot`` in a signal's context may be an unsaved ``L2Snapshot``: it
    is inserted in the same statement (once, however many signals share it).
    """
    now = timezone.now()
    rows: list[Signal] = []
    new_snapshots: dict[int, tuple[int, L2Snapshot]] = {}
    snap_index: list[int | None] = []
    for item in signals:
        context = dict(item.context)
        snapshot = context.get("snapshot")
        index = None
        if snapshot is not None and snapshot.pk is None:
            index = new_snapshots.setdefault(id(snapshot), (len(new_snapshots) + 1, snapshot))[0]
        snap_index.append(index)
        signal = Signal(
            automation=item.automation,
            symbol=item.automation.symbol,
            side=item.side,
            quantity=item.quantity,
            limit_price=item.limit_price,
            reason=item.reason,
            status=item.to_status,
            status_reason=item.status_reason,
            decided_at=now if item.to_status in _DECIDING else None,
            **_signal_times(item.automation, context, now),
        )
        rows.append(signal)
    snaps = [snapshot for _index, snapshot in new_snapshots.values()]
    params = {
        # What the ORM's JSONField would write (json.dumps, no encoder), inside one document.
        "signals": json.dumps([_signal_doc(r, i) for r, i in zip(rows, snap_index, strict=True)]),
        "snapshots": json.dumps([_snapshot_doc(x) for x in snaps]),
        "new": S.NEW,
        "queued": S.QUEUED,
        "now": now,
        "actor_label": actor_label,
        "count_automatic": count_automatic,
        "commit_mode": None if synchronous_commit else "off",
    }
    [(signal_ids, snapshot_ids, numbers, _commit_mode, head)] = prepared_rows(_CREATE_ROUTED_SQL, params)
    for snapshot, pk in zip(snaps, snapshot_ids or [], strict=True):
        snapshot.pk = pk
        snapshot._state.adding, snapshot._state.db = False, connection.alias
    # Two numbers per signal, in order: its birth, then its move.
    born_seqs, moved_seqs = numbers[0::2], numbers[1::2]
    for signal, pk, moved_seq in zip(rows, signal_ids, moved_seqs, strict=True):
        signal.pk, signal.sequence = pk, moved_seq
        signal._state.adding, signal._state.db = False, connection.alias
        if signal.snapshot is not None and signal.snapshot_id is None:
            signal.snapshot_id = signal.snapshot.pk
    # Two transitions per signal, in order (birth, then the move): their audit events in ONE
    # chain append, their pushes on commit in the same order (what _transition_announce does
    # one transition at a time).
    events: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for signal, item, born_seq in zip(rows, signals, born_seqs, strict=True):
        # The birth message shows the signal as it was at birth, like signal_create's.
        born = signal_payload(signal)
        born.update(status=S.NEW, status_reason=item.reason, sequence=born_seq, decided_at=None)
        moves = (
            (born, "", S.NEW, item.reason, born_seq),
            (signal_payload(signal), S.NEW, item.to_status, item.status_reason, signal.sequence),
        )
        for payload, from_status, to_status, reason, seq in moves:
            events.append(
                _transition_event(
                    signal,
                    from_status=from_status,
                    to_status=to_status,
                    reason=reason,
                    seq=seq,
                    actor=None,
                    actor_label=actor_label,
                )
            )
            messages.append({"type": "signal", "seq": seq, "signal": payload})
    audit_events_record(events, head=head)
    for message in messages:
        transaction.on_commit(partial(signal_push, message))
    return rows


def signals_expire(*, now: datetime | None = None, limit: int = 500) -> int:
    """Expire signals past ``expires_at`` that nobody acted on; return how many.

    Pending approvals, and queued or approved signals that execution has not
    taken, expire. Rows another worker holds locked (execution taking the
    signal) are skipped and looked at again on the next sweep.
    """
    now = now or timezone.now()
    expired = 0
    ids = list(
        Signal.objects.filter(status__in=[S.PENDING_APPROVAL, S.QUEUED, S.APPROVED], expires_at__lte=now)
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )
    for signal_id in ids:
        with transaction.atomic():
            locked = Signal.objects.select_for_update(skip_locked=True).filter(pk=signal_id).first()
            if locked is None or S.EXPIRED not in ALLOWED_TRANSITIONS.get(locked.status, frozenset()):
                continue
            if locked.expires_at is None or locked.expires_at > now:
                continue
            age = (now - locked.created_at).total_seconds()
            _apply_transition(
                locked,
                S.EXPIRED,
                actor_label="signal-expiry",
                actor=None,
                now=now,
                reason=f"not acted on within {locked.automation.signal_expiry_seconds} s (age {age:.0f} s)",
            )
            expired += 1
    return expired


# --- automations ----------------------------------------------------------------------

# The mode (paper/live) is not here: switching it is execution's OTP-gated
# operation, and new automations always start in paper mode.
_EDITABLE = (
    "name",
    "strategy",
    "parameters",
    "approval_threshold",
    "require_approval",
    "allowed_regimes",
    "signal_expiry_seconds",
    "four_eyes",
    "snapshot_levels",
)


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise DomainError("a reason is required for every change", code="reason_required", status_code=400)
    return reason


def _actor_label(actor: Any, actor_label: str) -> str:
    if actor_label:
        return actor_label
    return actor.get_username() if getattr(actor, "is_authenticated", False) else "system"


def _validated(values: dict[str, Any]) -> dict[str, Any]:
    """Check every editable value; raise DomainError(400) naming the first bad field."""
    clean = dict(values)
    try:
        strategy = get_strategy(clean["strategy"])
        clean["parameters"] = strategy.params_as_json(strategy.validate_params(clean.get("parameters") or {}))
    except (UnknownStrategy, InvalidParameters) as exc:
        raise DomainError(str(exc), code="invalid_parameters", status_code=400) from exc
    try:
        clean["allowed_regimes"] = validate_allowed_regimes(clean.get("allowed_regimes") or {})
    except ValueError as exc:
        raise DomainError(f"allowed_regimes: {exc}", code="invalid_regimes", status_code=400) from exc
    levels = clean.get("snapshot_levels", 20)
    if not isinstance(levels, int) or not 1 <= levels <= MAX_SNAPSHOT_LEVELS:
        raise DomainError(f"snapshot_levels must be between 1 and {MAX_SNAPSHOT_LEVELS}", code="invalid", status_code=400)
    expiry = clean.get("signal_expiry_seconds", 120)
    if not isinstance(expiry, int) or not 1 <= expiry <= 86_400:
        raise DomainError("signal_expiry_seconds must be between 1 and 86400", code="invalid", status_code=400)
    return clean


def _check_symbol(symbol: str) -> None:
    from ingestion.models import Instrument

    # Ingestion accepts every symbol while no instrument is configured, so do we.
    known = set(Instrument.objects.filter(active=True).values_list("symbol", flat=True))
    if known and symbol not in known:
        raise DomainError(f"unknown symbol {symbol!r}; known: {', '.join(sorted(known))}", code="invalid", status_code=400)


def _json_value(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


@transaction.atomic
def automation_create(
    *,
    actor: Any,
    reason: str,
    name: str,
    symbol: str,
    strategy: str,
    parameters: dict[str, Any],
    actor_label: str = "",
    **options: Any,
) -> Automation:
    """Create an automation, paused; it trades only after an explicit resume."""
    reason = _require_reason(reason)
    unknown = set(options) - set(_EDITABLE)
    if unknown:
        raise DomainError(f"unknown fields: {', '.join(sorted(unknown))}", code="invalid", status_code=400)
    if not name or not name.strip():
        raise DomainError("name is required", code="invalid", status_code=400)
    _check_symbol(symbol)
    if Automation.objects.filter(name=name).exists():
        raise DomainError(f"an automation named {name!r} exists", code="duplicate", status_code=400)
    values = _validated({"strategy": strategy, "parameters": parameters, **options})
    user = actor if getattr(actor, "is_authenticated", False) else None
    automation = Automation(name=name.strip(), symbol=symbol, status=Automation.Status.PAUSED, last_changed_by=user, **values)
    automation._change_reason = reason
    with acting_as(user, reason, label=_actor_label(actor, actor_label)):
        automation.save()
    audit_event_record(
        kind=AuditEvent.Kind.CONFIG_CHANGE,
        actor=actor,
        actor_label=_actor_label(actor, actor_label),
        subject=automation,
        reason=reason,
        data={"action": "create", "values": {k: _json_value(getattr(automation, k)) for k in ("symbol", *_EDITABLE)}},
    )
    return automation


@transaction.atomic
def automation_update(
    *, automation: Automation, actor: Any, reason: str, changes: dict[str, Any], actor_label: str = ""
) -> Automation:
    """Change editable fields of an automation; the symbol and status are not editable here."""
    reason = _require_reason(reason)
    unknown = set(changes) - set(_EDITABLE)
    if unknown:
        raise DomainError(f"fields that cannot be changed here: {', '.join(sorted(unknown))}", code="invalid", status_code=400)
    locked = Automation.objects.select_for_update().get(pk=automation.pk)
    current = {name: getattr(locked, name) for name in _EDITABLE}
    proposed = _validated({**current, **changes})
    diff = {
        name: [_json_value(current[name]), _json_value(proposed[name])] for name in _EDITABLE if proposed[name] != current[name]
    }
    if not diff:
        raise DomainError("nothing to change", code="no_change", status_code=400)
    if "name" in diff and Automation.objects.filter(name=proposed["name"]).exclude(pk=locked.pk).exists():
        raise DomainError(f"an automation named {proposed['name']!r} exists", code="duplicate", status_code=400)
    user = actor if getattr(actor, "is_authenticated", False) else None
    for name in diff:
        setattr(locked, name, proposed[name])
    locked.last_changed_by = user
    locked._change_reason = reason
    with acting_as(user, reason, label=_actor_label(actor, actor_label)):
        locked.save()
    label = _actor_label(actor, actor_label)
    audit_event_record(
        kind=AuditEvent.Kind.CONFIG_CHANGE,
        actor=actor,
        actor_label=label,
        subject=locked,
        reason=reason,
        data={"action": "update", "changes": diff},
    )
    return locked


def _set_status(
    automation: Automation,
    *,
    to_status: str,
    allowed_from: tuple[str, ...],
    actor: Any,
    actor_label: str,
    reason: str,
    action: str,
) -> Automation:
    reason = _require_reason(reason)
    locked = Automation.objects.select_for_update().get(pk=automation.pk)
    if locked.status not in allowed_from:
        raise DomainError(f"automation {locked.name} is {locked.status}; cannot {action}", code="illegal_state")
    previous = locked.status
    user = actor if getattr(actor, "is_authenticated", False) else None
    locked.status = to_status
    locked._change_reason = reason
    with acting_as(user, reason, label=_actor_label(actor, actor_label)):
        locked.save(update_fields=["status", "updated_at"])
    audit_event_record(
        kind=AuditEvent.Kind.AUTOMATION_STATE,
        actor=actor,
        actor_label=_actor_label(actor, actor_label),
        subject=locked,
        reason=reason,
        data={"action": action, "from": previous, "to": to_status},
    )
    automation.status = locked.status
    return locked


@transaction.atomic
def automation_pause(*, automation: Automation, reason: str, actor: Any = None, actor_label: str = "") -> Automation:
    return _set_status(
        automation,
        to_status=Automation.Status.PAUSED,
        allowed_from=(Automation.Status.ACTIVE,),
        actor=actor,
        actor_label=actor_label,
        reason=reason,
        action="pause",
    )


@transaction.atomic
def automation_resume(*, automation: Automation, reason: str, actor: Any = None, actor_label: str = "") -> Automation:
    """Resume a paused or halted automation, unless its circuit breaker is still tripped."""
    from risk.models import RiskState

    if RiskState.objects.filter(automation_id=automation.pk, tripped=True).exists():
        raise DomainError(
            f"automation {automation.name} has a tripped breaker; a risk officer must reset it first", code="breaker_tripped"
        )
    return _set_status(
        automation,
        to_status=Automation.Status.ACTIVE,
        allowed_from=(Automation.Status.PAUSED, Automation.Status.HALTED),
        actor=actor,
        actor_label=actor_label,
        reason=reason,
        action="resume",
    )


# --- snapshot coverage ------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotCoverage:
    window_s: int
    total: int
    missing: int

    @property
    def ratio(self) -> float:
        return self.missing / self.total if self.total else 0.0


def snapshot_missing_ratio(*, window: timedelta = timedelta(hours=1), now: datetime | None = None) -> SnapshotCoverage:
    """Signals created in ``(now - window, now]`` and how many of them have no L2 snapshot."""
    from django.db.models import Count

    now = now or timezone.now()
    counts = Signal.objects.filter(created_at__gt=now - window, created_at__lte=now).aggregate(
        total=Count("id"),
        missing=Count("id", filter=Q(snapshot__isnull=True)),
    )
    return SnapshotCoverage(window_s=int(window.total_seconds()), total=counts["total"], missing=counts["missing"])


def alert_raise(*, kind: str, severity: str, subject: str, message: str, dedup_key: str | None = None) -> None:
    """Raise an alert through risk when it is importable, else by task name after commit."""
    try:
        from risk.services import alert_raise as risk_alert_raise
    except ImportError:
        kwargs = {"kind": kind, "severity": severity, "subject": subject, "message": message, "dedup_key": dedup_key}
        transaction.on_commit(lambda: current_app.send_task(ALERT_RAISE_TASK, kwargs=kwargs))
        return
    risk_alert_raise(kind=kind, severity=severity, subject=subject, message=message, dedup_key=dedup_key)


@transaction.atomic
def snapshot_coverage_check(
    *, now: datetime | None = None, threshold: float = SNAPSHOT_MISSING_ALERT_RATIO
) -> list[SnapshotCoverage]:
    """Compute the missing-snapshot share over the last hour and day; alert for each above ``threshold``."""
    now = now or timezone.now()
    results = []
    for window in (timedelta(hours=1), timedelta(days=1)):
        coverage = snapshot_missing_ratio(window=window, now=now)
        results.append(coverage)
        if coverage.ratio > threshold:
            label = "hour" if window == timedelta(hours=1) else "day"
            alert_raise(
                kind="l2_snapshot_missing",
                severity="warning",
                subject=f"{coverage.ratio:.1%} of signals lack an L2 snapshot (last {label})",
                message=(
                    f"{coverage.missing} of {coverage.total} signals in the last {label} have no order-book snapshot; "
                    f"the limit is {threshold:.0%}. Check the ingest worker's book publishing."
                ),
                dedup_key=f"l2_snapshot_missing:{label}:{now:%Y%m%d%H}",
            )
    return results

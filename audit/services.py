"""The one write path for audit events, roles and the refusals of unauthorized changes."""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import current_app
from django.contrib.auth.models import Group
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction
from django.utils import timezone

from audit.history import acting_as, current_label, current_user
from audit.models import AuditEvent, RoleAssignment
from trading.permissions import user_roles_forget

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# One advisory lock serialises appends to the chain across every process (audit migration 0008's
# audit_chain_lock_head() takes the same key, written out there).
_CHAIN_LOCK_KEY = 0x46505F4155444954  # "FP_AUDIT"
ALERT_RAISE_TASK = "risk.tasks.alert_raise_task"


def audit_event_hash(*, prev_hash: str, at_iso: str, actor_id: int | None, actor_label: str, kind: str,
                     subject_type: str, subject_id: str, reason: str, data: Any) -> str:
    """SHA-256 of an event's canonical content, chained to the previous event's hash."""
    canonical = json.dumps(
        [prev_hash, at_iso, actor_id, actor_label, kind, subject_type, subject_id, reason, data],
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _event_fields(*, kind: str, actor: Any = None, actor_label: str = "", subject: models.Model | None = None,
                  subject_type: str = "", subject_id: str | int = "", reason: str = "",
                  data: dict[str, Any] | None = None) -> dict[str, Any]:
    if subject is not None:
        subject_type = subject._meta.label_lower
        subject_id = subject.pk
    if actor is None:
        # Fall back on whoever the code runs for: acting_as(), then the request's user.
        actor = current_user()
    user = actor if getattr(actor, "is_authenticated", False) else None
    label = actor_label or (user.get_username() if user else "") or current_label() or "system"
    # JSON round trip: what is hashed is exactly what PostgreSQL stores and returns.
    payload = json.loads(json.dumps(data or {}, default=str))
    return {"kind": str(kind), "user": user, "label": label[:150], "subject_type": subject_type[:64],
            "subject_id": str(subject_id)[:64], "reason": reason or "", "data": payload}


# No savepoint: the event is part of the caller's transaction and fails with it
# (a SAVEPOINT and its RELEASE were two of every event's round trips).
@transaction.atomic(savepoint=False)
def audit_event_record(
    *,
    kind: str,
    actor: Any = None,
    actor_label: str = "",
    subject: models.Model | None = None,
    subject_type: str = "",
    subject_id: str | int = "",
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the hash-chained audit log, in the caller's transaction.

    The chain lock is a transaction-level advisory lock: it is held until the
    caller commits, so the next writer reads this event as the chain's head.
    """
    f = _event_fields(kind=kind, actor=actor, actor_label=actor_label, subject=subject, subject_type=subject_type,
                      subject_id=subject_id, reason=reason, data=data)
    user = f["user"]
    with connection.cursor() as cursor:
        event_id, at, prev_hash, digest = _chain_append(cursor, f, prev_hash=_chain_head_cached())
    _chain_head_remember(digest)
    event = AuditEvent(
        id=event_id, at=at, actor=user, actor_label=f["label"], kind=f["kind"], subject_type=f["subject_type"],
        subject_id=f["subject_id"], reason=f["reason"], data=f["data"], prev_hash=prev_hash, hash=digest,
    )
    event._state.adding = False
    return event


_TABLE = AuditEvent._meta.db_table
_INSERT_MANY_SQL_HEAD = (f"INSERT INTO {_TABLE} (at, actor_id, actor_label, kind, subject_type, "  # noqa: S608 - model table
                         "subject_id, reason, data, prev_hash, hash) VALUES ")
_INSERT_MANY_ROW = "(%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)"
_INSERT_SQL = _INSERT_MANY_SQL_HEAD + _INSERT_MANY_ROW + " RETURNING id"


def _chain_row(f: dict[str, Any], prev_hash: str) -> tuple[Any, ...]:
    """The insert values of event fields ``f`` chained to ``prev_hash``, at now: ``_INSERT_MANY_ROW``'s order."""
    user = f["user"]
    at = timezone.now()
    digest = audit_event_hash(
        prev_hash=prev_hash, at_iso=at.isoformat(), actor_id=user.pk if user else None, actor_label=f["label"],
        kind=f["kind"], subject_type=f["subject_type"], subject_id=f["subject_id"], reason=f["reason"], data=f["data"],
    )
    return (at, user.pk if user else None, f["label"], f["kind"], f["subject_type"], f["subject_id"], f["reason"],
            json.dumps(f["data"]), prev_hash, digest)


def _chain_append(cursor: Any, f: dict[str, Any], *, prev_hash: str | None = None) -> tuple[int, Any, str, str]:
    """Append event fields ``f`` to the chain on ``cursor``'s open transaction: (id, at, prev_hash, hash).

    Without ``prev_hash`` (the head this transaction already holds), take the
    chain lock and read the head after it (``audit_chain_lock_head()``), so
    the read sees the event the previous holder committed.
    """
    if prev_hash is None:
        prev_hash = _chain_lock_and_head(cursor)
    row = _chain_row(f, prev_hash)
    cursor.execute(_INSERT_SQL, row)
    return cursor.fetchone()[0], row[0], prev_hash, row[9]


# The chain lock, then the chain's head (GENESIS_HASH on an empty chain), as one SQL expression (audit migration
# 0008): a PL/pgSQL function, VOLATILE, whose read of the head is a statement of its own after the lock is held,
# so it takes a snapshot of its own, newer than the calling statement's: it sees the event the lock's previous
# holder committed while this transaction waited (a read in the calling statement itself might not, and would
# fork the chain). A caller may select it inside a statement it sends anyway and pass the result to
# ``audit_events_record(head=...)``; the lock is the transaction's until it ends, like every append's.
AUDIT_CHAIN_LOCK_HEAD = "audit_chain_lock_head()"
AUDIT_CHAIN_LOCK_HEAD_SQL = f"SELECT {AUDIT_CHAIN_LOCK_HEAD}"


def _chain_lock_and_head(cursor: Any) -> str:
    """Take the chain lock, then read the head: one round trip."""
    cursor.execute(AUDIT_CHAIN_LOCK_HEAD_SQL)
    return cursor.fetchone()[0]


# No savepoint, like audit_event_record's.
@transaction.atomic(savepoint=False)
def audit_events_record(events: list[dict[str, Any]], *, head: str | None = None) -> list[AuditEvent]:
    """Append several events to the chain, in order, in the caller's transaction: ONE insert for all of them.

    Each item holds ``audit_event_record``'s keyword arguments; the events
    are exactly the ones that calling it once per item writes (same fields,
    same chaining, each its own ``at``), with one round trip for the rows.

    ``head``: the chain's head as the caller read it in this transaction
    with ``AUDIT_CHAIN_LOCK_HEAD`` (which also took the chain lock), inside
    a statement of its own; the lock and the read are then not repeated.
    """
    if not events:
        return []
    fields = [_event_fields(**event) for event in events]
    with connection.cursor() as cursor:
        prev_hash = head or _chain_head_cached() or _chain_lock_and_head(cursor)
        rows: list[tuple[Any, ...]] = []
        for f in fields:
            rows.append(_chain_row(f, prev_hash))
            prev_hash = rows[-1][9]
        cursor.execute(_INSERT_MANY_SQL_HEAD + ", ".join([_INSERT_MANY_ROW] * len(rows)) + " RETURNING id",
                       [value for row in rows for value in row])
        # Ids come from one sequence in insertion order: ascending, they follow the rows.
        ids = sorted(row[0] for row in cursor.fetchall())
    _chain_head_remember(prev_hash)
    out = []
    for event_id, f, row in zip(ids, fields, rows, strict=True):
        event = AuditEvent(
            id=event_id, at=row[0], actor=f["user"], actor_label=f["label"], kind=f["kind"],
            subject_type=f["subject_type"], subject_id=f["subject_id"], reason=f["reason"], data=f["data"],
            prev_hash=row[8], hash=row[9],
        )
        event._state.adding = False
        out.append(event)
    return out



class _ChainHead:
    """The hash of the last event this connection appended, valid while its insert is part of the open transaction.

    It is registered as a (no-op) on-commit callback of the transaction that
    inserted the event. Django drops a transaction's callbacks when it commits
    or rolls back, and a savepoint's callbacks when that savepoint is rolled
    back: so the marker is still in ``connection.run_on_commit`` exactly as
    long as the event is. While it is, this transaction still holds the chain
    lock (a transaction-level advisory lock), so nobody else has appended
    since and the event is the chain's head: the next event of the same
    transaction needs neither the lock nor the read of the head again.
    """

    __slots__ = ("hash",)

    def __init__(self, digest: str) -> None:
        self.hash = digest

    def __call__(self) -> None:
        """Nothing to do on commit: the marker only lives as long as the transaction."""


def _chain_head_cached() -> str | None:
    marker = getattr(connection, "_fp_audit_head", None)
    if marker is None or not connection.in_atomic_block or connection.needs_rollback:
        return None
    for _sids, func, _robust in reversed(connection.run_on_commit):
        if func is marker:
            return marker.hash
    return None


def _chain_head_remember(digest: str) -> None:
    marker = _ChainHead(digest)
    connection._fp_audit_head = marker  # type: ignore[attr-defined]
    transaction.on_commit(marker)


def audit_event_record_autonomous(**kwargs: Any) -> bool:
    """Record an event that must survive the rollback of the caller's transaction.

    A refused change rolls its transaction back, yet the refusal itself must
    stay on record. The event is written on a separate connection in its own
    committed transaction. When that is impossible (the caller's transaction
    holds the chain lock, or references rows not yet committed), the event is
    recorded in the caller's transaction instead and an error is logged.
    Returns True when the event was committed independently.
    """
    f = _event_fields(**kwargs)
    user = f["user"]
    if connection.in_atomic_block and _holds_chain_lock():
        # Our own open transaction holds the chain lock: a second connection
        # would wait for it forever. Record in-band and say so.
        logger.error("audit: %s recorded in the caller's transaction (it holds the chain lock)", f["kind"])
        audit_event_record(kind=f["kind"], actor=user, actor_label=f["label"], subject_type=f["subject_type"],
                           subject_id=f["subject_id"], reason=f["reason"], data=f["data"])
        return False
    other = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        other.ensure_connection()
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")
            _chain_append(cursor, f)
        other.commit()
        return True
    except Exception:
        logger.exception("audit: could not record %s on its own connection; recording it in the caller's transaction",
                         f["kind"])
        try:
            other.rollback()
        except Exception:  # pragma: no cover - the connection may already be broken
            logger.debug("audit: rollback of the autonomous connection failed", exc_info=True)
        audit_event_record(kind=f["kind"], actor=user, actor_label=f["label"], subject_type=f["subject_type"],
                           subject_id=f["subject_id"], reason=f["reason"], data=f["data"])
        return False
    finally:
        other.close()


def _holds_chain_lock() -> bool:
    high, low = (_CHAIN_LOCK_KEY >> 32) & 0xFFFFFFFF, _CHAIN_LOCK_KEY & 0xFFFFFFFF
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                       "AND classid = %s AND objid = %s AND objsubid = 1 AND granted)", [high, low])
        return bool(cursor.fetchone()[0])


def alert_send(*, kind: str, severity: str, subject: str, message: str, dedup_key: str | None = None) -> None:
    """Hand an alert to risk's alert task by name (audit is a base layer and imports no risk)."""
    try:
        current_app.send_task(ALERT_RAISE_TASK, kwargs={"kind": kind, "severity": severity, "subject": subject,
                                                        "message": message, "dedup_key": dedup_key})
    except Exception:
        logger.exception("audit: could not enqueue alert %s: %s", kind, subject)


def alert_raise_on_commit(*, kind: str, severity: str, subject: str, message: str, dedup_key: str | None = None,
                          immediate: bool = False) -> None:
    """Raise an alert once the transaction that decided it commits (or now, when it was committed elsewhere)."""
    def send() -> None:
        alert_send(kind=kind, severity=severity, subject=subject, message=message, dedup_key=dedup_key)

    if immediate:
        send()
    else:
        transaction.on_commit(send, robust=True)


@transaction.atomic
def role_assign(*, user: Any, role: str, reason: str, actor: Any = None) -> RoleAssignment:
    """Grant ``role`` (a group name) to ``user``, versioned with ``actor`` and ``reason``."""
    group = Group.objects.get(name=role)
    with acting_as(actor, reason, label=current_label() or "system"), _managed_roles():
        assignment = RoleAssignment.objects.filter(user=user, role=group).first()
        if assignment is None:
            assignment = RoleAssignment(user=user, role=group)
        assignment.active = True
        assignment.changed_at = timezone.now()
        assignment.save()
        user.groups.add(group)
        audit_event_record(kind=AuditEvent.Kind.ROLE_CHANGE, actor=actor, subject=assignment, reason=reason,
                           data={"user": user.get_username(), "role": role, "action": "grant"})
    return assignment


@transaction.atomic
def role_revoke(*, user: Any, role: str, reason: str, actor: Any = None) -> RoleAssignment | None:
    """Withdraw ``role`` from ``user``; the assignment row stays, inactive, with its history."""
    group = Group.objects.get(name=role)
    with acting_as(actor, reason, label=current_label() or "system"), _managed_roles():
        assignment = RoleAssignment.objects.filter(user=user, role=group).first()
        if assignment is not None:
            assignment.active = False
            assignment.changed_at = timezone.now()
            assignment.save()
        user.groups.remove(group)
        audit_event_record(kind=AuditEvent.Kind.ROLE_CHANGE, actor=actor, subject_type="auth.user",
                           subject_id=user.pk, reason=reason,
                           data={"user": user.get_username(), "role": role, "action": "revoke"})
    return assignment


# Group changes made outside role_assign / role_revoke are recorded and alerted.
_roles_managed: contextvars.ContextVar[bool] = contextvars.ContextVar("fp_roles_managed", default=False)


@contextmanager
def _managed_roles() -> Iterator[None]:
    token = _roles_managed.set(True)
    try:
        yield
    finally:
        _roles_managed.reset(token)


def user_groups_changed(sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any) -> None:
    """m2m_changed receiver on ``User.groups``: a membership change outside the role services is audited and
    alerted; any change makes a user object forget the roles it cached (``trading.permissions.user_roles``)."""
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if not reverse:
        user_roles_forget(instance)
    if _roles_managed.get():
        return
    label = "auth.group" if reverse else "auth.user"
    audit_event_record(
        kind=AuditEvent.Kind.ROLE_CHANGE, subject_type=label, subject_id=instance.pk,
        reason="", data={"action": action, "ids": sorted(pk_set or []), "unmanaged": True},
    )
    alert_raise_on_commit(kind="unauthorized_config_change", severity="warning",
                          subject=f"Role membership changed outside role_assign ({label} {instance.pk})",
                          message=f"{action} on {label} {instance.pk}: {sorted(pk_set or [])} without a recorded reason.",
                          dedup_key=f"role_unmanaged:{label}:{instance.pk}")

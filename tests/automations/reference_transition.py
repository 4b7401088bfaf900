"""The ORM version of ``automations.services.signal_transition``, kept as the reference its one-statement
rewrite is held to (tests/automations/test_signal_lifecycle.py, tests/execution/reference_orders.py)."""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_event_record
from automations import services
from automations.models import Signal, SignalTransition
from automations.selectors import signal_payload
from trading.api import DomainError

S = Signal.Status


def signal_transition_orm(
    *, signal: Signal, to_status: str, actor_label: str, reason: str = "", actor: Any = None, locked: bool = False
) -> Signal:
    """The ORM version ``signal_transition`` replaced (nextval, save, create, audit_event_record): the reference."""
    if not connection.in_atomic_block:
        with transaction.atomic():
            return signal_transition_orm(
                signal=signal, to_status=to_status, actor_label=actor_label, reason=reason, actor=actor, locked=locked
            )
    held = signal if locked else Signal.objects.select_for_update().get(pk=signal.pk)
    now = timezone.now()
    if to_status not in services.ALLOWED_TRANSITIONS.get(held.status, frozenset()):
        raise DomainError("illegal", code="illegal_transition")
    if to_status == S.APPROVED and held.expires_at is not None and held.expires_at <= now:
        raise DomainError("expired", code="expired")
    with transaction.atomic(savepoint=False):
        from_status = held.status
        with connection.cursor() as cursor:
            cursor.execute("SELECT nextval('automations_signal_push_seq')")
            seq = int(cursor.fetchone()[0])
        held.status, held.status_reason, held.sequence = to_status, reason, seq
        fields = ["status", "status_reason", "sequence"]
        if to_status in services._DECIDING:
            held.decided_at = now
            fields.append("decided_at")
        held.save(update_fields=fields)
        SignalTransition.objects.create(
            signal=held,
            at=now,
            from_status=from_status,
            to_status=to_status,
            actor_label=actor_label,
            reason=reason,
            sequence=seq,
        )
        audit_event_record(
            kind=AuditEvent.Kind.SIGNAL_STATE,
            actor=actor,
            actor_label=actor_label,
            subject=held,
            reason=reason,
            data={"from": from_status, "to": to_status, "sequence": seq, "automation_id": held.automation_id},
        )
        message = {"type": "signal", "seq": seq, "signal": signal_payload(held)}
        transaction.on_commit(lambda: services.signal_push(message))
    for name in ("status", "status_reason", "sequence", "decided_at"):
        setattr(signal, name, getattr(held, name))
    return signal

"""The one write path for audit events."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.db import connection, models, transaction
from django.utils import timezone

from audit.models import AuditEvent

GENESIS_HASH = "0" * 64
# One advisory lock serialises appends to the chain across every process.
_CHAIN_LOCK_KEY = 0x46505F4155444954  # "FP_AUDIT"


def audit_event_hash(*, prev_hash: str, at_iso: str, actor_id: int | None, actor_label: str, kind: str,
                     subject_type: str, subject_id: str, reason: str, data: Any) -> str:
    canonical = json.dumps(
        [prev_hash, at_iso, actor_id, actor_label, kind, subject_type, subject_id, reason, data],
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@transaction.atomic
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
    """Append one event to the hash-chained audit log, in the caller's transaction."""
    if subject is not None:
        subject_type = subject._meta.label_lower
        subject_id = subject.pk
    user = actor if getattr(actor, "is_authenticated", False) else None
    label = actor_label or (user.get_username() if user else "system")
    payload = json.loads(json.dumps(data or {}, default=str))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    prev_hash = last or GENESIS_HASH
    at = timezone.now()
    event = AuditEvent(
        at=at, actor=user, actor_label=label, kind=kind, subject_type=subject_type,
        subject_id=str(subject_id), reason=reason, data=payload, prev_hash=prev_hash,
    )
    event.hash = audit_event_hash(
        prev_hash=prev_hash, at_iso=at.isoformat(), actor_id=user.pk if user else None, actor_label=label,
        kind=kind, subject_type=subject_type, subject_id=str(subject_id), reason=reason, data=payload,
    )
    event.save(force_insert=True)
    return event

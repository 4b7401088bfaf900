"""audit_events_record: several events in one insert, the same chain as one call per event."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from audit.models import AuditEvent
from audit.services import audit_event_record, audit_events_record
from audit.verify import verify_audit

FIELDS = ("actor_id", "actor_label", "kind", "subject_type", "subject_id", "reason", "data")


def _items(user: User) -> list[dict]:
    return [
        {"kind": AuditEvent.Kind.SYSTEM, "actor_label": "worker", "reason": "first", "data": {"n": 1, "x": [1.5, None]}},
        {"kind": AuditEvent.Kind.SIGNAL_STATE, "subject": user, "reason": "é \"quoted\"", "data": {"to": "queued"}},
        {"kind": AuditEvent.Kind.CONFIG_CHANGE, "actor": user, "subject_type": "x.y", "subject_id": 7},
    ]


@pytest.mark.django_db
def test_it_writes_the_events_one_call_per_event_writes_and_the_chain_verifies():
    user = User.objects.create_user(username="alice")
    with transaction.atomic():
        one_by_one = [audit_event_record(**item) for item in _items(user)]
    with transaction.atomic():
        audit_event_record(kind=AuditEvent.Kind.SYSTEM, reason="before, in the same transaction")
        many = audit_events_record(_items(user))

    stored = {e.pk: e for e in AuditEvent.objects.all()}
    assert [e.pk for e in many] == sorted(e.pk for e in many)
    for a, b in zip(one_by_one, many, strict=True):
        row_a, row_b = stored[a.pk], stored[b.pk]
        assert {f: getattr(row_a, f) for f in FIELDS} == {f: getattr(row_b, f) for f in FIELDS}
        # The returned instances are the stored rows.
        assert (b.hash, b.prev_hash, b.at, b.data) == (row_b.hash, row_b.prev_hash, row_b.at, row_b.data)
    # In order on the chain: each event follows the previous one.
    assert [stored[e.pk].prev_hash for e in many[1:]] == [stored[e.pk].hash for e in many[:-1]]
    result = verify_audit()
    assert result.ok, result.problems


@pytest.mark.django_db
def test_nothing_to_record_writes_nothing():
    assert audit_events_record([]) == []
    assert not AuditEvent.objects.exists()

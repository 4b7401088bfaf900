from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from audit.history import acting_as
from audit.models import AuditEvent
from audit.services import audit_event_hash, audit_event_record
from audit.verify import verify_audit


def _privileged(sql: str, params: list | None = None) -> None:
    """Tamper as a superuser would: bypass the append-only triggers for this transaction."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, params or [])
        cursor.execute("SET LOCAL session_replication_role = origin")


@pytest.fixture
def events(db):
    return [audit_event_record(kind=AuditEvent.Kind.SYSTEM, actor_label="test", reason=f"event {i}", data={"i": i})
            for i in range(5)]


@pytest.mark.django_db
def test_it_passes_an_untouched_chain(events, automation):
    result = verify_audit()
    assert result.ok, result.problems
    assert result.events_checked >= 5


@pytest.mark.django_db
def test_it_names_an_edited_event(events):
    _privileged("UPDATE audit_auditevent SET reason = 'nothing happened' WHERE id = %s", [events[2].pk])
    result = verify_audit()
    assert str(result.first) == f"audit event #{events[2].pk}: its content does not match its hash: the event was edited"
    with pytest.raises(CommandError, match=f"audit event #{events[2].pk}"):
        call_command("verify_audit")


@pytest.mark.django_db
def test_it_names_a_deleted_event_by_the_one_after_the_gap(events):
    _privileged("DELETE FROM audit_auditevent WHERE id = %s", [events[2].pk])
    result = verify_audit()
    assert result.first.where == f"audit event #{events[3].pk}"
    assert f"an event after event #{events[1].pk} was deleted" in result.first.message


@pytest.mark.django_db
def test_it_names_an_event_inserted_out_of_order(events):
    # A forger links a new event after event 1, with a correctly computed hash.
    at = events[1].at
    data = {"forged": True}
    digest = audit_event_hash(prev_hash=events[1].hash, at_iso=at.isoformat(), actor_id=None, actor_label="mallory",
                              kind="approval", subject_type="", subject_id="", reason="forged", data=data)
    forged_id = events[-1].pk + 50
    _privileged("INSERT INTO audit_auditevent (id, at, actor_label, kind, subject_type, subject_id, reason, data, prev_hash, hash)"
                " VALUES (%s, %s, 'mallory', 'approval', '', '', 'forged', %s::jsonb, %s, %s)",
                [forged_id, at, json.dumps(data), events[1].hash, digest])
    result = verify_audit()
    assert result.first.where == f"audit event #{forged_id}"
    assert f"chains to event #{events[1].pk}" in result.first.message and "inserted out of order" in result.first.message


@pytest.mark.django_db
def test_it_names_an_edited_history_row(automation, make_user):
    row = automation.history.order_by("-history_id").first()
    _privileged("UPDATE automations_historicalautomation SET history_change_reason = 'harmless' WHERE history_id = %s",
                [row.history_id])
    result = verify_audit()
    assert [str(p) for p in result.problems] == [
        f"history row automations.historicalautomation#{row.history_id}: it does not match its seal "
        f"(audit event #{_seal_id(row)}): it was edited"]


@pytest.mark.django_db
def test_it_names_a_deleted_history_row(automation, make_user):
    with acting_as(make_user.root, "second version"):
        automation.approval_threshold = 3
        automation.save()
    first = automation.history.order_by("history_id").first()
    seal = _seal_id(first)
    _privileged("DELETE FROM automations_historicalautomation WHERE history_id = %s", [first.history_id])
    result = verify_audit()
    assert [str(p) for p in result.problems] == [
        f"history row automations.historicalautomation#{first.history_id}: sealed by audit event #{seal} but missing: "
        "it was deleted"]


@pytest.mark.django_db
def test_it_names_a_history_row_inserted_behind_the_applications_back(automation):
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(history_id) + 10 FROM automations_historicalautomation")
        forged = cursor.fetchone()[0]
    _privileged(
        "INSERT INTO automations_historicalautomation (history_id, id, name, symbol, strategy, parameters, status, mode,"
        " approval_threshold, require_approval, allowed_regimes, signal_expiry_seconds, four_eyes, snapshot_levels,"
        " created_at, history_date, history_type, history_change_reason)"
        " VALUES (%s, %s, 'mm-btc', 'SIM-BTCUSD', 'momentum', '{}', 'active', 'live', 0, false, '{}', 120, false, 20,"
        " now(), now(), '~', 'quiet fix')", [forged, automation.pk])
    result = verify_audit()
    assert [str(p) for p in result.problems] == [
        f"history row automations.historicalautomation#{forged}: no audit event seals it: it was inserted behind the "
        "application's back"]


@pytest.mark.django_db
def test_it_reports_a_disabled_trigger(events):
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE automations_historicalautomation DISABLE TRIGGER ALL")
    result = verify_audit()
    assert any(p.where == "database" and "automations_historicalautomation" in p.message and "disabled" in p.message
               for p in result.problems)


def _seal_id(history_row) -> int:
    return AuditEvent.objects.get(kind=AuditEvent.Kind.HISTORY, subject_type="automations.historicalautomation",
                                  subject_id=str(history_row.history_id)).pk

from __future__ import annotations

import uuid

import pytest
from django.db import DatabaseError, connection, transaction

from audit.history import history_models
from audit.management.commands.setup_db_roles import db_roles_setup
from audit.models import AuditEvent
from audit.protection import expected_trigger_names
from audit.services import audit_event_record

HISTORY_TABLES = ["automations_historicalautomation", "risk_historicalrisklimit", "risk_historicalkillswitch",
                  "execution_historicalbrokeraccount", "audit_historicalroleassignment"]


def _fails(sql: str) -> str:
    """Run ``sql`` in a savepoint; return the database's error message (the test fails if it succeeds)."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    except DatabaseError as exc:
        return str(exc)
    raise AssertionError(f"{sql!r} succeeded")


@pytest.mark.django_db
def test_every_history_table_and_the_audit_table_carry_the_append_only_triggers(automation):
    assert sorted(m._meta.db_table for m in history_models()) == sorted(HISTORY_TABLES)
    with connection.cursor() as cursor:
        for model in [*history_models(), AuditEvent]:
            cursor.execute("SELECT tgname, tgtype FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
                           "AND tgenabled <> 'D'", [model._meta.db_table])
            found = dict(cursor.fetchall())
            names = ([t.get_pgid(AuditEvent) for t in AuditEvent._meta.triggers] if model is AuditEvent
                     else expected_trigger_names(model))
            assert set(names) <= set(found), model._meta.db_table
            # tgtype bit 32 is TRUNCATE; bit 1 clear means a statement-level trigger.
            assert any(tgtype & 32 and not tgtype & 1 for tgtype in found.values())


@pytest.mark.django_db
def test_the_triggers_refuse_update_delete_and_truncate_even_for_the_table_owner(automation):
    audit_event_record(kind=AuditEvent.Kind.SYSTEM, reason="x")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL fp.audit_allow_truncate = 'off'")
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    for table in ["audit_auditevent", "automations_historicalautomation"]:
        assert "Cannot update rows" in _fails(f"UPDATE {table} SET history_change_reason = 'x'"
                                              if table.endswith("historicalautomation") else f"UPDATE {table} SET reason = 'x'")
        assert "Cannot delete rows" in _fails(f"DELETE FROM {table}")
        assert "cannot truncate" in _fails(f"TRUNCATE {table} CASCADE")


@pytest.mark.django_db
def test_the_application_role_cannot_update_delete_or_truncate_history_and_audit_rows(automation):
    app_role = f"fp_app_t{uuid.uuid4().hex[:8]}"
    owner_role = f"fp_owner_t{uuid.uuid4().hex[:8]}"
    db_roles_setup(app_role=app_role, owner_role=owner_role)
    audit_event_record(kind=AuditEvent.Kind.SYSTEM, reason="before the role switch")
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f'SET LOCAL ROLE "{app_role}"')
        cursor.execute("SET LOCAL fp.audit_allow_truncate = 'on'")  # any session can set it; privileges still hold
    for table in ["audit_auditevent", *HISTORY_TABLES]:
        column = "reason" if table == "audit_auditevent" else "history_change_reason"
        assert "permission denied" in _fails(f"UPDATE {table} SET {column} = 'rewritten'")
        assert "permission denied" in _fails(f"DELETE FROM {table}")
        assert "permission denied" in _fails(f"TRUNCATE {table}")
        assert "must be owner" in _fails(f"ALTER TABLE {table} DISABLE TRIGGER ALL")
    # The application still works: it appends.
    event = audit_event_record(kind=AuditEvent.Kind.SYSTEM, reason="as the app role")
    assert AuditEvent.objects.filter(pk=event.pk, reason="as the app role").exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone()[0] == app_role

"""The audit table's indexes: no write per event for an index another one already serves."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection

from audit.models import AuditEvent

KEPT = {
    "audit_auditevent_pkey",
    "audit_auditevent_hash_key",
    "audit_auditevent_at_f461ba89",
    "audit_actor_idx",
    "audit_kind_idx",
    "audit_subject_idx",
    "audit_reason_upper_trgm",
}


def table_indexes(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s", [table])
        return {name for (name,) in cursor.fetchall()}


def plan_indexes(sql: str, params: Any = ()) -> set[str]:
    """The indexes an EXPLAIN of ``sql`` reads ("Seq Scan" when it reads a table whole)."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        (raw,) = cursor.fetchone()
    plan = raw if isinstance(raw, list) else json.loads(raw)
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if node["Node Type"] == "Seq Scan":
            found.add("Seq Scan")
        if "Index Name" in node:
            found.add(node["Index Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def queryset_indexes(qs: Any) -> set[str]:
    sql, params = qs.query.sql_with_params()
    return plan_indexes(sql, params)


@pytest.mark.django_db
def test_the_audit_table_keeps_its_composite_indexes_and_drops_the_ones_they_serve():
    assert table_indexes(AuditEvent._meta.db_table) == KEPT


@pytest.mark.django_db
def test_the_audit_queries_by_kind_and_actor_read_the_composite_indexes(django_user_model):
    user = django_user_model.objects.create_user("auditor-idx")
    with connection.cursor() as cursor:
        # 20,000 events, a few of them an approval by ``user``: what a filter must find without a table scan.
        cursor.execute(
            "INSERT INTO audit_auditevent (at, actor_id, actor_label, kind, subject_type, subject_id, reason, data, "
            "prev_hash, hash) SELECT now(), CASE WHEN g %% 1000 = 0 THEN %s END, 'x', "
            "CASE WHEN g %% 1000 = 0 THEN 'approval' ELSE 'signal_state' END, 'automations.signal', g::text, '', "
            "'{}'::jsonb, md5(g::text), md5(g::text) || md5(g::text) FROM generate_series(1, 20000) g",
            [user.pk],
        )
        cursor.execute("ANALYZE audit_auditevent")
    by_kind = AuditEvent.objects.filter(kind=AuditEvent.Kind.APPROVAL).order_by("-id")[:100]
    assert queryset_indexes(by_kind) == {"audit_kind_idx"}
    by_actor = AuditEvent.objects.filter(actor=user).order_by("-id")[:100]
    assert queryset_indexes(by_actor) == {"audit_actor_idx"}
    # The PROTECT check when a user is deleted.
    assert plan_indexes("SELECT 1 FROM audit_auditevent WHERE actor_id = %s LIMIT 1", [user.pk]) == {"audit_actor_idx"}
    assert len(by_kind) == 20
    assert len(by_actor) == 20

"""Database-level immutability of history and audit tables.

Every simple-history table gets the same pgtrigger guards as the audit
tables (no UPDATE, no DELETE, no TRUNCATE) plus the indexes the compliance
admin's filters need. The history tables belong to other apps, whose models
cannot carry these triggers in ``Meta`` (simple-history builds them), so they
are installed here: by audit's migration for the tables that exist then, and
idempotently by ``manage.py setup_db_roles`` for any added since.
``verify_audit`` reports a history table that lacks them.
"""

from __future__ import annotations

from typing import Any

from django.db import connection as default_connection
from django.db import models

TRIGGER_PREFIX = "fp_history"


def history_triggers() -> list[Any]:
    from audit.models import append_only_triggers

    return append_only_triggers(TRIGGER_PREFIX)


def expected_trigger_names(model: type[models.Model]) -> list[str]:
    return [trigger.get_pgid(model) for trigger in history_triggers()]


def protect_history_model(model: type[models.Model], *, connection: Any = None) -> None:
    """Install the append-only triggers and the filter indexes on one history table (idempotent)."""
    connection = connection or default_connection
    table = model._meta.db_table
    quote = connection.ops.quote_name
    object_column = model._meta.get_field("id").column if any(f.name == "id" for f in model._meta.fields) else None
    with connection.cursor() as cursor:
        for trigger in history_triggers():
            cursor.execute(str(trigger.compile(model).install_sql))
        short = table[:40]
        statements = [
            f"CREATE INDEX IF NOT EXISTS {quote(short + '_fp_user_date')} ON {quote(table)} (history_user_id, history_date DESC)",
            # The admin's "contains" search is UPPER(col) LIKE '%...%': index that expression.
            f"DROP INDEX IF EXISTS {quote(short + '_fp_reason_trgm')}",
            f"CREATE INDEX IF NOT EXISTS {quote(short + '_fp_reason_utrgm')} ON {quote(table)} "
            "USING gin ((UPPER(history_change_reason)) gin_trgm_ops)",
        ]
        if object_column:
            statements.append(f"CREATE INDEX IF NOT EXISTS {quote(short + '_fp_obj_hist')} ON {quote(table)} "
                              f"({quote(object_column)}, history_id)")
        for sql in statements:
            cursor.execute(sql)


def installed_triggers(table: str, *, connection: Any = None) -> dict[str, bool]:
    """Trigger name -> enabled, for one table."""
    connection = connection or default_connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT tgname, tgenabled <> 'D' FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                       [table])
        return dict(cursor.fetchall())


def missing_protection(models_: list[type[models.Model]], *, connection: Any = None) -> list[str]:
    """Problems with the guards on the given history tables (empty when all are in place and enabled)."""
    problems = []
    for model in models_:
        present = installed_triggers(model._meta.db_table, connection=connection)
        for name in expected_trigger_names(model):
            if name not in present:
                problems.append(f"{model._meta.db_table}: trigger {name} is missing")
            elif not present[name]:
                problems.append(f"{model._meta.db_table}: trigger {name} is disabled")
    return problems


def protect_history_tables_migration(apps: Any, schema_editor: Any) -> None:
    """RunPython body: protect every history table present in the migration state."""
    for model in apps.get_models():
        if model._meta.model_name.startswith("historical") and any(f.name == "history_id" for f in model._meta.fields):
            protect_history_model(model, connection=schema_editor.connection)

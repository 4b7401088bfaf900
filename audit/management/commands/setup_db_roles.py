"""``manage.py setup_db_roles``: the database roles that make the audit trail immutable to the application.

1. ``--owner-role`` (default ``fp_owner``, NOLOGIN): owns every table; run
   migrations as it (``SET ROLE`` or its own login).
2. ``--app-role`` (default ``fp_app``, LOGIN): the role the application
   connects as. It owns nothing, so it cannot disable triggers or alter
   tables; it may read and insert everywhere, update and delete outside the
   append-only tables, and truncate nothing.
3. Every history table gets the append-only triggers (idempotent).

Run as a superuser (or a role that is a member of both roles). The app
role's password comes from ``--app-password`` or ``FP_APP_DB_PASSWORD``.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from psycopg import sql

from audit.history import history_models
from audit.models import AuditEvent
from audit.protection import protect_history_model


def append_only_tables() -> list[str]:
    return [AuditEvent._meta.db_table, *[m._meta.db_table for m in history_models()]]


@transaction.atomic
def db_roles_setup(*, app_role: str = "fp_app", owner_role: str = "fp_owner", app_password: str | None = None) -> dict[str, Any]:
    with connection.cursor() as cursor:
        # Deferred foreign-key checks pending in this transaction would block the DDL below.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    for model in history_models():
        protect_history_model(model)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        database = cursor.fetchone()[0]
        for role, login in ((owner_role, False), (app_role, True)):
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE ROLE {} " + ("LOGIN" if login else "NOLOGIN")).format(sql.Identifier(role)))
        if app_password:
            cursor.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(app_role), sql.Literal(app_password)))
        cursor.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(owner_role), sql.Identifier(app_role)))
        cursor.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), sql.Identifier(app_role)))
        cursor.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(app_role)))
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'")
        sequences = [row[0] for row in cursor.fetchall()]
        protected = set(append_only_tables())
        for table in tables:
            ident = sql.Identifier(table)
            cursor.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(ident, sql.Identifier(owner_role)))
            cursor.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(ident, sql.Identifier(app_role)))
            privileges = "SELECT, INSERT" if table in protected else "SELECT, INSERT, UPDATE, DELETE"
            cursor.execute(sql.SQL("GRANT " + privileges + " ON TABLE {} TO {}").format(ident, sql.Identifier(app_role)))
        for sequence in sequences:
            cursor.execute(sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(sql.Identifier(sequence),
                                                                                      sql.Identifier(app_role)))
        # Tables the owner creates later (new migrations) are usable by the app,
        # never truncatable; the append-only ones are narrowed by a re-run.
        cursor.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE "
                               "ON TABLES TO {}").format(sql.Identifier(owner_role), sql.Identifier(app_role)))
        cursor.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {}")
                       .format(sql.Identifier(owner_role), sql.Identifier(app_role)))
    return {"database": database, "app_role": app_role, "owner_role": owner_role, "tables": len(tables),
            "append_only_tables": sorted(protected)}


class Command(BaseCommand):
    help = "Create the application and owner database roles; the application role cannot rewrite the audit trail."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--app-role", default="fp_app")
        parser.add_argument("--owner-role", default="fp_owner")
        parser.add_argument("--app-password", default=os.environ.get("FP_APP_DB_PASSWORD"))

    def handle(self, *args: Any, **options: Any) -> None:
        result = db_roles_setup(app_role=options["app_role"], owner_role=options["owner_role"],
                                app_password=options["app_password"])
        self.stdout.write(f"{result['app_role']} can insert but not update, delete or truncate: "
                          f"{', '.join(result['append_only_tables'])}")
        self.stdout.write(f"{result['tables']} tables now owned by {result['owner_role']}; "
                          f"run migrations as {result['owner_role']}, the application as {result['app_role']}.")

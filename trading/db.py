"""Statements on Django's connection with server-side binding and a plan prepared once per connection."""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections


def prepared_rows(sql: str, params: Any) -> list[tuple[Any, ...]]:
    """Run one statement, prepared on first use on this connection; its rows.

    Django's cursors bind on the client: every value is quoted into the text
    in Python and PostgreSQL parses and plans the statement again on every
    call. On the hot paths (a live tick's insert, a signal's rows) that parse
    and plan cost more than the statement. A plain psycopg cursor on Django's
    connection runs in the same transaction (or autocommit) as Django's own,
    and raises Django's error classes (``IntegrityError``, ``DataError``...),
    as Django's cursors do. Values a string carries are sent untyped, so
    PostgreSQL types them from the statement, as it does a quoted literal.
    Preparing needs ``OPTIONS["prepare_threshold"]`` set (see settings):
    Django's default turns psycopg's prepared statements off, ``prepare=True``
    included.
    """
    # What Django's own cursor does first: drop a connection that failed its health check, connect, and
    # refuse to run inside an atomic block that already failed.
    db = connections[DEFAULT_DB_ALIAS]  # One thread-local look-up instead of one per attribute.
    db.close_if_health_check_failed()
    db.ensure_connection()
    db.validate_no_broken_transaction()
    with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall() if cursor.description is not None else []

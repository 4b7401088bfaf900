"""audit_chain_lock_head(): the chain lock, then a head read that sees what the lock's previous holder committed."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction

from audit.models import AuditEvent
from audit.services import _CHAIN_LOCK_KEY, AUDIT_CHAIN_LOCK_HEAD_SQL, _holds_chain_lock, audit_event_record

# What the function replaced done wrong: the lock and the head read in ONE statement, whose snapshot is
# taken when it starts, before the lock's holder commits.
ONE_STATEMENT_SQL = (f"SELECT (SELECT pg_advisory_xact_lock({_CHAIN_LOCK_KEY})) IS NULL, "
                     "(SELECT hash FROM audit_auditevent ORDER BY id DESC LIMIT 1)")


def raw_connection() -> psycopg.Connection:
    """A connection of its own to the test database (autocommit off)."""
    d = connection.settings_dict
    return psycopg.connect(dbname=d["NAME"], user=d["USER"], password=d["PASSWORD"] or None, host=d["HOST"] or None,
                           port=d["PORT"] or None)


def wait_until_blocked_on_advisory_lock(pid: int, timeout: float = 10.0) -> None:
    with raw_connection() as probe:
        probe.autocommit = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = probe.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s",
                                [pid]).fetchone()
            if row == ("Lock", "advisory"):
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for an advisory lock")


def head_read_while_an_append_commits(sql: str) -> tuple[str, str, str]:
    """Append an event and hold the chain; meanwhile another connection runs ``sql`` (it waits for the chain);
    commit. Returns (the head before, the appended event's hash, the last column of ``sql``'s row)."""
    before = audit_event_record(kind=AuditEvent.Kind.SYSTEM, actor_label="test", reason="before").hash
    waiter = raw_connection()
    pid = waiter.info.backend_pid
    result: dict[str, Any] = {}

    def wait() -> None:
        try:
            result["row"] = waiter.execute(sql).fetchone()
            waiter.rollback()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc

    with transaction.atomic():
        appended = audit_event_record(kind=AuditEvent.Kind.SYSTEM, actor_label="test", reason="holder").hash
        thread = threading.Thread(target=wait)
        thread.start()
        wait_until_blocked_on_advisory_lock(pid)
    thread.join(10)
    waiter.close()
    assert "error" not in result, result
    return before, appended, result["row"][-1]


@pytest.mark.django_db(transaction=True)
def test_the_function_waits_for_the_chain_and_returns_the_head_its_holder_committed():
    before, appended, head = head_read_while_an_append_commits(AUDIT_CHAIN_LOCK_HEAD_SQL)
    assert head == appended
    assert head != before


@pytest.mark.django_db(transaction=True)
def test_a_head_read_in_the_locking_statement_itself_misses_the_holders_commit():
    # The reason for the function: the statement's own snapshot predates the commit it waited for.
    before, appended, head = head_read_while_an_append_commits(ONE_STATEMENT_SQL)
    assert head == before
    assert head != appended


@pytest.mark.django_db
def test_the_function_takes_the_lock_the_services_know_and_returns_genesis_on_an_empty_chain():
    assert not AuditEvent.objects.exists()
    with transaction.atomic():
        assert not _holds_chain_lock()
        with connection.cursor() as cursor:
            cursor.execute(AUDIT_CHAIN_LOCK_HEAD_SQL)
            assert cursor.fetchone()[0] == "0" * 64
        assert _holds_chain_lock()

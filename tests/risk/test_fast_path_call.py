"""How the risk fast paths reach PostgreSQL: prepared statements on the connection Django holds, in the caller's transaction."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.db import DEFAULT_DB_ALIAS, DataError, connection, connections, transaction

from automations.models import Automation
from risk.models import RiskState
from risk.services import _fast_path_call, order_closed
from tests.risk.conftest import make_automation
from tests.risk.test_global_row import _check

pytestmark = [pytest.mark.usefixtures("celery_eager")]
D = Decimal


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("statement_sent", [False, True], ids=["first_statement", "after_a_statement"])
def test_the_fast_path_reservation_belongs_to_the_callers_transaction(statement_sent: bool) -> None:
    a = make_automation()
    assert _check(a.pk)  # Creates the scope's rows (the locked path), then release.
    order_closed(automation_id=a.pk, realized_pnl=D(0))
    with pytest.raises(RuntimeError), transaction.atomic():
        if statement_sent:
            assert Automation.objects.filter(pk=a.pk).exists()
        assert _check(a.pk)
        assert RiskState.objects.get(automation=a).open_orders == 1
        raise RuntimeError("the order transaction fails after the check")
    assert RiskState.objects.get(automation=a).open_orders == 0
    # Outside a transaction the check commits by itself.
    assert _check(a.pk)
    assert RiskState.objects.get(automation=a).open_orders == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "atomic"])
def test_parameters_arrive_typed_and_errors_are_djangos(in_transaction: bool) -> None:
    sql = ("SELECT %s::bigint = 7 AND %s::numeric = 100 AND %s::double precision = 0.1 AND %s::date = '2026-01-02' "
           "AND %s::numeric IS NULL AND %s::boolean AND NOT %s::boolean")
    params = [7, D("1E+2"), 0.1, date(2026, 1, 2), None, True, False]
    if in_transaction:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            assert _fast_path_call(sql, params)
            assert _fast_path_call(sql, params)  # Prepared once, executed again.
            with pytest.raises(DataError):
                _fast_path_call("SELECT 1 / %s::integer = 1", [0])
            transaction.set_rollback(True)
    else:
        assert _fast_path_call(sql, params)
        with pytest.raises(DataError):
            _fast_path_call("SELECT 1 / %s::integer = 1", [0])
        # The connection is usable after the error (autocommit: the failed statement was its own transaction).
        assert _fast_path_call("SELECT %s::integer = 2", [2])


@pytest.mark.django_db
def test_without_the_fast_path_functions_the_checks_take_the_locked_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    import risk.services

    # As on a database whose risk migrations are behind the code.
    monkeypatch.setattr(risk.services, "_fast_paths", [False])
    monkeypatch.setattr(risk.services, "_fast_path_call", lambda *a, **k: pytest.fail("the fast path was called"))
    a = make_automation()
    assert _check(a.pk) and _check(a.pk)
    assert risk.services.signal_rate_check(automation=a) is None
    state = RiskState.objects.get(automation=a)
    assert (state.open_orders, len(state.signal_times)) == (2, 1)


@pytest.mark.django_db(transaction=True)
def test_prepared_statements_are_kept_per_session_when_the_wrapper_changes_connections() -> None:
    # A pooled Django connection (the ASGI web process) may hold another
    # PostgreSQL session on each use; each session prepares the statement once.
    db = connections[DEFAULT_DB_ALIAS]
    db.ensure_connection()
    first = db.connection
    second = db.get_new_connection(db.get_connection_params())
    second.autocommit = True
    try:
        for raw in (first, second, first, second):
            db.connection = raw
            assert _fast_path_call("SELECT %s::integer = 3", [3])
    finally:
        db.connection = first
        second.close()


@pytest.mark.django_db(transaction=True)
def test_the_fast_path_survives_a_rollback_that_drops_the_prepared_statements() -> None:
    """psycopg answers a rollback with ``DEALLOCATE ALL``: the next call prepares its statement again."""
    sql = "SELECT %s::integer = 4 AND 'fast path rollback test' <> ''"

    def prepared() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                           ["%fast path rollback test%"])
            return cursor.fetchone()[0]

    assert _fast_path_call(sql, [4])
    assert prepared() == 1
    with pytest.raises(RuntimeError), transaction.atomic():
        assert _fast_path_call(sql, [4])
        raise RuntimeError("rolled back")
    assert _fast_path_call(sql, [4])
    assert _fast_path_call(sql, [4])
    assert prepared() == 1

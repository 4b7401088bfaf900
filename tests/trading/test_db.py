"""trading.db.prepared_rows: prepared on the server once per connection, in the caller's transaction."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from trading.db import prepared_rows

pytestmark = pytest.mark.django_db(transaction=True)

_SQL = "SELECT %s::int + 1 AS n, 'trading.db test' AS tag"


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def test_the_statement_is_prepared_on_the_server_and_reused() -> None:
    assert prepared_rows(_SQL, [41]) == [(42, "trading.db test")]
    assert prepared_rows(_SQL, [1]) == [(2, "trading.db test")]
    mine = [s for s in _prepared() if "trading.db test" in s]
    assert len(mine) == 1  # One plan, used by both calls.


def test_rows_written_belong_to_the_callers_transaction_and_errors_are_djangos() -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE fp_db_test (id int PRIMARY KEY)")
    with pytest.raises(RuntimeError), transaction.atomic():
        prepared_rows("INSERT INTO fp_db_test VALUES (%s)", [1])
        raise RuntimeError("roll back")
    assert prepared_rows("SELECT count(*) FROM fp_db_test", []) == [(0,)]
    prepared_rows("INSERT INTO fp_db_test VALUES (%s)", [1])
    with pytest.raises(IntegrityError):
        prepared_rows("INSERT INTO fp_db_test VALUES (%s)", [1])

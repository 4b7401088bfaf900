"""The order table's indexes: no pattern-ops twins that no LIKE query reads."""

from __future__ import annotations

import pytest
from django.db import connection

from execution.models import Order
from tests.audit.test_indexes import queryset_indexes, table_indexes
from tests.execution.conftest import make_automation

KEPT = {
    "execution_order_pkey",
    "execution_order_signal_id_key",
    "execution_order_client_order_id_key",
    "execution_order_automation_id_8663758e",
    "execution_order_created_at_e57f0056",
    "execution_order_status_4b6db22a",
}


@pytest.mark.django_db
def test_the_order_table_keeps_its_indexes_without_their_like_twins():
    assert table_indexes(Order._meta.db_table) == KEPT


@pytest.mark.django_db
def test_the_order_queries_by_status_and_client_order_id_read_an_index():
    automation = make_automation()
    with connection.cursor() as cursor:
        # 20,000 signals with a filled order each but one, still open at the broker.
        cursor.execute(
            "INSERT INTO automations_signal (automation_id, symbol, side, quantity, limit_price, reason, features, "
            "regime, status, status_reason, needs_approval, created_at, sequence) "
            "SELECT %s, 'TEST-BTC', 'buy', 1, 1, '', '{}', '{}', 'ordered', '', false, now(), g "
            "FROM generate_series(1, 20000) g",
            [automation.pk],
        )
        cursor.execute(
            "INSERT INTO execution_order (signal_id, automation_id, client_order_id, broker, broker_order_id, symbol, "
            "side, quantity, limit_price, status, status_reason, filled_qty, gated, created_at) "
            "SELECT s.id, %s, 'fp-' || s.sequence, 'paper', '', 'TEST-BTC', 'buy', 1, 1, "
            "CASE WHEN s.sequence = 1 THEN 'submitted' ELSE 'filled' END, '', 0, false, now() "
            "FROM automations_signal s WHERE s.automation_id = %s",
            [automation.pk, automation.pk],
        )
        cursor.execute("ANALYZE execution_order")
    open_orders = Order.objects.filter(status__in=Order.OPEN_STATUSES).order_by("id")
    assert "Seq Scan" not in queryset_indexes(open_orders)
    assert queryset_indexes(open_orders.values_list("id", flat=True)) & {"execution_order_status_4b6db22a",
                                                                          "execution_order_pkey"}
    assert [o.client_order_id for o in open_orders] == ["fp-1"]
    assert queryset_indexes(Order.objects.filter(client_order_id="fp-77")) == {"execution_order_client_order_id_key"}

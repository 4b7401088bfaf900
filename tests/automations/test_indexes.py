"""The signal table's indexes: no write per signal for an index another one already serves."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from automations.models import Signal
from tests.audit.test_indexes import plan_indexes, queryset_indexes, table_indexes
from tests.automations.conftest import make_automation

KEPT = {
    "automations_signal_pkey",
    "automations_signal_created_at_65650e17",
    "automations_signal_snapshot_id_f2e1a3ab",
    "signal_automation_created",
    "signal_once_per_market_data",
    "signal_sequence",
    "signal_status_expiry",
}
S = Signal.Status


@pytest.mark.django_db
def test_the_signal_table_keeps_its_composite_indexes_and_drops_the_ones_they_serve():
    assert table_indexes(Signal._meta.db_table) == KEPT


@pytest.mark.django_db
def test_the_signal_queries_by_status_and_automation_read_the_composite_indexes():
    busy, quiet = make_automation(name="busy"), make_automation(name="quiet", symbol="TEST-ETH")
    with connection.cursor() as cursor:
        # 20,000 filled signals of one automation, 20 pending ones of another.
        cursor.execute(
            "INSERT INTO automations_signal (automation_id, symbol, side, quantity, limit_price, reason, features, "
            "regime, status, status_reason, needs_approval, market_ts_ns, created_at, expires_at, sequence) "
            "SELECT CASE WHEN g %% 1000 = 0 THEN %s ELSE %s END, 'TEST-BTC', 'buy', 1, 1, '', '{}', '{}', "
            "CASE WHEN g %% 1000 = 0 THEN 'pending_approval' ELSE 'filled' END, '', false, g, "
            "now() - interval '1 hour', now() - interval '30 minutes', g FROM generate_series(1, 20000) g",
            [quiet.pk, busy.pk],
        )
        cursor.execute("ANALYZE automations_signal")
    now = timezone.now()
    # The expiry sweep and the pending list.
    expiring = Signal.objects.filter(status__in=[S.PENDING_APPROVAL, S.QUEUED, S.APPROVED], expires_at__lte=now)
    assert queryset_indexes(expiring.values_list("id", flat=True)) == {"signal_status_expiry"}
    assert expiring.count() == 20
    pending = Signal.objects.filter(status=S.PENDING_APPROVAL).order_by("id")
    assert "Seq Scan" not in queryset_indexes(pending)
    # One automation's signals (the compliance report), and the PROTECT check when one is deleted.
    mine = Signal.objects.filter(automation=quiet, created_at__gte=now - timedelta(days=1))
    assert queryset_indexes(mine) == {"signal_automation_created"}
    assert plan_indexes("SELECT 1 FROM automations_signal WHERE automation_id = %s LIMIT 1", [quiet.pk]) <= {
        "signal_automation_created", "signal_once_per_market_data"}
    # Detection's look-up of the signals already made from a pass's market times (automations.detection).
    assert plan_indexes(
        "SELECT s.side FROM automations_signal s WHERE s.automation_id = %s AND s.market_ts_ns = ANY(%s::bigint[])",
        [busy.pk, [5, 7]],
    ) == {"signal_once_per_market_data"}

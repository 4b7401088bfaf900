"""A fill carries its order's automation, so the automation's latest fills are an index range, not a join."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from automations.models import Signal
from execution import services
from execution.models import Fill, Order
from execution.selectors import slippage_gap
from tests.execution.conftest import make_automation, make_signal

S = Signal.Status


@pytest.mark.django_db
def test_fills_booked_by_the_execute_path_and_by_the_orm_carry_the_orders_automation(market):
    automation, other = make_automation(), make_automation(name="auto-y")
    for a in (automation, other, automation):
        services.order_execute(signal_id=make_signal(a, status=S.QUEUED).pk)
    fills = list(Fill.objects.select_related("order"))
    assert len(fills) == 3 and all(f.automation_id == f.order.automation_id for f in fills)
    order = Order.objects.filter(automation=other).get()
    orm = Fill.objects.create(order=order, price=Decimal("100"), quantity=Decimal("0.1"), filled_at=timezone.now(),
                              broker_fill_id="manual-1")
    assert Fill.objects.get(pk=orm.pk).automation_id == other.pk
    # The position read and the slippage window see only the automation's own fills.
    assert slippage_gap(automation.pk).fills == 2
    assert services._automation_position(other.pk).quantity == Decimal(order.filled_qty) + Decimal("0.1")


def _plan(sql: str, params: list[object]) -> str:
    with connection.cursor() as cursor:
        # Forbid the scans a small test table would otherwise get: what is left shows what the statement can use.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.django_db
def test_the_latest_fill_reads_are_an_index_range_on_the_fills_alone(market):
    automation = make_automation()
    services.order_execute(signal_id=make_signal(automation, status=S.QUEUED).pk)
    order = Order.objects.get()
    position = services._settle_read_sql(True).split("; ")[-1]
    plan = _plan(position.replace("%(order)s", "%s"), [order.pk])
    latest = plan.split("SubPlan")[0] if "SubPlan" in plan else plan
    assert "fill_automation_latest" in plan and "Sort" not in latest
    captured: list[str] = []
    with connection.execute_wrapper(lambda execute, sql, params, many, context: (captured.append(sql),
                                                                               execute(sql, params, many, context))[1]):
        slippage_gap(automation.pk)
    plan = _plan(captured[0], [automation.pk, 50])
    assert "fill_automation_latest" in plan
    assert "execution_order" not in plan  # No join over the automation's orders.

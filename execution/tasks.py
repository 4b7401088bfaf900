"""Celery tasks of the execute worker: thin, by id, late-acked, idempotent.

Every task here runs on the ``execute`` queue (``trading.queues``), the only
worker whose environment holds broker credentials. ``order_execute_task``
takes a signal id and nothing else; the service reloads and re-checks
everything, so a forged or replayed message can at most cause a re-check.
No ETA or countdown is ever used: a delayed order is a stale order.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from execution import services

_ORDER_TASK = {"acks_late": True, "reject_on_worker_lost": True, "time_limit": 30, "soft_time_limit": 25,
               "max_retries": 0}


@shared_task(name="execution.tasks.order_execute_task", **_ORDER_TASK)
def order_execute_task(signal_id: int) -> dict[str, Any] | None:
    order = services.order_execute(signal_id=int(signal_id))
    return None if order is None else {"order_id": order.pk, "status": order.status}


@shared_task(name="execution.tasks.order_reconcile_task", **_ORDER_TASK)
def order_reconcile_task() -> dict[str, int]:
    return services.orders_reconcile()


@shared_task(name="execution.tasks.orders_cancel_all_task", acks_late=True, reject_on_worker_lost=True,
             time_limit=120, soft_time_limit=110)
def orders_cancel_all_task(reason: str = "kill switch") -> dict[str, Any]:
    return services.orders_cancel_all(reason=str(reason)[:500])

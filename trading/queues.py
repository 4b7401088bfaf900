"""Queue names and task routes: one queue per worker kind."""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    INGEST = "ingest"
    DETECT = "detect"
    EXECUTE = "execute"
    DEFAULT = "default"


# Tasks reach their worker by name and route, never by import across layers:
# the detect worker enqueues "execution.tasks.order_execute_task" by name.
TASK_ROUTES = {
    "ingestion.tasks.*": {"queue": Queue.INGEST.value},
    "automations.tasks.detect_*": {"queue": Queue.DETECT.value},
    "execution.tasks.*": {"queue": Queue.EXECUTE.value},
    # Alert delivery and risk housekeeping ride on the detect worker; nothing
    # there holds broker credentials, and cancelling orders is execute's job.
    "risk.tasks.*": {"queue": Queue.DETECT.value},
}

ORDER_EXECUTE_TASK = "execution.tasks.order_execute_task"
DETECT_SYMBOL_TASK = "automations.tasks.detect_symbol_task"
# One pass over several symbols: what the ingest side sends per stored batch.
DETECT_SYMBOLS_TASK = "automations.tasks.detect_symbols_task"
INGEST_BATCH_TASK = "ingestion.tasks.ingest_batch_task"
ORDERS_CANCEL_ALL_TASK = "execution.tasks.orders_cancel_all_task"
ALERT_RAISE_TASK = "risk.tasks.alert_raise_task"

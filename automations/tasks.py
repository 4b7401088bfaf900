"""Celery tasks of the detect worker: thin wrappers that call one service each.

All names start with ``detect_`` so ``trading.queues.TASK_ROUTES`` sends them
to the ``detect`` queue. Beat schedule (set in the Celery app):
``detect_expire_signals_task`` every 5 s, ``detect_snapshot_coverage_task``
every minute, ``detect_snapshot_archive_task`` daily.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from celery import shared_task

from automations.detection import detect_symbol, detect_symbols
from automations.services import signals_expire, snapshot_coverage_check
from automations.snapshots import snapshots_archive

# The worker computes the repr of every task's return value (for its
# "succeeded" log line) whatever the log level: a pass's results, with their
# timings, cost about a millisecond to repr in full. The log line shows the
# first characters, as it does for any long result.
_RESULT_REPR_MAX = 80


@shared_task(
    name="automations.tasks.detect_symbol_task",
    acks_late=True,
    time_limit=60,
    soft_time_limit=50,
    resultrepr_maxsize=_RESULT_REPR_MAX,
)
def detect_symbol_task(symbol: str) -> dict[str, Any]:
    # The coalescing flag is cleared first, in the round trip that takes the
    # symbol's lock: data ingested from then on asks for a new detection, so
    # nothing that arrives during this run is missed.
    return detect_symbol(symbol=symbol, clear_pending=True).as_dict()


@shared_task(
    name="automations.tasks.detect_symbols_task",
    acks_late=True,
    time_limit=60,
    soft_time_limit=50,
    resultrepr_maxsize=_RESULT_REPR_MAX,
)
def detect_symbols_task(symbols: list[str]) -> list[dict[str, Any]]:
    # One task per ingested batch, for the symbols it touched whose pending
    # flag it set (coalescing): one pass shares the Redis and PostgreSQL round
    # trips and the signal transaction across the symbols. The flags are
    # cleared first, like detect_symbol_task's.
    return [r.as_dict() for r in detect_symbols(symbols=list(symbols), clear_pending=True)]


@shared_task(name="automations.tasks.detect_expire_signals_task", time_limit=60)
def detect_expire_signals_task() -> int:
    return signals_expire()


@shared_task(name="automations.tasks.detect_snapshot_coverage_task", time_limit=60)
def detect_snapshot_coverage_task() -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(c), "ratio": c.ratio} for c in snapshot_coverage_check()]


@shared_task(name="automations.tasks.detect_snapshot_archive_task", time_limit=3600)
def detect_snapshot_archive_task(older_than_days: int = 90) -> dict[str, Any]:
    return dataclasses.asdict(snapshots_archive(older_than_days=older_than_days))

"""Ingest worker tasks: thin wrappers over ``ingestion.services``."""

from __future__ import annotations

import psycopg
from celery import shared_task
from django.db import InterfaceError, OperationalError

from ingestion.services import decode_records, worker_pipeline

# A database that is briefly unreachable must not cost the batch: with late
# acknowledgement a task that raises is still acknowledged, so it is retried
# (a new message) with backoff instead. The raw store keeps the records either
# way, so even an exhausted retry is recovered by ``replay_raw``.
_TRANSIENT = (OperationalError, InterfaceError, psycopg.OperationalError)


@shared_task(
    name="ingestion.tasks.ingest_batch_task",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    autoretry_for=_TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=30,
)
def ingest_batch_task(stream: str, fmt: str, records: list[list[object]], symbol: str | None = None) -> None:
    """Store one batch of raw records. Idempotent: a redelivered batch adds nothing.

    Returns nothing: results are ignored, and Celery formats a task's return value for its
    log line on every call (~0.1 ms for the counts dict, a few % of a one-tick task).
    """
    worker_pipeline().ingest(stream=stream, fmt=fmt, records=decode_records(records), symbol=symbol)


@shared_task(name="ingestion.tasks.raw_seal_task", bind=True, ignore_result=True, max_retries=24)
def raw_seal_task(self) -> list[str]:
    """Seal yesterday's raw segments (manifest + Merkle root, read-only files).

    A writer idle since yesterday still holds the day open; the task retries
    every ten minutes until it lets go. A day that fails verification is not
    sealed and raises an alert instead.
    """
    from datetime import timedelta

    from celery import current_app
    from django.conf import settings
    from django.utils import timezone

    from ingestion.rawstore import DayBusyError, RawStore, SealError
    from trading.queues import ALERT_RAISE_TASK

    day = (timezone.now() - timedelta(days=1)).date()
    store = RawStore(settings.RAW_STORE_DIR)
    if day not in set(store.days()) or store.is_sealed(day):
        return []
    try:
        manifest = store.seal_day(day)
    except DayBusyError as exc:
        raise self.retry(exc=exc, countdown=600) from exc
    except SealError as exc:
        current_app.send_task(
            ALERT_RAISE_TASK,
            kwargs={
                "kind": "raw_seal_refused",
                "severity": "critical",
                "subject": f"Raw store day {day} failed verification",
                "message": "; ".join(str(p) for p in exc.problems[:20]),
                "dedup_key": f"raw_seal:{day}",
            },
        )
        raise
    return [str(day), str(manifest)]


@shared_task(name="ingestion.tasks.ticks_prune_task", ignore_result=True)
def ticks_prune_task() -> list[dict[str, object]]:
    """Drop tick partitions past hot retention whose raw days are sealed (see ``ingestion.retention``)."""
    from django.conf import settings

    from ingestion.rawstore import RawStore
    from ingestion.retention import DEFAULT_RETENTION_DAYS, decisions_as_dicts, ticks_prune

    days = getattr(settings, "TICK_RETENTION_DAYS", DEFAULT_RETENTION_DAYS)
    return decisions_as_dicts(ticks_prune(store=RawStore(settings.RAW_STORE_DIR), retention_days=days))

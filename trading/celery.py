"""The Celery application shared by every worker kind and by beat."""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab
from celery.signals import task_postrun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")

app = Celery("trading")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.on_after_configure.connect(weak=False)
def _conf_flatten(sender: Celery, source: object, **_kwargs: object) -> None:
    """Every Celery setting resolved once into the configuration's first layer.

    Celery reads its settings on every send and every task (routes, serializer,
    retry policy, ...). A key that ``CELERY_*`` in Django's settings does not
    set falls through that layer to Celery's defaults, and Django's
    ``LazySettings`` answers each such miss by raising ``AttributeError`` in
    Python: about a quarter of ``send_task``'s CPU. Resolved once here (a
    Django setting read at start-up, as Celery reads them anyway), later
    lookups stop at the first layer. ``app.conf.x = ...`` still overrides.
    """
    source.update({key: source[key] for key in source.maps[-1]})
app.autodiscover_tasks()

from trading.queues import TASK_ROUTES, Queue  # noqa: E402

app.conf.task_routes = TASK_ROUTES
app.conf.task_default_queue = Queue.DEFAULT.value
app.conf.beat_schedule = {
    "signals-expire": {"task": "automations.tasks.detect_expire_signals_task", "schedule": 5.0, "options": {"expires": 5}},
    "snapshots-coverage": {"task": "automations.tasks.detect_snapshot_coverage_task", "schedule": 60.0, "options": {"expires": 60}},
    "snapshots-archive": {"task": "automations.tasks.detect_snapshot_archive_task", "schedule": crontab(minute=20, hour=0)},
    "orders-reconcile": {"task": "execution.tasks.order_reconcile_task", "schedule": 15.0, "options": {"expires": 15}},
    "alerts-redeliver": {"task": "risk.tasks.alerts_redeliver_pending_task", "schedule": 60.0, "options": {"expires": 60}},
    "raw-seal-yesterday": {"task": "ingestion.tasks.raw_seal_task", "schedule": crontab(minute=5, hour=0)},
    "ticks-prune": {"task": "ingestion.tasks.ticks_prune_task", "schedule": crontab(minute=35, hour=0)},
}

# Signal handlers: full GC collections skip the workers' long-lived heap (gc_tuning);
# heartbeats for worker processes, a thread started when the worker is ready.
import trading.gc_tuning  # noqa: E402
import trading.heartbeat  # noqa: E402,F401


# Connections between tasks: the Django fixup no longer closes them around every task
# (``CELERY_DB_REUSE_MAX``); Django's own rule applies after each task, as after a web
# request: close a connection past CONN_MAX_AGE, or one that saw errors and is unusable.
# Not for a task run eagerly (in a test or a caller's transaction, which must keep its connection).
@task_postrun.connect(weak=False)
def _close_old_connections(sender: object = None, **_kwargs: object) -> None:
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()

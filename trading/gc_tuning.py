"""Garbage collection in the workers: the long-lived heap is frozen, so a full collection stops scanning it.

A worker's heap after Django, Celery, pandas and the apps are imported holds
about 150,000 tracked objects that live as long as the process. CPython's
full (generation 2) collection walks all of them: about 70 ms on this
project's 2-core machine, paid by whatever task is running when the
collector decides it is due. On the live path that is a tick that reaches
its order 70 ms late.

``gc.freeze()`` moves every object tracked at that moment to a permanent
generation that no collection scans. It is taken after a full collection
(so no cyclic garbage is frozen for good), when the worker is ready, and
again after its 1st, 16th and 256th task: the first tasks import lazily,
fill caches and open connections, and those objects live as long as the
process too. Each later collection walks only what is younger. Objects that
die later are freed by reference counting as before; only cycles made of
frozen objects could never be collected, and the collections before each
freeze leave none.

``WORKER_GC_FREEZE=0`` turns it off (settings).
"""

from __future__ import annotations

import gc

from celery.signals import task_postrun, worker_process_init, worker_ready
from django.conf import settings

# After these many tasks run in this process, the heap is collected and frozen again.
FREEZE_AFTER_TASKS = frozenset({1, 16, 256})

_tasks_run = 0


def heap_freeze() -> int:
    """Collect everything, then freeze what survives; returns the number of frozen objects."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@worker_ready.connect(weak=False)
@worker_process_init.connect(weak=False)
def _freeze_when_ready(**_kwargs: object) -> None:
    if settings.WORKER_GC_FREEZE:
        heap_freeze()


@task_postrun.connect(weak=False)
def _freeze_after_first_tasks(sender: object = None, **_kwargs: object) -> None:
    global _tasks_run
    if not settings.WORKER_GC_FREEZE or getattr(getattr(sender, "request", None), "is_eager", False):
        return
    _tasks_run += 1
    if _tasks_run in FREEZE_AFTER_TASKS:
        heap_freeze()

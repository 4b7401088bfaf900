"""Worker start-up tuning: the frozen heap (trading.gc_tuning) and Celery's resolved configuration."""

from __future__ import annotations

import gc

from celery.signals import worker_ready
from django.conf import settings

from trading import gc_tuning
from trading.celery import app


def test_worker_ready_freezes_the_heap_and_later_collections_skip_it() -> None:
    gc.unfreeze()
    try:
        worker_ready.send(sender=None)
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # Django, Celery and the apps are imported in this process.
        young = [object()]
        young.append(young)  # A cycle made after the freeze is still collected.
        del young
        assert gc.collect() >= 1
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_the_freeze_follows_the_first_tasks_only(monkeypatch) -> None:
    freezes: list[int] = []
    monkeypatch.setattr(gc_tuning, "heap_freeze", lambda: freezes.append(gc_tuning._tasks_run) or 0)
    monkeypatch.setattr(gc_tuning, "_tasks_run", 0)
    for _ in range(300):
        gc_tuning._freeze_after_first_tasks(sender=None)
    assert freezes == sorted(gc_tuning.FREEZE_AFTER_TASKS)


def test_the_freeze_can_be_turned_off(monkeypatch) -> None:
    monkeypatch.setattr(settings, "WORKER_GC_FREEZE", False)
    gc.unfreeze()
    worker_ready.send(sender=None)
    assert gc.get_freeze_count() == 0


def test_celery_settings_are_resolved_into_the_first_layer() -> None:
    conf = app.conf
    first = conf.maps[0]
    # Set in Django's settings (CELERY_*) and a Celery default nobody set: both answered by the first layer.
    assert first["task_acks_late"] is True and first["worker_prefetch_multiplier"] == 1
    assert first["broker_transport_options"]["visibility_timeout"] == settings.CELERY_BROKER_TRANSPORT_OPTIONS[
        "visibility_timeout"]
    assert first["task_publish_retry"] is True
    assert conf.task_serializer == "json" and conf.task_ignore_result is True

"""Tasks for the broker transport tests (tests/trading/test_kombu_redis.py), loaded by a worker with ``--include``."""

from __future__ import annotations

import os
import time

from trading.celery import app
from trading.redis_client import redis_client


@app.task(name="tests.trading.hop_tasks.record_task")
def record_task(key: str, index: int) -> None:
    redis_client().rpush(key, f"{index} {os.getpid()}")


@app.task(name="tests.trading.hop_tasks.hold_task")
def hold_task(key: str) -> None:
    """Say it started, then wait until released (at most 30 s) and say it finished."""
    client = redis_client()
    client.rpush(f"{key}:started", os.getpid())
    deadline = time.monotonic() + 30
    while not client.exists(f"{key}:release") and time.monotonic() < deadline:
        time.sleep(0.02)
    client.rpush(f"{key}:done", os.getpid())

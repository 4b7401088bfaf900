"""Process heartbeats: every process writes its name and time to Redis.

``/health`` reads them back; a process whose last beat is older than
``HEARTBEAT_STALE_S`` (30 s) is reported stale and the endpoint answers 503.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

import redis
from celery.signals import beat_init, worker_ready, worker_shutdown
from django.conf import settings

from trading.redis_client import redis_client

HEARTBEAT_KEY = "fp:heartbeat"
# Every process the supervisor runs; /health expects a beat from each.
EXPECTED_PROCESSES = ("web", "feed", "worker-ingest", "worker-detect", "worker-execute", "beat")

def beat(name: str, **info: object) -> None:
    payload = {"ts": time.time(), "pid": os.getpid(), "host": socket.gethostname(), **info}
    redis_client().hset(HEARTBEAT_KEY, name, json.dumps(payload))


def read_all() -> dict[str, dict]:
    raw = redis_client().hgetall(HEARTBEAT_KEY)
    return {k.decode(): json.loads(v) for k, v in raw.items()}


class HeartbeatThread(threading.Thread):
    """Beats every ``interval`` seconds until stopped; survives Redis blips."""

    def __init__(self, name: str, interval: float | None = None) -> None:
        super().__init__(name=f"heartbeat-{name}", daemon=True)
        self.process_name = name
        self.interval = interval or settings.HEARTBEAT_INTERVAL_S
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(redis.RedisError):
                beat(self.process_name)
            self.stop_event.wait(self.interval)


_worker_thread: HeartbeatThread | None = None


@beat_init.connect
@worker_ready.connect
def _start_worker_heartbeat(sender: object = None, **_: object) -> None:
    global _worker_thread
    name = os.environ.get("FP_PROCESS_NAME")
    if name and _worker_thread is None:
        _worker_thread = HeartbeatThread(name)
        _worker_thread.start()


@worker_shutdown.connect
def _stop_worker_heartbeat(sender: object = None, **_: object) -> None:
    if _worker_thread is not None:
        _worker_thread.stop_event.set()

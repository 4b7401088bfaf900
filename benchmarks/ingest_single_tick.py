"""CPU per single-tick ingest task in a real Celery ingest worker (the ingest hop of tick-to-order).

Starts one solo-pool ingest worker on a queue prefix of its own, sends it
``BENCH_TICKS`` tasks of one simulator quote each (as ``tick_to_order.py``
does), ``BENCH_SPACING_S`` apart, and reports the worker's CPU (user + system
from ``/proc``) per task, minus what it burns idle. Before each tick the
symbol's detect-pending flag is cleared, as a detect worker would, so every
task also sends its detect task. Also reports, in this process, the SQL
statements and Redis round trips of one ``ingest_batch_task`` call.

Figures (2-core machine shared with other work, load average ~4):

==========================================  =========  ==========
                                            before     after
==========================================  =========  ==========
worker CPU per single-tick task             7.0 ms     3.7-4.4 ms
in-process CPU per task (no Celery send)    2.5 ms     0.6-0.8 ms
SQL statements per task                     11         1
Redis round trips (+1: the detect publish)  2          1
==========================================  =========  ==========

("before" is commit 438c531; the in-process loop also clears the pending
flag before each call, one more Redis command than the task itself.)

What is left in the worker is mostly Celery: receiving and acknowledging the
message (acks_late keeps it in an unacked hash: a round trip each way), the
trace, and ``send_task`` for the detect task (~0.6 ms, a quarter of it
redis-py building a client per publish inside kombu).

Needs ``DATABASE_URL`` (a migrated database) and ``REDIS_URL``.
Run: ``.venv/bin/python benchmarks/ingest_single_tick.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")

import django  # noqa: E402

django.setup()

import redis.connection  # noqa: E402
from celery import Celery  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from benchmarks import _common  # noqa: E402
from ingestion import services  # noqa: E402
from ingestion.services import encode_records  # noqa: E402
from ingestion.tasks import ingest_batch_task  # noqa: E402
from trading import redis_keys  # noqa: E402
from trading.embedded import database_url  # noqa: E402
from trading.queues import INGEST_BATCH_TASK  # noqa: E402
from trading.redis_client import redis_client  # noqa: E402

TICKS = int(os.environ.get("BENCH_TICKS", "200"))
SPACING_S = float(os.environ.get("BENCH_SPACING_S", "0.02"))
SYMBOL = "BENCH-ING"


def _records(seq: int) -> list[list[object]]:
    now = time.time_ns()
    bid = 100 + (seq % 100) / 10
    payload = json.dumps({"type": "quote", "symbol": SYMBOL, "ts_ns": now, "bid": f"{bid:.2f}", "bid_size": "10",
                          "ask": f"{bid + 0.1:.2f}", "ask_size": "1"}).encode()  # fmt: skip
    return encode_records([(seq, now, payload)])


def in_process(stream: str) -> dict[str, object]:
    """SQL statements and Redis round trips of one warm ingest_batch_task call, in this process."""
    sent: list[str] = []
    send_task = services.current_app.send_task
    services.current_app.send_task = lambda name, *a, **kw: sent.append(name)  # type: ignore[method-assign]
    trips = [0]
    real = redis.connection.Connection.send_packed_command

    def counted(self: object, *args: object, **kwargs: object) -> object:
        trips[0] += 1
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        for seq in range(1, 6):
            ingest_batch_task(stream, "sim", _records(seq))
        client = redis_client()
        client.delete(redis_keys.detect_pending(SYMBOL))
        trips[0] = 0
        with CaptureQueriesContext(connection) as queries:
            ingest_batch_task(stream, "sim", _records(6))
        statements, round_trips = len(queries.captured_queries), trips[0]
        cpu = time.process_time()
        for seq in range(7, 207):
            client.delete(redis_keys.detect_pending(SYMBOL))
            ingest_batch_task(stream, "sim", _records(seq))
        cpu_ms = (time.process_time() - cpu) / 200 * 1e3
    finally:
        redis.connection.Connection.send_packed_command = real  # type: ignore[method-assign]
        services.current_app.send_task = send_task  # type: ignore[method-assign]
    return {"sql_statements": statements, "redis_round_trips": round_trips, "detect_tasks_sent": len(sent) and 1,
            "cpu_ms_per_task_without_celery": round(cpu_ms, 3)}  # fmt: skip


def in_worker(stream: str, run: str) -> dict[str, object]:
    prefix = f"bench-ing-{run}:"
    env = {**os.environ, "DATABASE_URL": database_url(connection.settings_dict), "REDIS_URL": settings.REDIS_URL,
           "CELERY_KEY_PREFIX": prefix, "LOG_LEVEL": "WARNING"}  # fmt: skip
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "trading", "worker", "-Q", "ingest", "--pool", "solo",
                               "-n", f"ingest-{run}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
                               "-l", "WARNING"], cwd=ROOT, env=env)  # fmt: skip
    sender = Celery("bench", broker=settings.CELERY_BROKER_URL)
    sender.conf.broker_transport_options = {"global_keyprefix": prefix}
    sender.conf.task_routes = {"ingestion.tasks.*": {"queue": "ingest"}}
    client = redis_client()

    def send(seq: int) -> None:
        client.delete(redis_keys.detect_pending(SYMBOL))  # as the detect worker would
        sender.send_task(INGEST_BATCH_TASK, args=[stream, "sim", _records(seq)])

    try:
        time.sleep(8)  # worker start-up
        for seq in range(1, 6):
            send(seq)
            time.sleep(0.05)
        time.sleep(1)
        cpu0, t0 = _common.cpu_ms(worker.pid), time.monotonic()
        time.sleep(4)
        idle_per_s = (_common.cpu_ms(worker.pid) - cpu0) / (time.monotonic() - t0)
        cpu0, t0 = _common.cpu_ms(worker.pid), time.monotonic()
        for seq in range(6, 6 + TICKS):
            send(seq)
            time.sleep(SPACING_S)
        time.sleep(1)
        cpu1, elapsed = _common.cpu_ms(worker.pid), time.monotonic() - t0
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
    return {"ticks": TICKS, "worker_idle_cpu_ms_per_s": round(idle_per_s, 2),
            "worker_cpu_ms_per_task": round((cpu1 - cpu0 - idle_per_s * elapsed) / TICKS, 3)}  # fmt: skip


def main() -> None:
    run = uuid.uuid4().hex[:6]
    stream = f"bench-single-{run}"
    try:
        out = {**in_process(stream), **in_worker(stream, run)}
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM ingestion_quote WHERE raw_stream = %s", [stream])
            out["stored"] = cursor.fetchone()[0]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM ingestion_quote WHERE raw_stream = %s", [stream])
            cursor.execute("DELETE FROM ingestion_clocksource WHERE source = %s", [stream])
    out["load_average_1m"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()

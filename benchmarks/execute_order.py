"""The execute worker's cost per automatic order, in-process: CPU, SQL statements, Redis round trips.

Creates queued (automatic) signals the way the detect worker leaves them,
publishes a 20-level book to Redis, and runs the body of
``execution.tasks.order_execute_task`` once per signal, in this process
(no Celery hop: its cost is the worker's fixed overhead, measured by
``benchmarks/tick_to_order.py``). Per order it reports the CPU time of this
process (``time.process_time``, every thread) for the whole task and up to
the paper broker's answer (the order is submitted; settling follows), the
wall time, and the statements and Redis commands issued (counted on 10
further orders: Django's query capture costs CPU of its own). The CPU
includes the live-push thread's work for the orders, as in the worker.
``BENCH_GAP_S`` pauses between orders as between ticks (caches go cold:
about 20 % more CPU per order than back to back). ``BENCH_PROFILE=1`` adds a
cProfile of the timed calls (sorted by ``BENCH_SORT``, cumulative).

Needs ``DATABASE_URL`` / ``REDIS_URL`` of a migrated database (setup_roles).
Run: ``.venv/bin/python benchmarks/execute_order.py`` (BENCH_ORDERS=200).
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from execution import services  # noqa: E402
from execution.models import Order  # noqa: E402
from execution.tasks import order_execute_task  # noqa: E402
from tests.execution.conftest import make_automation, make_book, make_signal, publish_market  # noqa: E402
from trading.redis_client import redis_client  # noqa: E402

ORDERS = int(os.environ.get("BENCH_ORDERS", "200"))
# A pause between orders, as between ticks in production (caches go cold; the push thread drains meanwhile).
GAP_S = float(os.environ.get("BENCH_GAP_S", "0"))
WARMUP = 5
COUNTED = 10


class _RedisCounter:
    """Counts Redis round trips (one per command, one per pipeline) of this process."""

    def __init__(self) -> None:
        self.count = 0
        self._orig = redis.connection.AbstractConnection.send_packed_command

    def __enter__(self) -> _RedisCounter:
        counter = self
        orig = self._orig

        def send(conn: object, command: object, check_health: bool = True) -> None:
            counter.count += 1
            return orig(conn, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        redis.connection.AbstractConnection.send_packed_command = self._orig  # type: ignore[method-assign]


def _answered_clock() -> list[float]:
    """Make ``order_settle`` note the CPU clock when it is called: the broker has answered, the order is submitted."""
    marks: list[float] = []
    settle = services.order_settle

    def noting(**kwargs: object) -> object:
        marks.append(time.process_time())
        return settle(**kwargs)

    services.order_settle = noting  # type: ignore[assignment]
    return marks


def main() -> None:
    run = uuid.uuid4().hex[:6]
    symbol = f"BENCH-EX-{run}"
    automation = make_automation(name=f"bench-exec-{run}", symbol=symbol, parameters={"quantity": "0.01"})
    client = redis_client()
    publish_market(client, make_book(symbol=symbol, ts_ns=time.time_ns()))
    signals = [make_signal(automation, status="queued", quantity="0.01", limit_price="100.20")
               for _ in range(ORDERS + WARMUP + COUNTED)]
    for signal in signals[:WARMUP]:
        order_execute_task.run(signal.pk)
    timed, counted = signals[WARMUP:WARMUP + ORDERS], signals[WARMUP + ORDERS:]
    marks = _answered_clock()
    cpu: list[float] = []
    to_answer: list[float] = []
    wall: list[float] = []
    statements: list[int] = []
    round_trips: list[int] = []
    profiler = cProfile.Profile() if os.environ.get("BENCH_PROFILE") == "1" else None
    for signal in timed:
        if GAP_S:
            time.sleep(GAP_S)
        if profiler is not None:
            profiler.enable()
        marks.clear()
        c0, w0 = time.process_time(), time.perf_counter()
        result = order_execute_task.run(signal.pk)
        c1, w1 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.disable()
        assert result is not None and result["status"] in ("submitted", "filled"), result
        cpu.append((c1 - c0) * 1e3)
        to_answer.append((marks[0] - c0) * 1e3)
        wall.append((w1 - w0) * 1e3)
    # Counted apart: capturing queries turns on Django's debug cursor, which costs CPU of its own.
    for signal in counted:
        with CaptureQueriesContext(connection) as queries, _RedisCounter() as redis_count:
            order_execute_task.run(signal.pk)
        statements.append(len(queries.captured_queries))
        round_trips.append(redis_count.count)
    if profiler is not None:
        stats = pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_SORT", "cumulative"))
        stats.print_stats(int(os.environ.get("BENCH_PROFILE_LINES", "60")))
    statuses = dict.fromkeys(("submitted", "filled"), 0)
    for status in Order.objects.filter(signal__in=[s.pk for s in timed]).values_list("status", flat=True):
        statuses[status] = statuses.get(status, 0) + 1
    print(json.dumps({
        "orders": len(timed), "statuses": statuses,
        "cpu_ms_per_order_median": round(statistics.median(cpu), 3),
        "cpu_ms_per_order_mean": round(statistics.mean(cpu), 3),
        # From the call to the broker's answer (the order is submitted; settling and closing follow).
        "cpu_ms_to_submitted_median": round(statistics.median(to_answer), 3),
        "wall_ms_per_order_median": round(statistics.median(wall), 3),
        "wall_ms_per_order_p99": round(sorted(wall)[min(len(wall) - 1, round(0.99 * (len(wall) - 1)))], 3),
        "sql_statements_per_order": statistics.median(statements),
        "redis_round_trips_per_order": statistics.median(round_trips),
        "profiled": profiler is not None,
        "load_average_1m": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()

"""CPU per tick of the detect worker's task body, in process (issue 6's detect hop).

The same setup as ``tick_to_order.py``: an ``imbalance_breakout`` automation
(lookback 2, no approval gate) on a rising mid with bids outweighing asks, so
every tick makes one buy signal routed straight to execution. Per tick the
script publishes the book, ingests one quote through the ingest worker's own
pipeline (so the windows, the latest quote and the pending flag are what the
detect worker sees in production), then runs ``detect_symbols_task``'s body
with the symbols the ingest side asked for. Only that call is measured:

- CPU (``time.process_time``, every thread of this process, up to the
  moment the live pushes of the pass have been sent by the push sender
  thread, so they count too) and wall time per call (to its return);
- SQL statements per call (every psycopg execute and transaction command) and Redis round trips
  (packed commands sent on any connection, the Celery send included);
- with ``--profile``, a cProfile of the measured calls (cumulative and tottime).

The execute task is really sent (kombu over Redis, under a key prefix of its
own whose queue is deleted at the end), so its cost is in the figure.

Needs ``DATABASE_URL`` (migrated, ``setup_roles``) and ``REDIS_URL``.
Run: ``.venv/bin/python benchmarks/detect_tick.py [--ticks 200] [--spacing 0.4] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")
PREFIX = f"bench-dt-{uuid.uuid4().hex[:6]}:"
os.environ["CELERY_KEY_PREFIX"] = PREFIX

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
import psycopg._connection_base  # noqa: E402
import redis.connection  # noqa: E402
from celery import current_app  # noqa: E402

import trading.celery  # noqa: E402,F401 - the project's Celery app, as in a worker.
from automations.models import Automation, Signal  # noqa: E402
from automations.tasks import detect_symbols_task  # noqa: E402
from ingestion.services import decode_records, encode_records, worker_pipeline  # noqa: E402
from tests.execution.conftest import make_book, publish_market  # noqa: E402
from trading.push import flush  # noqa: E402
from trading.queues import DETECT_SYMBOLS_TASK, ORDER_EXECUTE_TASK  # noqa: E402
from trading.redis_client import redis_client  # noqa: E402

SYMBOL = "BENCH-DT"

_round_trips = [0]
_send_packed = redis.connection.AbstractConnection.send_packed_command


def _counting_send(self, command, check_health=True):  # type: ignore[no-untyped-def]
    _round_trips[0] += 1
    return _send_packed(self, command, check_health)


redis.connection.AbstractConnection.send_packed_command = _counting_send  # type: ignore[method-assign]

# Every statement sent to PostgreSQL, whichever cursor sends it (Django's, or a plain psycopg
# cursor on the same connection, which CaptureQueriesContext does not see), and the
# transaction commands psycopg sends itself (BEGIN, COMMIT).
_statements: list[str] = []
_execute = psycopg.Cursor.execute
_exec_command = psycopg._connection_base.BaseConnection._exec_command


def _counting_execute(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
    _statements.append(" ".join(str(query if isinstance(query, str | bytes) else repr(query)).split())[:150])
    return _execute(self, query, params, **kwargs)


def _counting_exec_command(self, command, result_format=0):  # type: ignore[no-untyped-def]
    _statements.append(str(command)[:150])
    return _exec_command(self, command, result_format)


psycopg.Cursor.execute = _counting_execute  # type: ignore[method-assign]
psycopg._connection_base.BaseConnection._exec_command = _counting_exec_command  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ticks", type=int, default=int(os.environ.get("BENCH_TICKS", "200")))
    parser.add_argument("--warmup", type=int, default=20)
    # Seconds between ticks (tick_to_order sends one every 0.4 s): a process that idles between
    # ticks runs each one with colder caches than a tight loop does.
    parser.add_argument("--spacing", type=float, default=float(os.environ.get("BENCH_SPACING_S", "0")))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="cumulative,tottime")
    parser.add_argument("--lines", type=int, default=45)
    args = parser.parse_args()

    automation = Automation.objects.filter(name="bench-detect").first() or Automation(name="bench-detect", symbol=SYMBOL)
    automation.strategy = "imbalance_breakout"
    automation.parameters = {"quantity": "0.01", "lookback": 2, "imbalance_threshold": 0.3}
    automation.status = Automation.Status.ACTIVE
    automation.approval_threshold = 0
    automation.require_approval = False
    automation._change_reason = "detect tick benchmark"
    automation.save()
    from risk.models import RiskState

    # A benchmark must not trip the signal-rate breaker half way: no hourly limit on its automation.
    RiskState.objects.filter(automation_id=automation.pk).update(signal_times=[])

    detect_requests: list[list[str]] = []
    real_send = current_app.send_task
    sent_execute: list[int] = []

    def send_task(name, args=None, kwargs=None, **options):  # type: ignore[no-untyped-def]
        if name == DETECT_SYMBOLS_TASK:
            detect_requests.append(list(args[0]))
            return None
        if name == ORDER_EXECUTE_TASK:
            sent_execute.append(args[0])
        return real_send(name, args=args, kwargs=kwargs, **options)

    current_app.send_task = send_task  # type: ignore[method-assign]

    client = redis_client()
    pipeline = worker_pipeline()
    stream = f"bench-dt-{uuid.uuid4().hex[:6]}"
    base = Decimal("100.00") + Decimal(int(time.time()) % 1000)
    cpu: list[float] = []
    wall: list[float] = []
    queries: list[int] = []
    trips: list[int] = []
    signals: list[int] = []
    phases: dict[str, list[float]] = {}
    last_statements: list[str] = []
    profiler = (
        cProfile.Profile(time.thread_time) if args.profile else None
    )  # CPU of this thread, not wall (waits on the servers excluded)
    total = args.warmup + args.ticks
    for i in range(total):
        if args.spacing:
            time.sleep(args.spacing)
        bid = base + Decimal("0.10") * i
        now_ns = time.time_ns()
        publish_market(client, make_book(symbol=SYMBOL, ts_ns=now_ns, bid=str(bid), ask=str(bid + Decimal("0.10"))))
        payload = json.dumps(
            {
                "type": "quote",
                "symbol": SYMBOL,
                "ts_ns": now_ns,
                "bid": str(bid),
                "bid_size": "10",
                "ask": str(bid + Decimal("0.10")),
                "ask_size": "1",
            }
        ).encode()
        detect_requests.clear()
        pipeline.ingest(stream=stream, fmt="sim", records=decode_records(encode_records([(i + 1, now_ns, payload)])))
        if not detect_requests:
            raise SystemExit("the ingest side asked for no detection")
        measured = i >= args.warmup
        flush()  # The previous tick's pushes are sent before this tick is timed.
        before_sent = len(sent_execute)
        trips0 = _round_trips[0]
        _statements.clear()
        if measured and profiler:
            profiler.enable()
        c0, w0 = time.process_time(), time.perf_counter()
        for symbols in detect_requests:
            results = detect_symbols_task(symbols)
        w1 = time.perf_counter()
        # The live pushes of this pass are sent by this process's sender thread: their CPU counts.
        flush()
        c1 = time.process_time()
        if measured and profiler:
            profiler.disable()
        if measured:
            cpu.append((c1 - c0) * 1e3)
            wall.append((w1 - w0) * 1e3)
            queries.append(len(_statements))
            last_statements = list(_statements)
            trips.append(_round_trips[0] - trips0)
            signals.append(len(sent_execute) - before_sent)
            for key, value in results[0]["timings_ms"].items():
                if key.startswith("cpu_"):
                    phases.setdefault(key, []).append(value)
    flush()
    last = results[0]
    client.delete(f"{PREFIX}execute")
    made = Signal.objects.filter(automation=automation, status=Signal.Status.QUEUED).count()
    print(
        json.dumps(
            {
                "ticks": args.ticks,
                "cpu_ms_per_tick": {
                    "median": round(statistics.median(cpu), 3),
                    "mean": round(statistics.fmean(cpu), 3),
                    "p90": round(sorted(cpu)[int(0.9 * (len(cpu) - 1))], 3),
                },
                "wall_ms_per_tick": {
                    "median": round(statistics.median(wall), 3),
                    "p90": round(sorted(wall)[int(0.9 * (len(wall) - 1))], 3),
                },
                "cpu_ms_per_phase_median": {k: round(statistics.median(v), 3) for k, v in phases.items()},
                "sql_statements_per_tick": statistics.median(queries),
                "redis_round_trips_per_tick": statistics.median(trips),
                "execute_tasks_sent_per_tick": statistics.fmean(signals),
                "last_result": {k: last[k] for k in ("automations", "evaluated", "intents", "signals")},
                "queued_signals_total": made,
                "load_average_1m": os.getloadavg()[0],
            }
        )
    )
    if last_statements:
        print("statements of the last tick:")
        for sql in last_statements:
            print("  ", sql)
    if profiler:
        for key in args.sort.split(","):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.lines)
            print(out.getvalue())


if __name__ == "__main__":
    main()

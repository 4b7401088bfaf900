"""Tick ingested to order submitted on the automatic path, through the real queues; median and p99.

Target: p99 under 20 ms on the embedded stack. Real processes, one Celery
worker per queue (ingest, detect, execute; solo pools), started here with a
queue prefix of their own on ``DATABASE_URL`` / ``REDIS_URL`` (migrated).

The path timed is production's: ``ingestion.tasks.ingest_batch_task`` (parse,
validate, COPY, publish quote, one detect task) -> ``detect_symbol_task``
(features, regime, strategy, signal, signal-rate breaker, gating: automatic)
-> ``order_execute_task`` (re-checks, pre-trade check, order, paper broker).
Each tick is one quote in the simulator's format whose venue and receive
time are the moment it is sent; the clock stops at the order's
``submitted_at`` (same host clock). An ``imbalance_breakout`` automation
(lookback 2, no approval gate) sees a rising mid with bids outweighing asks,
so every tick makes one buy signal. The book the paper broker fills against
is published to Redis with each tick (the ingest worker publishes books from
L2 messages, which the simulator's quote does not carry).

Warm-up: ``BENCH_WARMUP`` ticks (default 5) go through the same path first
and are left out of every figure: a worker's first task pays one-time costs
(connections, prepared statements, caches filled, lazy imports) that are not
the per-tick cost. The CPU counters start after them.

Creates an automation ``bench-t2o`` on ``BENCH-T2O`` (left for inspection).
``BENCH_STAGES=1`` adds where the time goes, from the workers' own INFO log
lines (task received / succeeded, millisecond stamps): e.g. on a quiet
machine, 2026-11-24: sent -> ingest received 1.8 ms, ingest task 3.5 ms,
detect received -> execute received 9.0 ms, execute task 13 ms (of which ~4
up to ``submitted``).

Run: ``.venv/bin/python benchmarks/tick_to_order.py`` (BENCH_TICKS=40, BENCH_WARMUP=5).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")

import django  # noqa: E402

django.setup()

from celery import Celery  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from automations.models import Automation  # noqa: E402
from benchmarks import _common  # noqa: E402
from execution.models import Order  # noqa: E402
from ingestion.services import encode_records  # noqa: E402
from tests.execution.conftest import make_book, publish_market  # noqa: E402
from trading.embedded import database_url  # noqa: E402
from trading.queues import INGEST_BATCH_TASK  # noqa: E402
from trading.redis_client import redis_client  # noqa: E402

TICKS = int(os.environ.get("BENCH_TICKS", "40"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "5"))
SPACING_S = float(os.environ.get("BENCH_SPACING_S", "0.4"))
SYMBOL = "BENCH-T2O"
# BENCH_STAGES=1: the workers log at INFO into files, and the figures gain each hop's and each task's wall time from
# Celery's "received" / "succeeded" lines (millisecond timestamps). A diagnosis: the log lines cost the workers CPU.
STAGES = os.environ.get("BENCH_STAGES") == "1"
QUEUES = ("ingest", "detect", "execute")
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO \S+ \d+ Task \S+ (received|succeeded)")


def _worker(queue: str, env: dict[str, str], run: str, log: Path | None) -> subprocess.Popen:
    level = "INFO" if log else "WARNING"
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "trading", "worker", "-Q", queue,
                             "--pool", "solo", "-n", f"{queue}-{run}@%h", "--without-gossip", "--without-mingle",
                             "--without-heartbeat", "-l", level], cwd=ROOT, env={**env, "LOG_LEVEL": level},
                            stdout=log.open("wb") if log else None, stderr=subprocess.STDOUT if log else None)


def _task_events(log: Path) -> tuple[list[float], list[float]]:
    """A worker log's task received and succeeded times (ms since the epoch, UTC), in order."""
    events: dict[str, list[float]] = {"received": [], "succeeded": []}
    for line in log.read_text(errors="replace").splitlines():
        if match := _LOG_LINE.match(line):
            at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
            events[match[2]].append(at.timestamp() * 1e3)
    return events["received"], events["succeeded"]


def _stages(logs: dict[str, Path], sent_ns: list[int]) -> dict[str, float]:
    """Per tick, the first event of each kind after the previous step; the medians of the gaps (ms)."""
    events = {q: _task_events(log) for q, log in logs.items()}

    def after(times: list[float], t: float) -> float:
        return next((x for x in times if x >= t), math.nan)

    gaps: dict[str, list[float]] = {}
    for ns in sent_ns:
        t = ns / 1e6 - 1  # Log times are cut to the millisecond.
        marks = {"sent": t + 1}
        for queue in QUEUES:
            received, succeeded = events[queue]
            marks[f"{queue}_received"] = t = after(received, t)
            marks[f"{queue}_succeeded"] = after(succeeded, t)
        steps = [("sent", "ingest_received"), ("ingest_received", "ingest_succeeded"),
                 ("ingest_succeeded", "detect_received"), ("detect_received", "detect_succeeded"),
                 ("detect_received", "execute_received"), ("execute_received", "execute_succeeded")]
        for a, b in steps:
            gaps.setdefault(f"{a}_to_{b}", []).append(marks[b] - marks[a])
    return {k: round(statistics.median(v), 1) for k, v in gaps.items() if not any(map(math.isnan, v))}


def main() -> None:
    run = uuid.uuid4().hex[:6]
    automation = Automation.objects.filter(name="bench-t2o").first() or Automation(name="bench-t2o", symbol=SYMBOL)
    automation.strategy = "imbalance_breakout"
    automation.parameters = {"quantity": "0.01", "lookback": 2, "imbalance_threshold": 0.3}
    automation.status = Automation.Status.ACTIVE
    automation.approval_threshold = 0
    automation.require_approval = False
    automation._change_reason = "tick-to-order benchmark"
    automation.save()

    db = connection.settings_dict
    prefix = f"bench-t2o-{run}:"
    env = {**os.environ, "DATABASE_URL": database_url(db),
           "REDIS_URL": settings.REDIS_URL, "CELERY_KEY_PREFIX": prefix, "LOG_LEVEL": "WARNING"}
    logs = {q: Path(tempfile.gettempdir()) / f"bench-t2o-{run}-{q}.log" for q in QUEUES} if STAGES else {}
    workers = [_worker(q, env, run, logs.get(q)) for q in QUEUES]
    sender = Celery("bench", broker=settings.CELERY_BROKER_URL)
    sender.conf.broker_transport_options = {"global_keyprefix": prefix}
    sender.conf.task_routes = {"ingestion.tasks.*": {"queue": "ingest"}}
    client = redis_client()
    sent: dict[int, int] = {}
    try:
        time.sleep(8)  # Worker start-up (Django + Celery import) before the first tick.
        cpu0: list[float] = []
        base = Decimal("100.00") + Decimal(int(time.time()) % 1000)
        stream = f"bench-t2o-{run}"
        for i in range(WARMUP + TICKS):
            if i == WARMUP:
                time.sleep(1)  # The warm-up ticks' work is done before the counters start.
                cpu0 = [_common.cpu_ms(p.pid) for p in workers]
            bid = base + Decimal("0.10") * i
            now_ns = time.time_ns()
            book = make_book(symbol=SYMBOL, ts_ns=now_ns, bid=str(bid), ask=str(bid + Decimal("0.10")))
            publish_market(client, book)
            payload = json.dumps({"type": "quote", "symbol": SYMBOL, "ts_ns": now_ns, "bid": str(bid), "bid_size": "10",
                                  "ask": str(bid + Decimal("0.10")), "ask_size": "1"}).encode()
            sender.send_task(INGEST_BATCH_TASK, args=[stream, "sim", encode_records([(i + 1, now_ns, payload)])])
            if i >= WARMUP:
                sent[now_ns] = i
            time.sleep(SPACING_S)
        time.sleep(3)
        cpu1 = [_common.cpu_ms(p.pid) for p in workers]
    finally:
        for proc in workers:
            proc.terminate()
            proc.wait(timeout=30)
    latencies: list[float] = []
    to_signal: list[float] = []
    to_order: list[float] = []
    to_broker: list[float] = []
    # The signal's market time is the tick's venue time as stored (microsecond precision in PostgreSQL).
    first_ns = min(sent) - 1_000_000
    for market_ts_ns, signal_at, order_at, submitted in Order.objects.filter(
            automation=automation, submitted_at__isnull=False, signal__market_ts_ns__gte=first_ns).values_list(
            "signal__market_ts_ns", "signal__created_at", "created_at", "submitted_at"):
        tick_ms = market_ts_ns / 1e6
        latencies.append(submitted.timestamp() * 1e3 - tick_ms)
        # Stages, by the timestamps each step writes: ingest + detection (signal born), the execute
        # hop + decision (order created), the paper broker's answer (submitted).
        to_signal.append(signal_at.timestamp() * 1e3 - tick_ms)
        to_order.append((order_at - signal_at).total_seconds() * 1e3)
        to_broker.append((submitted - order_at).total_seconds() * 1e3)
    if not latencies:
        raise SystemExit("no order was submitted: see the worker output above")
    print(json.dumps({
        "ticks": len(sent), "orders": len(latencies),
        "tick_to_submitted_median_ms": round(statistics.median(latencies), 1),
        "tick_to_submitted_p99_ms": round(_common.percentile(latencies, 0.99), 1),
        "tick_to_submitted_max_ms": round(max(latencies), 1),
        "stage_medians_ms": {"tick_to_signal_created": round(statistics.median(to_signal), 1),
                             "signal_to_order_created": round(statistics.median(to_order), 1),
                             "order_created_to_submitted": round(statistics.median(to_broker), 1)},
        # CPU per tick of each worker, whatever else the machine is doing: the floor under the wall figures.
        "worker_cpu_ms_per_tick": {q: round((b - a) / len(sent), 1)
                                   for q, a, b in zip(QUEUES, cpu0, cpu1, strict=True)},
        **({"stages_from_worker_logs_ms": _stages(logs, sorted(sent))} if STAGES else {}),
        "load_average_1m": os.getloadavg()[0],
        "host_speed_ms": _common.host_speed_ms(),
        "target": "p99 < 20 ms on the embedded stack",
    }))


if __name__ == "__main__":
    main()

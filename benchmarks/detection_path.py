"""Detection cost per batch as the number of active automations grows, on real PostgreSQL and Redis.

The target: 1,000 automations keep up with 5,000 ticks/s on 2 cores with a
detection lag under one second. The feed batches every 200 ms, so one cycle
brings 1,000 quotes. The ingest side asks for detection with one
``detect_symbols_task`` per group of the batch's symbols
(``settings.DETECT_TASK_GROUPS``, one group per detect worker): on one symbol
that is one pass per cycle, on 100 symbols one pass per group (10 quotes per
symbol). With two detect workers on disjoint groups, a cycle must cost under
2 x 200 ms of worker time to keep up (one symbol: under 200 ms, one worker),
and a quote then waits at most one cycle plus its own detection (< 1 s). The
``--lag`` scenario measures that with a live ingest side.

Scenarios: 1, 10, 100, 1,000 automations on one symbol, and 1,000 spread over
100 symbols. Automations are a mix of the three shipped strategies with
spread-out parameters (so some signal, most do not), no approval gate, no
regime restriction, no rate limit: every signal is created, snapshotted,
audited and routed like in production (the execute task is captured, not
sent). Per scenario the script appends one cycle of quotes and trades
(COPY, not timed: that is ingest's cost), publishes the book and quote to
Redis, then times the detection of every symbol. Figures are medians over
``BENCH_CYCLES`` cycles (after one warm-up cycle); ``per_signal_ms`` is the
cost of creating and routing one signal, ``no_signal_ms`` the cycle cost
without the signal writes.

Needs ``DATABASE_URL`` (a migrated database) and ``REDIS_URL``. Automations
are created as ``bench-<pid>-...`` and paused afterwards; quotes and trades
are written under stream ``bench-<pid>`` and deleted afterwards.
Run: ``.venv/bin/python benchmarks/detection_path.py`` (cost per cycle; ``BENCH_SCENARIOS=a1000,a1000s100``
runs only the named scenarios), or with
``--lag`` for the detection lag with a live ingest side (``BENCH_LAG_S`` seconds,
default 20; see ``lag_scenario``).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")

import django

django.setup()

from celery import current_app  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from automations import detection  # noqa: E402
from automations.models import Automation  # noqa: E402
from automations.strategies import get_strategy  # noqa: E402
from automations.tasks import detect_symbol_task, detect_symbols_task  # noqa: E402
from benchmarks import _common  # noqa: E402
from trading import redis_keys  # noqa: E402
from trading.redis_client import redis_client  # noqa: E402

CYCLES = int(os.environ.get("BENCH_CYCLES", "5"))
LAG_TASKS = os.environ.get("BENCH_LAG_TASKS", "batch")
LAG_WORKERS = int(os.environ.get("BENCH_LAG_WORKERS", "2"))  # The deployment's two detect workers.
LAG_GROUPS = int(os.environ.get("BENCH_LAG_GROUPS", str(settings.DETECT_TASK_GROUPS)))
WARMUP_S = 3.0  # Lag scenario: the steady_* figures leave out lags measured in the first seconds.
if LAG_TASKS not in ("batch", "symbol"):
    raise SystemExit(f"BENCH_LAG_TASKS must be 'batch' or 'symbol', not {LAG_TASKS!r}")
TICKS_PER_CYCLE = 1000  # 5,000 ticks/s in 200 ms batches
CYCLE_S = 0.2
WORKERS = 2
PID = os.getpid()
PID_PARENT = PID  # The ingest child writes under its parent's names.
STREAM = f"bench-{PID}"
sent: list[str] = []
current_app.send_task = lambda name, args=None, kwargs=None, **kw: sent.append(name)  # No broker in a benchmark.


class Market:
    """A random-walk quote and trade stream per symbol, with an L2 book around the touch."""

    seq = 0  # One raw-record counter for the whole stream, as in the raw store.

    def __init__(self, symbol: str, seed: int) -> None:
        self.symbol = symbol
        self.rng = random.Random(seed)
        self.mid_ticks = 1_000_000  # 10,000.00 at a 0.01 tick
        self.ts_ns = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1e9) + seed * 1000

    def step(self, n: int) -> tuple[list[tuple], list[tuple]]:
        quotes, trades = [], []
        for _ in range(n):
            self.ts_ns += self.rng.randint(100_000, 400_000)
            self.mid_ticks += self.rng.choice((-2, -1, 0, 0, 1, 2))
            half = self.rng.choice((1, 1, 2))
            bid, ask = self.mid_ticks - half, self.mid_ticks + half
            Market.seq += 1
            ts = datetime.fromtimestamp(self.ts_ns / 1e9, tz=UTC)
            quotes.append(
                (
                    STREAM,
                    Market.seq,
                    self.symbol,
                    ts,
                    ts,
                    f"{bid / 100:.2f}",
                    f"{self.rng.uniform(0.1, 5):.3f}",
                    f"{ask / 100:.2f}",
                    f"{self.rng.uniform(0.1, 5):.3f}",
                )
            )
            if self.rng.random() < 0.3:
                side = self.rng.choice(("buy", "sell"))
                price = ask if side == "buy" else bid
                trades.append(
                    (
                        STREAM,
                        Market.seq,
                        self.symbol,
                        ts,
                        ts,
                        f"{price / 100:.2f}",
                        f"{self.rng.uniform(0.01, 1):.3f}",
                        side,
                        f"{self.symbol}-{Market.seq}",
                    )
                )
        self.last = (bid, ask)
        return quotes, trades

    def publish(self, client) -> None:
        self.publish_to(client)

    def publish_to(self, client) -> None:
        """Write the book and the latest quote (to a client or a pipeline: two SETs)."""
        bid, ask = self.last
        book = {
            "symbol": self.symbol,
            "ts_ns": self.ts_ns,
            "bids": [[f"{(bid - i) / 100:.2f}", f"{1 + i * 0.5:.3f}"] for i in range(50)],
            "asks": [[f"{(ask + i) / 100:.2f}", f"{1 + i * 0.5:.3f}"] for i in range(50)],
        }
        client.set(redis_keys.book(self.symbol), json.dumps(book))
        client.set(
            redis_keys.quote(self.symbol),
            json.dumps(
                {
                    "symbol": self.symbol,
                    "source_ts_ns": self.ts_ns,
                    "recv_ts_ns": time.time_ns(),
                    "bid": book["bids"][0][0],
                    "bid_size": "1",
                    "ask": book["asks"][0][0],
                    "ask_size": "1",
                }
            ),
        )


def detection_groups(symbols: list[str]) -> list[list[str]]:
    """The symbols in ``settings.DETECT_TASK_GROUPS`` groups, as ``ingestion.services.request_detection`` forms them."""
    groups: dict[int, list[str]] = {}
    for sym in symbols:
        groups.setdefault(zlib.crc32(sym.encode()) % settings.DETECT_TASK_GROUPS, []).append(sym)
    return [groups[g] for g in sorted(groups)]


def copy_rows(quotes: list[tuple], trades: list[tuple]) -> None:
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(
            "COPY ingestion_quote (raw_stream, raw_seq, symbol, source_ts, recv_ts, bid, bid_size, ask, ask_size) FROM STDIN"
        ) as copy:
            for row in quotes:
                copy.write_row(row)
        if trades:
            with raw.copy(
                "COPY ingestion_trade (raw_stream, raw_seq, symbol, source_ts, recv_ts, price, size, aggressor, trade_id)"
                " FROM STDIN"
            ) as copy:
                for row in trades:
                    copy.write_row(row)


def automation_rows(prefix: str, symbols: list[str], count: int, rng: random.Random) -> list[Automation]:
    rows = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            name, raw = (
                "microprice_reversion",
                {"quantity": "0.01", "window": rng.choice((20, 50, 100, 200)), "entry_z": round(rng.uniform(2.5, 6.0), 2)},
            )
        elif kind == 1:
            name, raw = "imbalance_breakout", {"quantity": "0.01", "lookback": rng.choice((50, 100, 200))}
        else:
            name, raw = (
                "trade_flow_momentum",
                {
                    "quantity": "0.01",
                    "window_ms": rng.choice((1000, 5000)),
                    "min_trades": rng.choice((20, 50, 100)),
                    "min_flow_ratio": round(rng.uniform(0.5, 0.95), 2),
                },
            )
        strategy = get_strategy(name)
        rows.append(
            Automation(
                name=f"{prefix}-{i}",
                symbol=symbols[i % len(symbols)],
                strategy=name,
                parameters=strategy.params_as_json(strategy.validate_params(raw)),
                status=Automation.Status.ACTIVE,
                approval_threshold=0,
                snapshot_levels=20,
            )
        )
    return rows


def scenario(label: str, n_automations: int, n_symbols: int) -> dict:
    rng = random.Random(n_automations * 1000 + n_symbols)
    symbols = [f"B{PID}-{label}-{i}" for i in range(n_symbols)]
    markets = [Market(s, seed=i) for i, s in enumerate(symbols)]
    client = redis_client()
    # Bulk creation for the setup only: it is not a configuration change a
    # person makes, and it writes no history (bulk_create sends no signals).
    Automation.objects.bulk_create(automation_rows(f"bench-{PID}-{label}", symbols, n_automations, rng), batch_size=500)
    per_symbol_ticks = TICKS_PER_CYCLE // n_symbols
    # History for the windows (the regime tagger reads 300 quotes).
    for market in markets:
        copy_rows(*market.step(400))
        market.publish(client)
    cycles = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = cursor.fetchone()[0]
    for cycle in range(CYCLES + 1):
        for market in markets:
            copy_rows(*market.step(per_symbol_ticks))
            market.publish(client)
        started, cpu0, pg0 = time.perf_counter(), time.process_time(), backend_cpu_s(backend_pid)
        signals = 0
        signal_ms = 0.0
        evaluate_ms = 0.0
        lags = []
        # One pass per group of the cycle's symbols, as ingestion.services.request_detection
        # asks for them (detect_symbols_task's body, flags aside), one after the other here.
        for group in detection_groups([market.symbol for market in markets]):
            for result in detection.detect_symbols(symbols=group):
                signals += sum(result.signals.values())
                evaluate_ms += result.timings_ms.get("evaluate", 0.0)
                if result.lag_ms is not None:
                    lags.append(result.lag_ms)
            signal_ms += result.timings_ms.get("signals", 0.0)  # Shared by the pass's symbols.
        elapsed = (time.perf_counter() - started) * 1e3
        cpu_ms, pg_ms = (time.process_time() - cpu0) * 1e3, (backend_cpu_s(backend_pid) - pg0) * 1e3
        if cycle > 0:  # The first cycle warms caches and connections.
            cycles.append(
                {
                    "ms": elapsed,
                    "cpu_ms": cpu_ms,
                    "pg_ms": pg_ms,
                    "signals": signals,
                    "signal_ms": signal_ms,
                    "evaluate_ms": evaluate_ms,
                    "max_lag_ms": max(lags) if lags else None,
                }
            )
    Automation.objects.filter(name__startswith=f"bench-{PID}-{label}").update(status=Automation.Status.PAUSED)
    cycle_ms = statistics.median(c["ms"] for c in cycles)
    no_signal_ms = statistics.median(c["ms"] - c["signal_ms"] for c in cycles)
    total_signals = sum(c["signals"] for c in cycles)
    per_signal = (sum(c["signal_ms"] for c in cycles) / total_signals) if total_signals else None
    # The groups' passes run on the detect workers in parallel (disjoint symbols, no lock waits);
    # one symbol is one group. This assumes a free core per worker.
    parallel = min(WORKERS, n_symbols)
    worker_ms_per_cycle = cycle_ms / parallel
    return {
        "automations": n_automations,
        "symbols": n_symbols,
        "ticks_per_cycle": per_symbol_ticks * n_symbols,
        "cycle_ms_median": round(cycle_ms, 2),
        "cycle_ms_max": round(max(c["ms"] for c in cycles), 2),
        "no_signal_ms_median": round(no_signal_ms, 2),
        # CPU of this process and of its PostgreSQL backend per cycle: steadier than wall time on a shared machine.
        "cpu_ms_median": round(statistics.median(c["cpu_ms"] for c in cycles), 2),
        "pg_backend_cpu_ms_median": round(statistics.median(c["pg_ms"] for c in cycles), 2),
        "evaluate_ms_median": round(statistics.median(c["evaluate_ms"] for c in cycles), 2),
        "evaluate_us_per_automation": round(statistics.median(c["evaluate_ms"] for c in cycles) * 1e3 / n_automations, 1),
        "signals_per_cycle_median": statistics.median(c["signals"] for c in cycles),
        "per_signal_ms": round(per_signal, 2) if per_signal else None,
        "wall_ms_per_cycle_on_2_workers": round(worker_ms_per_cycle, 2),
        "keeps_up": worker_ms_per_cycle < CYCLE_S * 1e3,
        "worst_lag_estimate_ms": round(CYCLE_S * 1e3 + max(c["ms"] for c in cycles) / parallel, 1),
    }


def cleanup() -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_quote WHERE raw_stream = %s", [STREAM])
        cursor.execute("DELETE FROM ingestion_trade WHERE raw_stream = %s", [STREAM])
    client = redis_client()
    for key in client.scan_iter(f"fp:*B{PID}-*"):
        client.delete(key)


def ingest_child(stream: str, label: str, n_symbols: int, seconds: float) -> None:
    """The ingest side of the lag scenario, in its own process: 5,000 quotes/s in 200 ms batches.

    Each quote gets a receive time spread evenly over the 200 ms before its
    batch is written (the feed batches what arrived meanwhile), so the lag
    measured includes the batching delay. Per batch: one COPY transaction,
    the book and quote published to Redis, then per symbol the oldest
    unseen receive time (SET NX) and the coalesced detection requests (pending
    flag SET NX per symbol), pushed on a list standing in for the detect
    queue: with ``BENCH_LAG_TASKS=batch`` (the default) ``BENCH_LAG_GROUPS``
    requests per batch (default ``settings.DETECT_TASK_GROUPS``), each carrying
    the symbols of its group whose flag it set (``detect_symbols_task``, as
    ``ingestion.services.request_detection`` sends them), with
    ``symbol`` one request per such symbol (``detect_symbol_task``, how the
    ingest side asked before, for comparison).
    """
    symbols = [f"B{PID_PARENT}-{label}-{i}" for i in range(n_symbols)]
    markets = [Market(s, seed=i) for i, s in enumerate(symbols)]
    for market in markets:
        market.ts_ns += 3600 * 10**9  # After the history the parent wrote.
    Market.seq = 10**9
    client = redis_client()
    per_symbol = TICKS_PER_CYCLE // n_symbols
    # The market is generated before the clock starts: generating it costs
    # more CPU than writing it, and the ingest worker's parsing is not what
    # is measured here.
    planned = []
    for _ in range(int(seconds / CYCLE_S) + 1):
        quotes, trades = [], []
        for market in markets:
            q, t = market.step(per_symbol)
            quotes += q
            trades += t
        planned.append((quotes, [(stream, *row[1:]) for row in trades], [m.last for m in markets], [m.ts_ns for m in markets]))
    deadline = time.monotonic() + seconds
    next_batch = time.monotonic() + CYCLE_S
    batches = late = 0
    for quotes, trade_rows, lasts, tss in planned:
        if time.monotonic() >= deadline:
            break
        time.sleep(max(0.0, next_batch - time.monotonic()))
        batch_end_ns = time.time_ns()
        spread = int(CYCLE_S * 1e9)
        # Receive times: the i-th of the batch's quotes arrived i/n of the way through the 200 ms.
        recv_by_key = {}
        rows = []
        for i, row in enumerate(quotes):
            recv = batch_end_ns - spread + spread * i // len(quotes)
            rows.append((stream, row[1], row[2], row[3], datetime.fromtimestamp(recv / 1e9, tz=UTC), *row[5:]))
            recv_by_key.setdefault(row[2], recv)
        for market, last, ts_ns in zip(markets, lasts, tss, strict=True):
            market.last, market.ts_ns = last, ts_ns
        with transaction.atomic():
            copy_rows(rows, trade_rows)
        pipe = client.pipeline(transaction=False)
        for market in markets:
            market.publish_to(pipe)
        for sym, first_recv in recv_by_key.items():
            pipe.set(f"fp:bench-oldest:{sym}", first_recv, nx=True)
            pipe.set(redis_keys.detect_pending(sym), "1", nx=True, ex=30)
        replies = pipe.execute()
        flags = replies[len(markets) * 2 :][1::2]
        flagged = [sym for sym, flag in zip(recv_by_key, flags, strict=True) if flag]
        if flagged and LAG_TASKS == "batch":
            # The batch's symbols in BENCH_LAG_GROUPS requests (default DETECT_TASK_GROUPS), by a stable hash.
            groups = [[s for s in flagged if zlib.crc32(s.encode()) % LAG_GROUPS == g] for g in range(LAG_GROUPS)]
            client.rpush(f"fp:bench-queue:{PID_PARENT}", *[json.dumps(g) for g in groups if g])
        elif flagged:
            pipe = client.pipeline(transaction=False)
            for sym in flagged:
                pipe.rpush(f"fp:bench-queue:{PID_PARENT}", json.dumps([sym]))
            pipe.execute()
        batches += 1
        next_batch += CYCLE_S
        if time.monotonic() > next_batch:
            late += 1
            next_batch = time.monotonic() + CYCLE_S
    client.rpush(f"fp:bench-queue:{PID_PARENT}", *["__done__"] * LAG_WORKERS)
    print(json.dumps({"batches": batches, "late_batches": late}))


def backend_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a local process (the PostgreSQL backend serving this connection)."""
    cpu_s = _common.local_cpu_s(pid)
    return 0.0 if cpu_s is None else cpu_s  # None: a remote database, not measured.


def consume(queue: str, child: subprocess.Popen | None) -> dict:
    """One detect worker of the lag scenario: pop requests and run the task's body until the ingest side is done.

    Returns its raw figures; ``lags`` holds (pass end, lag ms) pairs, the pass
    end in ``time.time()`` seconds so that several workers' figures merge.
    """
    client = redis_client()
    lags: list[tuple[float, float]] = []
    passes, signals, signal_ms, busy_s, symbols_detected, backlog_max = 0, 0, 0.0, 0.0, 0, 0
    phase_ms: dict[str, float] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = cursor.fetchone()[0]
    cpu0, wall0, pg0, first = time.process_time(), time.perf_counter(), backend_cpu_s(backend_pid), None
    while True:
        # The client's socket timeout is 5 s: wait in short polls, while the child lives.
        popped = client.blpop([queue], timeout=2)
        if popped is None:
            if child is None or child.poll() is None:
                continue
            break
        if first is None:  # The clock starts with the first request (the child generates its market first).
            cpu0, wall0, pg0, first = time.process_time(), time.perf_counter(), backend_cpu_s(backend_pid), time.time()
        if popped[1] == b"__done__":
            break
        syms = json.loads(popped[1])
        # The benchmark's own bookkeeping (backlog, the oldest unseen
        # receive times) in one round trip, outside the timed pass.
        pipe = client.pipeline(transaction=False)
        pipe.llen(queue)
        for sym in syms:
            pipe.getdel(f"fp:bench-oldest:{sym}")
        backlog, *oldest = pipe.execute()
        backlog_max = max(backlog_max, backlog + 1)
        started = time.perf_counter()
        # The task itself: it clears the coalescing flags, then detects.
        results = detect_symbols_task(syms) if LAG_TASKS == "batch" else [detect_symbol_task(syms[0])]
        passes += 1
        symbols_detected += len(results)
        signals += sum(sum(r["signals"].values()) for r in results)
        signal_ms += results[0]["timings_ms"].get("signals", 0.0)
        for phase, ms in results[0]["timings_ms"].items():
            phase_ms[phase] = phase_ms.get(phase, 0.0) + ms
        busy_s += time.perf_counter() - started
        done_ns = time.time_ns()
        lags.extend((done_ns / 1e9, (done_ns - int(oldest_ns)) / 1e6) for oldest_ns in oldest if oldest_ns is not None)
    return {
        "lags": lags,
        "passes": passes,
        "signals": signals,
        "signal_ms": signal_ms,
        "busy_s": busy_s,
        "symbols_detected": symbols_detected,
        "backlog_max": backlog_max,
        "phase_ms": phase_ms,
        "first": first,
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
        "pg_cpu_s": backend_cpu_s(backend_pid) - pg0,
    }


def lag_scenario(seconds: float) -> dict:
    """Detection lag with the ingest side running: time from a quote's receive time to its detection pass ending.

    1,000 automations over 100 symbols; a child process writes 5,000
    quotes/s (1,000 per 200 ms batch, 10 per symbol) and asks for detection
    (coalesced, see ``ingest_child``); ``BENCH_LAG_WORKERS`` detect workers
    (default 1: this process; 2 adds a child process, as the deployment runs
    two) pop the requests from one list and run the task's body per request
    (``detect_symbols_task`` or ``detect_symbol_task``; flag clear included,
    no broker). Phase timings are per pass (a pass covers every symbol of its
    request); CPU figures add up the workers and their PostgreSQL backends.
    """
    label, n_automations, n_symbols = "lag", 1000, 100
    rng = random.Random(7)
    symbols = [f"B{PID}-{label}-{i}" for i in range(n_symbols)]
    client = redis_client()
    Automation.objects.bulk_create(automation_rows(f"bench-{PID}-{label}", symbols, n_automations, rng), batch_size=500)
    for i, sym in enumerate(symbols):
        market = Market(sym, seed=i)
        copy_rows(*market.step(400))
        market.publish(client)
    queue = f"fp:bench-queue:{PID}"
    client.delete(queue)
    child = subprocess.Popen(
        [sys.executable, __file__, "--ingest-child", STREAM, label, str(n_symbols), str(seconds), str(PID)],
        stdout=subprocess.PIPE,
        text=True,
    )
    helpers = [
        subprocess.Popen([sys.executable, __file__, "--detect-child", queue], stdout=subprocess.PIPE, text=True)
        for _ in range(LAG_WORKERS - 1)
    ]
    try:
        runs = [consume(queue, child)]
        for helper in helpers:
            out, _err = helper.communicate(timeout=120)
            runs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        child.wait(timeout=60)
        for helper in helpers:
            if helper.poll() is None:
                helper.kill()
        Automation.objects.filter(name__startswith=f"bench-{PID}-{label}").update(status=Automation.Status.PAUSED)
        client.delete(queue)
    child_out = json.loads(child.stdout.read().strip().splitlines()[-1]) if child.stdout else {}
    passes = sum(r["passes"] for r in runs)
    symbols_detected = sum(r["symbols_detected"] for r in runs)
    busy_s, cpu, pg_cpu = (sum(r[k] for r in runs) for k in ("busy_s", "cpu_s", "pg_cpu_s"))
    wall = max(r["wall_s"] for r in runs)
    signal_ms = sum(r["signal_ms"] for r in runs)
    phase_ms: dict[str, float] = {}
    for r in runs:
        for phase, ms in r["phase_ms"].items():
            phase_ms[phase] = phase_ms.get(phase, 0.0) + ms
    start = min(r["first"] for r in runs if r["first"] is not None)
    pairs = [pair for r in runs for pair in r["lags"]]
    lags = sorted(lag for _at, lag in pairs)
    # Steady state: after the first WARMUP_S seconds (the first passes load every window and automation in full).
    warm = sorted(lag for at, lag in pairs if at >= start + WARMUP_S)

    def pct(p: float, values: list[float] = lags) -> float | None:
        return round(values[min(len(values) - 1, int(p * len(values)))], 1) if values else None

    return {
        "automations": n_automations,
        "symbols": n_symbols,
        "ticks_per_s": int(TICKS_PER_CYCLE / CYCLE_S),
        "seconds": seconds,
        "tasks": LAG_TASKS,
        "task_groups": LAG_GROUPS,
        "detect_workers": LAG_WORKERS,
        "ingest": child_out,
        "passes": passes,
        "passes_per_s": round(passes / wall, 1),
        "symbols_per_pass_mean": round(symbols_detected / passes, 1) if passes else None,
        "detect_busy_fraction": round(busy_s / wall / LAG_WORKERS, 3),
        "detect_cpu_fraction": round(cpu / wall / LAG_WORKERS, 3),
        # CPU of the detect processes and of their PostgreSQL backends: what a quiet 2-core machine must supply.
        "detect_cpu_ms_per_pass": round(cpu * 1e3 / passes, 2) if passes else None,
        "pg_backend_cpu_ms_per_pass": round(pg_cpu * 1e3 / passes, 2) if passes else None,
        "cpu_ms_per_symbol_pass": round((cpu + pg_cpu) * 1e3 / symbols_detected, 3) if symbols_detected else None,
        "ms_per_pass_mean": round(busy_s * 1e3 / passes, 2) if passes else None,
        "signals": sum(r["signals"] for r in runs),
        "signal_ms_total": round(signal_ms, 1),
        "ms_per_pass_without_signals": round((busy_s * 1e3 - signal_ms) / passes, 2) if passes else None,
        "lag_ms_p50": pct(0.5),
        "lag_ms_p95": pct(0.95),
        "lag_ms_p99": pct(0.99),
        "lag_ms_max": round(lags[-1], 1) if lags else None,
        "lag_under_1s_fraction": round(sum(1 for x in lags if x < 1000) / len(lags), 3) if lags else None,
        "steady_lag_ms_p50": pct(0.5, warm),
        "steady_lag_ms_p95": pct(0.95, warm),
        "steady_lag_ms_p99": pct(0.99, warm),
        "steady_lag_under_1s_fraction": round(sum(1 for x in warm if x < 1000) / len(warm), 3) if warm else None,
        "queue_backlog_max": max(r["backlog_max"] for r in runs),
        # Mean per pass of each phase the task reports (timings_ms), signals included.
        "phase_ms_per_pass": {k: round(v / passes, 2) for k, v in sorted(phase_ms.items())} if passes else {},
    }


def main() -> None:
    results = {}
    try:
        if "--lag" in sys.argv:
            results["lag_1000_automations_100_symbols"] = lag_scenario(float(os.environ.get("BENCH_LAG_S", "20")))
        else:
            only = os.environ.get("BENCH_SCENARIOS", "").split(",")
            for label, n, symbols in (
                ("a1", 1, 1),
                ("a10", 10, 1),
                ("a100", 100, 1),
                ("a1000", 1000, 1),
                ("a1000s100", 1000, 100),
            ):
                if only != [""] and label not in only:
                    continue
                results[f"{n}_automations_{symbols}_symbols"] = scenario(label, n, symbols)
    finally:
        cleanup()
    print(
        json.dumps(
            {
                "benchmark": "detection_path",
                "cycles": CYCLES,
                "cycle_s": CYCLE_S,
                "workers": WORKERS,
                "execute_tasks_captured": len(sent),
                "scenarios": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--detect-child":
        print(json.dumps(consume(sys.argv[2], None)))
    elif len(sys.argv) > 1 and sys.argv[1] == "--ingest-child":
        _, _, stream_arg, label_arg, n_arg, seconds_arg, pid_arg = sys.argv
        PID_PARENT = int(pid_arg)
        ingest_child(stream_arg, label_arg, int(n_arg), float(seconds_arg))
    else:
        main()

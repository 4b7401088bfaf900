"""Latency of ``risk.services.pretrade_check`` on real PostgreSQL, 1 and 8 concurrent workers.

Each worker is a separate process with its own database connection (no GIL
sharing), released together, calling ``pretrade_check`` in its own
transaction back to back (a closed loop: no pause between checks). Every
automation has every limit but the order rate set (generous), so every check
runs the full evaluation and reserves, through the one-statement fast path
(``risk_pretrade_reserve``). The order rate is left unset because thousands
of checks a minute would hit any realistic rate limit; unset, the row keeps
no order times (a set limit of M keeps M: that cost grows with M).

Two configurations of the global limits (``BENCH_CONFIGS``, default both):

- ``global_size_only``: global quantity, notional and collar limits only.
  The fast path locks and writes only the automation's row.
- ``global_stateful``: every global limit set but the order rate (open
  orders, daily loss, drawdown, losing streak, slippage breaches, sizes),
  the configuration desks use. The check reads the global row without a
  lock and claims one global open-order slot (``risk.models.GlobalSlot``)
  with ``FOR UPDATE SKIP LOCKED``: checks of different automations wait for
  nothing of each other's (see ``pretrade_check``). Before the slots
  (risk/0010) every check locked and wrote the one global row and held it
  to commit, so all checks of all automations queued on it.

The cases, per configuration and commit mode:

- ``workers_1``: one worker.
- ``workers_8_own_automation``: each worker has its own automation.
- ``workers_8_same_automation``: all workers trade one automation (they
  queue on its row in either configuration).
- ``workers_8_paced_<N>ms``: each worker (own automation) waits a random
  0.5-1.5 x ``BENCH_PACE_MS`` (default 5 ms) before each check, as a worker
  that also talks to a broker does: 8 workers make ~1600 checks/s that still
  collide, but the CPU is not saturated, so the figure is the check's
  latency under contention rather than the queue for a core.
- ``signal_rate_check_1_worker``: ``signal_rate_check`` (the detect hop's
  risk step) alone, one worker, its own transaction per call; the hourly
  window grows to the calls made (the limit is 1000).

Two commit modes (``BENCH_MODES``, default both):

- ``synchronous``: the default ``pretrade_check``; each commit waits for the
  WAL flush with the rows locked, so checks that share a row queue behind
  each other's fsync (those that share none flush together).
- ``async``: ``pretrade_check(synchronous_commit=False)``, the mode a caller
  may use when it runs ``commits_make_durable()`` before any broker call
  (see the docstring of ``pretrade_check``).

Figures are per-call wall times in milliseconds (median, p99; printed per
case on stderr as a table, the whole report as JSON on stdout), the aggregate
checks per second, and the CPU each check costs: the worker process's own
(``client_cpu_ms``) and its PostgreSQL backend's (``backend_cpu_ms``, read
from /proc, so only when the server runs on this machine). In a closed loop
the 8-worker latency cannot be below 8 x (client + backend CPU) / cores:
on a 2-core machine the CPU figures, not the wall times, say what the code
costs. Needs ``DATABASE_URL`` (a migrated database) and ``REDIS_URL``; it
creates automations named ``bench-pretrade-*`` and removes what it can
afterwards (history and audit rows stay: they are append-only).
Run: ``.venv/bin/python benchmarks/pretrade_check.py``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")

import django

django.setup()

from django.db import connection, connections  # noqa: E402

from automations.models import Automation  # noqa: E402
from benchmarks import _common  # noqa: E402
from risk.models import GlobalSlot, RiskState  # noqa: E402
from risk.services import pretrade_check, risk_limit_set, signal_rate_check  # noqa: E402

CALLS = int(os.environ.get("BENCH_CALLS", "300"))
CONFIGS = [c for c in os.environ.get("BENCH_CONFIGS", "global_size_only,global_stateful").split(",") if c]
if set(CONFIGS) - {"global_size_only", "global_stateful"}:
    raise SystemExit("BENCH_CONFIGS: a comma-separated subset of global_size_only,global_stateful")
WARMUP = 20
PACE_MS = float(os.environ.get("BENCH_PACE_MS", "5"))
MODES = [m for m in os.environ.get("BENCH_MODES", "synchronous,async").split(",") if m]
if set(MODES) - {"synchronous", "async"}:
    raise SystemExit("BENCH_MODES: a comma-separated subset of synchronous,async")
GENEROUS = {
    "max_open_orders": 10_000_000, "max_order_qty": Decimal("1000"), "max_order_notional": Decimal("1000000"),
    "price_collar_bps": Decimal("100"), "max_orders_per_minute": None, "max_daily_loss": Decimal("1000000"),
    "max_drawdown": Decimal("1000000"), "max_consecutive_losses": 1000, "max_slippage_breaches_per_day": 1000,
    "max_signals_per_hour": 1000,
}
# The global scope with only the limits that look at the order alone: no
# global limit keeps state on the global row, so the fast path leaves it alone.
GLOBAL_SIZE_ONLY = {
    **dict.fromkeys(GENEROUS), "max_order_qty": GENEROUS["max_order_qty"],
    "max_order_notional": GENEROUS["max_order_notional"], "price_collar_bps": GENEROUS["price_collar_bps"],
}


def _automation(name: str) -> Automation:
    automation = Automation.objects.filter(name=name).first()
    if automation is None:
        automation = Automation(name=name, symbol="SIM-BTCUSD", strategy="bench", status=Automation.Status.ACTIVE)
        automation._change_reason = "benchmark setup"
        automation.save()
    elif automation.status != Automation.Status.ACTIVE:
        # A previous interrupted run may have tripped a breaker and stopped it.
        automation.status = Automation.Status.ACTIVE
        automation._change_reason = "benchmark setup: reactivate"
        automation.save()
    return automation


def _reset(automation_ids: list[int]) -> None:
    # The order-rate window would fill up at benchmark speed: the limit is
    # high and the rows are reset before each case so every call passes.
    RiskState.objects.filter(automation_id__in=automation_ids).delete()
    RiskState.objects.filter(automation__isnull=True).update(open_orders=0, order_times=[], tripped=False)
    GlobalSlot.objects.update(used=0, times=[])


def _backend_cpu_s(pid: int) -> float | None:
    return _common.local_cpu_s(pid)  # None: the server runs elsewhere.


def _worker(automation_id: int, calls: int, synchronous: bool, pace_s: float, barrier, out) -> None:  # type: ignore[no-untyped-def]
    connections.close_all()
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    times = []
    rng = random.Random(automation_id * 7919 + os.getpid())
    barrier.wait()
    for i in range(calls + WARMUP):
        if pace_s:
            # Uniform jitter around the pace: the workers drift in and out of step, so checks still collide.
            time.sleep(rng.uniform(0.5, 1.5) * pace_s)
        if i == WARMUP:
            cpu0, backend0 = time.process_time(), _backend_cpu_s(backend)
        t0 = time.perf_counter()
        breaches = pretrade_check(
            automation_id=automation_id, side="buy", quantity=Decimal("0.01"), limit_price=Decimal("100.1"),
            mid=Decimal("100"), synchronous_commit=synchronous,
        )
        elapsed = time.perf_counter() - t0
        if breaches:
            out.put(("error", [b.message for b in breaches]))
            return
        if i >= WARMUP:
            times.append(elapsed * 1e3)
    backend1 = _backend_cpu_s(backend)
    cpu = {"client_s": time.process_time() - cpu0,
           "backend_s": None if backend0 is None or backend1 is None else backend1 - backend0}
    out.put(("ok", (times, cpu)))
    connection.close()


def _signal_case(automation_id: int) -> dict[str, float | None]:
    """``signal_rate_check`` on its own (its own transaction), one worker: the detect hop's risk cost."""
    _reset([automation_id])
    RiskState.objects.filter(automation__isnull=True).update(signal_times=[])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    times = []
    for i in range(CALLS + WARMUP):
        if i == WARMUP:
            cpu0, backend0 = time.process_time(), _backend_cpu_s(backend)
        t0 = time.perf_counter()
        breach = signal_rate_check(automation=automation_id)
        elapsed = time.perf_counter() - t0
        if breach is not None:
            raise SystemExit(f"a signal was refused: {breach.message}")
        if i >= WARMUP:
            times.append(elapsed * 1e3)
    cpu1, backend1 = time.process_time(), _backend_cpu_s(backend)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
        "client_cpu_ms": round((cpu1 - cpu0) / len(times) * 1e3, 3),
        "backend_cpu_ms": None if backend0 is None or backend1 is None else round((backend1 - backend0) / len(times) * 1e3, 3),
    }


def _case(automation_ids: list[int], synchronous: bool, pace_s: float = 0.0) -> dict[str, float | None]:
    _reset(automation_ids)
    connections.close_all()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(automation_ids))
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(aid, CALLS, synchronous, pace_s, barrier, out)) for aid in automation_ids]
    started = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - started
    for p in procs:
        p.join()
    errors = [r for kind, r in results if kind == "error"]
    if errors:
        raise SystemExit(f"a check was refused: {errors[0]}")
    samples = sorted(t for _, (r, _cpu) in results for t in r)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    cpus = [cpu for _, (_r, cpu) in results]
    backend = None if any(c["backend_s"] is None for c in cpus) else sum(c["backend_s"] for c in cpus)
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(samples[-1], 3),
        "checks_per_s": round(len(samples) / wall, 1),
        "samples": len(samples),
        "client_cpu_ms": round(sum(c["client_s"] for c in cpus) / len(samples) * 1e3, 3),
        "backend_cpu_ms": None if backend is None else round(backend / len(samples) * 1e3, 3),
    }


def main() -> None:
    own = [_automation(f"bench-pretrade-{i}") for i in range(8)]
    for a in own:
        risk_limit_set(automation=a, actor="benchmark", reason="benchmark limits", **GENEROUS)
    report: dict[str, object] = {"calls_per_worker": CALLS, "cpu_count": os.cpu_count(),
                                 "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    for config in CONFIGS:
        limits = GENEROUS if config == "global_stateful" else GLOBAL_SIZE_ONLY
        risk_limit_set(actor="benchmark", reason=f"benchmark limits (global, {config})", **limits)
        for mode in MODES:
            synchronous = mode == "synchronous"
            report[f"{config}/{mode}"] = {
                "workers_1": _case([own[0].pk], synchronous),
                "workers_8_own_automation": _case([a.pk for a in own], synchronous),
                "workers_8_same_automation": _case([own[0].pk] * 8, synchronous),
                f"workers_8_paced_{PACE_MS:g}ms": _case([a.pk for a in own], synchronous, PACE_MS / 1e3),
            }
        report[f"{config}/signal_rate_check_1_worker"] = _signal_case(own[0].pk)
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    report["host_speed_ms"] = _common.host_speed_ms()
    report["target"] = "p99 < 2 ms at 8 workers"
    _reset([a.pk for a in own])
    _table(report)
    print(json.dumps(report))


def _table(report: dict[str, object]) -> None:
    """Median and p99 per case, with the CPU per check, one line each (stderr, so stdout stays one JSON object)."""
    lines = [f"load average before {report['load_average_before']}, after {report['load_average']}; "
             f"host speed {report['host_speed_ms']} ms (benchmarks/_common.host_speed_ms)",
             f"{'case':<58} {'median_ms':>9} {'p99_ms':>8} {'client_cpu':>10} {'backend_cpu':>11}"]
    for group, cases in report.items():
        if not isinstance(cases, dict):
            continue
        for name, figures in (cases.items() if "median_ms" not in cases else [("", cases)]):
            label = f"{group}/{name}" if name else group
            backend = figures.get("backend_cpu_ms")
            lines.append(f"{label:<58} {figures['median_ms']:>9.3f} {figures['p99_ms']:>8.3f} "
                         f"{figures['client_cpu_ms']:>10.3f} {'-' if backend is None else f'{backend:.3f}':>11}")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()

"""Latency of ``risk.services.pretrade_check`` on real PostgreSQL, 1 and 8 concurrent workers.

Each worker is a separate process with its own database connection (no GIL
sharing), released together, calling ``pretrade_check`` in its own
transaction back to back. Every limit but the order rate is set (generous), so
every check runs the full evaluation and reserves. The order rate is left
unset because thousands of checks a minute would hit any realistic rate
limit; unset, the row keeps the newest 100 order times (a set limit of M
keeps M, rewritten as JSON on every check: that cost grows with M). Two 8-worker cases:

- ``workers_8_own_automation``: each worker has its own automation; they
  still serialize on the global risk-state row (global limits apply to all).
- ``workers_8_same_automation``: all workers trade one automation.

Figures are per-call wall times in milliseconds (median, p99), plus the
aggregate checks per second. Needs ``DATABASE_URL`` (a migrated database) and
``REDIS_URL``; it creates automations named ``bench-pretrade-*`` and removes
what it can afterwards (history and audit rows stay: they are append-only).
Run: ``.venv/bin/python benchmarks/pretrade_check.py``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
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
from risk.models import RiskState  # noqa: E402
from risk.services import pretrade_check, risk_limit_set  # noqa: E402

CALLS = int(os.environ.get("BENCH_CALLS", "300"))
WARMUP = 20
GENEROUS = {
    "max_open_orders": 10_000_000, "max_order_qty": Decimal("1000"), "max_order_notional": Decimal("1000000"),
    "price_collar_bps": Decimal("100"), "max_orders_per_minute": None, "max_daily_loss": Decimal("1000000"),
    "max_drawdown": Decimal("1000000"), "max_consecutive_losses": 1000, "max_slippage_breaches_per_day": 1000,
    "max_signals_per_hour": 1000,
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


def _worker(automation_id: int, calls: int, barrier, out) -> None:  # type: ignore[no-untyped-def]
    connections.close_all()
    connection.ensure_connection()
    times = []
    barrier.wait()
    for i in range(calls + WARMUP):
        t0 = time.perf_counter()
        breaches = pretrade_check(
            automation_id=automation_id, side="buy", quantity=Decimal("0.01"), limit_price=Decimal("100.1"),
            mid=Decimal("100"),
        )
        elapsed = time.perf_counter() - t0
        if breaches:
            out.put(("error", [b.message for b in breaches]))
            return
        if i >= WARMUP:
            times.append(elapsed * 1e3)
    out.put(("ok", times))
    connection.close()


def _case(automation_ids: list[int]) -> dict[str, float]:
    _reset(automation_ids)
    connections.close_all()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(automation_ids))
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(aid, CALLS, barrier, out)) for aid in automation_ids]
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
    samples = sorted(t for _, r in results for t in r)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(samples[-1], 3),
        "checks_per_s": round(len(samples) / wall, 1),
        "samples": len(samples),
    }


def main() -> None:
    risk_limit_set(actor="benchmark", reason="benchmark limits (global)", **GENEROUS)
    own = [_automation(f"bench-pretrade-{i}") for i in range(8)]
    for a in own:
        risk_limit_set(automation=a, actor="benchmark", reason="benchmark limits", **GENEROUS)
    report = {
        "calls_per_worker": CALLS,
        "cpu_count": os.cpu_count(),
        "workers_1": _case([own[0].pk]),
        "workers_8_own_automation": _case([a.pk for a in own]),
        "workers_8_same_automation": _case([own[0].pk] * 8),
        "target": "p99 < 2 ms at 8 workers",
    }
    _reset([a.pk for a in own])
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Kill switch: time from ``kill_switch_engage`` until every open order is cancelled (target < 1 s).

Two parts, each the median of ``BENCH_RUNS`` runs:

- ``automations_<n>`` (``BENCH_AUTOMATIONS``): the risk side with n
  automations and two pending signals each. ``to_all_halted_ms``: the call
  returns, both transactions committed (the switch is on, every automation
  halted, waiting signals expired, alerts recorded).
  ``to_cancel_all_dispatched_ms``: the on-commit dispatch of
  ``execution.tasks.orders_cancel_all_task``; it follows the switch's own
  transaction, before the automations are halted, so it does not grow with n.
- ``open_orders_<N>`` (``BENCH_OPEN_ORDERS``, default 25): the whole budget
  with N resting paper orders, through the real cancel-all task (see
  ``_with_open_orders``). ``command_to_all_cancelled_ms`` is the figure the
  target is about; ``cancel_all_task_ms`` is the task's own time and
  ``cancel_all_task_cpu_ms`` the CPU its thread used (the Python side only;
  PostgreSQL and Redis work on top of it).

The cancel-all message is caught, not published, so a development stack
sharing this Redis never cancels its orders because of a benchmark; the
publish itself (one Redis LPUSH, well under a millisecond) and the pop by
the execute worker are not counted, nor is any wait for an execute worker
busy with another task.

Needs ``DATABASE_URL`` (a migrated database) and ``REDIS_URL``. Creates
automations named ``bench-ks-*``, pending signals and paper orders, clears the
global limits (with a reason), and releases the switch afterwards.
Run: ``.venv/bin/python benchmarks/killswitch_latency.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")

import django

django.setup()

from django.utils import timezone  # noqa: E402

from automations.models import Automation, Signal  # noqa: E402
from risk.selectors import LIMIT_FIELDS, kill_switch_engaged  # noqa: E402
from risk.services import kill_switch_engage, kill_switch_release, risk_limit_set  # noqa: E402
from trading.celery import app  # noqa: E402
from trading.queues import ORDERS_CANCEL_ALL_TASK  # noqa: E402

AUTOMATIONS = [int(x) for x in os.environ.get("BENCH_AUTOMATIONS", "1,10,30").split(",")]
SIGNALS_PER_AUTOMATION = 2
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def _prepare(n: int) -> None:
    for i in range(n):
        automation = Automation.objects.filter(name=f"bench-ks-{i}").first()
        if automation is None:
            automation = Automation(name=f"bench-ks-{i}", symbol="SIM-BTCUSD", strategy="bench")
        automation.status = Automation.Status.ACTIVE
        automation._change_reason = "benchmark setup"
        automation.save()
        for _ in range(SIGNALS_PER_AUTOMATION):
            Signal.objects.create(
                automation=automation, symbol="SIM-BTCUSD", side="buy", quantity=Decimal("1"), limit_price=Decimal("100"),
                reason="benchmark", status=Signal.Status.PENDING_APPROVAL, created_at=timezone.now(),
            )


def _one(n: int) -> dict[str, float]:
    _prepare(n)
    dispatched: list[float] = []

    def capture(name: str, args=None, kwargs=None, **options):  # type: ignore[no-untyped-def]
        dispatched.append(time.perf_counter())

    original = app.send_task
    app.send_task = capture  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        kill_switch_engage(actor="benchmark", reason="kill switch latency benchmark")
        t_commit = time.perf_counter()
    finally:
        app.send_task = original  # type: ignore[method-assign]
    assert kill_switch_engaged()
    # Only this benchmark's automations are required halted, but the switch halts every one.
    assert not Automation.objects.exclude(status=Automation.Status.HALTED).exists()
    kill_switch_release(actor="benchmark", reason="kill switch latency benchmark done")
    return {"to_all_halted_ms": (t_commit - t0) * 1e3, "to_cancel_all_dispatched_ms": (dispatched[0] - t0) * 1e3}


OPEN_ORDERS = int(os.environ.get("BENCH_OPEN_ORDERS", "25"))


def _with_open_orders() -> dict[str, float]:
    """Command -> every open order cancelled at the (paper) broker: the whole kill-switch budget.

    ``OPEN_ORDERS`` resting paper orders (limit below the touch) are placed
    through the execution path; then the switch is engaged. Its on-commit
    dispatch of ``execution.tasks.orders_cancel_all_task`` is caught and the
    task itself runs right away in a thread with its own database
    connection, as the execute worker would run it, while ``kill_switch_engage``
    goes on halting automations and stopping signals. The figure excludes only
    the queue hop (one Redis push and pop) and any wait for a busy execute
    worker. The clock stops when the task returns; then the broker must
    report no open order and the database no open order.
    """
    from django.db import connection

    from execution import services as execution
    from execution.brokers.paper import PaperBroker
    from execution.models import Order
    from execution.tasks import orders_cancel_all_task
    from tests.execution.conftest import make_book, make_signal, publish_market
    from trading.redis_client import redis_client

    # The resting orders sit 100 bps under the mid: no global limit of another
    # benchmark (the pre-trade one sets a collar) may refuse them.
    risk_limit_set(actor="benchmark", reason="kill switch benchmark: no global limits", **dict.fromkeys(LIMIT_FIELDS))
    publish_market(redis_client(), make_book(symbol="BENCH-KS"))
    automation = Automation.objects.filter(name="bench-ks-orders").first() or Automation(
        name="bench-ks-orders", symbol="BENCH-KS", strategy="microprice_reversion", parameters={"quantity": "0.01"})
    automation.status = Automation.Status.ACTIVE
    automation.approval_threshold = 0
    automation._change_reason = "kill switch benchmark with open orders"
    automation.save()
    for _ in range(OPEN_ORDERS):
        signal = make_signal(automation, status=Signal.Status.QUEUED, limit_price="99.00", quantity="0.01")
        order = execution.order_execute(signal_id=signal.pk)
        assert order is not None and order.status == Order.Status.SUBMITTED, order
    broker = PaperBroker()
    open_before = len(broker.open_orders())
    marks: dict[str, float] = {}
    results: list[dict] = []
    workers: list[threading.Thread] = []

    def execute_worker(args: list) -> None:  # type: ignore[type-arg]
        try:
            cpu0 = time.thread_time()
            results.append(orders_cancel_all_task(*args))
            marks["cancelled"] = time.perf_counter()
            marks["task_cpu_s"] = time.thread_time() - cpu0
        finally:
            connection.close()

    def dispatch(name: str, args=None, kwargs=None, **options):  # type: ignore[no-untyped-def]
        if name != ORDERS_CANCEL_ALL_TASK:
            return  # Alerts and the like: not this benchmark's business.
        marks["dispatched"] = time.perf_counter()
        worker = threading.Thread(target=execute_worker, args=(list(args or []),))
        workers.append(worker)
        worker.start()

    original = app.send_task
    app.send_task = dispatch  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        kill_switch_engage(actor="benchmark", reason="kill switch latency benchmark (open orders)")
        t_engaged = time.perf_counter()
        for worker in workers:
            worker.join(timeout=60)
    finally:
        app.send_task = original  # type: ignore[method-assign]
    assert len(results) == 1 and results[0]["at_broker"] == OPEN_ORDERS and results[0]["errors"] == 0, results
    assert broker.open_orders() == [] and not Order.objects.filter(status__in=Order.OPEN_STATUSES).exists()
    kill_switch_release(actor="benchmark", reason="kill switch latency benchmark done")
    return {"open_orders": open_before, "to_cancel_all_dispatched_ms": (marks["dispatched"] - t0) * 1e3,
            "to_engage_returned_ms": (t_engaged - t0) * 1e3,
            "command_to_all_cancelled_ms": (marks["cancelled"] - t0) * 1e3,
            "cancel_all_task_ms": results[0]["elapsed_ms"], "cancel_all_task_cpu_ms": marks["task_cpu_s"] * 1e3}


def main() -> None:
    if kill_switch_engaged():
        raise SystemExit("the kill switch is engaged here; refusing to benchmark (it would release it)")
    report: dict[str, object] = {"runs": RUNS, "signals_per_automation": SIGNALS_PER_AUTOMATION}
    for n in AUTOMATIONS:
        runs = [_one(n) for _ in range(RUNS)]
        report[f"automations_{n}"] = {
            key: round(statistics.median(r[key] for r in runs), 1) for key in ("to_all_halted_ms", "to_cancel_all_dispatched_ms")
        }
    if OPEN_ORDERS:
        with_orders = [_with_open_orders() for _ in range(RUNS)]
        report[f"open_orders_{OPEN_ORDERS}"] = {
            key: round(statistics.median(r[key] for r in with_orders), 1)
            for key in ("to_cancel_all_dispatched_ms", "to_engage_returned_ms", "command_to_all_cancelled_ms",
                        "cancel_all_task_ms", "cancel_all_task_cpu_ms")
        }
    report["target"] = "< 1000 ms from command to every order cancelled (open_orders_N.command_to_all_cancelled_ms)"
    print(json.dumps(report))


if __name__ == "__main__":
    main()

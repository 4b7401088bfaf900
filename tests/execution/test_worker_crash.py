"""Kill the execute worker mid-submission (real processes); after a restart there is exactly one broker order.

The crash is injected with ``FP_TEST_CRASH_AT``: the worker calls
``os._exit(137)`` at that point, which has SIGKILL's semantics for what
matters here (no cleanup, the task is never acknowledged, the database
connection and its advisory lock just drop). The message comes back from
Redis after the visibility timeout and a second worker runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery
from django.conf import settings
from django.db import connection

from automations.models import Signal
from execution.brokers.paper import PaperBroker
from execution.models import Fill, Order
from tests.execution.conftest import make_automation, make_signal
from trading.embedded import database_url

ROOT = Path(__file__).resolve().parents[2]
S = Signal.Status
OS = Order.Status


def _worker_env(prefix: str, crash_at: str | None) -> dict[str, str]:
    db = connection.settings_dict
    env = {k: v for k, v in os.environ.items() if not k.startswith("FP_TEST_")}
    env.update({
        "DATABASE_URL": database_url(db),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_KEY_PREFIX": prefix,
        "CELERY_VISIBILITY_TIMEOUT": "2",
        "FP_PROCESS_NAME": "worker-execute-test",
        "FP_PAPER_SLIPPAGE_SIGMA_BPS": "0",
    })
    if crash_at:
        env["FP_TEST_CRASH_AT"] = crash_at
    return env


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "celery", "-A", "trading", "worker", "-Q", "execute", "--pool", "solo",
         "-n", f"exec-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-l", "INFO"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("crash_at, broker_orders_after_crash", [("submitting", 0), ("after_broker", 1)])
def test_a_worker_killed_mid_submission_leaves_exactly_one_order_at_the_broker(
        market, tmp_path, crash_at, broker_orders_after_crash):
    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED)
    prefix = f"crash-{uuid.uuid4().hex[:8]}:"
    # Not the current app: the rest of the session must keep sending through trading's app and routes.
    sender = Celery("sender", broker=settings.CELERY_BROKER_URL, set_as_current=False)
    sender.conf.broker_transport_options = {"global_keyprefix": prefix, "visibility_timeout": 2}
    sender.send_task("execution.tasks.order_execute_task", args=[signal.pk], queue="execute")

    first = _start_worker(_worker_env(prefix, crash_at), tmp_path / "worker1.log")
    second = None
    try:
        assert first.wait(timeout=90) == 137, (tmp_path / "worker1.log").read_text()[-3000:]
        order = Order.objects.get(signal=signal)
        assert order.status == OS.SUBMITTING
        assert len(PaperBroker().all_orders()) == broker_orders_after_crash

        second = _start_worker(_worker_env(prefix, None), tmp_path / "worker2.log")
        # Kombu brings the unacked message back after its visibility sweep, whose
        # timing varies (a sweep throttle and a mutex); replaying the same signal
        # id, as a duplicated or forged message would, must come to the same end:
        # the worker finds the order in ``submitting`` and asks the broker first.
        sender.send_task("execution.tasks.order_execute_task", args=[signal.pk], queue="execute")
        settled = _wait(lambda: Order.objects.get(pk=order.pk).status == OS.FILLED, timeout=90)
        assert settled, (tmp_path / "worker2.log").read_text()[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)

    assert [o.client_order_id for o in PaperBroker().all_orders()] == [f"fp-{signal.pk}"]
    assert Order.objects.filter(signal=signal).count() == 1
    assert Fill.objects.filter(order__signal=signal).count() == 1
    signal.refresh_from_db()
    assert signal.status == S.FILLED

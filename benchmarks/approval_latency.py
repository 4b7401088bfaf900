"""Approve click to order submitted: HTTP approve -> execute worker -> paper broker, median and p99.

Target: p99 under 100 ms. Real processes: the ASGI app under uvicorn and one
execute worker (Celery, solo pool), started here with a queue prefix of their
own, on ``DATABASE_URL`` / ``REDIS_URL`` (a migrated database).

Per sample: a pending signal is created; a trader (signed in over HTTP with
password + TOTP) POSTs ``/api/signals/<id>/approve`` with a fresh code; the
clock starts just before the POST and stops at the order's ``submitted_at``
(stamped by the worker when the broker's answer arrived; same host clock).
``http_ms`` is the approve request alone. The first ``BENCH_WARMUP`` (3)
approvals warm the fresh processes and are not counted; samples are
``BENCH_GAP_S`` (0.2 s) apart so each click finds the worker done with the
previous order (``BENCH_GAP_S=0`` for back-to-back approvals). django-otp accepts a time
step once per device, so each sample uses its own trader (sign-in uses the
current step, the approval the next one).

Creates users ``bench-appr-*``, an automation ``bench-approval`` on symbol
``BENCH-APPR`` (book published to Redis), and leaves them for inspection.
Run: ``.venv/bin/python benchmarks/approval_latency.py`` (BENCH_SAMPLES=30).
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
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

import requests  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from automations.models import Automation, Signal  # noqa: E402
from benchmarks import _common  # noqa: E402
from execution.models import Order  # noqa: E402
from tests.execution.conftest import PASSWORD, make_book, make_signal, make_user, publish_market, totp, totp_next  # noqa: E402
from trading.embedded import database_url  # noqa: E402
from trading.redis_client import redis_client  # noqa: E402

SAMPLES = int(os.environ.get("BENCH_SAMPLES", "30"))
# The first approvals of a fresh web process and worker pay one-off costs (lazy imports, first connections,
# first query compilations): run, not counted.
WARMUP = int(os.environ.get("BENCH_WARMUP", "3"))
# Pause between one order submitted and the next click: the worker has finished settling the previous order
# (a trader does not approve every few milliseconds). BENCH_GAP_S=0 measures back-to-back approvals instead.
GAP_S = float(os.environ.get("BENCH_GAP_S", "0.2"))
SYMBOL = "BENCH-APPR"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def _login(base: str, username: str, device) -> requests.Session:  # type: ignore[no-untyped-def]
    session = requests.Session()
    page = session.get(f"{base}/accounts/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    response = session.post(f"{base}/accounts/login/", timeout=10, allow_redirects=False, data={
        "csrfmiddlewaretoken": token, "username": username, "password": PASSWORD, "otp_token": totp(device)})
    if response.status_code != 302:
        raise SystemExit(f"sign-in of {username} failed ({response.status_code})")
    return session


def main() -> None:
    run = uuid.uuid4().hex[:6]
    publish_market(redis_client(), make_book(symbol=SYMBOL))
    automation = Automation.objects.filter(name="bench-approval").first()
    if automation is None:
        automation = Automation(name="bench-approval", symbol=SYMBOL, strategy="microprice_reversion",
                                parameters={"quantity": "0.01"})
    automation.status = Automation.Status.ACTIVE
    automation.approval_threshold = 1_000_000
    automation._change_reason = "approval latency benchmark"
    automation.save()
    traders = [make_user(f"bench-appr-{run}-{i}", "trader") for i in range(WARMUP + SAMPLES)]

    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": database_url(db),
           "REDIS_URL": settings.REDIS_URL, "CELERY_KEY_PREFIX": f"bench-appr-{run}:", "LOG_LEVEL": "WARNING"}
    port = _free_port()
    web = subprocess.Popen([sys.executable, "-m", "uvicorn", "trading.asgi:application", "--port", str(port),
                            "--no-access-log", "--log-level", "warning"], cwd=ROOT, env=env)
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "trading", "worker", "-Q", "execute",
                               "--pool", "solo", "-n", f"bench-{run}@%h", "--without-gossip", "--without-mingle",
                               "--without-heartbeat", "-l", "WARNING"], cwd=ROOT, env=env)
    total_ms: list[float] = []
    http_ms: list[float] = []
    try:
        _wait_port(port)
        base = f"http://127.0.0.1:{port}"
        sessions = [(_login(base, user.username, device), device) for user, device in traders]
        time.sleep(3)  # Let the worker finish starting (it consumes nothing until then).
        cpu0 = (_common.cpu_ms(web.pid), _common.cpu_ms(worker.pid))
        for i, (session, device) in enumerate(sessions):
            if i == WARMUP:
                cpu0 = (_common.cpu_ms(web.pid), _common.cpu_ms(worker.pid))
            time.sleep(GAP_S)
            signal = make_signal(automation, limit_price="100.10")
            code = totp_next(device)
            headers = {"X-CSRFToken": session.cookies.get("csrftoken", ""), "Referer": base}
            t0 = time.time()
            response = session.post(f"{base}/api/signals/{signal.pk}/approve", json={"otp": code}, headers=headers,
                                    timeout=10)
            http_ms.append((time.time() - t0) * 1e3)
            if response.status_code != 200:
                raise SystemExit(f"approval {i} refused: {response.status_code} {response.text}")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                submitted = Order.objects.filter(signal_id=signal.pk).values_list("submitted_at", flat=True).first()
                if submitted is not None:
                    total_ms.append((submitted.timestamp() - t0) * 1e3)
                    break
                time.sleep(0.002)
            else:
                raise SystemExit(f"signal {signal.pk}: no order submitted within 10 s")
        cpu1 = (_common.cpu_ms(web.pid), _common.cpu_ms(worker.pid))
        total_ms, http_ms = total_ms[WARMUP:], http_ms[WARMUP:]
    finally:
        for proc in (web, worker):
            proc.terminate()
            proc.wait(timeout=20)
    assert Signal.objects.filter(automation=automation, status=Signal.Status.FILLED).count() >= len(total_ms)
    print(json.dumps({
        "samples": len(total_ms),
        "warmup_samples_dropped": WARMUP,
        "gap_between_samples_s": GAP_S,
        "approve_to_submitted_median_ms": round(statistics.median(total_ms), 1),
        "approve_to_submitted_p99_ms": round(_common.percentile(total_ms, 0.99), 1),
        "approve_to_submitted_max_ms": round(max(total_ms), 1),
        "approve_http_median_ms": round(statistics.median(http_ms), 1),
        "approve_http_p99_ms": round(_common.percentile(http_ms, 0.99), 1),
        # What the path costs in CPU, whatever else the machine is doing (whole approval and whole execution,
        # the latter including the settlement after submission): the floor under the wall-clock figures.
        "web_cpu_ms_per_approval": round((cpu1[0] - cpu0[0]) / len(total_ms), 1),
        "worker_cpu_ms_per_order": round((cpu1[1] - cpu0[1]) / len(total_ms), 1),
        "load_average_1m": os.getloadavg()[0],
        "target": "p99 < 100 ms (approve POST -> order submitted)",
    }))


if __name__ == "__main__":
    main()

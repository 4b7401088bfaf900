"""In a real browser: sign in with OTP, see a signal arrive live, approve it with the OTP, see it filled.

Real processes: the ASGI app under uvicorn (HTTP and the signals websocket)
and an execute worker (Celery), both on the test database, with a queue
prefix of their own. Headless Debian Chromium driven by Playwright; no
browser is ever downloaded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from playwright.sync_api import expect, sync_playwright

from audit.roles import roles_setup
from automations.models import Signal
from execution.models import Order
from risk.selectors import kill_switch_engaged
from tests.execution.conftest import PASSWORD, make_automation, make_book, make_signal, make_user, publish_market, totp, totp_next
from trading.celery import app as celery_app
from trading.embedded import database_url

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(prefix: str) -> dict[str, str]:
    db = connection.settings_dict
    env = {k: v for k, v in os.environ.items() if not k.startswith("FP_TEST_")}
    env.update({"DATABASE_URL": database_url(db),
                "REDIS_URL": settings.REDIS_URL, "CELERY_KEY_PREFIX": prefix,
                "CHANNELS_PREFIX": settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]})
    return env


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def _make_signal_and_close(automation):
    try:
        return make_signal(automation)
    finally:
        connection.close()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_trader_signs_in_with_otp_approves_a_live_signal_sees_it_filled_and_pulls_the_kill_switch(redis_clean, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(celery_app, "send_task", lambda *a, **k: None)  # This process publishes no task.
    publish_market(redis_clean, make_book())
    # Earlier transactional tests flush the role grants; put them back as setup_roles does.
    roles_setup()
    trader, device = make_user("tina", "trader")
    automation = make_automation(approval_threshold=5)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}:"
    env = _env(prefix)
    port = _free_port()
    web = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "uvicorn", "trading.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log"], cwd=ROOT, env=env, stdout=(tmp_path / "web.log").open("wb"), stderr=subprocess.STDOUT)
    worker = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "celery", "-A", "trading", "worker", "-Q", "execute", "--pool", "solo",
         "-n", f"e2e-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=(tmp_path / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_port(port)
        base = f"http://127.0.0.1:{port}"
        # Playwright's sync API keeps an event loop in this thread; the ORM calls below are plain
        # blocking calls made between browser steps, which is what this switch allows.
        monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"),
                                         args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{base}/accounts/login/")
            page.get_by_test_id("login-username").fill("tina")
            page.get_by_test_id("login-password").fill(PASSWORD)
            page.get_by_test_id("login-otp").fill(totp(device))
            page.get_by_test_id("login-submit").click()
            expect(page.get_by_test_id("signals-table")).to_be_visible(timeout=15_000)
            expect(page.get_by_test_id("ws-status")).to_have_class("status-on", timeout=15_000)

            # The signal is born after the page loaded: it can only arrive over the websocket.
            # From another thread, as a detect worker would: Playwright's event loop runs in this one.
            with ThreadPoolExecutor(1) as pool:
                signal = pool.submit(_make_signal_and_close, automation).result()
            expect(page.get_by_test_id(f"signal-row-{signal.pk}")).to_be_visible(timeout=10_000)
            expect(page.get_by_test_id(f"signal-status-{signal.pk}")).to_have_text("pending_approval")

            # The sign-in used this time step's code; django-otp accepts a later step's code once.
            page.get_by_test_id(f"approve-otp-{signal.pk}").fill(totp_next(device))
            page.get_by_test_id(f"approve-{signal.pk}").click()
            expect(page.get_by_test_id(f"signal-status-{signal.pk}")).to_have_text("filled", timeout=30_000)

            # The kill switch button: a reason, a confirmation, and everything halts.
            page.on("dialog", lambda dialog: dialog.accept())
            page.get_by_test_id("killswitch-reason").fill("e2e drill: venue unstable")
            page.get_by_test_id("killswitch-engage").click()
            expect(page.get_by_test_id("killswitch-result")).to_have_text("kill switch ENGAGED", timeout=15_000)
            browser.close()
    finally:
        for proc in (web, worker):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    signal.refresh_from_db()
    assert signal.status == Signal.Status.FILLED, (tmp_path / "worker.log").read_text()[-2000:]
    order = Order.objects.get(signal=signal)
    assert order.gated and order.status == Order.Status.FILLED
    assert order.fills.count() == 1
    assert kill_switch_engaged()
    automation.refresh_from_db()
    assert automation.status == automation.Status.HALTED

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from automations.models import Automation
from trading.celery import app as celery_app


@pytest.fixture
def celery_eager() -> Iterator[None]:
    """Run risk tasks in-process, and never let a test publish to a real broker."""
    old = (celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates)
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = old


@pytest.fixture
def sent_tasks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Capture tasks sent by name (the cross-layer path, e.g. cancel-all)."""
    sent: list[tuple[str, Any]] = []

    def fake_send_task(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        sent.append((name, args))

    monkeypatch.setattr(celery_app, "send_task", fake_send_task)
    return sent


@pytest.fixture(autouse=True)
def _alert_settings(settings: Any) -> None:
    # No channel by default, so tests that do not look at delivery never touch the network.
    settings.ALERT_WEBHOOK_URL = ""
    settings.ALERT_EMAILS = []
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def make_automation(name: str = "auto-1", status: str = Automation.Status.ACTIVE) -> Automation:
    automation = Automation(name=name, symbol="SIM-BTCUSD", strategy="microprice_reversion", status=status)
    automation._change_reason = "test setup"
    automation.save()
    return automation


class WebhookServer:
    """A local HTTP server that records JSON posts; answers ``fail_first`` 500s first."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.hits = 0
        self.fail_first = fail_first
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.hits += 1
                if outer.hits <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"boom")
                    return
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(settings: Any) -> Iterator[WebhookServer]:
    server = WebhookServer()
    settings.ALERT_WEBHOOK_URL = server.url
    yield server
    server.close()


D = Decimal


@pytest.fixture
def role_permissions(db: Any) -> None:
    """The roles' model permissions, as the migrations grant them.

    A ``transactional_db`` test flushes every table, migration data included,
    so tests that rely on the roles re-apply the grants.
    """
    import importlib

    from django.apps import apps

    for module in ("automations.migrations.0003_role_permissions", "risk.migrations.0003_role_permissions"):
        importlib.import_module(module).grant(apps, None)

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ingestion.types import BookSnapshot, Side

# Django is imported inside the helpers, so the pure tests of this folder (backtest,
# credentials) also run with ``-p no:django``.

BASE_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
PASSWORD = "correct horse battery staple"


def make_user(username: str, *groups: str, otp: bool = True) -> tuple[Any, Any]:
    from django.contrib.auth.models import Group, Permission, User
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = User.objects.create_user(username=username, password=PASSWORD)
    for name in groups:
        group, _ = Group.objects.get_or_create(name=name)
        if name == "risk_officer":
            group.permissions.add(Permission.objects.get(codename="change_automation"))
        user.groups.add(group)
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True) if otp else None
    return user, device


def totp(device: Any, offset_steps: int = 0) -> str:
    """The device's code for the current time step (+ offset), computed independently of verify_token."""
    from django_otp.oath import TOTP

    generator = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    generator.time = time.time() + offset_steps * device.step
    return f"{generator.token():0{device.digits}d}"


def totp_next(device: Any) -> str:
    """A code the device will accept next: the first step after its last used one inside its window.

    django-otp remembers the last accepted step (``last_t``) and the drift it
    saw; right after a sign-in at a step boundary the drift is -1, so a naive
    "next step" code can fall outside the window. This reads the device's state.
    """
    from django_otp.oath import TOTP

    device.refresh_from_db()
    now_step = int((time.time() - device.t0) // device.step)
    window = range(now_step + device.drift - device.tolerance, now_step + device.drift + device.tolerance + 1)
    step = next(t for t in window if t > device.last_t)
    generator = TOTP(device.bin_key, device.step, device.t0, device.digits, 0)
    generator.time = device.t0 + step * device.step + device.step / 2
    return f"{generator.token():0{device.digits}d}"


def make_automation(name: str = "auto-x", symbol: str = "TEST-BTC", **fields: Any) -> Any:
    from automations.models import Automation

    values = {"strategy": "microprice_reversion", "parameters": {"quantity": "0.01"},
              "status": Automation.Status.ACTIVE, "approval_threshold": 0, "signal_expiry_seconds": 120}
    values.update(fields)
    automation = Automation(name=name, symbol=symbol, **values)
    automation._change_reason = "test setup"
    automation.save()
    return automation


def make_signal(automation: Any, *, status: str = "pending_approval", side: str = "buy",
                quantity: str = "0.5", limit_price: str = "100.10", **context: Any) -> Any:
    """A signal born and routed through the signal services (the detection path's calls)."""
    from automations.services import signal_create, signal_transition

    signal = signal_create(automation=automation, side=side, quantity=Decimal(quantity),
                           limit_price=Decimal(limit_price), reason="test", mid=Decimal("100.05"),
                           needs_approval=status == "pending_approval", **context)
    return signal_transition(signal=signal, to_status=status, actor_label="test")


def make_book(symbol: str = "TEST-BTC", ts_ns: int = BASE_NS, levels: int = 20,
              bid: str = "100.00", ask: str = "100.10") -> BookSnapshot:
    bids = tuple((Decimal(bid) - Decimal("0.10") * i, Decimal("1.5") + i) for i in range(levels))
    asks = tuple((Decimal(ask) + Decimal("0.10") * i, Decimal("2.25") + i) for i in range(levels))
    return BookSnapshot(symbol=symbol, ts_ns=ts_ns, bids=bids, asks=asks)


def publish_market(client: Any, book: BookSnapshot) -> None:
    """Write the Redis keys the ingest worker writes: latest quote and book."""
    from trading import redis_keys

    client.set(redis_keys.book(book.symbol), json.dumps({
        "symbol": book.symbol, "ts_ns": book.ts_ns,
        "bids": [[str(p), str(s)] for p, s in book.bids], "asks": [[str(p), str(s)] for p, s in book.asks],
    }))
    client.set(redis_keys.quote(book.symbol), json.dumps({
        "symbol": book.symbol, "source_ts_ns": book.ts_ns, "recv_ts_ns": book.ts_ns,
        "bid": str(book.bids[0][0]), "bid_size": str(book.bids[0][1]),
        "ask": str(book.asks[0][0]), "ask_size": str(book.asks[0][1]),
    }))


def insert_quote(symbol: str, ts_ns: int, bid: str = "100.00", ask: str = "100.10", stream: str = "test") -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(raw_seq), 0) FROM ingestion_quote WHERE raw_stream = %s", [stream])
        seq = cursor.fetchone()[0] + 1
        at = datetime.fromtimestamp(ts_ns / 1e9, tz=UTC)
        cursor.execute(
            "INSERT INTO ingestion_quote (raw_stream, raw_seq, symbol, source_ts, recv_ts, bid, bid_size, ask, ask_size)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", [stream, seq, symbol, at, at, bid, "1.5", ask, "2.25"],
        )


class AlwaysBuy:
    """A stand-in strategy: buys 0.5 at the ask on every evaluation, so routing is what a test sees."""

    name = "always_buy"
    description = "test"
    param_spec = ()

    def validate_params(self, raw: Any) -> dict[str, Any]:
        return dict(raw)

    def min_history(self, params: Any) -> int:
        return 1

    def trade_lookback_ns(self, params: Any) -> int:
        return 0

    def evaluate(self, window: Any, params: Any, features: Any = None) -> list[Any]:
        from automations.strategies import Intent

        ask = Decimal(str(window.quotes["ask"].iloc[-1])).quantize(Decimal("0.01"))
        return [Intent(side=Side.BUY, quantity=Decimal("0.5"), limit_price=ask, reason="always buy", features={})]


@pytest.fixture
def always_buy(monkeypatch: pytest.MonkeyPatch) -> AlwaysBuy:
    monkeypatch.setattr("automations.detection.get_strategy", lambda name: AlwaysBuy())
    return AlwaysBuy()


@pytest.fixture(autouse=True)
def sent_tasks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Any]]]:
    """Capture every task sent by name; never publish to a real broker from a unit test."""
    sent: list[tuple[str, Any]] = []
    if "django_db_setup" not in request.fixturenames and not request.node.get_closest_marker("django_db"):
        yield sent  # A pure test: no Django, nothing to capture.
        return
    from trading.celery import app as celery_app

    settings = request.getfixturevalue("settings")
    monkeypatch.setattr(celery_app, "send_task", lambda name, args=None, kwargs=None, **kw: sent.append((name, args)))
    settings.ALERT_WEBHOOK_URL = ""
    settings.ALERT_EMAILS = []
    old = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield sent
    celery_app.conf.task_always_eager = old


@pytest.fixture
def market(redis_clean: Any) -> dict[str, Any]:
    book = make_book()
    publish_market(redis_clean, book)
    return {"symbol": book.symbol, "book": book, "redis": redis_clean}

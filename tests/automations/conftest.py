from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django_otp.plugins.otp_totp.models import TOTPDevice

from automations.models import Automation
from automations.strategies import Intent, get_strategy
from ingestion.types import BookSnapshot, Side
from trading import redis_keys

BASE_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z


def make_user(username: str, group: str | None = None, *, otp: bool = True) -> User:
    user = User.objects.create_user(username=username, password="correct horse battery staple")
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    if otp:
        TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return user


def make_automation(name: str = "auto-1", symbol: str = "TEST-BTC", **fields) -> Automation:
    values = {
        "strategy": "microprice_reversion",
        "parameters": {"quantity": "0.01"},
        "status": Automation.Status.ACTIVE,
        "approval_threshold": 0,
        "signal_expiry_seconds": 120,
    }
    values.update(fields)
    strategy = get_strategy(values["strategy"])
    values["parameters"] = strategy.params_as_json(strategy.validate_params(values["parameters"]))
    automation = Automation(name=name, symbol=symbol, **values)
    automation._change_reason = "test setup"
    automation.save()
    return automation


def insert_quotes(symbol: str, rows: list[tuple[int, str, str, str, str]], stream: str = "test") -> None:
    """Insert quotes (ts_ns, bid, bid_size, ask, ask_size) into the partitioned tick table."""
    with connection.cursor() as cursor:
        start = 0
        cursor.execute("SELECT coalesce(max(raw_seq), 0) FROM ingestion_quote WHERE raw_stream = %s", [stream])
        start = cursor.fetchone()[0]
        cursor.executemany(
            "INSERT INTO ingestion_quote (raw_stream, raw_seq, symbol, source_ts, recv_ts, bid, bid_size, ask, ask_size)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    stream,
                    start + i + 1,
                    symbol,
                    datetime.fromtimestamp(ts / 1e9, tz=UTC),
                    datetime.fromtimestamp(ts / 1e9, tz=UTC),
                    bid,
                    bsz,
                    ask,
                    asz,
                )
                for i, (ts, bid, bsz, ask, asz) in enumerate(rows)
            ],
        )


def publish_market(client, symbol: str, book: BookSnapshot) -> None:
    """Write the Redis keys the ingest worker writes: latest quote and top of book."""
    client.set(
        redis_keys.book(symbol),
        json.dumps(
            {
                "symbol": symbol,
                "ts_ns": book.ts_ns,
                "bids": [[str(p), str(s)] for p, s in book.bids],
                "asks": [[str(p), str(s)] for p, s in book.asks],
            }
        ),
    )
    client.set(
        redis_keys.quote(symbol),
        json.dumps(
            {
                "symbol": symbol,
                "source_ts_ns": book.ts_ns,
                "recv_ts_ns": book.ts_ns,
                "bid": str(book.bids[0][0]),
                "bid_size": str(book.bids[0][1]),
                "ask": str(book.asks[0][0]),
                "ask_size": str(book.asks[0][1]),
            }
        ),
    )


def make_book(symbol: str = "TEST-BTC", ts_ns: int = BASE_NS, levels: int = 30) -> BookSnapshot:
    # Trailing zeros on purpose: a snapshot must give back "100.10", not "100.1".
    bids = tuple((Decimal("100.00") - Decimal("0.10") * i, Decimal(f"{1 + i}.500")) for i in range(levels))
    asks = tuple((Decimal("100.10") + Decimal("0.10") * i, Decimal(f"{2 + i}.250")) for i in range(levels))
    return BookSnapshot(symbol=symbol, ts_ns=ts_ns, bids=bids, asks=asks)


class AlwaysBuy:
    """A stand-in strategy: buys at the ask on every evaluation, so routing is what the test sees."""

    name = "always_buy"
    description = "test"
    param_spec = ()

    def validate_params(self, raw):
        return dict(raw)

    def min_history(self, params):
        return 1

    def trade_lookback_ns(self, params):
        return 0

    def evaluate(self, window, params, features=None):
        ask = Decimal(str(window.quotes["ask"].iloc[-1]))
        return [Intent(side=Side.BUY, quantity=Decimal("0.01"), limit_price=ask, reason="always buy", features={"x": 1.0})]


@pytest.fixture
def always_buy(monkeypatch):
    monkeypatch.setattr("automations.detection.get_strategy", lambda name: AlwaysBuy())
    return AlwaysBuy()


@pytest.fixture
def sent_tasks(monkeypatch):
    """Capture Celery send_task calls (name, args, kwargs) instead of talking to a broker."""
    sent: list[tuple[str, list, dict]] = []
    # Only the order tasks matter here; risk's own tasks (alerts, trips) are its business.
    from celery import current_app

    monkeypatch.setattr(
        current_app,
        "send_task",
        lambda name, args=None, kwargs=None, **kw: sent.append((name, args, kwargs)) if name.startswith("execution.") else None,
    )
    return sent


@pytest.fixture
def market(redis_clean):
    """One symbol with 20 quotes in the tick table and its book and quote in Redis."""
    symbol = "TEST-BTC"
    # The tick tables are not managed by Django, so test flushes leave them be.
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_quote WHERE raw_stream = 'test'")
    rows = [(BASE_NS + i * 100_000_000, "100.00", "1.5", "100.10", "2.25") for i in range(20)]
    insert_quotes(symbol, rows)
    book = make_book(symbol, ts_ns=rows[-1][0])
    publish_market(redis_clean, symbol, book)
    yield {"symbol": symbol, "book": book, "last_ns": rows[-1][0], "redis": redis_clean}
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_quote WHERE raw_stream = 'test'")

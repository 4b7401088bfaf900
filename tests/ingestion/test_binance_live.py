from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest

from ingestion.binance_live import (
    KIND_DEPTH_SNAPSHOT,
    KIND_WS,
    BinanceUsdmConnector,
    backoff_delay,
    parse_book_ticker,
    parse_depth_snapshot,
    parse_trade,
)
from ingestion.types import BookUpdate, QuoteTick, Side, TradeTick
from tests.ingestion.venue_server import FakeBinanceVenue

SYMBOLS = ("BTCUSDT", "ETHUSDT")


class Harness:
    """A venue, a connector pointed at it, and everything the connector handed out."""

    def __init__(self, venue: FakeBinanceVenue) -> None:
        self.venue = venue
        self.raw: list[tuple[str, bytes]] = []
        self.ticks: list[Any] = []
        # One timeline of what the connector did: ("raw"|"applied", symbol, u) in call order.
        self.timeline: list[tuple[str, str, int]] = []
        # For each depth frame: the book's last update id at the moment on_raw saw it.
        self.book_id_at_raw: list[tuple[str, int, int | None]] = []
        self.snapshots_at_raw: list[int] = []
        self.connector = BinanceUsdmConnector(
            list(venue.engines),
            self.on_raw,
            on_tick=self.on_tick,
            ws_url=venue.ws_url,
            rest_url=venue.rest_url,
            depth_limit=500,
            backoff_initial_s=0.02,
            backoff_max_s=0.2,
            seed=3,
        )

    def on_raw(self, payload: bytes, recv_ns: int, kind: str) -> None:
        assert recv_ns > 0
        self.raw.append((kind, payload))
        if kind == KIND_DEPTH_SNAPSHOT:
            self.snapshots_at_raw.append(self.connector.counters.snapshots)
            return
        data = json.loads(payload)["data"]
        if data["e"] == "depthUpdate":
            self.book_id_at_raw.append((data["s"], data["u"], self.connector.book(data["s"]).last_update_id))
            self.timeline.append(("raw", data["s"], data["u"]))

    def on_tick(self, tick: Any) -> None:
        self.ticks.append(tick)
        if isinstance(tick, BookUpdate) and not tick.is_snapshot:
            self.timeline.append(("applied", tick.symbol, tick.last_update_id or 0))

    def ws_frames(self) -> list[bytes]:
        return [p for k, p in self.raw if k == KIND_WS]

    def rest_bodies(self) -> list[bytes]:
        return [p for k, p in self.raw if k == KIND_DEPTH_SNAPSHOT]

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; counters {self.connector.counters.as_dict()}")
            await asyncio.sleep(0.005)

    def books_match_venue(self) -> bool:
        for symbol in self.venue.engines:
            book = self.connector.book(symbol)
            if book.last_update_id != self.venue.last_u(symbol) or not self.connector.is_synced(symbol):
                return False
        return True


def _run_scenario(scenario: Callable[[Harness], Awaitable[None]], **venue_kwargs: Any) -> Harness:
    async def main() -> Harness:
        venue = FakeBinanceVenue(SYMBOLS, **venue_kwargs)
        await venue.start()
        harness = Harness(venue)
        stop = asyncio.Event()
        task = asyncio.create_task(harness.connector.run(stop))
        try:
            await asyncio.wait_for(harness.connector.connected.wait(), 5)
            await scenario(harness)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            await venue.stop()
        return harness

    return asyncio.run(asyncio.wait_for(main(), 20))


def _assert_books_equal_venue(h: Harness) -> None:
    for symbol in SYMBOLS:
        bids, asks = h.venue.book(symbol)
        book = h.connector.book(symbol)
        assert book.bids == bids
        assert book.asks == asks
        assert not book.is_crossed


def test_it_builds_the_venues_book_and_hands_every_frame_to_on_raw_before_use() -> None:
    async def scenario(h: Harness) -> None:
        h.venue.start_engine()
        await asyncio.wait_for(h.venue.done.wait(), 10)
        await h.until(lambda: h.books_match_venue() and len(h.ws_frames()) == len(h.venue.sent_ws))

    h = _run_scenario(scenario, max_events=150)

    _assert_books_equal_venue(h)
    assert h.venue.requested_streams == [
        [f"{s}@{kind}" for s in ("btcusdt", "ethusdt") for kind in ("bookTicker", "trade", "depth@100ms")]
    ]
    # Byte-exact and in order: every frame and every REST body the venue sent.
    assert h.ws_frames() == h.venue.sent_ws
    # The two symbols' snapshots are fetched concurrently, so their order may differ.
    assert sorted(h.rest_bodies()) == sorted(h.venue.sent_rest)
    assert len(h.rest_bodies()) == 2
    # on_raw ran before the book applied each depth event and each snapshot.
    # (Events older than the snapshot are dropped by the sync rules, never applied.)
    assert len(h.book_id_at_raw) == 2 * 150
    raw_at = {(sym, u): i for i, (what, sym, u) in enumerate(h.timeline) if what == "raw"}
    applied_at = {(sym, u): i for i, (what, sym, u) in enumerate(h.timeline) if what == "applied"}
    assert len(applied_at) >= 2 * 150 - 10
    assert all(raw_at[key] < index for key, index in applied_at.items())
    assert h.snapshots_at_raw == [0, 1]
    counters = h.connector.counters
    assert counters.messages == len(h.venue.sent_ws)
    assert (counters.gaps, counters.resyncs, counters.reconnects, counters.parse_errors) == (0, 0, 0, 0)
    assert counters.snapshots == 2
    # Parsed L1 and trades reach on_tick with both clocks.
    sent = [json.loads(f)["data"] for f in h.venue.sent_ws]
    quotes = [t for t in h.ticks if isinstance(t, QuoteTick)]
    trades = [t for t in h.ticks if isinstance(t, TradeTick)]
    assert len(quotes) == sum(1 for d in sent if d["e"] == "bookTicker")
    assert len(trades) == sum(1 for d in sent if d["e"] == "trade")
    assert all(q.bid < q.ask and q.recv_ts_ns >= q.source_ts_ns - 1_000_000_000 for q in quotes)


def test_it_resyncs_from_a_new_snapshot_after_a_sequence_gap() -> None:
    async def scenario(h: Harness) -> None:
        h.venue.start_engine()
        await h.until(lambda: h.connector.book("BTCUSDT").last_update_id is not None and len(h.ws_frames()) > 100)
        h.venue.inject_gap("BTCUSDT")
        await asyncio.wait_for(h.venue.done.wait(), 10)
        await h.until(h.books_match_venue)

    h = _run_scenario(scenario, max_events=200)

    assert h.venue.gaps_injected == 1
    counters = h.connector.counters
    assert counters.gaps == 1
    assert counters.resyncs == 1
    assert h.connector.sync("BTCUSDT").gaps == 1
    assert h.connector.sync("ETHUSDT").gaps == 0
    # Two initial snapshots plus the re-fetch for BTCUSDT, each through on_raw.
    assert counters.snapshots == 3
    assert len(h.venue.sent_rest) == 3
    assert sorted(h.rest_bodies()) == sorted(h.venue.sent_rest)
    assert counters.reconnects == 0
    _assert_books_equal_venue(h)


def test_it_reconnects_after_a_dropped_connection_and_continues() -> None:
    async def scenario(h: Harness) -> None:
        h.venue.start_engine()
        await h.until(lambda: h.connector.is_synced() and len(h.ws_frames()) > 100)
        frames_before = len(h.ws_frames())
        h.venue.drop_connections()
        await h.until(lambda: h.connector.counters.reconnects == 1)
        await h.until(lambda: len(h.ws_frames()) > frames_before + 50)
        await asyncio.wait_for(h.venue.done.wait(), 10)
        await h.until(h.books_match_venue)

    h = _run_scenario(scenario, max_events=250)

    counters = h.connector.counters
    assert h.venue.connections_accepted == 2
    assert counters.connects == 2 and counters.reconnects == 1
    # Each book was dropped on reconnect and rebuilt from a fresh snapshot,
    # rather than kept until the new stream's first event exposed a gap.
    assert counters.snapshots == 4
    assert counters.resyncs == 2
    assert counters.gaps == 0
    assert counters.parse_errors == 0
    _assert_books_equal_venue(h)
    # Every frame that reached the connector is one the venue sent, in order.
    sent = h.venue.sent_ws
    received = h.ws_frames()
    it = iter(sent)
    assert all(any(frame == s for s in it) for frame in received)


def test_it_backs_off_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(a, initial_s=0.5, max_s=30.0, rng=rng) for a in range(12)]
    for attempt, delay in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 30.0
    assert delays[6] > delays[0] * 10
    # Jitter: two clients with different seeds do not retry in lockstep.
    other = [backoff_delay(a, initial_s=0.5, max_s=30.0, rng=random.Random(2)) for a in range(12)]
    assert other != delays


def test_it_keeps_retrying_a_venue_that_is_down_and_stops_when_asked() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now: every connect is refused.

    async def main() -> BinanceUsdmConnector:
        connector = BinanceUsdmConnector(
            ["BTCUSDT"],
            lambda *_: None,
            ws_url=f"ws://127.0.0.1:{port}",
            rest_url=f"http://127.0.0.1:{port}",
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
            seed=1,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(connector.run(stop))
        await asyncio.sleep(0.4)
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 2)
        assert time.monotonic() - started < 0.5
        return connector

    connector = asyncio.run(main())
    assert connector.counters.connect_failures >= 4
    assert connector.counters.connects == 0


def test_it_parses_binance_book_ticker_trade_and_depth_snapshot_payloads() -> None:
    ticker = {
        "e": "bookTicker",
        "u": 400900217,
        "E": 1568014460893,
        "T": 1568014460891,
        "s": "BNBUSDT",
        "b": "25.35190000",
        "B": "31.21000000",
        "a": "25.36520000",
        "A": "40.66000000",
    }
    quote = parse_book_ticker(ticker, recv_ns=1568014460999_000_000)
    assert quote == QuoteTick(
        "BNBUSDT",
        1568014460893_000_000,
        1568014460999_000_000,
        Decimal("25.35190000"),
        Decimal("31.21000000"),
        Decimal("25.36520000"),
        Decimal("40.66000000"),
    )
    trade = parse_trade(
        {"e": "trade", "E": 10, "T": 9, "s": "BTCUSDT", "t": 77, "p": "1.5", "q": "2", "X": "MARKET", "m": True}, 11
    )
    assert (trade.aggressor, trade.trade_id, trade.price, trade.size) == (Side.SELL, "77", Decimal("1.5"), Decimal(2))
    body = b'{"lastUpdateId":1027024,"E":1589436922972,"T":1589436922959,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}'
    snap = parse_depth_snapshot("BTCUSDT", body, 5)
    assert snap == BookUpdate(
        "BTCUSDT",
        1589436922972_000_000,
        5,
        True,
        ((Decimal("4.00000000"), Decimal("431.00000000")),),
        ((Decimal("4.00000200"), Decimal("12.00000000")),),
        last_update_id=1027024,
    )


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'{"stream":"x","data":{"e":"mystery"}}', b'{"data":{"e":"trade"}}'])
def test_it_counts_an_unparseable_frame_instead_of_failing(payload: bytes) -> None:
    ticks: list[Any] = []
    connector = BinanceUsdmConnector(["BTCUSDT"], lambda *_: None, on_tick=ticks.append)
    connector._handle(payload, 1)
    assert connector.counters.parse_errors == 1
    assert ticks == []

"""Live Binance USD-M futures market data: L1, trades and a synced L2 book per symbol.

One websocket carries the combined streams of every symbol
(``<sym>@bookTicker/<sym>@trade/<sym>@depth@100ms``); the REST depth snapshot
joins the diff-depth stream as Binance documents (see ``ingestion.book``).

Every raw payload, websocket frame or REST body, is handed to ``on_raw``
before anything parses it, because the platform's raw store must hold the
byte-exact message even when parsing later fails (fatal mistake 2).

The connector survives a venue that misbehaves:

- a sequence gap (``pu`` != previous ``u``) drops that symbol's book and
  re-fetches the snapshot while the stream keeps being buffered;
- a dropped connection is re-opened with capped exponential backoff and
  jitter, and every book is rebuilt from a new snapshot, since events were
  missed while disconnected;
- a failed snapshot request is retried with the same backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ingestion.book import BinanceBookSync, OrderBook
from ingestion.types import BookUpdate, QuoteTick, Side, Tick, TradeTick

logger = logging.getLogger(__name__)

KIND_WS = "binance_usdm.ws"
KIND_DEPTH_SNAPSHOT = "binance_usdm.depth_snapshot"

DEFAULT_WS_URL = "wss://fstream.binance.com"
DEFAULT_REST_URL = "https://fapi.binance.com"

RawCallback = Callable[[bytes, int, str], None]
TickCallback = Callable[[Tick], None]

_MS = 1_000_000


class BinanceMessageError(ValueError):
    """A payload that is not a message this connector understands."""


# ------------------------------------------------------------------ parsing


def _levels(rows: list[list[str]]) -> tuple[tuple[Decimal, Decimal], ...]:
    return tuple((Decimal(p), Decimal(q)) for p, q, *_ in rows)


def parse_book_ticker(data: dict[str, Any], recv_ns: int) -> QuoteTick:
    """A ``bookTicker`` event as an L1 quote; the venue clock is the event time ``E``."""
    return QuoteTick(
        symbol=data["s"],
        source_ts_ns=int(data.get("E", data.get("T", 0))) * _MS,
        recv_ts_ns=recv_ns,
        bid=Decimal(data["b"]),
        bid_size=Decimal(data["B"]),
        ask=Decimal(data["a"]),
        ask_size=Decimal(data["A"]),
    )


def parse_trade(data: dict[str, Any], recv_ns: int) -> TradeTick:
    """A ``trade`` (or ``aggTrade``) event; ``m`` true means the buyer was the maker, so a seller aggressed."""
    trade_id = data.get("t", data.get("a"))
    return TradeTick(
        symbol=data["s"],
        source_ts_ns=int(data.get("E", data.get("T", 0))) * _MS,
        recv_ts_ns=recv_ns,
        price=Decimal(data["p"]),
        size=Decimal(data["q"]),
        aggressor=Side.SELL if data["m"] else Side.BUY,
        trade_id=str(trade_id),
    )


def parse_depth_update(data: dict[str, Any], recv_ns: int) -> BookUpdate:
    """A ``depthUpdate`` diff event with its ``U``/``u``/``pu`` sequence numbers."""
    return BookUpdate(
        symbol=data["s"],
        source_ts_ns=int(data["E"]) * _MS,
        recv_ts_ns=recv_ns,
        is_snapshot=False,
        bids=_levels(data["b"]),
        asks=_levels(data["a"]),
        first_update_id=int(data["U"]),
        last_update_id=int(data["u"]),
        prev_last_update_id=int(data["pu"]),
    )


def parse_depth_snapshot(symbol: str, payload: bytes, recv_ns: int) -> BookUpdate:
    """The REST ``/fapi/v1/depth`` body as a snapshot; ``E`` (ms) is the venue clock when present."""
    body = json.loads(payload)
    if "lastUpdateId" not in body:
        raise BinanceMessageError(f"depth snapshot for {symbol} has no lastUpdateId: {payload[:200]!r}")
    event_ms = body.get("E", body.get("T"))
    return BookUpdate(
        symbol=symbol,
        source_ts_ns=int(event_ms) * _MS if event_ms is not None else recv_ns,
        recv_ts_ns=recv_ns,
        is_snapshot=True,
        bids=_levels(body["bids"]),
        asks=_levels(body["asks"]),
        last_update_id=int(body["lastUpdateId"]),
    )


def stream_names(symbols: list[str] | tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for symbol in symbols:
        sym = symbol.lower()
        names += [f"{sym}@bookTicker", f"{sym}@trade", f"{sym}@depth@100ms"]
    return names


def backoff_delay(attempt: int, *, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Capped exponential backoff with "equal jitter": half fixed, half random.

    The fixed half guarantees the delay still grows with ``attempt``; the
    random half keeps many clients from reconnecting in lockstep after a
    venue-wide drop.
    """
    ceiling = min(max_s, initial_s * (2.0 ** min(attempt, 30)))
    return ceiling / 2.0 + rng.random() * ceiling / 2.0


# ---------------------------------------------------------------- connector


@dataclass
class ConnectorCounters:
    messages: int = 0
    parse_errors: int = 0
    gaps: int = 0
    resyncs: int = 0
    reconnects: int = 0
    connects: int = 0
    connect_failures: int = 0
    snapshots: int = 0
    snapshot_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class BinanceUsdmConnector:
    """Streams Binance USD-M L1, trades and diff depth for ``symbols`` until stopped.

    ``on_raw(payload, recv_ns, kind)`` receives every raw websocket frame
    (``KIND_WS``) and REST snapshot body (``KIND_DEPTH_SNAPSHOT``) before it is
    parsed. ``on_tick`` (optional) receives parsed quotes, trades, and each
    book update as it is applied to a synced book.
    """

    def __init__(
        self,
        symbols: list[str] | tuple[str, ...],
        on_raw: RawCallback,
        *,
        on_tick: TickCallback | None = None,
        ws_url: str = DEFAULT_WS_URL,
        rest_url: str = DEFAULT_REST_URL,
        depth_limit: int = 1000,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        open_timeout_s: float = 10.0,
        rest_timeout_s: float = 10.0,
        seed: int | None = None,
    ) -> None:
        if not symbols:
            raise ValueError("the connector needs at least one symbol")
        self.symbols = tuple(s.upper() for s in symbols)
        self.on_raw = on_raw
        self.on_tick = on_tick
        self.ws_url = ws_url.rstrip("/")
        self.rest_url = rest_url.rstrip("/")
        self.depth_limit = depth_limit
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self.rest_timeout_s = rest_timeout_s
        self.counters = ConnectorCounters()
        self._rng = random.Random(seed)
        self._syncs = {s: BinanceBookSync(s) for s in self.symbols}
        self._snapshot_tasks: dict[str, asyncio.Task[None]] = {}
        self._stop: asyncio.Event | None = None
        self.connected = asyncio.Event()

    # ---------------------------------------------------------------- queries

    @property
    def stream_url(self) -> str:
        return f"{self.ws_url}/stream?streams={'/'.join(stream_names(self.symbols))}"

    def depth_url(self, symbol: str) -> str:
        return f"{self.rest_url}/fapi/v1/depth?symbol={symbol.upper()}&limit={self.depth_limit}"

    def book(self, symbol: str) -> OrderBook:
        return self._syncs[symbol.upper()].book

    def sync(self, symbol: str) -> BinanceBookSync:
        return self._syncs[symbol.upper()]

    def is_synced(self, symbol: str | None = None) -> bool:
        if symbol is not None:
            return self._syncs[symbol.upper()].is_synced
        return all(s.is_synced for s in self._syncs.values())

    # ------------------------------------------------------------------- run

    async def run(self, stop_event: asyncio.Event) -> None:
        """Connect, stream and reconnect until ``stop_event`` is set.

        1. Open the combined stream; on failure wait the backoff and retry.
        2. On open, reset every book and fetch a snapshot per symbol while
           the stream's depth events are buffered.
        3. Hand each frame to ``on_raw``, then parse and route it.
        4. When the connection drops, cancel pending snapshots, back off and
           go to step 1.
        """
        self._stop = stop_event
        attempt = 0
        try:
            while not stop_event.is_set():
                received = False
                try:
                    async with connect(
                        self.stream_url,
                        open_timeout=self.open_timeout_s,
                        max_size=2**24,
                        # Binance pings every few minutes and expects pongs,
                        # which websockets answers by itself; our own pings
                        # detect a dead TCP path sooner.
                        ping_interval=20,
                        ping_timeout=20,
                    ) as ws:
                        self._on_connected()
                        received = await self._consume(ws, stop_event)
                except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
                    if isinstance(exc, (OSError, TimeoutError, InvalidHandshake)) and not self.connected.is_set():
                        self.counters.connect_failures += 1
                    logger.warning("binance usd-m stream closed: %r", exc)
                finally:
                    self.connected.clear()
                    self._cancel_snapshots()
                if stop_event.is_set():
                    break
                # A connection that delivered data resets the backoff; one that
                # failed straight away keeps growing it.
                attempt = 0 if received else attempt + 1
                delay = backoff_delay(attempt, initial_s=self.backoff_initial_s, max_s=self.backoff_max_s, rng=self._rng)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), delay)
        finally:
            self._cancel_snapshots()

    def _on_connected(self) -> None:
        self.counters.connects += 1
        if self.counters.connects > 1:
            self.counters.reconnects += 1
        self.connected.set()
        for symbol, sync in self._syncs.items():
            # Whatever the book held is stale: the stream restarted and events
            # were missed while it was down.
            sync.reset()
            self._ensure_snapshot(symbol)
        self._refresh_counters()

    async def _consume(self, ws: ClientConnection, stop_event: asyncio.Event) -> bool:
        """Read frames until the connection closes or stop is requested; True if any arrived."""

        async def close_on_stop() -> None:
            await stop_event.wait()
            await ws.close()

        watcher = asyncio.create_task(close_on_stop())
        received = False
        try:
            while True:
                try:
                    payload = await ws.recv(decode=False)
                except ConnectionClosed:
                    if stop_event.is_set():
                        return received
                    raise
                recv_ns = time.time_ns()
                # The raw store sees the frame before any parsing can fail.
                self.on_raw(payload, recv_ns, KIND_WS)
                self.counters.messages += 1
                received = True
                self._handle(payload, recv_ns)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _handle(self, payload: bytes, recv_ns: int) -> None:
        try:
            message = json.loads(payload)
            data = message.get("data", message)
            event = data["e"]
            if event == "depthUpdate":
                update = parse_depth_update(data, recv_ns)
                self._on_depth(update)
            elif event == "bookTicker":
                self._emit(parse_book_ticker(data, recv_ns))
            elif event in ("trade", "aggTrade"):
                self._emit(parse_trade(data, recv_ns))
            else:
                raise BinanceMessageError(f"unknown event type {event!r}")
        except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as exc:
            self.counters.parse_errors += 1
            logger.warning("unparseable binance usd-m frame (%s): %r", exc, payload[:200])

    def _on_depth(self, update: BookUpdate) -> None:
        sync = self._syncs.get(update.symbol)
        if sync is None:
            raise BinanceMessageError(f"depth for unsubscribed symbol {update.symbol}")
        for applied in sync.on_event(update):
            self._emit(applied)
        if sync.needs_snapshot:
            self._ensure_snapshot(update.symbol)
        self._refresh_counters()

    def _emit(self, tick: Tick) -> None:
        if self.on_tick is not None:
            self.on_tick(tick)

    def _refresh_counters(self) -> None:
        self.counters.gaps = sum(s.gaps for s in self._syncs.values())
        self.counters.resyncs = sum(s.resyncs for s in self._syncs.values())

    # -------------------------------------------------------------- snapshots

    def _ensure_snapshot(self, symbol: str) -> None:
        task = self._snapshot_tasks.get(symbol)
        if task is None or task.done():
            self._snapshot_tasks[symbol] = asyncio.create_task(self._fetch_snapshot(symbol))

    def _cancel_snapshots(self) -> None:
        for task in self._snapshot_tasks.values():
            task.cancel()
        self._snapshot_tasks.clear()

    async def _fetch_snapshot(self, symbol: str) -> None:
        """Fetch and apply the REST snapshot, retrying with backoff until it joins the stream."""
        sync = self._syncs[symbol]
        attempt = 0
        while sync.needs_snapshot and not (self._stop is not None and self._stop.is_set()):
            try:
                payload = await asyncio.to_thread(self._http_get, self.depth_url(symbol))
            except OSError as exc:
                self.counters.snapshot_errors += 1
                logger.warning("binance usd-m depth snapshot for %s failed: %r", symbol, exc)
                attempt += 1
                await asyncio.sleep(
                    backoff_delay(attempt, initial_s=self.backoff_initial_s, max_s=self.backoff_max_s, rng=self._rng)
                )
                continue
            recv_ns = time.time_ns()
            self.on_raw(payload, recv_ns, KIND_DEPTH_SNAPSHOT)
            try:
                snapshot = parse_depth_snapshot(symbol, payload, recv_ns)
            except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
                self.counters.parse_errors += 1
                self.counters.snapshot_errors += 1
                logger.warning("unparseable depth snapshot for %s: %r", symbol, exc)
                attempt += 1
                await asyncio.sleep(
                    backoff_delay(attempt, initial_s=self.backoff_initial_s, max_s=self.backoff_max_s, rng=self._rng)
                )
                continue
            if not sync.needs_snapshot:
                # The stream resynced the book some other way meanwhile (a
                # reconnect started a newer fetch); this snapshot is surplus.
                break
            self.counters.snapshots += 1
            self._emit(snapshot)
            for applied in sync.apply_snapshot(snapshot):
                self._emit(applied)
            self._refresh_counters()
            if sync.needs_snapshot:
                # The snapshot predates the buffered stream; ask again after a
                # short pause so the venue's book can move past our buffer.
                attempt += 1
                await asyncio.sleep(min(self.backoff_initial_s, 0.25))

    def _http_get(self, url: str) -> bytes:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=self.rest_timeout_s) as response:  # noqa: S310
            if response.status != 200:
                raise OSError(f"HTTP {response.status} from {url}")
            body: bytes = response.read()
            return body

"""A fake Binance USD-M venue on 127.0.0.1 for connector tests.

It speaks Binance's real wire format on one port:

- websocket ``/stream?streams=...``: combined-stream frames
  ``{"stream": ..., "data": {...}}`` carrying ``bookTicker``, ``trade`` and
  ``depthUpdate`` events with consistent ``U``/``u``/``pu``;
- REST ``/fapi/v1/depth?symbol=..&limit=..``: ``{"lastUpdateId", "E", "T",
  "bids", "asks"}``.

Its matching engine emits individual level changes, each with its own update
id, and publishes them in batches as diff events, like Binance's 100 ms
aggregation. The next batch is prepared before it is published, and a REST
snapshot taken in between includes part of it, so the snapshot's
``lastUpdateId`` falls inside the next event's ``[U, u]`` range: exactly the
situation Binance's "first processed event" rule is written for.

Test controls: ``inject_gap(symbol)`` publishes the next event to the
engine's book but does not send it (the client sees ``pu`` jump);
``drop_connections()`` aborts every websocket without a closing handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from decimal import Decimal
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

TICK = Decimal("0.10")


class _SymbolEngine:
    def __init__(self, symbol: str, rng: random.Random, mid_ticks: int) -> None:
        self.symbol = symbol
        self.rng = rng
        self.mid = mid_ticks
        # Ticks -> size in integer units of 0.001.
        self.bids: dict[int, int] = {mid_ticks - i: rng.randint(1, 5000) for i in range(1, 41)}
        self.asks: dict[int, int] = {mid_ticks + i: rng.randint(1, 5000) for i in range(1, 41)}
        self.update_id = rng.randint(1_000_000, 2_000_000)
        self.last_u = self.update_id
        self.events_published = 0
        self.trade_id = 0
        self.pending = self._next_batch()

    def _next_batch(self) -> list[tuple[int, str, int, int]]:
        """Individual level changes (id, side, price ticks, size); size 0 removes."""
        batch = []
        for _ in range(self.rng.randint(1, 6)):
            # Update ids are not contiguous between events, as on Binance.
            self.update_id += self.rng.randint(1, 3)
            side = self.rng.choice(("b", "a"))
            offset = self.rng.randint(1, 45)
            price = self.mid - offset if side == "b" else self.mid + offset
            size = 0 if self.rng.random() < 0.25 else self.rng.randint(1, 5000)
            batch.append((self.update_id, side, price, size))
        return batch

    @staticmethod
    def _apply(bids: dict[int, int], asks: dict[int, int], changes: list[tuple[int, str, int, int]]) -> None:
        for _, side, price, size in changes:
            book = bids if side == "b" else asks
            if size:
                book[price] = size
            else:
                book.pop(price, None)

    def publish(self, event_ms: int) -> dict:
        """Apply the pending batch and return it as a ``depthUpdate`` event."""
        batch = self.pending
        self._apply(self.bids, self.asks, batch)
        event = {
            "e": "depthUpdate",
            "E": event_ms,
            "T": event_ms - 1,
            "s": self.symbol,
            "U": batch[0][0],
            "u": batch[-1][0],
            "pu": self.last_u,
            "b": [[_px(p), _qty(s)] for _, side, p, s in batch if side == "b"],
            "a": [[_px(p), _qty(s)] for _, side, p, s in batch if side == "a"],
        }
        self.last_u = batch[-1][0]
        self.events_published += 1
        self.pending = self._next_batch()
        return event

    def snapshot(self, limit: int, event_ms: int) -> dict:
        """The book including the first part of the next, still unpublished, batch."""
        bids, asks = dict(self.bids), dict(self.asks)
        included = self.pending[: max(1, len(self.pending) // 2)]
        self._apply(bids, asks, included)
        return {
            "lastUpdateId": included[-1][0],
            "E": event_ms,
            "T": event_ms - 1,
            "bids": [[_px(p), _qty(bids[p])] for p in sorted(bids, reverse=True)[:limit]],
            "asks": [[_px(p), _qty(asks[p])] for p in sorted(asks)[:limit]],
        }

    def book_ticker(self, event_ms: int) -> dict:
        bid, ask = max(self.bids), min(self.asks)
        return {
            "e": "bookTicker",
            "u": self.last_u,
            "s": self.symbol,
            "b": _px(bid),
            "B": _qty(self.bids[bid]),
            "a": _px(ask),
            "A": _qty(self.asks[ask]),
            "T": event_ms - 1,
            "E": event_ms,
        }

    def trade(self, event_ms: int) -> dict:
        self.trade_id += 1
        buyer_is_maker = self.rng.random() < 0.5
        price = max(self.bids) if buyer_is_maker else min(self.asks)
        return {
            "e": "trade",
            "E": event_ms,
            "T": event_ms - 1,
            "s": self.symbol,
            "t": self.trade_id,
            "p": _px(price),
            "q": _qty(self.rng.randint(1, 900)),
            "X": "MARKET",
            "m": buyer_is_maker,
        }


def _px(ticks: int) -> str:
    return format(Decimal(ticks) * TICK, "f")


def _qty(units: int) -> str:
    return format(Decimal(units) / 1000, "f") if units else "0.000"


class FakeBinanceVenue:
    """Start with ``await venue.start()``, stop with ``await venue.stop()`` (always, in a finally)."""

    def __init__(
        self,
        symbols: tuple[str, ...] = ("BTCUSDT",),
        *,
        seed: int = 1,
        interval_s: float = 0.002,
        max_events: int = 200,
    ) -> None:
        self.rng = random.Random(seed)
        self.engines = {s: _SymbolEngine(s, self.rng, 500_000 + 1000 * i) for i, s in enumerate(symbols)}
        self.interval_s = interval_s
        self.max_events = max_events
        self.port = 0
        self._server: Server | None = None
        self._engine_task: asyncio.Task[None] | None = None
        self._clients: dict[ServerConnection, asyncio.Queue[str]] = {}
        self._gap_next: set[str] = set()
        # Everything the venue put on the wire, in order: websocket frames and REST bodies.
        self.sent_ws: list[bytes] = []
        self.sent_rest: list[bytes] = []
        self.requested_streams: list[list[str]] = []
        self.connections_accepted = 0
        self.gaps_injected = 0
        self.done = asyncio.Event()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await serve(self._handler, "127.0.0.1", 0, process_request=self._process_request)
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    def start_engine(self) -> None:
        if self._engine_task is None:
            self._engine_task = asyncio.create_task(self._engine())

    async def stop(self) -> None:
        if self._engine_task is not None:
            self._engine_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._engine_task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # --------------------------------------------------------------- controls

    def inject_gap(self, symbol: str) -> None:
        self._gap_next.add(symbol)

    def drop_connections(self) -> None:
        for client in list(self._clients):
            client.transport.abort()

    def book(self, symbol: str) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        engine = self.engines[symbol]
        bids = {Decimal(_px(p)): Decimal(_qty(s)) for p, s in engine.bids.items()}
        asks = {Decimal(_px(p)): Decimal(_qty(s)) for p, s in engine.asks.items()}
        return bids, asks

    def last_u(self, symbol: str) -> int:
        return self.engines[symbol].last_u

    # ------------------------------------------------------------------ wire

    async def _engine(self) -> None:
        """Publish events for every symbol until each has ``max_events``."""
        step = 0
        while any(e.events_published < self.max_events for e in self.engines.values()):
            now_ms = time.time_ns() // 1_000_000
            for symbol, engine in self.engines.items():
                if engine.events_published >= self.max_events:
                    continue
                event = engine.publish(now_ms)
                if symbol in self._gap_next:
                    # The venue moved on but this client never hears about it.
                    self._gap_next.discard(symbol)
                    self.gaps_injected += 1
                else:
                    self._broadcast(f"{symbol.lower()}@depth@100ms", event)
                if step % 2 == 0:
                    self._broadcast(f"{symbol.lower()}@bookTicker", engine.book_ticker(now_ms))
                if step % 3 == 0:
                    self._broadcast(f"{symbol.lower()}@trade", engine.trade(now_ms))
            step += 1
            await asyncio.sleep(self.interval_s)
        self.done.set()

    def _broadcast(self, stream: str, data: dict) -> None:
        frame = json.dumps({"stream": stream, "data": data}, separators=(",", ":"))
        for client, queue in list(self._clients.items()):
            if stream in client.streams:  # type: ignore[attr-defined]
                self.sent_ws.append(frame.encode())
                # A queue per client keeps frames in order and the engine's
                # pace independent of how fast a client reads.
                queue.put_nowait(frame)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        if url.path == "/fapi/v1/depth":
            symbol = query.get("symbol", [""])[0].upper()
            if symbol not in self.engines:
                return self._json(connection, HTTPStatus.BAD_REQUEST, {"code": -1121, "msg": "Invalid symbol."})
            limit = int(query.get("limit", ["1000"])[0])
            body = self.engines[symbol].snapshot(limit, time.time_ns() // 1_000_000)
            response = self._json(connection, HTTPStatus.OK, body)
            self.sent_rest.append(response.body)
            return response
        if url.path == "/stream":
            streams = query.get("streams", [""])[0].split("/")
            connection.streams = set(streams)  # type: ignore[attr-defined]
            self.requested_streams.append(streams)
            return None
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")

    @staticmethod
    def _json(connection: ServerConnection, status: HTTPStatus, body: dict) -> Response:
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return Response(status.value, status.phrase, headers, payload)

    async def _handler(self, connection: ServerConnection) -> None:
        self.connections_accepted += 1
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._clients[connection] = queue

        async def writer() -> None:
            while True:
                frame = await queue.get()
                await connection.send(frame)

        task = asyncio.create_task(writer())
        try:
            # The writer fails when the client drops; the venue carries on.
            await connection.wait_closed()
        finally:
            self._clients.pop(connection, None)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

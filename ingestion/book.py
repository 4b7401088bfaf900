"""Local L2 order books and the venue rules that keep them in sync.

``OrderBook`` is a plain price -> size book per side with exact Decimals. It
keeps each side's prices in a sorted list maintained with ``bisect``, so the
best level is O(1) and an upsert or removal costs one binary search plus a
list insert or delete (a memmove, cheap at the few hundred to few thousand
levels a venue publishes).

``BinanceBookSync`` implements Binance USD-M futures' documented procedure
for managing a local book from the diff-depth stream plus a REST snapshot:

1. Buffer the stream's events while no snapshot is applied.
2. Fetch a depth snapshot (``lastUpdateId``).
3. Drop any buffered event whose ``u`` is below ``lastUpdateId``.
4. The first processed event must have ``U <= lastUpdateId`` and
   ``u >= lastUpdateId``; otherwise the snapshot does not join the stream and
   a new one is fetched.
5. Every later event's ``pu`` must equal the previous event's ``u``; otherwise
   the book is out of sync: it is dropped and the process restarts at step 2.

``BybitBookSync`` implements Bybit's rule: a ``snapshot`` message (or a
message whose ``u`` is 1, which Bybit sends after a service restart) resets
the book, and deltas apply on top of the last snapshot.

The module is sans-I/O: it never performs network calls itself. A snapshot is
either pushed in with ``apply_snapshot`` (the asyncio connector does this) or
pulled through an injected ``fetch_snapshot`` callable.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from decimal import Decimal
from enum import StrEnum

from ingestion.types import BookSnapshot, BookUpdate

_ZERO = Decimal(0)


class BookError(ValueError):
    """An update that cannot be applied to a book (wrong symbol, off-tick price, negative size)."""


class OrderBook:
    """An L2 book for one symbol: bids and asks as price -> size, exact Decimals."""

    __slots__ = (
        "_ask_prices",
        "_asks",
        "_bid_prices",
        "_bids",
        "last_update_id",
        "symbol",
        "tick_size",
        "ts_ns",
        "updates_applied",
    )

    def __init__(self, symbol: str, tick_size: Decimal | None = None) -> None:
        self.symbol = symbol
        self.tick_size = tick_size
        self._bids: dict[Decimal, Decimal] = {}
        self._asks: dict[Decimal, Decimal] = {}
        # Both price lists are ascending: the best bid is the last element and
        # the best ask the first, so neither side needs a negated key.
        self._bid_prices: list[Decimal] = []
        self._ask_prices: list[Decimal] = []
        self.ts_ns = 0
        self.last_update_id: int | None = None
        self.updates_applied = 0

    # ----------------------------------------------------------------- writes

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()
        self._bid_prices.clear()
        self._ask_prices.clear()
        self.last_update_id = None

    def apply(self, update: BookUpdate) -> None:
        """Apply a snapshot (replaces the book) or a delta (upserts; size 0 removes).

        The update is validated before anything changes, so a bad update
        leaves the book exactly as it was.
        """
        if update.symbol != self.symbol:
            raise BookError(f"update for {update.symbol} applied to book {self.symbol}")
        self._validate(update.bids)
        self._validate(update.asks)
        if update.is_snapshot:
            self.clear()
            # A snapshot is loaded in bulk and sorted once rather than inserted
            # level by level.
            self._bids = {p: s for p, s in update.bids if s != _ZERO}
            self._asks = {p: s for p, s in update.asks if s != _ZERO}
            self._bid_prices = sorted(self._bids)
            self._ask_prices = sorted(self._asks)
        else:
            for price, size in update.bids:
                self._set(self._bids, self._bid_prices, price, size)
            for price, size in update.asks:
                self._set(self._asks, self._ask_prices, price, size)
        if update.last_update_id is not None:
            self.last_update_id = update.last_update_id
        self.ts_ns = max(self.ts_ns, update.source_ts_ns) if not update.is_snapshot else update.source_ts_ns
        self.updates_applied += 1

    def _validate(self, levels: Iterable[tuple[Decimal, Decimal]]) -> None:
        tick = self.tick_size
        for price, size in levels:
            if price <= _ZERO:
                raise BookError(f"non-positive price {price} in {self.symbol}")
            if size < _ZERO:
                raise BookError(f"negative size {size} at {price} in {self.symbol}")
            if tick is not None and price % tick != _ZERO:
                raise BookError(f"price {price} is not on tick {tick} in {self.symbol}")

    @staticmethod
    def _set(side: dict[Decimal, Decimal], prices: list[Decimal], price: Decimal, size: Decimal) -> None:
        if size == _ZERO:
            # Venues may remove a level we never had; that is normal, not an error.
            if side.pop(price, None) is not None:
                del prices[bisect.bisect_left(prices, price)]
            return
        if price not in side:
            bisect.insort(prices, price)
        side[price] = size

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        return len(self._bids) + len(self._asks)

    @property
    def bids(self) -> dict[Decimal, Decimal]:
        """A copy of the bid side as price -> size."""
        return dict(self._bids)

    @property
    def asks(self) -> dict[Decimal, Decimal]:
        """A copy of the ask side as price -> size."""
        return dict(self._asks)

    def top_bids(self, n: int) -> list[tuple[Decimal, Decimal]]:
        """The best ``n`` bid levels, best (highest) first."""
        prices = self._bid_prices[-n:] if n > 0 else []
        return [(p, self._bids[p]) for p in reversed(prices)]

    def top_asks(self, n: int) -> list[tuple[Decimal, Decimal]]:
        """The best ``n`` ask levels, best (lowest) first."""
        return [(p, self._asks[p]) for p in self._ask_prices[: max(n, 0)]]

    @property
    def best_bid(self) -> Decimal | None:
        return self._bid_prices[-1] if self._bid_prices else None

    @property
    def best_ask(self) -> Decimal | None:
        return self._ask_prices[0] if self._ask_prices else None

    @property
    def best_bid_size(self) -> Decimal | None:
        return self._bids[self._bid_prices[-1]] if self._bid_prices else None

    @property
    def best_ask_size(self) -> Decimal | None:
        return self._asks[self._ask_prices[0]] if self._ask_prices else None

    @property
    def mid(self) -> Decimal | None:
        bid, ask = self.best_bid, self.best_ask
        if bid is None or ask is None:
            return None
        return (bid + ask) / 2

    @property
    def spread(self) -> Decimal | None:
        bid, ask = self.best_bid, self.best_ask
        if bid is None or ask is None:
            return None
        return ask - bid

    @property
    def is_crossed(self) -> bool:
        """True when the best bid is at or above the best ask.

        A locked book (bid == ask) counts as crossed: on a single venue's own
        book it can only come from a missed update, so it is equally untrustworthy.
        """
        bid, ask = self.best_bid, self.best_ask
        return bid is not None and ask is not None and bid >= ask

    def microprice(self) -> Decimal | None:
        """Size-weighted mid: leans towards the side with less size at the touch.

        ``(bid * ask_size + ask * bid_size) / (bid_size + ask_size)``.
        """
        if not self._bid_prices or not self._ask_prices:
            return None
        bid, ask = self._bid_prices[-1], self._ask_prices[0]
        bid_size, ask_size = self._bids[bid], self._asks[ask]
        return (bid * ask_size + ask * bid_size) / (bid_size + ask_size)

    def imbalance(self, n: int = 5) -> Decimal | None:
        """Size imbalance over the top ``n`` levels, in [-1, 1]; positive means more bids."""
        bid_qty = sum((s for _, s in self.top_bids(n)), _ZERO)
        ask_qty = sum((s for _, s in self.top_asks(n)), _ZERO)
        total = bid_qty + ask_qty
        if total == _ZERO:
            return None
        return (bid_qty - ask_qty) / total

    def depth_notional(self, n: int = 10) -> tuple[Decimal, Decimal]:
        """Quote-currency notional (price * size) resting in the top ``n`` levels: (bids, asks)."""
        bid_notional = sum((p * s for p, s in self.top_bids(n)), _ZERO)
        ask_notional = sum((p * s for p, s in self.top_asks(n)), _ZERO)
        return bid_notional, ask_notional

    def snapshot(self, n: int = 20, meta: dict[str, str] | None = None) -> BookSnapshot:
        """The top ``n`` levels per side, best first, as an immutable value."""
        info = {"levels_bid": str(len(self._bids)), "levels_ask": str(len(self._asks))}
        if self.last_update_id is not None:
            info["last_update_id"] = str(self.last_update_id)
        if meta:
            info.update(meta)
        return BookSnapshot(
            symbol=self.symbol,
            ts_ns=self.ts_ns,
            bids=tuple(self.top_bids(n)),
            asks=tuple(self.top_asks(n)),
            meta=info,
        )


class SyncState(StrEnum):
    AWAITING_SNAPSHOT = "awaiting_snapshot"
    AWAITING_FIRST_EVENT = "awaiting_first_event"
    SYNCED = "synced"


class BinanceBookSync:
    """Keeps an ``OrderBook`` in sync with Binance USD-M diff-depth events.

    Feed every stream event to ``on_event`` in arrival order. When
    ``needs_snapshot`` is true, obtain a REST snapshot and hand it to
    ``apply_snapshot`` (or inject ``fetch_snapshot`` and the sync calls it
    itself, synchronously). Events keep being buffered while a snapshot is
    outstanding, so none is lost.

    Counters: ``gaps`` (a ``pu`` that did not match the previous ``u``),
    ``resyncs`` (snapshots requested after the first), ``snapshots_applied``,
    ``stale_dropped`` (buffered events older than the snapshot) and
    ``rejoin_failures`` (a snapshot that did not overlap the stream).
    """

    def __init__(
        self,
        symbol: str,
        fetch_snapshot: Callable[[], BookUpdate] | None = None,
        *,
        tick_size: Decimal | None = None,
        max_buffer: int = 10_000,
    ) -> None:
        self.symbol = symbol
        self.book = OrderBook(symbol, tick_size)
        self._fetch = fetch_snapshot
        self._buffer: deque[BookUpdate] = deque()
        self._max_buffer = max_buffer
        self.state = SyncState.AWAITING_SNAPSHOT
        self._prev_u: int | None = None
        self._snapshot_id: int | None = None
        self.snapshot_requested = False
        self.gaps = 0
        self.resyncs = 0
        self.snapshots_applied = 0
        self.stale_dropped = 0
        self.rejoin_failures = 0
        self.buffer_overflows = 0
        self.events_applied = 0

    @property
    def needs_snapshot(self) -> bool:
        return self.state == SyncState.AWAITING_SNAPSHOT

    @property
    def is_synced(self) -> bool:
        return self.state == SyncState.SYNCED

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def reset(self) -> None:
        """Forget the book and wait for a fresh snapshot (e.g. after a reconnect)."""
        if self.snapshots_applied:
            self.resyncs += 1
        self._to_awaiting_snapshot()
        self._buffer.clear()

    def _to_awaiting_snapshot(self) -> None:
        self.state = SyncState.AWAITING_SNAPSHOT
        self.book.clear()
        self._prev_u = None
        self._snapshot_id = None

    def on_event(self, event: BookUpdate) -> list[BookUpdate]:
        """Take one diff-depth event; return the events applied to the book as a result."""
        if event.first_update_id is None or event.last_update_id is None:
            raise BookError("a Binance depth event needs U and u")
        applied: list[BookUpdate] = []
        if self.state == SyncState.SYNCED:
            if event.prev_last_update_id != self._prev_u:
                # Step 5 failed: we missed events. Drop the book, keep this
                # event (it may be the one that joins the next snapshot) and
                # start again from the snapshot.
                self.gaps += 1
                self.resyncs += 1
                self._to_awaiting_snapshot()
                self._buffer.clear()
                self._push(event)
            else:
                self._apply(event)
                applied.append(event)
        else:
            self._push(event)
            if self.state == SyncState.AWAITING_FIRST_EVENT:
                applied.extend(self._drain())
        if self.needs_snapshot and self._fetch is not None:
            applied.extend(self.apply_snapshot(self._fetch()))
        return applied

    def _push(self, event: BookUpdate) -> None:
        if len(self._buffer) >= self._max_buffer:
            # A snapshot that never comes must not grow memory without bound;
            # the oldest events are the ones a future snapshot will supersede.
            self._buffer.popleft()
            self.buffer_overflows += 1
        self._buffer.append(event)

    def apply_snapshot(self, snapshot: BookUpdate) -> list[BookUpdate]:
        """Load a REST snapshot and replay the buffered events that follow it."""
        if snapshot.last_update_id is None:
            raise BookError("a Binance depth snapshot needs lastUpdateId")
        self.book.apply(snapshot)
        self.snapshots_applied += 1
        self._snapshot_id = snapshot.last_update_id
        self.state = SyncState.AWAITING_FIRST_EVENT
        return self._drain()

    def _drain(self) -> list[BookUpdate]:
        """Replay buffered events against the snapshot (steps 3-5)."""
        applied: list[BookUpdate] = []
        last_id = self._snapshot_id
        assert last_id is not None
        while self._buffer:
            event = self._buffer.popleft()
            assert event.first_update_id is not None and event.last_update_id is not None
            if self.state == SyncState.AWAITING_FIRST_EVENT:
                if event.last_update_id < last_id:
                    self.stale_dropped += 1
                    continue
                if not (event.first_update_id <= last_id <= event.last_update_id):
                    # The snapshot is older than the stream we hold: events in
                    # between are missing, so this snapshot cannot be joined.
                    self.rejoin_failures += 1
                    self.resyncs += 1
                    self._to_awaiting_snapshot()
                    self._buffer.appendleft(event)
                    return applied
                self.state = SyncState.SYNCED
                self._apply(event)
                applied.append(event)
                continue
            if event.prev_last_update_id != self._prev_u:
                self.gaps += 1
                self.resyncs += 1
                self._to_awaiting_snapshot()
                self._buffer.appendleft(event)
                return applied
            self._apply(event)
            applied.append(event)
        return applied

    def _apply(self, event: BookUpdate) -> None:
        self.book.apply(event)
        self._prev_u = event.last_update_id
        self.events_applied += 1


class BybitBookSync:
    """Keeps an ``OrderBook`` in sync with Bybit's orderbook snapshot/delta stream.

    Bybit pushes a full snapshot on subscribe and deltas after it. A new
    snapshot at any time replaces the book, and ``u == 1`` also means a
    snapshot (Bybit restarted the service). Deltas must carry consecutive
    ``u``; a delta that skips one marks the book out of sync until the next
    snapshot (Bybit offers no REST join, the fix is to resubscribe).
    """

    def __init__(self, symbol: str, *, tick_size: Decimal | None = None, check_continuity: bool = True) -> None:
        self.symbol = symbol
        self.book = OrderBook(symbol, tick_size)
        self.check_continuity = check_continuity
        self.synced = False
        self._prev_u: int | None = None
        self.gaps = 0
        self.snapshots_applied = 0
        self.deltas_ignored = 0

    def on_update(self, update: BookUpdate) -> bool:
        """Apply a snapshot or delta; return True when the book changed."""
        if update.is_snapshot or update.last_update_id == 1:
            snap = update if update.is_snapshot else _as_snapshot(update)
            self.book.apply(snap)
            self.snapshots_applied += 1
            self.synced = True
            self._prev_u = update.last_update_id
            return True
        if not self.synced:
            self.deltas_ignored += 1
            return False
        if (
            self.check_continuity
            and self._prev_u is not None
            and update.last_update_id is not None
            and update.last_update_id != self._prev_u + 1
        ):
            self.gaps += 1
            self.synced = False
            self.book.clear()
            self.deltas_ignored += 1
            return False
        self.book.apply(update)
        self._prev_u = update.last_update_id
        return True


def _as_snapshot(update: BookUpdate) -> BookUpdate:
    return BookUpdate(
        symbol=update.symbol,
        source_ts_ns=update.source_ts_ns,
        recv_ts_ns=update.recv_ts_ns,
        is_snapshot=True,
        bids=update.bids,
        asks=update.asks,
        first_update_id=update.first_update_id,
        last_update_id=update.last_update_id,
        prev_last_update_id=update.prev_last_update_id,
        raw=update.raw,
    )

"""Check parsed ticks before they are stored; a bad tick gets a reason, not a crash.

``Validator.check(tick)`` returns ``None`` for a good tick or a reason string
whose first word is a stable code, followed by the detail, e.g.
``"crossed_book: bid 101 > ask 100"``. The ingest worker quarantines the tick
with that reason. Only accepted ticks update the per-symbol state, so one bad
tick cannot poison the ordering or duplicate checks for the good ones after it.

Reason codes (``REASON_CODES``):

``unknown_symbol``       the symbol is not in the configured set.
``non_finite_price``     a price is NaN or infinite.
``non_finite_size``      a size is NaN or infinite.
``non_positive_price``   a price is zero or negative.
``non_positive_size``    a quote or trade size is zero or negative (a book
                         level may have size 0: that removes the level).
``out_of_range``         a finite price or size so huge or so tiny (decimal
                         exponent outside 1e-30 .. 1e18) that it can only be
                         corruption, and that would overflow Decimal
                         arithmetic further down the pipeline.
``crossed_book``         best bid above best ask (quotes and book snapshots).
``locked_book``          best bid equal to best ask.
``future_timestamp``     the venue's timestamp is later than our receive time
                         by more than ``future_tolerance_ns`` (default 5 s):
                         one of the two clocks is badly wrong.
``out_of_order``         the venue timestamp is older than the last accepted
                         one for the same symbol and kind (quote, trade, book).
                         Equal timestamps are fine: many trades share one.
``duplicate``            the same trade id again, the identical quote again at
                         the same venue timestamp, or a book delta whose
                         update id was already applied.

This module is pure: no Django, no ORM.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from ingestion.types import BookUpdate, QuoteTick, TradeTick

REASON_CODES = (
    "unknown_symbol",
    "non_finite_price",
    "non_finite_size",
    "non_positive_price",
    "non_positive_size",
    "out_of_range",
    "crossed_book",
    "locked_book",
    "future_timestamp",
    "out_of_order",
    "duplicate",
)

DEFAULT_FUTURE_TOLERANCE_NS = 5_000_000_000
DEFAULT_TRADE_ID_MEMORY = 100_000
# Decimal exponents (as given by ``Decimal.adjusted``) that any real price or
# size lies within, with a wide margin on both sides.
_MIN_EXPONENT = -30
_MAX_EXPONENT = 18


def reason_code(reason: str) -> str:
    """The stable code of a reason string (its first word, without the colon)."""
    return reason.split(":", 1)[0].split(" ", 1)[0]


def _price_problem(value: Decimal, name: str) -> str | None:
    # Finiteness is checked first on purpose: ordering comparisons with a NaN
    # Decimal raise ``InvalidOperation`` instead of returning False.
    if not value.is_finite():
        return f"non_finite_price: {name} {value}"
    if value <= 0:
        return f"non_positive_price: {name} {value}"
    if not _MIN_EXPONENT <= value.adjusted() <= _MAX_EXPONENT:
        return f"out_of_range: {name} {value}"
    return None


def _size_problem(value: Decimal, name: str, *, zero_ok: bool = False) -> str | None:
    if not value.is_finite():
        return f"non_finite_size: {name} {value}"
    if value < 0 or (value == 0 and not zero_ok):
        return f"non_positive_size: {name} {value}"
    if value and not _MIN_EXPONENT <= value.adjusted() <= _MAX_EXPONENT:
        return f"out_of_range: {name} {value}"
    return None


@dataclass(slots=True)
class _SymbolState:
    last_quote: QuoteTick | None = None
    last_trade_ts_ns: int | None = None
    last_book_ts_ns: int | None = None
    last_book_update_id: int | None = None
    # Trade ids are remembered in arrival order with a bounded memory: a
    # replayed trade arrives close to the original, never a day later.
    trade_ids: set[str] = field(default_factory=set)
    trade_id_order: deque[str] = field(default_factory=deque)


class Validator:
    """Per-symbol sanity checks for quotes, trades and book updates.

    ``known_symbols``: when given, ticks for any other symbol are refused.
    ``future_tolerance_ns``: how far the venue timestamp may lead our receive
    timestamp before the tick is refused.
    ``trade_id_memory``: how many recent trade ids per symbol are remembered
    for duplicate detection.
    """

    def __init__(
        self,
        *,
        known_symbols: Iterable[str] | None = None,
        future_tolerance_ns: int = DEFAULT_FUTURE_TOLERANCE_NS,
        trade_id_memory: int = DEFAULT_TRADE_ID_MEMORY,
    ) -> None:
        self.known_symbols = frozenset(known_symbols) if known_symbols is not None else None
        self.future_tolerance_ns = future_tolerance_ns
        self.trade_id_memory = trade_id_memory
        self._state: dict[str, _SymbolState] = {}

    def check(self, tick: QuoteTick | TradeTick | BookUpdate) -> str | None:
        """Return ``None`` and remember the tick if it is good, else the reason it is not."""
        if self.known_symbols is not None and tick.symbol not in self.known_symbols:
            return f"unknown_symbol: {tick.symbol!r}"
        if tick.source_ts_ns - tick.recv_ts_ns > self.future_tolerance_ns:
            lead_ms = (tick.source_ts_ns - tick.recv_ts_ns) / 1e6
            return (
                f"future_timestamp: source is {lead_ms:.3f} ms ahead of receive time "
                f"(tolerance {self.future_tolerance_ns / 1e6:.0f} ms)"
            )
        state = self._state.get(tick.symbol)
        if state is None:
            state = self._state[tick.symbol] = _SymbolState()
        if isinstance(tick, QuoteTick):
            return self._check_quote(tick, state)
        if isinstance(tick, TradeTick):
            return self._check_trade(tick, state)
        return self._check_book(tick, state)

    def _check_quote(self, tick: QuoteTick, state: _SymbolState) -> str | None:
        problem = (
            _price_problem(tick.bid, "bid")
            or _price_problem(tick.ask, "ask")
            or _size_problem(tick.bid_size, "bid_size")
            or _size_problem(tick.ask_size, "ask_size")
        )
        if problem:
            return problem
        if tick.bid > tick.ask:
            return f"crossed_book: bid {tick.bid} > ask {tick.ask}"
        if tick.bid == tick.ask:
            return f"locked_book: bid {tick.bid} == ask {tick.ask}"
        last = state.last_quote
        if last is not None:
            if tick.source_ts_ns < last.source_ts_ns:
                return _out_of_order(tick.source_ts_ns, last.source_ts_ns, "quote")
            if (
                tick.source_ts_ns == last.source_ts_ns
                and tick.bid == last.bid
                and tick.ask == last.ask
                and tick.bid_size == last.bid_size
                and tick.ask_size == last.ask_size
            ):
                return f"duplicate: identical quote at source ts {tick.source_ts_ns}"
        state.last_quote = tick
        return None

    def _check_trade(self, tick: TradeTick, state: _SymbolState) -> str | None:
        problem = _price_problem(tick.price, "price") or _size_problem(tick.size, "size")
        if problem:
            return problem
        if tick.trade_id in state.trade_ids:
            return f"duplicate: trade id {tick.trade_id!r} already seen"
        if state.last_trade_ts_ns is not None and tick.source_ts_ns < state.last_trade_ts_ns:
            return _out_of_order(tick.source_ts_ns, state.last_trade_ts_ns, "trade")
        state.last_trade_ts_ns = tick.source_ts_ns
        state.trade_ids.add(tick.trade_id)
        state.trade_id_order.append(tick.trade_id)
        if len(state.trade_id_order) > self.trade_id_memory:
            state.trade_ids.discard(state.trade_id_order.popleft())
        return None

    def _check_book(self, tick: BookUpdate, state: _SymbolState) -> str | None:
        for side_name, levels in (("bid", tick.bids), ("ask", tick.asks)):
            for price, size in levels:
                problem = _price_problem(price, side_name) or _size_problem(
                    size, f"{side_name}_size at {price}", zero_ok=not tick.is_snapshot
                )
                if problem:
                    return problem
        if tick.is_snapshot and tick.bids and tick.asks:
            best_bid = max(price for price, _size in tick.bids)
            best_ask = min(price for price, _size in tick.asks)
            if best_bid > best_ask:
                return f"crossed_book: bid {best_bid} > ask {best_ask}"
            if best_bid == best_ask:
                return f"locked_book: bid {best_bid} == ask {best_ask}"
        # A snapshot is not ordered against the deltas: a Binance REST snapshot
        # is answered while newer stream events are already arriving, so it is
        # routinely older than the last delta, and the venue's sync rules
        # (update ids, not timestamps) decide whether it joins the stream.
        if not tick.is_snapshot and state.last_book_ts_ns is not None and tick.source_ts_ns < state.last_book_ts_ns:
            return _out_of_order(tick.source_ts_ns, state.last_book_ts_ns, "book")
        # A snapshot restarts the numbering (Bybit resets ``u`` to 1 after a
        # restart); a delta whose last id is not past the applied one is a
        # replay of something the book already holds.
        if (
            not tick.is_snapshot
            and tick.last_update_id is not None
            and state.last_book_update_id is not None
            and tick.last_update_id <= state.last_book_update_id
        ):
            return f"duplicate: book update {tick.last_update_id} already applied (last {state.last_book_update_id})"
        if not tick.is_snapshot:
            state.last_book_ts_ns = tick.source_ts_ns
        if tick.last_update_id is not None:
            # Binance's first event after a REST snapshot may end exactly at the
            # snapshot's lastUpdateId (``U <= id <= u``) and must still reach
            # the book sync, so a snapshot's id counts as not yet applied.
            state.last_book_update_id = tick.last_update_id - 1 if tick.is_snapshot else tick.last_update_id
        return None


def _out_of_order(ts_ns: int, last_ns: int, kind: str) -> str:
    return f"out_of_order: {kind} source ts {ts_ns} is {(last_ns - ts_ns) / 1e6:.3f} ms older than last accepted {last_ns}"

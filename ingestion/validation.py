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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import compress, islice

import numpy as np

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
# The batch checks decide on floats only where the float cannot be wrong:
# values well inside the accepted exponent range and a bid below the ask by
# far more than any rounding of the text to a float. Everything else is
# decided exactly, on Decimals, by the per-tick rules.
_CLEAR_LOW = 1e-29
_CLEAR_HIGH = 1e17
_CLEAR_GAP = 1e-12
_NO_TS = np.iinfo(np.int64).min


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
            return _future(tick.source_ts_ns - tick.recv_ts_ns, self.future_tolerance_ns)
        state = self._state.get(tick.symbol)
        if state is None:
            state = self._state[tick.symbol] = _SymbolState()
        if isinstance(tick, QuoteTick):
            return self._check_quote(tick, state)
        if isinstance(tick, TradeTick):
            return self._check_trade(tick, state)
        return self._check_book(tick, state)

    # ------------------------------------------------------------------ batches
    #
    # The batch checks give exactly the verdicts (and leave exactly the state)
    # that ``check`` gives tick by tick, in order; ``tests/ingestion`` holds
    # them to that on random batches. Their input is columns: the symbol per
    # row, venue and receive times in ns (int64 arrays, both below 2**63),
    # each price or size as the venue's decimal text (which ``Decimal``
    # accepts) and as a float array of the same values (``float(text)``).
    # They return ``{row: reason}`` for the refused rows.

    def check_quote_batch(
        self,
        symbols: Sequence[str],
        source_ns: np.ndarray,
        recv_ns: np.ndarray,
        texts: Sequence[Sequence[str]],
        values: Sequence[np.ndarray],
    ) -> tuple[dict[int, str], dict[str, QuoteTick]]:
        """Check quote rows (``texts``/``values`` in order bid, bid_size, ask, ask_size).

        Returns the refused rows' reasons and, per symbol, the last quote
        accepted from this batch (the one ``check`` would now remember).
        """
        ok, reasons = self._batch_common(symbols, source_ns, recv_ns)
        bid, ask = values[0], values[2]
        clear = ok & (bid * (1 + _CLEAR_GAP) < ask)
        for column in values:
            clear &= (column > _CLEAR_LOW) & (column < _CLEAR_HIGH)
        for i in np.flatnonzero(ok & ~clear).tolist():
            problem = _quote_problem(*(Decimal(column[i]) for column in texts))
            if problem:
                reasons[i] = problem
                ok[i] = False
        latest: dict[str, QuoteTick] = {}
        for name, rows in _rows_by_symbol(symbols, np.flatnonzero(ok)).items():
            state = self._state.get(name)
            if state is None:
                state = self._state[name] = _SymbolState()
            last = state.last_quote
            ts = source_ns[rows]
            # The last accepted quote is the newest accepted one, and a quote
            # refused as out of order or duplicate never raises that mark, so
            # it is the running maximum over every row that passed the checks above.
            prev = np.maximum.accumulate(np.concatenate(([_NO_TS if last is None else last.source_ts_ns], ts)))[:-1]
            late = ts < prev
            for j in np.flatnonzero(late).tolist():
                reasons[int(rows[j])] = _out_of_order(int(ts[j]), int(prev[j]), "quote")
            candidates = rows[~late]
            if not len(candidates):
                continue
            cts = source_ns[candidates]
            # A candidate is a duplicate exactly when it equals the candidate
            # before it: that one was either accepted, or itself equal to the
            # accepted quote it repeated.
            dup = np.zeros(len(candidates), dtype=bool)
            if last is not None and int(cts[0]) == last.source_ts_ns:
                dup[0] = _same_quote(_quote_row(name, source_ns, recv_ns, texts, int(candidates[0])), last)
            for k in (np.flatnonzero(cts[1:] == cts[:-1]) + 1).tolist():
                dup[k] = _same_rows(texts, values, int(candidates[k]), int(candidates[k - 1]))
            for k in np.flatnonzero(dup).tolist():
                reasons[int(candidates[k])] = _duplicate_quote(int(cts[k]))
            accepted = candidates[~dup]
            if len(accepted):
                state.last_quote = latest[name] = _quote_row(name, source_ns, recv_ns, texts, int(accepted[-1]))
        return reasons, latest

    def check_trade_batch(
        self,
        symbols: Sequence[str],
        source_ns: np.ndarray,
        recv_ns: np.ndarray,
        texts: Sequence[Sequence[str]],
        values: Sequence[np.ndarray],
        trade_ids: Sequence[str],
    ) -> dict[int, str]:
        """Check trade rows (``texts``/``values`` in order price, size); the refused rows' reasons."""
        ok, reasons = self._batch_common(symbols, source_ns, recv_ns)
        price, size = values
        clear = ok & (price > _CLEAR_LOW) & (price < _CLEAR_HIGH) & (size > _CLEAR_LOW) & (size < _CLEAR_HIGH)
        for i in np.flatnonzero(ok & ~clear).tolist():
            problem = _price_problem(Decimal(texts[0][i]), "price") or _size_problem(Decimal(texts[1][i]), "size")
            if problem:
                reasons[i] = problem
                ok[i] = False
        for name, rows in _rows_by_symbol(symbols, np.flatnonzero(ok)).items():
            state = self._state.get(name)
            if state is None:
                state = self._state[name] = _SymbolState()
            row_list = rows.tolist()
            ids = trade_ids if len(row_list) == len(trade_ids) else list(map(trade_ids.__getitem__, row_list))
            seen = np.fromiter(map(state.trade_ids.__contains__, ids), dtype=bool, count=len(ids))
            # Vectorised only when no id repeats inside the batch and no
            # remembered id it repeats can be forgotten part-way through it;
            # otherwise the per-tick rule runs row by row (same verdicts).
            simple = len(set(ids)) == len(ids)
            if simple and seen.any():
                overflow = len(state.trade_id_order) + len(ids) - self.trade_id_memory
                simple = overflow <= 0 or set(islice(state.trade_id_order, overflow)).isdisjoint(ids)
            if not simple:
                for i, trade_id in zip(row_list, ids, strict=True):
                    problem = self._accept_trade(state, trade_id, int(source_ns[i]))
                    if problem:
                        reasons[i] = problem
                continue
            for j in np.flatnonzero(seen).tolist():
                reasons[row_list[j]] = _duplicate_trade(ids[j])
            fresh = ~seen
            ts = source_ns[rows]
            floor = _NO_TS if state.last_trade_ts_ns is None else state.last_trade_ts_ns
            prev = np.maximum.accumulate(np.concatenate(([floor], np.where(fresh, ts, _NO_TS))))[:-1]
            late = fresh & (ts < prev)
            for j in np.flatnonzero(late).tolist():
                reasons[row_list[j]] = _out_of_order(int(ts[j]), int(prev[j]), "trade")
            accepted = fresh & ~late
            new_ids = list(compress(ids, accepted.tolist()))
            if new_ids:
                state.last_trade_ts_ns = int(ts[accepted].max())
                state.trade_ids.update(new_ids)
                order = state.trade_id_order
                order.extend(new_ids)
                while len(order) > self.trade_id_memory:
                    state.trade_ids.discard(order.popleft())
        return reasons

    def _batch_common(
        self, symbols: Sequence[str], source_ns: np.ndarray, recv_ns: np.ndarray
    ) -> tuple[np.ndarray, dict[int, str]]:
        """The first two rules for every row: unknown symbol, then future timestamp."""
        ok = np.ones(len(symbols), dtype=bool)
        reasons: dict[int, str] = {}
        if self.known_symbols is not None:
            unknown = set(symbols) - self.known_symbols
            if unknown:
                names = np.array(symbols, dtype=object)
                for name in unknown:
                    mask = names == name
                    ok &= ~mask
                    reasons.update(dict.fromkeys(np.flatnonzero(mask).tolist(), f"unknown_symbol: {name!r}"))
        lead = source_ns - recv_ns
        for i in np.flatnonzero(ok & (lead > self.future_tolerance_ns)).tolist():
            reasons[i] = _future(int(lead[i]), self.future_tolerance_ns)
            ok[i] = False
        return ok, reasons

    # ------------------------------------------------------------------ one tick

    def _check_quote(self, tick: QuoteTick, state: _SymbolState) -> str | None:
        problem = _quote_problem(tick.bid, tick.bid_size, tick.ask, tick.ask_size)
        if problem:
            return problem
        last = state.last_quote
        if last is not None:
            if tick.source_ts_ns < last.source_ts_ns:
                return _out_of_order(tick.source_ts_ns, last.source_ts_ns, "quote")
            if tick.source_ts_ns == last.source_ts_ns and _same_quote(tick, last):
                return _duplicate_quote(tick.source_ts_ns)
        state.last_quote = tick
        return None

    def _check_trade(self, tick: TradeTick, state: _SymbolState) -> str | None:
        problem = _price_problem(tick.price, "price") or _size_problem(tick.size, "size")
        if problem:
            return problem
        return self._accept_trade(state, tick.trade_id, tick.source_ts_ns)

    def _accept_trade(self, state: _SymbolState, trade_id: str, ts_ns: int) -> str | None:
        """The stateful half of the trade checks: duplicate id, then order; remembers an accepted trade."""
        if trade_id in state.trade_ids:
            return _duplicate_trade(trade_id)
        if state.last_trade_ts_ns is not None and ts_ns < state.last_trade_ts_ns:
            return _out_of_order(ts_ns, state.last_trade_ts_ns, "trade")
        state.last_trade_ts_ns = ts_ns
        state.trade_ids.add(trade_id)
        state.trade_id_order.append(trade_id)
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


def _quote_problem(bid: Decimal, bid_size: Decimal, ask: Decimal, ask_size: Decimal) -> str | None:
    """The checks of one quote that need no history: prices, sizes, crossed and locked book."""
    problem = (
        _price_problem(bid, "bid")
        or _price_problem(ask, "ask")
        or _size_problem(bid_size, "bid_size")
        or _size_problem(ask_size, "ask_size")
    )
    if problem:
        return problem
    if bid > ask:
        return f"crossed_book: bid {bid} > ask {ask}"
    if bid == ask:
        return f"locked_book: bid {bid} == ask {ask}"
    return None


def _same_quote(a: QuoteTick, b: QuoteTick) -> bool:
    return a.bid == b.bid and a.ask == b.ask and a.bid_size == b.bid_size and a.ask_size == b.ask_size


def _rows_by_symbol(symbols: Sequence[str], rows: np.ndarray) -> dict[str, np.ndarray]:
    names = set(symbols)
    if len(names) == 1:
        return {names.pop(): rows}
    column = np.array(symbols, dtype=object)[rows]
    # Sorted so the state of each symbol is touched in a fixed order.
    return {name: rows[column == name] for name in sorted(names)}


def _quote_row(symbol: str, source_ns: np.ndarray, recv_ns: np.ndarray, texts: Sequence[Sequence[str]], i: int) -> QuoteTick:
    bid, bid_size, ask, ask_size = (Decimal(column[i]) for column in texts)
    return QuoteTick(symbol, int(source_ns[i]), int(recv_ns[i]), bid, bid_size, ask, ask_size)


def _same_rows(texts: Sequence[Sequence[str]], values: Sequence[np.ndarray], a: int, b: int) -> bool:
    """Whether rows ``a`` and ``b`` hold the same four Decimal values (floats rule out most pairs)."""
    for text, value in zip(texts, values, strict=True):
        if value[a] != value[b]:
            return False
        if text[a] != text[b] and Decimal(text[a]) != Decimal(text[b]):
            return False
    return True


def _duplicate_quote(ts_ns: int) -> str:
    return f"duplicate: identical quote at source ts {ts_ns}"


def _duplicate_trade(trade_id: str) -> str:
    return f"duplicate: trade id {trade_id!r} already seen"


def _future(lead_ns: int, tolerance_ns: int) -> str:
    return f"future_timestamp: source is {lead_ns / 1e6:.3f} ms ahead of receive time (tolerance {tolerance_ns / 1e6:.0f} ms)"


def _out_of_order(ts_ns: int, last_ns: int, kind: str) -> str:
    return f"out_of_order: {kind} source ts {ts_ns} is {(last_ns - ts_ns) / 1e6:.3f} ms older than last accepted {last_ns}"

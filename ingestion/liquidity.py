"""Liquidity monitor: is the top of the book tradable right now?

A strategy that only sees candles believes it can trade at the close; the
real cost is the spread it crosses and the size available at that price, and
a slow or frozen quote stream means the "price" is stale. For each symbol the
monitor keeps, over a sliding window of the venue's clock:

* the spread in basis points of the mid, latest and window mean;
* the top-of-book notional (price x size) on each side, and the thinner side;
* the quote rate (quotes per second in the window).

and raises flags when the mean spread is above ``max_spread_bps``, the thinner
side's notional is below ``min_top_notional``, or the quote rate is below
``min_quote_rate`` (the rate flag waits until a full window has elapsed, so a
freshly started feed is not called illiquid for having just started).

The window runs on ``source_ts_ns`` so replaying recorded data gives the same
answers as it did live. Figures are floats: they are monitoring features that
feed flags and regime tags, never an order, a fill or PnL. Feed it validated
quotes only (a NaN price would make every figure NaN). Pure: no Django, no ORM.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ingestion.types import QuoteTick

_NS_PER_S = 1_000_000_000


# Not frozen: a frozen dataclass sets each of these fields through
# object.__setattr__, which doubled the cost of ``update``; the monitor never
# keeps or mutates a state it has returned.
@dataclass(slots=True)
class LiquidityState:
    symbol: str
    ts_ns: int
    spread_bps: float
    mean_spread_bps: float
    bid_notional: float
    ask_notional: float
    top_notional: float
    quote_rate: float
    quotes_in_window: int
    warm: bool
    wide_spread: bool
    thin_book: bool
    slow_quotes: bool
    max_spread_bps: float
    min_top_notional: float
    min_quote_rate: float

    @property
    def low_liquidity(self) -> bool:
        return self.wide_spread or self.thin_book or self.slow_quotes

    @property
    def reasons(self) -> tuple[str, ...]:
        """One coded reason per raised flag (built on demand: most callers only read the flags)."""
        out = []
        if self.wide_spread:
            out.append(f"wide_spread: mean {self.mean_spread_bps:.2f} bps > {self.max_spread_bps} bps")
        if self.thin_book:
            out.append(f"thin_book: top notional {self.top_notional:.2f} < {self.min_top_notional}")
        if self.slow_quotes:
            out.append(f"slow_quotes: {self.quote_rate:.2f}/s < {self.min_quote_rate}/s")
        return tuple(out)


@dataclass(slots=True)
class _Window:
    first_ts_ns: int
    last: QuoteTick
    # Venue time and spread (bps) of each quote in the window, oldest first.
    ts: np.ndarray
    spreads: np.ndarray
    last_spread_bps: float = 0.0
    bid_notional: float = 0.0
    ask_notional: float = 0.0

    def evict(self, cutoff: int) -> None:
        """Drop the quotes at the head of the window with a venue time at or before ``cutoff``."""
        beyond = self.ts > cutoff
        keep_from = int(beyond.argmax()) if beyond.any() else len(self.ts)
        if keep_from:
            self.ts = self.ts[keep_from:]
            self.spreads = self.spreads[keep_from:]


class LiquidityMonitor:
    """Rolling liquidity figures and flags per symbol.

    ``window_s``: length of the sliding window on the venue clock.
    ``max_spread_bps``: mean spread above this flags ``wide_spread``.
    ``min_top_notional``: thinner side's notional below this flags ``thin_book``.
    ``min_quote_rate``: quotes per second below this flags ``slow_quotes``.

    The window is kept as numpy arrays and a batch of quotes goes in with a
    few array operations (``update_arrays``); the mean spread is the
    correctly rounded sum (``math.fsum``) of the window, so it depends only on
    what the window holds, not on how the quotes were batched. Quotes must
    reach it in venue-time order per symbol, which the validator guarantees
    (an older quote is refused as ``out_of_order``).
    """

    def __init__(
        self,
        *,
        window_s: float = 10.0,
        max_spread_bps: float = 10.0,
        min_top_notional: float = 10_000.0,
        min_quote_rate: float = 1.0,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_ns = int(window_s * _NS_PER_S)
        self.window_s = window_s
        self.max_spread_bps = max_spread_bps
        self.min_top_notional = min_top_notional
        self.min_quote_rate = min_quote_rate
        self._windows: dict[str, _Window] = {}

    def update(self, quote: QuoteTick) -> LiquidityState:
        """Add one quote and return its symbol's liquidity state."""
        return self.update_many([quote])[quote.symbol]

    def update_many(self, quotes: Iterable[QuoteTick]) -> dict[str, LiquidityState]:
        """Add a batch of quotes; return each touched symbol's state after its last quote.

        Identical to calling ``update`` per quote, but builds one state per
        symbol per batch instead of one per tick.
        """
        by_symbol: dict[str, list[QuoteTick]] = {}
        for quote in quotes:
            by_symbol.setdefault(quote.symbol, []).append(quote)
        out = {}
        for symbol, ticks in by_symbol.items():
            columns = [
                np.fromiter(map(float, values), dtype=np.float64, count=len(ticks))
                for values in zip(*((q.bid, q.ask, q.bid_size, q.ask_size) for q in ticks), strict=True)
            ]
            ts = np.fromiter((q.source_ts_ns for q in ticks), dtype=np.int64, count=len(ticks))
            out[symbol] = self.update_arrays(symbol, ts, *columns, last=ticks[-1])
        return out

    def update_arrays(
        self,
        symbol: str,
        ts: np.ndarray,
        bid: np.ndarray,
        ask: np.ndarray,
        bid_size: np.ndarray,
        ask_size: np.ndarray,
        *,
        last: QuoteTick,
    ) -> LiquidityState:
        """Add one symbol's quotes of a batch as arrays (venue ns; prices and sizes as floats).

        ``last`` is the batch's last quote of the symbol. Returns the state
        after it.
        """
        mid = (bid + ask) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            spreads = np.where(mid > 0, (ask - bid) / mid * 10_000, np.inf)
        win = self._windows.get(symbol)
        if win is None:
            win = self._windows[symbol] = _Window(
                first_ts_ns=int(ts[0]), last=last, ts=np.empty(0, dtype=np.int64), spreads=np.empty(0)
            )
        win.ts = np.concatenate((win.ts, ts))
        win.spreads = np.concatenate((win.spreads, spreads))
        win.last = last
        win.last_spread_bps = float(spreads[-1])
        win.bid_notional = float(bid[-1] * bid_size[-1])
        win.ask_notional = float(ask[-1] * ask_size[-1])
        now = int(ts[-1])
        win.evict(now - self.window_ns)
        return self._state(win, now)

    def state_at(self, symbol: str, now_ns: int) -> LiquidityState | None:
        """The state of ``symbol`` at ``now_ns`` without a new quote, or None if never quoted.

        A feed that stops sending quotes never calls ``update``, so a periodic
        check must call this to see the quote rate fall and ``slow_quotes``
        rise. ``now_ns`` should be on the venue's clock (for example the
        latest receive time minus the clock estimator's offset).
        """
        win = self._windows.get(symbol)
        if win is None:
            return None
        return self._state(win, max(now_ns, win.last.source_ts_ns))

    def _state(self, win: _Window, now_ns: int) -> LiquidityState:
        # The window holds quotes with ts in (now - window, now].
        win.evict(now_ns - self.window_ns)
        count = len(win.ts)
        mean_spread = math.fsum(win.spreads.tolist()) / count if count else win.last_spread_bps
        bid_notional = win.bid_notional
        ask_notional = win.ask_notional
        top_notional = min(bid_notional, ask_notional)
        quote_rate = count / self.window_s
        warm = now_ns - win.first_ts_ns >= self.window_ns

        wide = mean_spread > self.max_spread_bps
        thin = top_notional < self.min_top_notional
        slow = warm and quote_rate < self.min_quote_rate
        return LiquidityState(
            symbol=win.last.symbol,
            ts_ns=now_ns,
            spread_bps=win.last_spread_bps,
            mean_spread_bps=mean_spread,
            bid_notional=bid_notional,
            ask_notional=ask_notional,
            top_notional=top_notional,
            quote_rate=quote_rate,
            quotes_in_window=count,
            warm=warm,
            wide_spread=wide,
            thin_book=thin,
            slow_quotes=slow,
            max_spread_bps=self.max_spread_bps,
            min_top_notional=self.min_top_notional,
            min_quote_rate=self.min_quote_rate,
        )

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

from collections import deque
from dataclasses import dataclass, field

from ingestion.types import QuoteTick

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
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
    reasons: tuple[str, ...] = field(default=())

    @property
    def low_liquidity(self) -> bool:
        return self.wide_spread or self.thin_book or self.slow_quotes


@dataclass(slots=True)
class _Window:
    first_ts_ns: int
    last: QuoteTick
    # (source_ts_ns, spread_bps) per quote in the window, oldest first.
    entries: deque[tuple[int, float]] = field(default_factory=deque)
    spread_sum: float = 0.0
    added: int = 0
    last_spread_bps: float = 0.0


class LiquidityMonitor:
    """Rolling liquidity figures and flags per symbol.

    ``window_s``: length of the sliding window on the venue clock.
    ``max_spread_bps``: mean spread above this flags ``wide_spread``.
    ``min_top_notional``: thinner side's notional below this flags ``thin_book``.
    ``min_quote_rate``: quotes per second below this flags ``slow_quotes``.
    """

    # The running float sum is rebuilt from the window this often, so rounding
    # error from millions of add/subtract pairs cannot accumulate.
    _RESUM_EVERY = 10_000

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
        bid = float(quote.bid)
        ask = float(quote.ask)
        mid = (bid + ask) / 2
        spread_bps = (ask - bid) / mid * 10_000 if mid > 0 else float("inf")
        ts = quote.source_ts_ns

        win = self._windows.get(quote.symbol)
        if win is None:
            win = self._windows[quote.symbol] = _Window(first_ts_ns=ts, last=quote)
        win.entries.append((ts, spread_bps))
        win.spread_sum += spread_bps
        win.added += 1
        win.last = quote
        win.last_spread_bps = spread_bps
        if win.added % self._RESUM_EVERY == 0:
            win.spread_sum = sum(spread for _ts, spread in win.entries)
        return self._state(win, ts)

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
        entries = win.entries
        # The window holds quotes with ts in (now - window, now].
        cutoff = now_ns - self.window_ns
        while entries and entries[0][0] <= cutoff:
            win.spread_sum -= entries.popleft()[1]
        if not entries:
            win.spread_sum = 0.0
        quote = win.last
        count = len(entries)
        mean_spread = win.spread_sum / count if count else win.last_spread_bps
        bid_notional = float(quote.bid) * float(quote.bid_size)
        ask_notional = float(quote.ask) * float(quote.ask_size)
        top_notional = min(bid_notional, ask_notional)
        quote_rate = count / self.window_s
        warm = now_ns - win.first_ts_ns >= self.window_ns

        wide = mean_spread > self.max_spread_bps
        thin = top_notional < self.min_top_notional
        slow = warm and quote_rate < self.min_quote_rate
        reasons = []
        if wide:
            reasons.append(f"wide_spread: mean {mean_spread:.2f} bps > {self.max_spread_bps} bps")
        if thin:
            reasons.append(f"thin_book: top notional {top_notional:.2f} < {self.min_top_notional}")
        if slow:
            reasons.append(f"slow_quotes: {quote_rate:.2f}/s < {self.min_quote_rate}/s")
        return LiquidityState(
            symbol=quote.symbol,
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
            reasons=tuple(reasons),
        )

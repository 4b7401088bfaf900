"""Vectorized market features shared by every strategy and by regime tagging.

This module is pure: numpy and pandas in, numpy and floats out. No Django, no
ORM, no broker. The detect worker and the backtester call exactly this code.

What "window" means here
------------------------
Quotes arrive at irregular times (the Tardis BTCUSDT recording has gaps from
under a millisecond to seconds), so every quote-based window in this module
and in the strategies is a **number of quotes**, counted back from the latest
quote, never a wall-clock duration. A "window of 50" is the 50 most recent
quote updates whatever time they span. Trade flow is the one exception: trades
are aggregated over a **time** window ``(now_ns - window_ns, now_ns]`` because
their count per second is what the momentum rule is about.

Floats are used throughout the features (they are statistics, not money);
strategies convert to ``Decimal`` only when they build an order intent.
"""

from __future__ import annotations

import math
from decimal import Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from automations.strategies.base import MarketWindow
    from ingestion.types import BookSnapshot

QUOTE_COLUMNS = ("ts_ns", "bid", "ask", "bid_size", "ask_size")
TRADE_COLUMNS = ("ts_ns", "price", "size", "side")

# The largest number of decimal places inferred for a quoted price. Beyond
# this, float noise makes the inference meaningless.
MAX_PRICE_DECIMALS = 10

_EMPTY = np.empty(0, dtype=np.float64)
_EMPTY_I8 = np.empty(0, dtype=np.int64)


# --- element-wise series features ------------------------------------------------


def mid_price(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """Arithmetic mid of each quote."""
    return (bid + ask) * 0.5


def spread_bps(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """Quoted spread in basis points of the mid; NaN where the mid is not positive."""
    mid = (bid + ask) * 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (ask - bid) / mid * 1e4
    return np.where(mid > 0, out, np.nan)


def microprice(bid: np.ndarray, ask: np.ndarray, bid_size: np.ndarray, ask_size: np.ndarray) -> np.ndarray:
    """Size-weighted mid (Stoikov's weighted mid): leans to the side with less size.

    ``(bid * ask_size + ask * bid_size) / (bid_size + ask_size)``. A heavy bid
    pushes the microprice toward the ask because the ask is the side more
    likely to be taken next. Where both sizes are zero it falls back to the mid.
    """
    total = bid_size + ask_size
    with np.errstate(divide="ignore", invalid="ignore"):
        weighted = (bid * ask_size + ask * bid_size) / total
    return np.where(total > 0, weighted, (bid + ask) * 0.5)


def top_of_book_imbalance(bid_size: np.ndarray, ask_size: np.ndarray) -> np.ndarray:
    """``(bid_size - ask_size) / (bid_size + ask_size)`` in [-1, 1]; 0 where both are empty."""
    total = bid_size + ask_size
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (bid_size - ask_size) / total
    return np.where(total > 0, out, 0.0)


def log_returns(prices: np.ndarray) -> np.ndarray:
    """Quote-to-quote log returns (one fewer element than ``prices``)."""
    if len(prices) < 2:
        return _EMPTY
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.diff(np.log(prices))


def realized_volatility(returns: np.ndarray, duration_s: float | None = None) -> float:
    """Realized volatility from log returns: ``sqrt(sum(r**2))``, optionally per second.

    With ``duration_s`` the realized variance is divided by the elapsed time
    first, which makes stretches with different quote rates comparable
    (irregular sampling). Returns 0.0 when there are no returns.
    """
    if len(returns) == 0:
        return 0.0
    variance = float(np.dot(returns, returns))
    if duration_s is not None:
        variance /= max(duration_s, 1e-3)
    return math.sqrt(variance)


def efficiency_ratio(prices: np.ndarray, window: int | None = None) -> float:
    """Kaufman efficiency ratio of the last ``window`` steps: net move / path length.

    1.0 is a straight line, values near 0 are a zig-zag going nowhere. A path
    with no movement at all returns 0.0 (nothing trends). ``window`` counts
    price changes, so it looks at ``window + 1`` prices.
    """
    x = prices if window is None else prices[-(window + 1) :]
    if len(x) < 2:
        return 0.0
    path = float(np.abs(np.diff(x)).sum())
    if path <= 0.0:
        return 0.0
    return abs(float(x[-1] - x[0])) / path


def rolling_efficiency_ratio(prices: np.ndarray, window: int) -> np.ndarray:
    """Efficiency ratio at every index over the preceding ``window`` steps (NaN before)."""
    n = len(prices)
    out = np.full(n, np.nan)
    if n <= window:
        return out
    step = np.abs(np.diff(prices))
    csum = np.concatenate(([0.0], np.cumsum(step)))
    net = np.abs(prices[window:] - prices[:-window])
    path = csum[window:] - csum[:-window]
    with np.errstate(divide="ignore", invalid="ignore"):
        out[window:] = np.where(path > 0, net / path, 0.0)
    return out


def signed_trade_flow(size: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Aggressor-signed size: +size for buyer-initiated, -size for seller-initiated, 0 unknown."""
    sign = np.where(side == "buy", 1.0, np.where(side == "sell", -1.0, 0.0))
    return size * sign


def l2_imbalance(book: BookSnapshot | None, levels: int) -> float | None:
    """``(bid depth - ask depth) / (bid depth + ask depth)`` over the top ``levels`` of a book.

    Depth is summed size (base units) per side. Returns None without a book or
    with an empty one, so the caller can tell "no L2" from "balanced".
    """
    if book is None:
        return None
    bid_depth = float(sum(size for _, size in book.bids[:levels]))
    ask_depth = float(sum(size for _, size in book.asks[:levels]))
    total = bid_depth + ask_depth
    if total <= 0:
        return None
    return (bid_depth - ask_depth) / total


def l2_depth_notional(book: BookSnapshot | None, levels: int) -> float | None:
    """Price-times-size summed over the top ``levels`` of both sides (quote currency)."""
    if book is None or (not book.bids and not book.asks):
        return None
    bids = sum(price * size for price, size in book.bids[:levels])
    asks = sum(price * size for price, size in book.asks[:levels])
    return float(bids + asks)


def price_decimals(prices: np.ndarray) -> int:
    """Smallest number of decimal places that represents every price exactly.

    Used to quantize limit prices to the venue's grid when the quotes came in
    as floats: 9681.92 and 9682 together give 2.
    """
    finite = prices[np.isfinite(prices)]
    if len(finite) == 0:
        return 2
    for decimals in range(MAX_PRICE_DECIMALS + 1):
        scaled = finite * (10.0**decimals)
        # The tolerance is relative to the magnitude because float rounding
        # error grows with it.
        tol = np.maximum(np.abs(scaled) * 1e-12, 1e-7)
        if np.all(np.abs(scaled - np.rint(scaled)) <= tol):
            return decimals
    return MAX_PRICE_DECIMALS


# --- the shared per-window frame ---------------------------------------------------


def _column(frame: pd.DataFrame, name: str, dtype: Any) -> np.ndarray:
    """A column's values as a numpy array of ``dtype``, without a copy when it already is one.

    ``frame[name].to_numpy()`` builds a Series first (16 us a column on the
    detect path's window; five columns a pass). pandas' own column-array
    accessor is tried first (the window frames are numpy-backed), then the
    public path, which gives the same array.
    """
    getter = getattr(frame, "_get_column_array", None)
    if getter is not None:
        try:
            values = getter(frame.columns.get_loc(name))
        except (TypeError, KeyError, IndexError):
            values = None
        if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype == dtype:
            return values
    return frame[name].to_numpy(dtype=dtype, copy=False)


class FeatureFrame:
    """Features of one MarketWindow, computed once and shared by every automation.

    Arrays are numpy float64 (timestamps int64), oldest first, one element per
    quote or, for ``t_*``, per trade. Each array is computed on first use and
    kept: a window whose strategies never look at trades never pays for them.
    Tail statistics are cached by window length, so a thousand automations
    with the same window pay for a statistic once. Not thread-safe; build one
    frame per worker thread.
    """

    def __init__(self, window: MarketWindow) -> None:
        quotes, trades = window.quotes, window.trades
        missing = [c for c in QUOTE_COLUMNS if c not in quotes.columns]
        if missing:
            raise ValueError(f"quotes frame is missing columns {missing}")
        if trades is not None and len(trades):
            missing = [c for c in TRADE_COLUMNS if c not in trades.columns]
            if missing:
                raise ValueError(f"trades frame is missing columns {missing}")
        self.symbol = window.symbol
        self.now_ns = int(window.now_ns)
        self.book = window.book
        self._quotes = quotes
        self._trades = trades if trades is not None and len(trades) else None
        self._cache: dict[Any, Any] = {}
        self.n_quotes = len(quotes)

    # Quote columns.

    def _q(self, name: str, dtype: Any) -> np.ndarray:
        if not self.n_quotes:
            return _EMPTY_I8 if dtype is np.int64 else _EMPTY
        return _column(self._quotes, name, dtype)

    @cached_property
    def ts_ns(self) -> np.ndarray:
        return self._q("ts_ns", np.int64)

    @cached_property
    def bid(self) -> np.ndarray:
        return self._q("bid", np.float64)

    @cached_property
    def ask(self) -> np.ndarray:
        return self._q("ask", np.float64)

    @cached_property
    def bid_size(self) -> np.ndarray:
        return self._q("bid_size", np.float64)

    @cached_property
    def ask_size(self) -> np.ndarray:
        return self._q("ask_size", np.float64)

    # Derived quote features.

    @cached_property
    def mid(self) -> np.ndarray:
        return mid_price(self.bid, self.ask)

    @cached_property
    def spread_bps(self) -> np.ndarray:
        return spread_bps(self.bid, self.ask)

    @cached_property
    def microprice(self) -> np.ndarray:
        return microprice(self.bid, self.ask, self.bid_size, self.ask_size)

    @cached_property
    def tob_imbalance(self) -> np.ndarray:
        return top_of_book_imbalance(self.bid_size, self.ask_size)

    @cached_property
    def price_decimals(self) -> int:
        """Decimal places of the window's quoted prices (2 for an empty window)."""
        if not self.n_quotes:
            return 2
        return price_decimals(np.concatenate((self.bid, self.ask)))

    # Trades.

    @cached_property
    def n_trades(self) -> int:
        return 0 if self._trades is None else len(self._trades)

    @cached_property
    def t_ts_ns(self) -> np.ndarray:
        return _EMPTY_I8 if self._trades is None else self._trades["ts_ns"].to_numpy(dtype=np.int64, copy=False)

    @cached_property
    def t_size(self) -> np.ndarray:
        return _EMPTY if self._trades is None else self._trades["size"].to_numpy(dtype=np.float64, copy=False)

    @cached_property
    def t_signed(self) -> np.ndarray:
        if self._trades is None:
            return _EMPTY
        return signed_trade_flow(self.t_size, self._trades["side"].to_numpy(dtype=object))

    @cached_property
    def t_cum_signed(self) -> np.ndarray:
        # A leading zero makes a time-window sum two binary searches and a subtraction.
        return np.concatenate(([0.0], np.cumsum(self.t_signed)))

    @cached_property
    def t_cum_size(self) -> np.ndarray:
        return np.concatenate(([0.0], np.cumsum(self.t_size)))

    # Cached statistics.

    def tail_mean_std(self, name: str, window: int) -> tuple[float, float]:
        """Mean and population std (ddof=0) of the ``window`` values **before** the latest.

        The latest value is excluded so it is compared against history it did
        not shape. The caller ensures ``n_quotes > window``.
        """
        key = ("mean_std", name, window)
        hit = self._cache.get(key)
        if hit is None:
            values = getattr(self, name)[-(window + 1) : -1]
            # Two-pass mean and variance by hand: numerically the same as
            # ndarray.std(ddof=0) but without its per-call overhead, which
            # dominates on windows of a few hundred quotes.
            mean = float(values.sum()) / window
            centred = values - mean
            hit = (mean, math.sqrt(float(centred.dot(centred)) / window))
            self._cache[key] = hit
        return hit

    def tail_high_low(self, name: str, window: int) -> tuple[float, float]:
        """Max and min of the ``window`` values before the latest."""
        key = ("high_low", name, window)
        hit = self._cache.get(key)
        if hit is None:
            values = getattr(self, name)[-(window + 1) : -1]
            hit = (float(values.max()), float(values.min()))
            self._cache[key] = hit
        return hit

    def trade_flow(self, window_ns: int) -> tuple[float, float, int]:
        """Net signed volume, gross volume and trade count in ``(now_ns - window_ns, now_ns]``."""
        key = ("flow", window_ns)
        hit = self._cache.get(key)
        if hit is None:
            ts = self.t_ts_ns
            lo = int(ts.searchsorted(self.now_ns - window_ns, side="right"))
            hi = int(ts.searchsorted(self.now_ns, side="right"))
            if hi <= lo:
                hit = (0.0, 0.0, 0)
            else:
                net = float(self.t_cum_signed[hi] - self.t_cum_signed[lo])
                gross = float(self.t_cum_size[hi] - self.t_cum_size[lo])
                hit = (net, gross, hi - lo)
            self._cache[key] = hit
        return hit

    def l2_imbalance(self, levels: int) -> float | None:
        key = ("l2", levels)
        if key not in self._cache:
            self._cache[key] = l2_imbalance(self.book, levels)
        return self._cache[key]

    @cached_property
    def last_bid(self) -> float:
        return float(self.bid[-1])

    @cached_property
    def last_ask(self) -> float:
        return float(self.ask[-1])

    def materialize(self) -> FeatureFrame:
        """Compute every quote and trade array now (for benchmarks and for sharing across threads)."""
        for name in ("ts_ns", "mid", "spread_bps", "microprice", "tob_imbalance", "t_cum_signed", "t_cum_size"):
            getattr(self, name)
        return self

    def last_bid_decimal(self) -> Decimal:
        return Decimal(repr(self.last_bid))

    def last_ask_decimal(self) -> Decimal:
        return Decimal(repr(self.last_ask))


def compute_features(window: MarketWindow) -> FeatureFrame:
    """The shared features of a window, computed once (lazily, column by column).

    Raises ValueError when a required column is missing, so a caller that
    built the DataFrames wrongly hears about it instead of getting NaNs.
    """
    return FeatureFrame(window)

"""The backtester: recorded quotes and trades through the live path's own functions, in one process.

No Celery, no database, no broker: the same pure functions the live path
calls, in the same order, so a backtest cannot drift from production logic.

Per evaluation point (every ``eval_every`` quotes):

1. Build the ``MarketWindow`` of the last ``history`` quotes and the trades
   up to that moment (``automations.strategies.base.MarketWindow``).
2. ``compute_features`` once, ``tag_regime`` once (``automations``).
3. ``regime_allowed`` against the automation's allowed regimes: a signal in a
   regime it may not trade in is counted as filtered.
4. The strategy's ``evaluate`` gives intents.
5. ``risk.rules.check_order`` against the limits and the running risk state
   (open orders, orders in the last minute, the day's PnL, losing streak):
   refused intents are recorded with their breaches.
6. ``execution.simulation.simulate_fill`` against the L1 book of that moment,
   with the recorded price path during the latency: the order meets the quote
   that was current ``latency`` later. Unfilled remainders are cancelled
   (immediate-or-cancel), so no order rests between evaluations.
7. ``execution.accounting.position_apply`` books the position and the
   realized PnL (after fees); ``risk.rules.apply_fill_pnl`` moves the risk state.

Recorded L1 data gives one level per side, so an order larger than the
touch size fills partially: that is the depth the data shows.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from automations.features import compute_features
from automations.regime import regime_allowed, tag_regime
from automations.strategies import get_strategy
from automations.strategies.base import MarketWindow
from execution.accounting import Position, position_apply
from execution.simulation import FillModelParams, OrderSpec, expected_slippage_bps, simulate_fill, slippage_bps
from ingestion.types import BookSnapshot, Side
from risk import rules

_ZERO = Decimal(0)
ORDER_WINDOW_NS = 60 * 1_000_000_000


@dataclass(frozen=True)
class BacktestConfig:
    symbol: str
    strategy: str
    params: Mapping[str, Any]
    allowed_regimes: Mapping[str, list[str]] = field(default_factory=dict)
    limits: rules.LimitSet = field(default_factory=rules.LimitSet)
    fill_params: FillModelParams = field(default_factory=FillModelParams)
    seed: int = 7
    eval_every: int = 1
    history: int = 300


@dataclass(frozen=True)
class BacktestTrade:
    ts_ns: int
    side: str
    quantity: Decimal
    limit_price: Decimal
    filled_qty: Decimal
    avg_price: Decimal
    fee: Decimal
    decision_mid: Decimal
    modelled_slippage_bps: float
    realized_slippage_bps: float
    realized_pnl: Decimal
    regime: dict[str, Any]
    reason: str


@dataclass
class BacktestResult:
    trades: list[BacktestTrade] = field(default_factory=list)
    intents: int = 0
    filtered_by_regime: int = 0
    refused: list[tuple[int, list[rules.Breach]]] = field(default_factory=list)
    unfilled: int = 0
    position: Position = field(default_factory=Position)
    realized_pnl: Decimal = _ZERO
    final_mid: Decimal | None = None
    evaluations: int = 0

    @property
    def unrealized_pnl(self) -> Decimal:
        if self.final_mid is None or self.position.quantity == 0:
            return _ZERO
        return (self.final_mid - self.position.avg_price) * self.position.quantity

    @property
    def total_pnl(self) -> Decimal:
        return self.realized_pnl + self.unrealized_pnl


def _l1_book(symbol: str, row: Any) -> BookSnapshot:
    # Recorded CSV values become Decimal through their shortest repr, so 9665.5 stays 9665.5.
    return BookSnapshot(
        symbol=symbol, ts_ns=int(row.ts_ns),
        bids=((Decimal(repr(float(row.bid))), Decimal(repr(float(row.bid_size)))),),
        asks=((Decimal(repr(float(row.ask))), Decimal(repr(float(row.ask_size)))),),
    )


def run_backtest(quotes: pd.DataFrame, trades: pd.DataFrame, config: BacktestConfig) -> BacktestResult:
    """Replay ``quotes`` (ts_ns, bid, ask, bid_size, ask_size) and ``trades`` (ts_ns, price, size, side)."""
    strategy = get_strategy(config.strategy)
    params = strategy.validate_params(dict(config.params))
    quotes = quotes.sort_values("ts_ns", kind="stable").reset_index(drop=True)
    trades = trades.sort_values("ts_ns", kind="stable").reset_index(drop=True)
    quote_ts = quotes["ts_ns"].to_list()
    trade_ts = trades["ts_ns"].to_numpy()
    rows = list(quotes.itertuples(index=False))
    lookback = strategy.trade_lookback_ns(params)
    start = max(strategy.min_history(params), 1)
    rng = random.Random(config.seed)
    state = rules.RiskState()
    order_times: list[int] = []
    result = BacktestResult()

    def book_at(ts_ns: int) -> BookSnapshot:
        # The quote current at ts_ns: the recorded path the order meets after its latency.
        idx = max(bisect_right(quote_ts, ts_ns) - 1, 0)
        return _l1_book(config.symbol, rows[idx])

    for i in range(start - 1, len(rows), max(config.eval_every, 1)):
        now_ns = int(rows[i].ts_ns)
        window_quotes = quotes.iloc[max(0, i + 1 - config.history): i + 1]
        lo = 0 if lookback <= 0 else int(trade_ts.searchsorted(now_ns - lookback, side="left"))
        hi = int(trade_ts.searchsorted(now_ns, side="right"))
        window_trades = trades.iloc[lo:hi] if lookback > 0 else trades.iloc[0:0]
        book = _l1_book(config.symbol, rows[i])
        window = MarketWindow(symbol=config.symbol, quotes=window_quotes, trades=window_trades, book=book, now_ns=now_ns)
        features = compute_features(window)
        regime = tag_regime(window, features=features)
        result.evaluations += 1
        intents = strategy.evaluate(window, params, features)
        if not intents:
            continue
        allowed, _why = regime_allowed(regime, dict(config.allowed_regimes))
        for intent in intents:
            result.intents += 1
            if not allowed:
                result.filtered_by_regime += 1
                continue
            order_times = [t for t in order_times if t > now_ns - ORDER_WINDOW_NS]
            state = replace(state, orders_last_minute=len(order_times), open_orders=0)
            mid = book.mid
            breaches = rules.check_order(config.limits, state,
                                         rules.OrderCheck(quantity=intent.quantity, limit_price=intent.limit_price,
                                                          side=Side(intent.side), mid=mid))
            if breaches:
                result.refused.append((now_ns, breaches))
                continue
            order_times.append(now_ns)
            spec = OrderSpec(side=Side(intent.side), quantity=intent.quantity, limit_price=intent.limit_price,
                             symbol=config.symbol)
            modelled = expected_slippage_bps(spec, book, config.fill_params)
            fill = simulate_fill(spec, book, config.fill_params, rng, price_path=book_at, decision_ts_ns=now_ns)
            if fill.filled_qty == 0 or fill.avg_price is None or mid is None:
                result.unfilled += 1
                continue
            result.position, pnl = position_apply(result.position, side=str(intent.side), quantity=fill.filled_qty,
                                                  price=fill.avg_price, fee=fill.fee)
            result.realized_pnl += pnl
            state = rules.apply_fill_pnl(state, pnl)
            result.trades.append(BacktestTrade(
                ts_ns=now_ns, side=str(intent.side), quantity=intent.quantity, limit_price=intent.limit_price,
                filled_qty=fill.filled_qty, avg_price=fill.avg_price, fee=fill.fee, decision_mid=mid,
                modelled_slippage_bps=modelled,
                realized_slippage_bps=float(slippage_bps(Side(intent.side), fill.avg_price, mid)),
                realized_pnl=pnl, regime=regime.as_dict(), reason=intent.reason,
            ))
    if rows:
        result.final_mid = _l1_book(config.symbol, rows[-1]).mid
    return result


def load_tardis_quotes(path: str | Path) -> pd.DataFrame:
    """Tardis ``quotes`` CSV -> (ts_ns, bid, ask, bid_size, ask_size), venue clock."""
    raw = pd.read_csv(path)
    return pd.DataFrame({
        "ts_ns": raw["timestamp"].astype("int64") * 1000, "bid": raw["bid_price"].astype("float64"),
        "ask": raw["ask_price"].astype("float64"), "bid_size": raw["bid_amount"].astype("float64"),
        "ask_size": raw["ask_amount"].astype("float64"),
    })


def load_tardis_trades(path: str | Path) -> pd.DataFrame:
    """Tardis ``trades`` CSV -> (ts_ns, price, size, side), venue clock."""
    raw = pd.read_csv(path)
    return pd.DataFrame({
        "ts_ns": raw["timestamp"].astype("int64") * 1000, "price": raw["price"].astype("float64"),
        "size": raw["amount"].astype("float64"), "side": raw["side"].astype("object"),
    })

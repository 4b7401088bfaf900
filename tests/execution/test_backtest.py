"""The backtester on the recorded Tardis BTCUSDT data (pure: no database)."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

from execution.accounting import Position, position_apply
from execution.backtest import BacktestConfig, load_tardis_quotes, load_tardis_trades, run_backtest
from execution.simulation import FillModelParams
from risk.rules import LimitSet

DATA = "/work/shared/data"
PARAMS = {"quantity": "0.05", "window": 50, "entry_z": 1.5}


@lru_cache(maxsize=1)
def _data():
    quotes = load_tardis_quotes(f"{DATA}/tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv").iloc[:3000]
    trades = load_tardis_trades(f"{DATA}/tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv")
    return quotes, trades


def _config(**overrides) -> BacktestConfig:
    values = {"symbol": "BTCUSDT", "strategy": "microprice_reversion", "params": PARAMS, "eval_every": 5,
              "fill_params": FillModelParams(taker_fee_bps=Decimal("4"), latency_mu_ms=3.0, latency_sigma=0.5,
                                             slippage_sigma_bps=0.5)}
    values.update(overrides)
    return BacktestConfig(**values)


def test_it_trades_the_recorded_data_within_limits_and_books_consistent_pnl():
    quotes, trades = _data()
    result = run_backtest(quotes, trades, _config())
    assert result.trades, "the strategy should trade on this data"
    for t in result.trades:
        # A limit order never fills worse than its limit, and never more than it asked.
        assert (t.avg_price <= t.limit_price) if t.side == "buy" else (t.avg_price >= t.limit_price)
        assert 0 < t.filled_qty <= t.quantity
        assert t.fee == (t.avg_price * t.filled_qty * Decimal("4") / Decimal(10_000)).quantize(
            Decimal("0.00000001"), rounding="ROUND_CEILING")
    # Cash-flow accounting, done independently: equity = -sum(signed notional) - fees + position * final mid.
    cash = sum(((-t.filled_qty if t.side == "buy" else t.filled_qty) * t.avg_price - t.fee for t in result.trades),
               Decimal(0))
    net = sum(((t.filled_qty if t.side == "buy" else -t.filled_qty) for t in result.trades), Decimal(0))
    assert result.position.quantity == net
    # Average-cost division rounds at Decimal's 28 digits; the two methods agree far below a cent.
    assert abs(result.total_pnl - (cash + net * result.final_mid)) < Decimal("1e-12")
    again = run_backtest(quotes, trades, _config())
    assert [t.avg_price for t in again.trades] == [t.avg_price for t in result.trades]


def test_risk_limits_refuse_every_order_above_the_size_limit():
    quotes, trades = _data()
    result = run_backtest(quotes, trades, _config(limits=LimitSet(max_order_qty=Decimal("0.01"))))
    assert result.trades == []
    assert result.refused and all(b[0].limit == "max_order_qty" for _, b in result.refused)


def test_an_automation_limited_to_a_regime_never_seen_trades_nothing():
    quotes, trades = _data()
    result = run_backtest(quotes, trades, _config(allowed_regimes={"volatility": ["extreme"]}))
    assert result.trades == [] and result.filtered_by_regime == result.intents > 0


def test_position_accounting_realizes_pnl_only_when_reducing():
    position, pnl = position_apply(Position(), side="buy", quantity=Decimal("2"), price=Decimal("100"))
    assert (position.quantity, position.avg_price, pnl) == (Decimal("2"), Decimal("100"), Decimal("0"))
    position, pnl = position_apply(position, side="buy", quantity=Decimal("2"), price=Decimal("110"))
    assert position.avg_price == Decimal("105")
    position, pnl = position_apply(position, side="sell", quantity=Decimal("5"), price=Decimal("120"), fee=Decimal("1"))
    # 4 closed at +15 each = 60, minus the fee; 1 opened short at 120.
    assert (pnl, position.quantity, position.avg_price) == (Decimal("59"), Decimal("-1"), Decimal("120"))

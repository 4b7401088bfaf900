"""Time the fill model and the breaker check per call; print one JSON object.

The book is the top 20 levels of the recorded Bybit XRPUSDT 500-level snapshot
(shared/data), so the depth walk sees real level sizes and ticks; when the
recording is not beside the repo a synthetic 20-level book with the same tick
is used and the output says so.

Run: .venv/bin/python benchmarks/fill_model.py [--calls N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from execution.simulation import FillModelParams, OrderSpec, simulate_fill
from ingestion.types import BookSnapshot, Side
from risk.rules import LimitSet, OrderCheck, RiskState, check_order

LEVELS = 20
DATA = Path(os.environ.get("SHARED_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
RECORDING = DATA / "bybit_XRPUSDT_ob500_2024-12-01.data"


def load_book() -> tuple[BookSnapshot, str]:
    if RECORDING.exists():
        with RECORDING.open() as fh:
            msg = json.loads(fh.readline())
        data = msg["data"]
        bids = tuple((Decimal(p), Decimal(s)) for p, s in data["b"][:LEVELS])
        asks = tuple((Decimal(p), Decimal(s)) for p, s in data["a"][:LEVELS])
        return BookSnapshot(data["s"], int(msg["ts"]) * 1_000_000, bids, asks), RECORDING.name
    bids = tuple((Decimal("1.9531") - Decimal("0.0001") * i, Decimal(10_000 + 500 * i)) for i in range(LEVELS))
    asks = tuple((Decimal("1.9532") + Decimal("0.0001") * i, Decimal(10_000 + 500 * i)) for i in range(LEVELS))
    return BookSnapshot("XRPUSDT", 0, bids, asks), "synthetic"


def time_calls(fn: Callable[[], object], calls: int) -> dict[str, float]:
    for _ in range(min(200, calls)):
        fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return {
        "median_us": round(statistics.median(samples) / 1000, 2),
        "p99_us": round(samples[int(0.99 * (len(samples) - 1))] / 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()

    book, source = load_book()
    rng = np.random.default_rng(42)
    params = FillModelParams(
        taker_fee_bps=Decimal("5.5"),
        latency_mu_ms=3.0,
        latency_sigma=0.5,
        slippage_sigma_bps=2.0,
        impact_coef=Decimal("10"),
    )
    # Half of the ask side's visible size: the market buy walks about ten levels.
    ask_depth = sum(size for _p, size in book.asks)
    market = OrderSpec(Side.BUY, (ask_depth / 2).quantize(Decimal(1)))
    whole_book = OrderSpec(Side.SELL, sum(size for _p, size in book.bids) * 2)
    limit = OrderSpec(Side.BUY, ask_depth, limit_price=book.asks[4][0])

    limits = LimitSet(
        max_signals_per_hour=100,
        max_daily_loss=Decimal("1000"),
        max_drawdown=Decimal("500"),
        max_open_orders=10,
        max_order_qty=Decimal("100000"),
        max_order_notional=Decimal("200000"),
        price_collar_bps=Decimal("50"),
        max_orders_per_minute=30,
        max_consecutive_losses=5,
        max_slippage_breaches_per_day=3,
    )
    state = RiskState(open_orders=3, daily_realized_pnl=Decimal("-120.5"), daily_peak_pnl=Decimal("40"))
    passing = OrderCheck(Decimal("5000"), book.asks[0][0], Side.BUY, mid=book.mid)
    failing_state = RiskState(open_orders=10, daily_realized_pnl=Decimal("-2000"), consecutive_losses=9)
    failing = OrderCheck(Decimal("500000"), book.asks[0][0] * 2, Side.BUY, mid=book.mid)

    report = {
        "book": source,
        "levels_per_side": LEVELS,
        "calls": args.calls,
        "simulate_fill_market_walk_half_depth": time_calls(lambda: simulate_fill(market, book, params, rng), args.calls),
        "simulate_fill_market_walk_all_levels": time_calls(lambda: simulate_fill(whole_book, book, params, rng), args.calls),
        "simulate_fill_limit_5_levels": time_calls(lambda: simulate_fill(limit, book, params, rng), args.calls),
        "check_order_all_limits_pass": time_calls(lambda: check_order(limits, state, passing), args.calls),
        "check_order_all_limits_breach": time_calls(lambda: check_order(limits, failing_state, failing), args.calls),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Cost of the pure detection math: features, each strategy's evaluate, regime tagging.

Prints one JSON object. Times are microseconds on a 500-quote window of the
recorded Tardis BTCUSDT data (with its trades of the last 60 s). The figure
that matters for capacity is the marginal cost per automation when the
features of a symbol's window are computed once and shared: the platform
evaluates once per symbol per batch, not per tick.

Run: .venv/bin/python benchmarks/detection_pure.py [--reps N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from automations.features import compute_features
from automations.regime import tag_regime
from automations.strategies import STRATEGIES, MarketWindow

DATA = Path("/work/shared/data")
WINDOW_QUOTES = 500

PARAMS = {
    "microprice_reversion": {"quantity": "0.01", "window": 50, "entry_z": 2.0, "min_std_bps": 0.1},
    "imbalance_breakout": {"quantity": "0.01", "lookback": 200, "imbalance_threshold": 0.5},
    "trade_flow_momentum": {"quantity": "0.01", "window_ms": 2000, "min_trades": 10},
}


def load_windows(count: int) -> list[MarketWindow]:
    raw_q = pd.read_csv(DATA / "tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv")
    raw_t = pd.read_csv(DATA / "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv")
    quotes = pd.DataFrame(
        {
            "ts_ns": raw_q["timestamp"].astype("int64") * 1000,
            "bid": raw_q["bid_price"],
            "ask": raw_q["ask_price"],
            "bid_size": raw_q["bid_amount"],
            "ask_size": raw_q["ask_amount"],
        }
    )
    trades = pd.DataFrame(
        {
            "ts_ns": raw_t["timestamp"].astype("int64") * 1000,
            "price": raw_t["price"],
            "size": raw_t["amount"],
            "side": raw_t["side"].astype(object),
        }
    )
    trade_ts = trades["ts_ns"].to_numpy()
    ends = np.linspace(WINDOW_QUOTES, len(quotes), count, dtype=int)
    windows = []
    for end in ends:
        now = int(quotes["ts_ns"].iat[end - 1])
        lo = int(np.searchsorted(trade_ts, now - 60_000_000_000, side="right"))
        hi = int(np.searchsorted(trade_ts, now, side="right"))
        # Copies, as the detect worker would build them, not views of one big frame.
        windows.append(
            MarketWindow("BTCUSDT", quotes.iloc[end - WINDOW_QUOTES : end].copy(), trades.iloc[lo:hi].copy(), None, now)
        )
    return windows


def timed(fn, reps: int, windows: list[MarketWindow]) -> dict[str, float]:
    samples = []
    for k in range(reps):
        window = windows[k % len(windows)]
        start = time.perf_counter_ns()
        fn(window)
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return {
        "median_us": round(statistics.median(samples) / 1000, 2),
        "p99_us": round(samples[int(len(samples) * 0.99) - 1] / 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3000)
    args = parser.parse_args()
    reps = args.reps
    windows = load_windows(50)
    params = {name: STRATEGIES[name].validate_params(raw) for name, raw in PARAMS.items()}
    # The machine is shared: the load average says how much to trust wall-clock figures.
    out: dict[str, object] = {"window_quotes": WINDOW_QUOTES, "reps": reps, "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}

    # 1. One evaluate() from scratch: features computed inside, as a lone automation would.
    out["evaluate_standalone"] = {
        name: timed(lambda w, s=STRATEGIES[name], p=p: s.evaluate(w, p), reps, windows) for name, p in params.items()
    }
    # compute_features is lazy; materialize() pays for every column up front.
    out["compute_features_all_columns"] = timed(lambda w: compute_features(w).materialize(), reps, windows)
    out["tag_regime"] = timed(tag_regime, reps, windows)

    # 2. Marginal cost per automation with shared features: a batch for one
    # symbol computes features and the regime once, then runs N automations.
    # Half the automations reuse one of a few common settings (cache hits),
    # half have their own window lengths (cache misses): a realistic mix.
    n_auto = 1000
    automations = []
    for k in range(n_auto):
        name = list(params)[k % 3]
        raw = dict(PARAMS[name])
        if k % 2:
            key = {"microprice_reversion": "window", "imbalance_breakout": "lookback", "trade_flow_momentum": "window_ms"}[name]
            raw[key] = 20 + k % 400 if key != "window_ms" else 500 + 10 * k
        automations.append((STRATEGIES[name], STRATEGIES[name].validate_params(raw)))

    batch_times, feature_times, batch_cpu = [], [], []
    signals = 0
    for window in windows * 2:
        start = time.perf_counter_ns()
        features = compute_features(window)
        tag_regime(window, features=features)
        mid = time.perf_counter_ns()
        cpu_start = time.thread_time_ns()
        for strategy, p in automations:
            signals += len(strategy.evaluate(window, p, features))
        end = time.perf_counter_ns()
        batch_cpu.append(time.thread_time_ns() - cpu_start)
        feature_times.append(mid - start)
        batch_times.append(end - mid)
    per_auto = [t / n_auto / 1000 for t in batch_times]
    per_auto.sort()
    out["shared_batch"] = {
        "automations": n_auto,
        "features_plus_regime_median_us": round(statistics.median(feature_times) / 1000, 2),
        "marginal_per_automation_median_us": round(statistics.median(per_auto), 2),
        "marginal_per_automation_p99_us": round(per_auto[int(len(per_auto) * 0.99) - 1], 2),
        "marginal_per_automation_cpu_median_us": round(statistics.median(batch_cpu) / n_auto / 1000, 2),
        "batch_of_1000_median_ms": round(statistics.median(batch_times) / 1e6, 2),
        "signals_per_batch": round(signals / len(batch_times), 1),
    }
    # 3. Capacity: how many symbol-batches of 1,000 automations one core clears per second.
    batch_s = (statistics.median(batch_times) + statistics.median(feature_times)) / 1e9
    out["batches_of_1000_per_core_per_s"] = round(1 / batch_s, 1)
    out["automation_evaluations_per_core_per_s"] = round(n_auto / batch_s)
    # CPU time is what the thread actually used; on a shared, loaded machine it
    # is the better capacity estimate than wall-clock time.
    out["automation_evaluations_per_core_per_s_cpu"] = round(1e9 / (statistics.median(batch_cpu) / n_auto))
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

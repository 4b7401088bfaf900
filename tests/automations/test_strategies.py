"""Strategies against the recorded Tardis BTCUSDT quotes and trades.

Each replay test re-derives the expected signals with a plain Python loop
written from the strategy's definition (no call into automations.*), then
asserts the strategy emits exactly those intents: same quote indices, same
sides, same Decimal limit prices.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from automations.features import compute_features
from automations.strategies import (
    STRATEGIES,
    InvalidParameters,
    MarketWindow,
    Strategy,
    UnknownStrategy,
    get_strategy,
    validate_params,
)
from ingestion.types import BookSnapshot, Side

DATA = Path("/work/shared/data")
QUOTES_CSV = DATA / "tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv"
TRADES_CSV = DATA / "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv"

WINDOW_QUOTES = 301  # Quotes handed to the strategy per evaluation.
STEP = 3  # Evaluate every third quote while rolling through the file.
TRADE_HISTORY_NS = 60_000_000_000
FUTURE_TRADES = 20  # Trades after now_ns put in every window; they must be ignored.


@dataclass
class Recording:
    quotes: pd.DataFrame
    trades: pd.DataFrame
    # Plain Python copies for the independent re-implementations.
    bid: list[float]
    ask: list[float]
    bid_size: list[float]
    ask_size: list[float]
    bid_text: list[str]
    ask_text: list[str]
    ts_ns: list[int]
    trade_ts_ns: list[int]
    trade_size: list[float]
    trade_side: list[str]


@dataclass
class Step:
    index: int
    window: MarketWindow


@pytest.fixture(scope="module")
def recording() -> Recording:
    raw_q = pd.read_csv(QUOTES_CSV, dtype=str)
    raw_t = pd.read_csv(TRADES_CSV, dtype=str)
    quotes = pd.DataFrame(
        {
            "ts_ns": raw_q["timestamp"].astype("int64") * 1000,
            "bid": raw_q["bid_price"].astype("float64"),
            "ask": raw_q["ask_price"].astype("float64"),
            "bid_size": raw_q["bid_amount"].astype("float64"),
            "ask_size": raw_q["ask_amount"].astype("float64"),
        }
    )
    trades = pd.DataFrame(
        {
            "ts_ns": raw_t["timestamp"].astype("int64") * 1000,
            "price": raw_t["price"].astype("float64"),
            "size": raw_t["amount"].astype("float64"),
            "side": raw_t["side"].astype(object),
        }
    )
    return Recording(
        quotes=quotes,
        trades=trades,
        bid=[float(x) for x in raw_q["bid_price"]],
        ask=[float(x) for x in raw_q["ask_price"]],
        bid_size=[float(x) for x in raw_q["bid_amount"]],
        ask_size=[float(x) for x in raw_q["ask_amount"]],
        bid_text=list(raw_q["bid_price"]),
        ask_text=list(raw_q["ask_price"]),
        ts_ns=[int(x) * 1000 for x in raw_q["timestamp"]],
        trade_ts_ns=[int(x) * 1000 for x in raw_t["timestamp"]],
        trade_size=[float(x) for x in raw_t["amount"]],
        trade_side=list(raw_t["side"]),
    )


@pytest.fixture(scope="module")
def steps(recording: Recording) -> list[Step]:
    """MarketWindows rolling through the file: the last 301 quotes, trades up to now (+ a few after)."""
    out = []
    trade_ts = recording.trades["ts_ns"].to_numpy()
    for i in range(WINDOW_QUOTES - 1, len(recording.quotes), STEP):
        now = recording.ts_ns[i]
        lo = int(np.searchsorted(trade_ts, now - TRADE_HISTORY_NS, side="right"))
        hi = int(np.searchsorted(trade_ts, now, side="right"))
        window = MarketWindow(
            symbol="BTCUSDT",
            quotes=recording.quotes.iloc[i - WINDOW_QUOTES + 1 : i + 1],
            trades=recording.trades.iloc[lo : hi + FUTURE_TRADES],
            book=None,
            now_ns=now,
        )
        out.append(Step(i, window))
    return out


def run(strategy_name: str, raw: dict, steps: list[Step]) -> list[tuple[int, str, Decimal, Decimal]]:
    strategy = get_strategy(strategy_name)
    params = strategy.validate_params(raw)
    out = []
    for step in steps:
        intents = strategy.evaluate(step.window, params)
        assert len(intents) <= 1
        for intent in intents:
            out.append((step.index, intent.side.value, intent.limit_price, intent.quantity))
    return out


# --- independent reference pieces ------------------------------------------------


def decimals_of(text: str) -> int:
    exponent = Decimal(text).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def expected_limit(rec: Recording, i: int, side: str, offset_bps: float = 0.0, offset_ticks: int = 0) -> Decimal:
    """Buy at the ask plus offset rounded up, sell at the bid minus offset rounded down.

    The price grid is the finest decimal place seen in the window's bid and ask texts.
    """
    first = i - WINDOW_QUOTES + 1
    places = max(decimals_of(t) for t in rec.bid_text[first : i + 1] + rec.ask_text[first : i + 1])
    tick = Decimal(1) / (Decimal(10) ** places)
    bps = Decimal(str(offset_bps))
    if side == "buy":
        raw = Decimal(rec.ask_text[i]) * (1 + bps / 10000) + offset_ticks * tick
        return raw.quantize(tick, rounding=ROUND_CEILING)
    raw = Decimal(rec.bid_text[i]) * (1 - bps / 10000) - offset_ticks * tick
    return raw.quantize(tick, rounding=ROUND_FLOOR)


def step_indices() -> range:
    return range(WINDOW_QUOTES - 1, 9999, STEP)


# --- replay tests ----------------------------------------------------------------


def test_it_emits_exactly_the_microprice_reversion_signals_of_the_rule(recording: Recording, steps: list[Step]) -> None:
    window, entry_z, min_std_bps, offset_bps = 50, 4.0, 0.2, 1.5
    raw = {"quantity": "0.010", "window": window, "entry_z": entry_z, "min_std_bps": min_std_bps, "offset_bps": offset_bps}
    rec = recording
    mp = [
        (rec.bid[k] * rec.ask_size[k] + rec.ask[k] * rec.bid_size[k]) / (rec.bid_size[k] + rec.ask_size[k])
        for k in range(len(rec.bid))
    ]
    expected = []
    for i in step_indices():
        history = mp[i - window : i]
        mean = sum(history) / window
        std = math.sqrt(sum((x - mean) ** 2 for x in history) / window)
        if std == 0 or std < mean * min_std_bps / 10000:
            continue
        z = (mp[i] - mean) / std
        side = "buy" if z < -entry_z else "sell" if z > entry_z else None
        if side:
            expected.append((i, side, expected_limit(rec, i, side, offset_bps=offset_bps), Decimal("0.010")))

    actual = run("microprice_reversion", raw, steps)

    assert len(expected) >= 5
    assert {s for _, s, _, _ in expected} == {"buy", "sell"}
    assert actual == expected


def test_it_emits_exactly_the_imbalance_breakout_signals_of_the_rule(recording: Recording, steps: list[Step]) -> None:
    lookback, threshold, min_break_bps, offset_ticks = 300, 0.8, 0.2, 2
    raw = {
        "quantity": 1,
        "lookback": lookback,
        "imbalance_threshold": threshold,
        "min_break_bps": min_break_bps,
        "offset_ticks": offset_ticks,
    }
    rec = recording
    mid = [(b + a) / 2 for b, a in zip(rec.bid, rec.ask, strict=True)]
    expected = []
    for i in step_indices():
        previous = mid[i - lookback : i]
        high, low = max(previous), min(previous)
        imbalance = (rec.bid_size[i] - rec.ask_size[i]) / (rec.bid_size[i] + rec.ask_size[i])
        side = None
        if mid[i] > high * (1 + min_break_bps / 10000) and imbalance >= threshold:
            side = "buy"
        elif mid[i] < low * (1 - min_break_bps / 10000) and imbalance <= -threshold:
            side = "sell"
        if side:
            expected.append((i, side, expected_limit(rec, i, side, offset_ticks=offset_ticks), Decimal(1)))

    actual = run("imbalance_breakout", raw, steps)

    assert len(expected) >= 5
    assert {s for _, s, _, _ in expected} == {"buy", "sell"}
    assert actual == expected


def test_it_emits_exactly_the_trade_flow_momentum_signals_of_the_rule(recording: Recording, steps: list[Step]) -> None:
    window_ms, min_trades, min_ratio, min_net = 1000, 20, 0.9, 5.0
    raw = {
        "quantity": 0.5,
        "window_ms": window_ms,
        "min_trades": min_trades,
        "min_flow_ratio": min_ratio,
        "min_net_volume": min_net,
    }
    rec = recording
    expected = []
    for i in step_indices():
        now = rec.ts_ns[i]
        net = gross = 0.0
        count = 0
        for k in range(bisect_right(rec.trade_ts_ns, now) - 1, -1, -1):
            if rec.trade_ts_ns[k] <= now - window_ms * 1_000_000:
                break
            sign = 1 if rec.trade_side[k] == "buy" else -1
            net += sign * rec.trade_size[k]
            gross += rec.trade_size[k]
            count += 1
        if count < min_trades or net == 0:
            continue
        ratio = net / gross
        side = None
        if net >= min_net and ratio >= min_ratio:
            side = "buy"
        elif -net >= min_net and -ratio >= min_ratio:
            side = "sell"
        if side:
            expected.append((i, side, expected_limit(rec, i, side), Decimal("0.5")))

    actual = run("trade_flow_momentum", raw, steps)

    assert len(expected) >= 5
    assert actual == expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("microprice_reversion", {"quantity": "0.01", "window": 50, "entry_z": 3.0, "min_std_bps": 0.1}),
        ("imbalance_breakout", {"quantity": "0.01", "lookback": 100, "imbalance_threshold": 0.5}),
        ("trade_flow_momentum", {"quantity": "0.01", "window_ms": 2000, "min_trades": 10}),
    ],
)
def test_it_gives_the_same_intents_with_shared_precomputed_features(name: str, raw: dict, steps: list[Step]) -> None:
    strategy = get_strategy(name)
    params = strategy.validate_params(raw)
    others = [s for s in STRATEGIES.values() if s.name != name]
    fired = 0
    for step in steps[::5]:
        shared = compute_features(step.window)
        # Other automations on the same symbol use the frame first, filling its caches.
        for other in others:
            other.evaluate(step.window, other.validate_params({"quantity": "1"}), shared)
        alone = strategy.evaluate(step.window, params)
        together = strategy.evaluate(step.window, params, shared)
        assert alone == together
        fired += bool(alone)
    assert fired > 0


def test_it_explains_each_intent_with_a_reason_and_the_features_behind_it(steps: list[Step]) -> None:
    strategy = get_strategy("microprice_reversion")
    params = strategy.validate_params({"quantity": "0.01", "window": 50, "entry_z": 4.0, "min_std_bps": 0.2})
    intent = next(i for s in steps for i in strategy.evaluate(s.window, params))

    assert intent.reason.startswith("microprice z=")
    assert "over 50 quotes" in intent.reason
    assert set(intent.features) >= {"z", "mean", "std", "microprice", "bid", "ask"}
    z = intent.features["z"]
    assert abs(z) > 4.0
    assert intent.side is (Side.BUY if z < 0 else Side.SELL)
    assert f"z={z:.2f}" in intent.reason


# --- small hand-made windows -------------------------------------------------------


def quotes_frame(rows: list[tuple[float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts_ns": np.arange(len(rows), dtype=np.int64) * 1_000_000,
            "bid": [r[0] for r in rows],
            "ask": [r[1] for r in rows],
            "bid_size": [r[2] for r in rows],
            "ask_size": [r[3] for r in rows],
        }
    )


NO_TRADES = pd.DataFrame({"ts_ns": [], "price": [], "size": [], "side": []})


def test_it_needs_min_history_quotes_before_signalling() -> None:
    strategy = get_strategy("imbalance_breakout")
    params = strategy.validate_params({"quantity": "1", "lookback": 5, "imbalance_threshold": 0.5})
    rows = [(100.0, 100.1, 1.0, 1.0)] * 5 + [(100.5, 100.6, 9.0, 1.0)]
    assert strategy.min_history(params) == 6
    full = MarketWindow("X", quotes_frame(rows), NO_TRADES, None, 10**9)
    short = MarketWindow("X", quotes_frame(rows[1:]), NO_TRADES, None, 10**9)

    [intent] = strategy.evaluate(full, params)
    assert intent.side is Side.BUY
    assert intent.limit_price == Decimal("100.6")
    assert strategy.evaluate(short, params) == []


def test_it_confirms_an_l2_breakout_with_the_book_and_not_without_one() -> None:
    strategy = get_strategy("imbalance_breakout")
    params = strategy.validate_params({"quantity": "1", "lookback": 5, "imbalance_threshold": 0.5, "book_levels": 3})
    # Top of book leans to the ask, but the three-level book leans down hard.
    rows = [(100.0, 100.1, 1.0, 1.0)] * 5 + [(99.5, 99.6, 1.0, 1.0)]
    book = BookSnapshot(
        symbol="X",
        ts_ns=10**9,
        bids=((Decimal("99.5"), Decimal("1")), (Decimal("99.4"), Decimal("1")), (Decimal("99.3"), Decimal("0"))),
        asks=((Decimal("99.6"), Decimal("2")), (Decimal("99.7"), Decimal("4")), (Decimal("99.8"), Decimal("4"))),
    )
    with_book = MarketWindow("X", quotes_frame(rows), NO_TRADES, book, 10**9)
    without = MarketWindow("X", quotes_frame(rows), NO_TRADES, None, 10**9)

    [intent] = strategy.evaluate(with_book, params)
    assert intent.side is Side.SELL
    assert intent.features["imbalance"] == pytest.approx((2 - 10) / 12)
    assert "L2 3-level" in intent.reason
    assert strategy.evaluate(without, params) == []


def test_it_does_not_trade_on_a_crossed_quote() -> None:
    strategy = get_strategy("imbalance_breakout")
    params = strategy.validate_params({"quantity": "1", "lookback": 5, "imbalance_threshold": 0.5})
    rows = [(100.0, 100.1, 1.0, 1.0)] * 5 + [(100.7, 100.6, 9.0, 1.0)]
    assert strategy.evaluate(MarketWindow("X", quotes_frame(rows), NO_TRADES, None, 10**9), params) == []


# --- parameter validation ----------------------------------------------------------

BAD_PARAMS = [
    ("microprice_reversion", {"window": 4}, "window", ">= 5"),
    ("microprice_reversion", {"window": "50"}, "window", "integer"),
    ("microprice_reversion", {"window": 2.5}, "window", "integer"),
    ("microprice_reversion", {"window": True}, "window", "boolean"),
    ("microprice_reversion", {"entry_z": 0}, "entry_z", "> 0"),
    ("microprice_reversion", {"entry_z": float("nan")}, "entry_z", "finite"),
    ("microprice_reversion", {"min_std_bps": -1}, "min_std_bps", ">= 0"),
    ("imbalance_breakout", {"lookback": 1}, "lookback", ">= 2"),
    ("imbalance_breakout", {"imbalance_threshold": 1.5}, "imbalance_threshold", "<= 1"),
    ("imbalance_breakout", {"imbalance_threshold": 0.0}, "imbalance_threshold", "> 0"),
    ("imbalance_breakout", {"book_levels": -1}, "book_levels", ">= 0"),
    ("imbalance_breakout", {"min_break_bps": "x"}, "min_break_bps", "number"),
    ("trade_flow_momentum", {"window_ms": 0}, "window_ms", ">= 1"),
    ("trade_flow_momentum", {"min_trades": 0}, "min_trades", ">= 1"),
    ("trade_flow_momentum", {"min_flow_ratio": 1.2}, "min_flow_ratio", "<= 1"),
    ("trade_flow_momentum", {"min_flow_ratio": 0, "min_net_volume": 0}, "min_flow_ratio", "cannot both be 0"),
]
COMMON_BAD = [
    ({"quantity": "0"}, "quantity", "> 0"),
    ({"quantity": "-1"}, "quantity", "> 0"),
    ({"quantity": "abc"}, "quantity", "decimal"),
    ({"quantity": "NaN"}, "quantity", "finite"),
    ({"quantity": None}, "quantity", "required"),
    ({"offset_bps": 501}, "offset_bps", "<= 500"),
    ({"offset_ticks": -2}, "offset_ticks", ">= 0"),
    ({"offset_bps": 1.0, "offset_ticks": 1}, "offset_ticks", "not both"),
    ({"surprise": 1}, "surprise", "unknown parameter"),
]


@pytest.mark.parametrize(
    ("name", "raw", "field", "why"),
    BAD_PARAMS + [(n, r, f, w) for n in sorted(STRATEGIES) for r, f, w in COMMON_BAD],
)
def test_it_rejects_a_bad_parameter_naming_the_field_and_why(name: str, raw: dict, field: str, why: str) -> None:
    params = {"quantity": "1", **raw}
    if raw.get("quantity", "") is None:
        params.pop("quantity")
    with pytest.raises(InvalidParameters) as caught:
        validate_params(name, params)
    assert field in caught.value.errors
    assert why in caught.value.errors[field]
    assert f"{field}: " in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_it_fills_defaults_and_normalizes_types() -> None:
    params = validate_params("microprice_reversion", {"quantity": 0.1, "window": 20.0, "entry_z": 3})
    assert params == {
        "window": 20,
        "entry_z": 3.0,
        "min_std_bps": 0.0,
        "quantity": Decimal("0.1"),
        "offset_bps": 0.0,
        "offset_ticks": 0,
    }
    assert isinstance(params["window"], int)
    assert isinstance(params["entry_z"], float)


def test_it_reports_every_bad_field_at_once() -> None:
    with pytest.raises(InvalidParameters) as caught:
        validate_params("imbalance_breakout", {"lookback": 0, "imbalance_threshold": 2})
    assert set(caught.value.errors) == {"lookback", "imbalance_threshold", "quantity"}


def test_it_rejects_an_unknown_strategy_by_name() -> None:
    with pytest.raises(UnknownStrategy, match="unknown strategy 'nope'.*microprice_reversion"):
        get_strategy("nope")
    with pytest.raises(ValueError, match="nope"):
        validate_params("nope", {})


def test_it_registers_three_strategies_that_satisfy_the_protocol() -> None:
    assert set(STRATEGIES) == {"microprice_reversion", "imbalance_breakout", "trade_flow_momentum"}
    for name, strategy in STRATEGIES.items():
        assert isinstance(strategy, Strategy)
        assert strategy.name == name
        assert strategy.description
        spec_names = [spec.as_dict()["name"] for spec in strategy.param_spec]
        assert "quantity" in spec_names
        defaults = strategy.validate_params({"quantity": "1"})
        assert set(defaults) == set(spec_names)
        assert strategy.params_as_json(defaults)["quantity"] == "1"


def test_it_asks_for_enough_history_for_its_windows() -> None:
    mr, ib, tf = (STRATEGIES[n] for n in ("microprice_reversion", "imbalance_breakout", "trade_flow_momentum"))
    assert mr.min_history(mr.validate_params({"quantity": "1", "window": 80})) == 81
    assert ib.min_history(ib.validate_params({"quantity": "1", "lookback": 40})) == 41
    assert tf.trade_lookback_ns(tf.validate_params({"quantity": "1", "window_ms": 2500})) == 2_500_000_000

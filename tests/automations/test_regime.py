"""Regime tagging on synthetic series with known properties and on the recorded data."""

from __future__ import annotations

import json
import math
import statistics
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from automations.regime import (
    Regime,
    RegimeParams,
    regime_allowed,
    tag_regime,
    validate_allowed_regimes,
)
from automations.strategies import MarketWindow
from ingestion.types import BookSnapshot

QUOTES_CSV = Path("/work/shared/data/tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv")
NO_TRADES = pd.DataFrame({"ts_ns": [], "price": [], "size": [], "side": []})
SECOND = 1_000_000_000


def make_window(
    mids: np.ndarray,
    ts_ns: np.ndarray | None = None,
    spread_bps: float = 0.5,
    size: float = 50.0,
    book: BookSnapshot | None = None,
) -> MarketWindow:
    mids = np.asarray(mids, dtype=float)
    if ts_ns is None:
        ts_ns = np.arange(len(mids), dtype=np.int64) * SECOND
    half = mids * spread_bps / 2e4
    quotes = pd.DataFrame(
        {
            "ts_ns": ts_ns,
            "bid": mids - half,
            "ask": mids + half,
            "bid_size": np.full(len(mids), size),
            "ask_size": np.full(len(mids), size),
        }
    )
    return MarketWindow("SYN", quotes, NO_TRADES, book, int(ts_ns[-1]))


def random_walk(sigmas: np.ndarray, seed: int = 1, start: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return start * np.exp(np.concatenate(([0.0], np.cumsum(rng.normal(size=len(sigmas)) * sigmas))))


def test_it_tags_a_straight_line_as_trending_with_efficiency_near_one() -> None:
    regime = tag_regime(make_window(np.linspace(100, 101, 300)))
    assert regime.trend == "trending"
    assert regime.metrics["efficiency_ratio"] == pytest.approx(1.0)


def test_it_tags_a_zigzag_as_ranging_with_efficiency_near_zero() -> None:
    regime = tag_regime(make_window(np.array([100.0, 100.1] * 150 + [100.0])))
    assert regime.trend == "ranging"
    assert regime.metrics["efficiency_ratio"] == pytest.approx(0.0, abs=0.02)


def test_it_tags_a_high_volatility_tail_as_high() -> None:
    sigmas = np.concatenate((np.full(250, 1e-5), np.full(50, 1e-3)))
    regime = tag_regime(make_window(random_walk(sigmas)))
    assert regime.volatility == "high"
    assert regime.metrics["vol_ratio"] > 10


def test_it_tags_a_calm_tail_after_a_volatile_history_as_low() -> None:
    sigmas = np.concatenate((np.full(250, 1e-3), np.full(50, 1e-5)))
    regime = tag_regime(make_window(random_walk(sigmas)))
    assert regime.volatility == "low"
    assert regime.metrics["vol_ratio"] < 0.1


def test_it_tags_steady_volatility_as_normal_even_when_the_quote_rate_changes() -> None:
    # History: one quote a second; tail: ten quotes a second with sqrt(10)
    # smaller steps. The volatility per second is the same throughout.
    history_ts = np.arange(251, dtype=np.int64) * SECOND
    tail_ts = history_ts[-1] + np.arange(1, 501, dtype=np.int64) * (SECOND // 10)
    sigmas = np.concatenate((np.full(250, 1e-4), np.full(500, 1e-4 / math.sqrt(10))))
    params = RegimeParams(vol_recent=500)
    regime = tag_regime(make_window(random_walk(sigmas, seed=3), np.concatenate((history_ts, tail_ts))), params)
    assert regime.volatility == "normal"
    assert 0.7 < regime.metrics["vol_ratio"] < 1.4


def test_it_tags_liquidity_from_spread_and_top_of_book_depth() -> None:
    flat = np.full(100, 10_000.0)
    wide = tag_regime(make_window(flat, spread_bps=10.0, size=100.0))
    small = tag_regime(make_window(flat, spread_bps=0.5, size=0.2))
    deep = tag_regime(make_window(flat, spread_bps=0.5, size=10.0))
    middle = tag_regime(make_window(flat, spread_bps=2.0, size=10.0))

    assert wide.liquidity == "thin"
    assert small.liquidity == "thin"  # 2 x 0.2 x 10,000 = 4,000 < 10,000 of depth.
    assert deep.liquidity == "deep"  # 200,000 of depth at 0.5 bps.
    assert middle.liquidity == "normal"
    assert deep.metrics["spread_bps"] == pytest.approx(0.5)
    assert deep.metrics["top_depth_notional"] == pytest.approx(200_000.0)


def test_it_lets_a_shallow_l2_book_make_liquidity_thin() -> None:
    flat = np.full(100, 10_000.0)
    level = (Decimal("10000"), Decimal("1"))
    shallow = BookSnapshot("SYN", 0, bids=(level,) * 3, asks=(level,) * 3)
    heavy = BookSnapshot("SYN", 0, bids=((Decimal("10000"), Decimal("60")),) * 3, asks=((Decimal("10000"), Decimal("60")),) * 3)

    assert tag_regime(make_window(flat, size=10.0, book=shallow)).liquidity == "thin"
    deep = tag_regime(make_window(flat, size=10.0, book=heavy))
    assert deep.liquidity == "deep"
    assert deep.metrics["l2_depth_notional"] == pytest.approx(3_600_000.0)


def test_it_stays_neutral_with_too_little_history() -> None:
    regime = tag_regime(make_window(np.array([100.0, 100.1])))
    assert regime.volatility == "normal"
    assert regime.trend == "trending"  # One step is a straight line.
    assert regime.metrics["vol_ratio"] == -1.0


def test_it_serializes_the_regime_as_strict_json() -> None:
    regime = tag_regime(make_window(np.array([100.0])))
    data = json.loads(json.dumps(regime.as_dict(), allow_nan=False))
    assert data["volatility"] in {"low", "normal", "high"}
    assert set(data) == {"volatility", "trend", "liquidity", "metrics"}


def test_it_rejects_inconsistent_regime_thresholds() -> None:
    with pytest.raises(ValueError, match="vol_low_ratio"):
        RegimeParams(vol_low_ratio=3.0)
    with pytest.raises(ValueError, match="deep_spread_bps"):
        RegimeParams(deep_spread_bps=9.0, thin_spread_bps=5.0)


# --- allowed regimes -----------------------------------------------------------------

REGIME = Regime(volatility="high", trend="ranging", liquidity="normal")


def test_it_allows_everything_when_nothing_is_restricted() -> None:
    assert regime_allowed(REGIME, None) == (True, "")
    assert regime_allowed(REGIME, {}) == (True, "")
    assert regime_allowed(REGIME, {"volatility": []}) == (True, "")


def test_it_filters_a_regime_outside_the_allowed_values_and_says_why() -> None:
    allowed = {"volatility": ["low", "normal"], "trend": ["ranging"]}
    assert regime_allowed(REGIME, allowed) == (False, "volatility=high not in allowed [low, normal]")
    assert regime_allowed(REGIME, {"trend": ["trending"]}) == (False, "trend=ranging not in allowed [trending]")
    assert regime_allowed(REGIME, {"volatility": ["high"], "liquidity": ["normal", "deep"]}) == (True, "")


def test_it_validates_allowed_regime_settings() -> None:
    assert validate_allowed_regimes({"trend": ["trending", "trending"]}) == {"trend": ["trending"]}
    with pytest.raises(ValueError, match="mood: unknown regime dimension"):
        validate_allowed_regimes({"mood": ["calm"]})
    with pytest.raises(ValueError, match=r"volatility: unknown value\(s\) \['extreme'\]"):
        validate_allowed_regimes({"volatility": ["extreme"]})
    with pytest.raises(ValueError, match="liquidity: must be a list"):
        validate_allowed_regimes({"liquidity": "thin"})


# --- recorded data -------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded() -> pd.DataFrame:
    raw = pd.read_csv(QUOTES_CSV)
    return pd.DataFrame(
        {
            "ts_ns": raw["timestamp"].astype("int64") * 1000,
            "bid": raw["bid_price"].astype("float64"),
            "ask": raw["ask_price"].astype("float64"),
            "bid_size": raw["bid_amount"].astype("float64"),
            "ask_size": raw["ask_amount"].astype("float64"),
        }
    )


def test_it_tags_the_recorded_quotes_consistently_with_a_plain_recomputation(recorded: pd.DataFrame) -> None:
    params = RegimeParams()
    seen: dict[str, set[str]] = {"volatility": set(), "trend": set(), "liquidity": set()}
    for end in range(300, len(recorded), 250):
        quotes = recorded.iloc[end - 300 : end]
        regime = tag_regime(MarketWindow("BTCUSDT", quotes, NO_TRADES, None, int(quotes["ts_ns"].iloc[-1])), params)
        json.dumps(regime.as_dict(), allow_nan=False)
        for dim in seen:
            seen[dim].add(getattr(regime, dim))

        bids, asks = quotes["bid"].tolist(), quotes["ask"].tolist()
        mids = [(b + a) / 2 for b, a in zip(bids, asks, strict=True)]
        tail = mids[-(params.trend_window + 1) :]
        path = sum(abs(y - x) for x, y in zip(tail, tail[1:], strict=False))
        er = abs(tail[-1] - tail[0]) / path if path else 0.0
        assert regime.metrics["efficiency_ratio"] == pytest.approx(er)
        assert regime.trend == ("trending" if er >= params.er_trending else "ranging")

        spreads = [(a - b) / ((a + b) / 2) * 1e4 for b, a in zip(bids, asks, strict=True)]
        spread = statistics.median(spreads[-params.liquidity_window :])
        assert regime.metrics["spread_bps"] == pytest.approx(spread)

        ts = quotes["ts_ns"].tolist()
        split = len(mids) - params.vol_recent - 1

        def per_second(lo: int, hi: int) -> float:
            r2 = sum(math.log(mids[k + 1] / mids[k]) ** 2 for k in range(lo, hi))
            return math.sqrt(r2 / max((ts[hi] - ts[lo]) / 1e9, 1e-3))

        ratio = per_second(split, len(mids) - 1) / per_second(0, split)
        assert regime.metrics["vol_ratio"] == pytest.approx(ratio)
        expected_vol = "high" if ratio > params.vol_high_ratio else "low" if ratio < params.vol_low_ratio else "normal"
        assert regime.volatility == expected_vol

    # The recording is only four minutes long but still moves between regimes.
    assert len(seen["volatility"]) >= 2
    assert seen["trend"] == {"trending", "ranging"}

"""Market regime tagging (fatal mistake 12: no regime filtering).

Every signal is tagged with the regime it was born in, and an automation only
trades in the regimes it allows. Pure module: the backtester and the detect
worker tag the same window the same way.

Three independent dimensions, each from the window's quotes (windows count
quotes, see ``automations.features``):

- volatility: realized volatility per second of the last ``vol_recent``
  quotes' mid log returns, divided by that of the earlier quotes in the
  window (its own longer history). Ratio below ``vol_low_ratio`` is 'low',
  above ``vol_high_ratio`` is 'high', else 'normal'. Per-second scaling keeps
  a burst of quotes from looking volatile merely because it is dense.
- trend: Kaufman efficiency ratio of the mid over the last ``trend_window``
  quote changes; at or above ``er_trending`` is 'trending', else 'ranging'.
- liquidity: median spread (bps) and median top-of-book notional
  (bid_size * bid + ask_size * ask) over the last ``liquidity_window`` quotes,
  plus the L2 notional over ``l2_levels`` when the window has a book. 'thin'
  if any measure is on the thin side of its threshold, 'deep' if every
  measure is on the deep side, else 'normal'.

With too little history to compare (fewer than two returns in either part)
volatility is 'normal', and with fewer than two quotes the trend is
'ranging': the tag never claims more than the data shows, and
``metrics['vol_history_returns']`` says how much there was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from automations.features import (
    FeatureFrame,
    compute_features,
    efficiency_ratio,
    l2_depth_notional,
    log_returns,
    realized_volatility,
)
from automations.strategies.base import MarketWindow

VOLATILITY_VALUES = ("low", "normal", "high")
TREND_VALUES = ("trending", "ranging")
LIQUIDITY_VALUES = ("thin", "normal", "deep")
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "volatility": VOLATILITY_VALUES,
    "trend": TREND_VALUES,
    "liquidity": LIQUIDITY_VALUES,
}

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class RegimeParams:
    """Thresholds of the regime tagger. Defaults suit a liquid crypto perpetual."""

    vol_recent: int = 50
    vol_low_ratio: float = 0.5
    vol_high_ratio: float = 2.0
    trend_window: int = 100
    er_trending: float = 0.3
    liquidity_window: int = 20
    thin_spread_bps: float = 5.0
    deep_spread_bps: float = 1.0
    thin_depth_notional: float = 10_000.0
    deep_depth_notional: float = 100_000.0
    l2_levels: int = 10
    thin_l2_notional: float = 100_000.0
    deep_l2_notional: float = 1_000_000.0

    def __post_init__(self) -> None:
        errors: list[str] = []
        for name in ("vol_recent", "trend_window", "liquidity_window", "l2_levels"):
            if getattr(self, name) < 1:
                errors.append(f"{name}: must be >= 1")
        if not 0 < self.vol_low_ratio < 1 < self.vol_high_ratio:
            errors.append("vol_low_ratio/vol_high_ratio: need 0 < vol_low_ratio < 1 < vol_high_ratio")
        if not 0 < self.er_trending < 1:
            errors.append("er_trending: must be in (0, 1)")
        if not 0 <= self.deep_spread_bps < self.thin_spread_bps:
            errors.append("deep_spread_bps: must be >= 0 and < thin_spread_bps")
        if not 0 <= self.thin_depth_notional < self.deep_depth_notional:
            errors.append("thin_depth_notional: must be >= 0 and < deep_depth_notional")
        if not 0 <= self.thin_l2_notional < self.deep_l2_notional:
            errors.append("thin_l2_notional: must be >= 0 and < deep_l2_notional")
        if errors:
            raise ValueError("; ".join(errors))


DEFAULT_REGIME_PARAMS = RegimeParams()


@dataclass(frozen=True)
class Regime:
    volatility: str
    trend: str
    liquidity: str
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the three tags and the finite metrics behind them."""
        # By hand rather than dataclasses.asdict, whose deep copy dominated on the detect path.
        return {"volatility": self.volatility, "trend": self.trend, "liquidity": self.liquidity, "metrics": dict(self.metrics)}


def _finite(value: float) -> float:
    # JSON has no NaN or infinity; a missing measure is stored as -1.
    return float(value) if math.isfinite(value) else -1.0


def _median(values: np.ndarray) -> float:
    """Median of the finite values (NaN when none); sorting beats np.median's overhead on short tails."""
    finite = np.sort(values[np.isfinite(values)])
    n = len(finite)
    if n == 0:
        return math.nan
    half = n // 2
    return float(finite[half]) if n % 2 else float((finite[half - 1] + finite[half]) * 0.5)


def _vol_per_second(mid: np.ndarray, ts_ns: np.ndarray) -> tuple[float, int]:
    returns = log_returns(mid)
    returns = returns[np.isfinite(returns)]
    duration = (float(ts_ns[-1]) - float(ts_ns[0])) / NS_PER_S if len(ts_ns) > 1 else 0.0
    return realized_volatility(returns, duration), len(returns)


def tag_regime(
    window: MarketWindow,
    params: RegimeParams | None = None,
    features: FeatureFrame | None = None,
) -> Regime:
    """Tag the window's regime; pass ``features`` to reuse a shared FeatureFrame."""
    p = params or DEFAULT_REGIME_PARAMS
    f = features if features is not None else compute_features(window)
    mid, ts = f.mid, f.ts_ns
    n = len(mid)
    metrics: dict[str, float] = {"quotes": float(n)}

    # 1. Volatility: the recent part shares its first price with the end of
    # the history part so no return is lost between them.
    split = max(n - p.vol_recent - 1, 0)
    vol_recent, recent_returns = _vol_per_second(mid[split:], ts[split:])
    vol_history, history_returns = _vol_per_second(mid[: split + 1], ts[: split + 1])
    metrics.update(
        vol_recent_per_s=vol_recent,
        vol_history_per_s=vol_history,
        vol_recent_returns=float(recent_returns),
        vol_history_returns=float(history_returns),
    )
    if recent_returns >= 2 and history_returns >= 2 and vol_history > 0:
        ratio = vol_recent / vol_history
        metrics["vol_ratio"] = ratio
        volatility = "high" if ratio > p.vol_high_ratio else "low" if ratio < p.vol_low_ratio else "normal"
    elif recent_returns >= 2 and history_returns >= 2 and vol_recent > 0:
        # A dead-flat history followed by movement is as high as it gets.
        metrics["vol_ratio"] = -1.0
        volatility = "high"
    else:
        metrics["vol_ratio"] = -1.0
        volatility = "normal"

    # 2. Trend.
    er = efficiency_ratio(mid, p.trend_window) if n >= 2 else 0.0
    metrics["efficiency_ratio"] = er
    trend = "trending" if er >= p.er_trending else "ranging"

    # 3. Liquidity.
    tail = slice(max(n - p.liquidity_window, 0), n)
    spread = _median(f.spread_bps[tail])
    depth = _median(f.bid_size[tail] * f.bid[tail] + f.ask_size[tail] * f.ask[tail])
    # No usable quote is as thin as a market gets.
    if math.isnan(spread):
        spread = math.inf
    if math.isnan(depth):
        depth = 0.0
    metrics["spread_bps"] = _finite(spread)
    metrics["top_depth_notional"] = depth
    thin = spread > p.thin_spread_bps or depth < p.thin_depth_notional
    deep = spread <= p.deep_spread_bps and depth >= p.deep_depth_notional
    l2 = l2_depth_notional(f.book, p.l2_levels)
    if l2 is not None:
        metrics["l2_depth_notional"] = l2
        thin = thin or l2 < p.thin_l2_notional
        deep = deep and l2 >= p.deep_l2_notional
    liquidity = "thin" if thin else "deep" if deep else "normal"

    return Regime(
        volatility=volatility,
        trend=trend,
        liquidity=liquidity,
        metrics={k: _finite(v) for k, v in metrics.items()},
    )


def validate_allowed_regimes(raw: Any) -> dict[str, list[str]]:
    """Check an automation's allowed-regimes setting; raise ValueError naming the bad field."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"allowed regimes must be a mapping, got {type(raw).__name__}")
    clean: dict[str, list[str]] = {}
    for key, values in raw.items():
        if key not in DIMENSIONS:
            raise ValueError(f"{key}: unknown regime dimension (allowed: {', '.join(DIMENSIONS)})")
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{key}: must be a list of values")
        bad = [v for v in values if v not in DIMENSIONS[key]]
        if bad:
            raise ValueError(f"{key}: unknown value(s) {bad} (allowed: {list(DIMENSIONS[key])})")
        clean[key] = list(dict.fromkeys(values))
    return clean


def regime_allowed(regime: Regime, allowed: dict[str, list[str]] | None) -> tuple[bool, str]:
    """Whether an automation may trade in ``regime``; the reason when it may not.

    ``None``, an empty mapping, or an empty list for a dimension mean no
    restriction on that dimension.
    """
    if not allowed:
        return True, ""
    for dimension in DIMENSIONS:
        values = allowed.get(dimension)
        if not values:
            continue
        actual = getattr(regime, dimension)
        if actual not in values:
            return False, f"{dimension}={actual} not in allowed [{', '.join(values)}]"
    return True, ""

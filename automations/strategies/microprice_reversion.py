"""Mean reversion of the microprice against its own rolling mean.

Rule, on the latest quote only:

1. ``mp`` is the microprice of each quote (size-weighted mid).
2. ``mean`` and ``std`` (population, ddof=0) are taken over the ``window``
   quotes *before* the latest one.
3. ``z = (mp[-1] - mean) / std``. No signal when ``std`` is zero or below
   ``min_std_bps`` of the mean (a flat market makes any tick look extreme).
4. ``z < -entry_z``: buy (the price is expected to come back up);
   ``z > entry_z``: sell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automations.features import FeatureFrame
from automations.strategies.base import BaseStrategy, ParamSpec
from ingestion.types import Side


class MicropriceReversion(BaseStrategy):
    name = "microprice_reversion"
    description = (
        "Buys when the microprice is more than entry_z standard deviations below its mean "
        "over the previous `window` quotes, sells when it is as far above."
    )
    own_params = (
        ParamSpec("window", int, 50, "Quotes in the rolling mean and deviation.", min=5, max=10_000),
        ParamSpec("entry_z", float, 2.0, "Z-score beyond which to enter.", min=0, min_exclusive=True, max=50),
        ParamSpec(
            "min_std_bps",
            float,
            0.0,
            "Minimum rolling deviation, in bps of the mean, for a z-score to count.",
            min=0,
            max=1_000,
        ),
    )

    def min_history(self, params: Mapping[str, Any]) -> int:
        return int(params["window"]) + 1

    def _decide(self, feats: FeatureFrame, params: Mapping[str, Any]) -> tuple[Side, str, dict[str, float]] | None:
        window = int(params["window"])
        mean, std = feats.tail_mean_std("microprice", window)
        if std <= 0.0 or std < mean * params["min_std_bps"] / 1e4:
            return None
        latest = float(feats.microprice[-1])
        z = (latest - mean) / std
        entry = params["entry_z"]
        if z < -entry:
            side, reason = Side.BUY, f"microprice z={z:.2f} < -{entry:g} over {window} quotes"
        elif z > entry:
            side, reason = Side.SELL, f"microprice z={z:.2f} > {entry:g} over {window} quotes"
        else:
            return None
        return side, reason, {"microprice": latest, "mean": mean, "std": std, "z": z}

"""Momentum on aggressor-signed trade flow.

Rule, at ``now_ns``:

1. Take the trades in ``(now_ns - window_ms, now_ns]``. ``net`` is the sum of
   buyer-initiated size minus seller-initiated size; ``gross`` the sum of all
   sizes (trades with an unknown aggressor add to ``gross`` and the count but
   not to ``net``); ``ratio = net / gross``.
2. No signal with fewer than ``min_trades`` trades or ``net == 0``.
3. Buy when ``net > 0``, ``net >= min_net_volume`` and
   ``ratio >= min_flow_ratio``; sell symmetrically on the negative side.

The limit price comes from the window's latest quote.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automations.features import FeatureFrame
from automations.strategies.base import BaseStrategy, ParamSpec
from ingestion.types import Side

NS_PER_MS = 1_000_000


class TradeFlowMomentum(BaseStrategy):
    name = "trade_flow_momentum"
    description = (
        "Follows the aggressors: buys when buyer-initiated volume dominates the last "
        "window_ms of trades, sells when seller-initiated volume does."
    )
    own_params = (
        ParamSpec("window_ms", int, 5_000, "Trade window in milliseconds, ending now.", min=1, max=3_600_000),
        ParamSpec("min_trades", int, 20, "Minimum trades in the window.", min=1, max=1_000_000),
        ParamSpec("min_net_volume", float, 0.0, "Minimum |net signed volume|, base units.", min=0, max=1e12),
        ParamSpec("min_flow_ratio", float, 0.3, "Minimum |net| / gross volume, in [0, 1].", min=0, max=1),
    )

    def _check_combination(self, params: dict[str, Any]) -> dict[str, str]:
        if params["min_net_volume"] <= 0 and params["min_flow_ratio"] <= 0:
            return {"min_flow_ratio": "min_net_volume and min_flow_ratio cannot both be 0 (every window would signal)"}
        return {}

    def trade_lookback_ns(self, params: Mapping[str, Any]) -> int:
        return int(params["window_ms"]) * NS_PER_MS

    def _decide(self, feats: FeatureFrame, params: Mapping[str, Any]) -> tuple[Side, str, dict[str, float]] | None:
        window_ms = int(params["window_ms"])
        net, gross, count = feats.trade_flow(window_ms * NS_PER_MS)
        if count < params["min_trades"] or net == 0.0 or gross <= 0.0:
            return None
        ratio = net / gross
        values = {"net_volume": net, "gross_volume": gross, "trades": float(count), "flow_ratio": ratio}
        min_net, min_ratio = params["min_net_volume"], params["min_flow_ratio"]
        if net > 0 and net >= min_net and ratio >= min_ratio:
            side = Side.BUY
        elif net < 0 and -net >= min_net and -ratio >= min_ratio:
            side = Side.SELL
        else:
            return None
        reason = (
            f"signed flow {net:+.4g} over {count} trades in {window_ms} ms, "
            f"ratio {ratio:+.2f} (thresholds net {min_net:g}, ratio {min_ratio:g})"
        )
        return side, reason, values

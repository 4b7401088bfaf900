"""Breakout of the recent mid range, confirmed by order-book imbalance.

Rule, on the latest quote only:

1. ``high`` / ``low`` are the max / min of the mid over the ``lookback``
   quotes *before* the latest one.
2. Up-break: ``mid[-1] > high * (1 + min_break_bps / 1e4)``;
   down-break: ``mid[-1] < low * (1 - min_break_bps / 1e4)``.
3. Imbalance: with ``book_levels == 0`` the latest quote's top-of-book
   imbalance ``(bid_size - ask_size) / (bid_size + ask_size)``; with
   ``book_levels > 0`` the L2 imbalance over that many levels of the window's
   book. Without a book the L2 variant gives no signal: an unconfirmed
   breakout is not a breakout.
4. Buy on an up-break with imbalance >= ``imbalance_threshold``; sell on a
   down-break with imbalance <= ``-imbalance_threshold``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automations.features import FeatureFrame
from automations.strategies.base import BaseStrategy, ParamSpec
from ingestion.types import Side


class ImbalanceBreakout(BaseStrategy):
    name = "imbalance_breakout"
    description = (
        "Trades a break of the previous `lookback` quotes' mid high/low when the book "
        "imbalance leans the same way by at least imbalance_threshold."
    )
    own_params = (
        ParamSpec("lookback", int, 100, "Quotes whose mid high/low define the range.", min=2, max=10_000),
        ParamSpec(
            "imbalance_threshold",
            float,
            0.3,
            "Minimum |imbalance| in the break's direction, in (0, 1].",
            min=0,
            min_exclusive=True,
            max=1,
        ),
        ParamSpec(
            "book_levels",
            int,
            0,
            "0: top-of-book imbalance from the quote; n > 0: L2 imbalance over n book levels.",
            min=0,
            max=100,
        ),
        ParamSpec("min_break_bps", float, 0.0, "How far past the range the mid must be, in bps.", min=0, max=1_000),
    )

    def min_history(self, params: Mapping[str, Any]) -> int:
        return int(params["lookback"]) + 1

    def _decide(self, feats: FeatureFrame, params: Mapping[str, Any]) -> tuple[Side, str, dict[str, float]] | None:
        lookback = int(params["lookback"])
        high, low = feats.tail_high_low("mid", lookback)
        mid = float(feats.mid[-1])
        margin = params["min_break_bps"] / 1e4
        if mid > high * (1 + margin):
            direction = 1
        elif mid < low * (1 - margin):
            direction = -1
        else:
            return None
        levels = int(params["book_levels"])
        if levels == 0:
            imbalance = float(feats.tob_imbalance[-1])
            source = "top-of-book"
        else:
            l2 = feats.l2_imbalance(levels)
            if l2 is None:
                return None
            imbalance, source = l2, f"L2 {levels}-level"
        threshold = params["imbalance_threshold"]
        values = {"mid": mid, "high": high, "low": low, "imbalance": imbalance, "book_levels": float(levels)}
        if direction > 0 and imbalance >= threshold:
            reason = f"mid {mid:g} broke {lookback}-quote high {high:g}; {source} imbalance {imbalance:.2f} >= {threshold:g}"
            return Side.BUY, reason, values
        if direction < 0 and imbalance <= -threshold:
            reason = f"mid {mid:g} broke {lookback}-quote low {low:g}; {source} imbalance {imbalance:.2f} <= -{threshold:g}"
            return Side.SELL, reason, values
        return None

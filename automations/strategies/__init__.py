"""Strategy registry: every strategy an automation can name, by name.

Pure package (no Django, no ORM, no broker). The detect worker and the
backtester look strategies up here and validate parameters through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automations.strategies.base import (
    BaseStrategy,
    Intent,
    InvalidParameters,
    MarketWindow,
    ParamSpec,
    Strategy,
)
from automations.strategies.imbalance_breakout import ImbalanceBreakout
from automations.strategies.microprice_reversion import MicropriceReversion
from automations.strategies.trade_flow_momentum import TradeFlowMomentum


class UnknownStrategy(ValueError):
    """No strategy is registered under that name."""


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (MicropriceReversion(), ImbalanceBreakout(), TradeFlowMomentum())}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise UnknownStrategy(f"unknown strategy {name!r}; registered: {', '.join(sorted(STRATEGIES))}") from None


def validate_params(name: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` for the named strategy; raises UnknownStrategy or InvalidParameters."""
    return get_strategy(name).validate_params(raw)


__all__ = [
    "STRATEGIES",
    "BaseStrategy",
    "Intent",
    "InvalidParameters",
    "MarketWindow",
    "ParamSpec",
    "Strategy",
    "UnknownStrategy",
    "get_strategy",
    "validate_params",
]

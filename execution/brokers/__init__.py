"""Broker adapters. Only ``execution`` imports this package (an import-linter contract).

``broker_for_mode(mode)`` picks the venue for an automation's mode: ``paper``
is the paper broker; ``live`` is the active ccxt ``BrokerAccount`` with the
execute worker's credentials.
"""

from __future__ import annotations

from execution.brokers.base import (
    Broker,
    BrokerError,
    BrokerFill,
    BrokerOrder,
    BrokerOrderStatus,
    BrokerRejected,
    OrderRequest,
)

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerFill",
    "BrokerOrder",
    "BrokerOrderStatus",
    "BrokerRejected",
    "OrderRequest",
    "broker_for_mode",
    "broker_override",
]

_override: dict[str, Broker] = {}


def broker_override(mode: str, broker: Broker | None) -> None:
    """Make ``broker_for_mode(mode)`` return ``broker`` (tests, benchmarks); None removes it."""
    if broker is None:
        _override.pop(mode, None)
    else:
        _override[mode] = broker


def broker_for_mode(mode: str) -> Broker:
    if mode in _override:
        return _override[mode]
    if mode == "paper":
        from execution.brokers.paper import PaperBroker

        return PaperBroker()
    if mode == "live":
        from execution.brokers.ccxt_live import live_broker

        return live_broker()
    raise BrokerRejected(f"no broker for mode {mode!r}")

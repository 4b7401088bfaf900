"""Every Redis key the platform uses, in one place."""

from __future__ import annotations


def quote(symbol: str) -> str:
    return f"fp:quote:{symbol}"


def book(symbol: str) -> str:
    return f"fp:book:{symbol}"


def detect_pending(symbol: str) -> str:
    return f"fp:detect-pending:{symbol}"


def feed_sent_seq(stream: str) -> str:
    return f"fp:feed-sent:{stream}"


def liquidity(symbol: str) -> str:
    return f"fp:liquidity:{symbol}"

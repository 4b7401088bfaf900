"""Per-symbol liquidity state in Redis: written by the ingest worker, read by detection and the UI.

The ingest worker runs every accepted quote through ``ingestion.liquidity.
LiquidityMonitor`` and, once per batch, stores each touched symbol's
``LiquidityState`` as JSON under ``fp:liquidity:<symbol>``. Readers get the
figures, the three flags (``wide_spread``, ``thin_book``, ``slow_quotes``),
``low_liquidity`` (any flag) and the coded reasons. No ORM here.
"""

from __future__ import annotations

import dataclasses
import json

from ingestion.liquidity import LiquidityState
from trading import redis_keys
from trading.redis_client import redis_client

_FIELDS = tuple(f.name for f in dataclasses.fields(LiquidityState))


def key(symbol: str) -> str:
    return redis_keys.liquidity(symbol)


def dumps(state: LiquidityState) -> str:
    data = {name: getattr(state, name) for name in _FIELDS}
    # Derived fields are written out so a reader in another language (the UI,
    # a dashboard) need not recompute them.
    data["low_liquidity"] = state.low_liquidity
    data["reasons"] = list(state.reasons)
    return json.dumps(data)


def loads(text: str | bytes) -> LiquidityState:
    data = json.loads(text)
    return LiquidityState(**{name: data[name] for name in _FIELDS})


def latest_liquidity(symbol: str) -> LiquidityState | None:
    """The last published liquidity state of ``symbol``, or None if none was published."""
    raw = redis_client().get(key(symbol))
    return None if raw is None else loads(raw)

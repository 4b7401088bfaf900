"""The strategy interface: market window in, at most one order intent out.

Pure module (no Django, no ORM, no broker): the detect worker and the
backtester both call ``Strategy.evaluate`` with the same inputs and get the
same intents. Features are floats; an ``Intent`` carries ``Decimal`` price and
quantity because it is what becomes an order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import pandas as pd

from automations.features import FeatureFrame, compute_features
from ingestion.types import BookSnapshot, Side

if TYPE_CHECKING:
    from collections.abc import Sequence


class InvalidParameters(ValueError):
    """Strategy parameters were rejected. ``errors`` maps each bad field to why."""

    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.errors: dict[str, str] = errors or {}


@dataclass(frozen=True, eq=False)
class MarketWindow:
    """Recent market state of one symbol, as the strategy sees it.

    ``quotes``: columns ts_ns (int64), bid, ask, bid_size, ask_size (float64),
    oldest first. ``trades``: ts_ns, price, size (float64), side ('buy'/'sell',
    anything else counts as unknown aggressor), oldest first. ``book`` is the
    latest L2 snapshot when the platform has one. ``now_ns`` is the evaluation
    time (UTC ns); trades after it are ignored.
    """

    symbol: str
    quotes: pd.DataFrame
    trades: pd.DataFrame
    book: BookSnapshot | None
    now_ns: int


@dataclass(frozen=True)
class Intent:
    """What a strategy wants to do. Not an order: risk and gating decide that."""

    side: Side
    quantity: Decimal
    limit_price: Decimal
    reason: str
    features: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its type, default (``REQUIRED`` when none) and allowed range."""

    name: str
    kind: type  # int, float, Decimal or str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    choices: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly description for forms and the API schema."""
        default = self.default
        if default is REQUIRED:
            default = None
        elif isinstance(default, Decimal):
            default = str(default)
        return {
            "name": self.name,
            "type": self.kind.__name__.lower(),
            "required": self.default is REQUIRED,
            "default": default,
            "description": self.description,
            "min": self.min,
            "max": self.max,
            "min_exclusive": self.min_exclusive,
            "choices": list(self.choices) if self.choices else None,
        }


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _coerce(spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    """Convert one raw value to the spec's type; return (value, error or None)."""
    kind = spec.kind
    # bool is an int subclass in Python; a True window is always a mistake.
    if isinstance(value, bool):
        return None, f"must be {_kind_name(kind)}, got a boolean"
    if kind is int:
        if isinstance(value, int):
            return value, None
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        return None, f"must be an integer, got {value!r}"
    if kind is float:
        if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
            as_float = float(value)
            if not math.isfinite(as_float):
                return None, f"must be a finite number, got {value!r}"
            return as_float, None
        return None, f"must be a number, got {value!r}"
    if kind is Decimal:
        if isinstance(value, float):
            value = repr(value)
        if isinstance(value, (int, str, Decimal)):
            try:
                as_dec = Decimal(value)
            except (InvalidOperation, ValueError):
                return None, f"must be a decimal number, got {value!r}"
            if not as_dec.is_finite():
                return None, f"must be a finite decimal, got {value!r}"
            return as_dec, None
        return None, f"must be a decimal number, got {value!r}"
    if kind is str:
        if not isinstance(value, str):
            return None, f"must be a string, got {value!r}"
        if spec.choices and value not in spec.choices:
            return None, f"must be one of {list(spec.choices)}, got {value!r}"
        return value, None
    raise TypeError(f"unsupported parameter kind {kind!r}")


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", Decimal: "a decimal number"}.get(kind, "a string")


def _range_error(spec: ParamSpec, value: Any) -> str | None:
    if spec.min is not None:
        low = Decimal(str(spec.min)) if isinstance(value, Decimal) else spec.min
        if spec.min_exclusive and value <= low:
            return f"must be > {spec.min}, got {value}"
        if not spec.min_exclusive and value < low:
            return f"must be >= {spec.min}, got {value}"
    if spec.max is not None:
        high = Decimal(str(spec.max)) if isinstance(value, Decimal) else spec.max
        if value > high:
            return f"must be <= {spec.max}, got {value}"
    return None


@runtime_checkable
class Strategy(Protocol):
    """What the detect worker and the backtester rely on."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def param_spec(self) -> Sequence[ParamSpec]: ...

    def validate_params(self, raw: Mapping[str, Any]) -> dict[str, Any]: ...

    def min_history(self, params: Mapping[str, Any]) -> int: ...

    def trade_lookback_ns(self, params: Mapping[str, Any]) -> int: ...

    def evaluate(
        self,
        window: MarketWindow,
        params: Mapping[str, Any],
        features: FeatureFrame | None = None,
    ) -> list[Intent]: ...


# Parameters every strategy shares: how much to trade and how far through the
# touch to place the limit.
COMMON_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("quantity", Decimal, REQUIRED, "Order quantity in base units.", min=0, min_exclusive=True, max=1e9),
    ParamSpec(
        "offset_bps",
        float,
        0.0,
        "Limit price this many basis points through the touch (buy above the ask, sell below the bid).",
        min=0,
        max=500,
    ),
    ParamSpec(
        "offset_ticks",
        int,
        0,
        "Limit price this many price ticks through the touch; a tick is one unit of the quote's last decimal place.",
        min=0,
        max=10_000,
    ),
)


class BaseStrategy:
    """Shared parameter validation, limit pricing and the evaluate entry point.

    Subclasses set ``name``, ``description``, ``own_params`` and implement
    ``_decide`` (which only sees a FeatureFrame) and ``min_history``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    own_params: ClassVar[tuple[ParamSpec, ...]] = ()

    @property
    def param_spec(self) -> tuple[ParamSpec, ...]:
        return self.own_params + COMMON_PARAMS

    # --- parameters -------------------------------------------------------------

    def validate_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Check and normalize raw parameters; fill defaults.

        Raises InvalidParameters naming every bad field: unknown keys, missing
        required ones, wrong types, out-of-range values, inconsistent combos.
        """
        if not isinstance(raw, Mapping):
            raise InvalidParameters(f"{self.name}: parameters must be a mapping, got {type(raw).__name__}")
        specs = {spec.name: spec for spec in self.param_spec}
        errors: dict[str, str] = {}
        for key in raw:
            if key not in specs:
                errors[str(key)] = f"unknown parameter (allowed: {', '.join(sorted(specs))})"
        clean: dict[str, Any] = {}
        for name, spec in specs.items():
            if name not in raw or raw[name] is None:
                if spec.default is REQUIRED:
                    errors[name] = "is required"
                else:
                    clean[name] = spec.default
                continue
            value, error = _coerce(spec, raw[name])
            if error is None:
                error = _range_error(spec, value)
            if error is not None:
                errors[name] = error
            else:
                clean[name] = value
        if not errors:
            if clean["offset_bps"] > 0 and clean["offset_ticks"] > 0:
                errors["offset_ticks"] = "set either offset_bps or offset_ticks, not both"
            errors.update(self._check_combination(clean))
        if errors:
            detail = "; ".join(f"{field}: {why}" for field, why in errors.items())
            raise InvalidParameters(f"{self.name}: {detail}", errors)
        return clean

    def _check_combination(self, params: dict[str, Any]) -> dict[str, str]:
        """Cross-field rules; return ``{field: why}`` for each violation."""
        return {}

    def params_as_json(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validated parameters with Decimals as strings, for JSON storage."""
        return {k: str(v) if isinstance(v, Decimal) else v for k, v in params.items()}

    # --- history the caller must load ------------------------------------------------

    def min_history(self, params: Mapping[str, Any]) -> int:
        """Quotes (counted back from the latest) the window needs before a signal is possible."""
        return 1

    def trade_lookback_ns(self, params: Mapping[str, Any]) -> int:
        """How far back in time the window's trades must reach (0: trades unused)."""
        return 0

    # --- evaluation ------------------------------------------------------------------

    def evaluate(
        self,
        window: MarketWindow,
        params: Mapping[str, Any],
        features: FeatureFrame | None = None,
    ) -> list[Intent]:
        """Decide on the latest quote of the window; return zero or one intent.

        ``params`` must come from ``validate_params``. Pass ``features`` when
        several automations share one window: they are computed once.
        """
        feats = features if features is not None else compute_features(window)
        if feats.n_quotes < self.min_history(params):
            return []
        bid, ask = feats.last_bid, feats.last_ask
        # A crossed, locked or empty book gives no trustworthy price to lean on.
        if not (bid > 0 and ask > 0 and bid < ask):
            return []
        decision = self._decide(feats, params)
        if decision is None:
            return []
        side, reason, values = decision
        values = {"bid": bid, "ask": ask, **values}
        price = limit_price(feats, side, params)
        # A sell offset larger than the price itself would give a nonsense limit.
        if price <= 0:
            return []
        return [
            Intent(
                side=side,
                quantity=params["quantity"],
                limit_price=price,
                reason=reason,
                features=values,
            )
        ]

    def _decide(self, feats: FeatureFrame, params: Mapping[str, Any]) -> tuple[Side, str, dict[str, float]] | None:
        raise NotImplementedError


def limit_price(feats: FeatureFrame, side: Side, params: Mapping[str, Any]) -> Decimal:
    """Buy at the ask (plus offset), sell at the bid (minus offset), on the quote's grid.

    The grid is the quote's own decimal places (``feats.price_decimals``). An
    offset that lands between grid points rounds away from the touch (up for
    a buy, down for a sell), so the order is at least as aggressive as asked.
    """
    tick = Decimal(1).scaleb(-feats.price_decimals)
    offset_bps = Decimal(repr(float(params.get("offset_bps", 0.0))))
    offset_ticks = int(params.get("offset_ticks", 0))
    if side is Side.BUY:
        price = feats.last_ask_decimal() * (1 + offset_bps / 10_000) + tick * offset_ticks
        return price.quantize(tick, rounding=ROUND_CEILING)
    price = feats.last_bid_decimal() * (1 - offset_bps / 10_000) - tick * offset_ticks
    return price.quantize(tick, rounding=ROUND_FLOOR)

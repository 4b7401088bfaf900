"""Pure circuit-breaker arithmetic (fatal mistake 10).

This module decides, from plain values, whether accepting one more order or
signal would break a limit. It does no locking and no I/O: the database layer
locks the automation's risk-state row, builds a ``RiskState`` from it, calls
``check_order``/``check_signal`` and writes the outcome in the same
transaction, so parallel workers can never overshoot a limit.

Every check asks one question: would ACCEPTING this order or signal go beyond
the limit? The boundaries are, explicitly:

Count limits (the limit is the most that may exist after accepting):
    ``max_open_orders``, ``max_orders_per_minute``, ``max_signals_per_hour``.
    With a limit of M, a current count of M-1 passes (accepting makes M) and
    a current count of M refuses (accepting would make M+1).

Size limits (the limit is the largest value allowed, inclusive):
    ``max_order_qty`` (quantity), ``max_order_notional`` (quantity times the
    limit price, or times the mid for a market order), ``price_collar_bps``
    (``|limit - mid| / mid * 1e4``). A value equal to the limit passes; any
    value above it refuses.

Trailing-state limits (they trip once the day's record reaches the limit,
and then refuse every new order):
    ``max_daily_loss``: refuses when ``daily_realized_pnl <= -max_daily_loss``
    (the loss has reached the limit).
    ``max_drawdown``: refuses when ``daily_peak_pnl - daily_realized_pnl >=
    max_drawdown``.
    ``max_consecutive_losses``: refuses when ``consecutive_losses >= limit``.
    ``max_slippage_breaches_per_day``: refuses when
    ``slippage_breaches_today >= limit``.

Missing reference price: when a price collar is set and the order has no mid
to compare with, the order is refused ("no reference price"). A market order
under a collar is refused too: it has no limit price, so nothing bounds how
far it may walk the book; convert it to a marketable limit with
``collar_limit_price`` first. A market order under a notional limit is valued
at the mid, and refused when there is no mid.

A limit that is ``None`` is not set and never refuses. A limit of 0 is set
and allows nothing (no order may exist, any loss trips the breaker).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from decimal import Decimal

from ingestion.types import Side

__all__ = [
    "Breach",
    "LimitSet",
    "OrderCheck",
    "RiskState",
    "apply_fill_pnl",
    "check_order",
    "check_signal",
    "collar_bps",
    "collar_limit_price",
]

BPS = Decimal(10_000)
_ZERO = Decimal(0)
_INT_LIMITS = frozenset(
    {
        "max_signals_per_hour",
        "max_open_orders",
        "max_orders_per_minute",
        "max_consecutive_losses",
        "max_slippage_breaches_per_day",
    }
)


@dataclass(frozen=True, slots=True)
class LimitSet:
    """The limits of one scope (global or one automation). ``None`` = not set.

    Money limits (``max_daily_loss``, ``max_drawdown``, ``max_order_notional``)
    are positive amounts in the quote currency.
    """

    max_signals_per_hour: int | None = None
    max_daily_loss: Decimal | None = None
    max_drawdown: Decimal | None = None
    max_open_orders: int | None = None
    max_order_qty: Decimal | None = None
    max_order_notional: Decimal | None = None
    price_collar_bps: Decimal | None = None
    max_orders_per_minute: int | None = None
    max_consecutive_losses: int | None = None
    max_slippage_breaches_per_day: int | None = None

    def __post_init__(self) -> None:
        # A negative limit is a configuration error, not a strict limit: it
        # is refused here so it cannot silently block or allow everything.
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name in _INT_LIMITS:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{f.name} must be an int or None")
            else:
                if isinstance(value, float):
                    raise TypeError(f"{f.name} must be a Decimal (or int/str), not a float")
                value = Decimal(value)
                if not value.is_finite():
                    raise ValueError(f"{f.name} must be finite")
                object.__setattr__(self, f.name, value)
            if value < 0:
                raise ValueError(f"{f.name} must not be negative")


@dataclass(frozen=True, slots=True)
class RiskState:
    """The counters a breaker looks at, as loaded (under lock) for one scope."""

    signals_last_hour: int = 0
    orders_last_minute: int = 0
    open_orders: int = 0
    daily_realized_pnl: Decimal = _ZERO
    daily_peak_pnl: Decimal = _ZERO
    consecutive_losses: int = 0
    slippage_breaches_today: int = 0


@dataclass(frozen=True, slots=True)
class OrderCheck:
    """The order being considered. ``limit_price=None`` is a market order.

    ``mid`` is the reference price (the current mid) used by the collar and
    to value a market order; ``None`` when no quote is known.
    """

    quantity: Decimal
    limit_price: Decimal | None
    side: Side
    mid: Decimal | None = None

    def __post_init__(self) -> None:
        # A zero or negative quantity is a bug upstream, not an order to size:
        # refusing it loudly beats letting it slip under every size limit.
        if not isinstance(self.quantity, Decimal) or not self.quantity.is_finite() or self.quantity <= 0:
            raise ValueError(f"order quantity must be a positive finite Decimal, got {self.quantity!r}")
        if self.limit_price is not None and (not self.limit_price.is_finite() or self.limit_price <= 0):
            raise ValueError(f"limit price must be positive, got {self.limit_price!r}")


@dataclass(frozen=True, slots=True)
class Breach:
    """One limit that accepting would break, with a message a trader can read."""

    limit: str
    value: Decimal | int
    threshold: Decimal | int
    message: str


def _fmt(value: Decimal | int) -> str:
    # Plain notation, never "1E+3", and no trailing zeros noise like "5.000".
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


def _count_breach(limit: str, label: str, current: int, threshold: int | None) -> Breach | None:
    """Count limit: refuse when accepting one more would exceed ``threshold``."""
    if threshold is None or current < threshold:
        return None
    return Breach(
        limit=limit,
        value=current,
        threshold=threshold,
        message=f"{label} {current} would exceed the limit of {threshold}",
    )


def collar_bps(limit_price: Decimal, mid: Decimal) -> Decimal:
    """Distance of ``limit_price`` from ``mid`` in basis points (always >= 0)."""
    if mid <= 0:
        raise ValueError("mid must be positive")
    return abs(limit_price - mid) / mid * BPS


def collar_limit_price(side: Side, mid: Decimal, price_collar_bps: Decimal) -> Decimal:
    """The worst limit price a collar allows: the way to send a collared market order.

    A buy may pay up to ``mid * (1 + collar)``, a sell may accept down to
    ``mid * (1 - collar)``. The result is exactly on the collar, which passes.
    """
    if mid <= 0:
        raise ValueError("mid must be positive")
    offset = mid * price_collar_bps / BPS
    return mid + offset if Side(side) == Side.BUY else mid - offset


def check_signal(limits: LimitSet, state: RiskState) -> list[Breach]:
    """Breaches that accepting one more signal would cause (the signal-rate breaker).

    Loss and order limits are not signal limits: they are checked on the
    order, so a signal raised while trading is halted is still recorded (and
    then refused at execution), which keeps the signal history complete.
    """
    breach = _count_breach(
        "max_signals_per_hour", "signals in the last hour", state.signals_last_hour, limits.max_signals_per_hour
    )
    return [breach] if breach else []


def check_order(limits: LimitSet, state: RiskState, order: OrderCheck) -> list[Breach]:
    """Every breach that accepting ``order`` would cause, in a fixed order.

    All limits are checked, not just the first failing one, so the trader
    and the audit log see the full picture of why an order was refused.
    """
    breaches: list[Breach] = []

    def add(breach: Breach | None) -> None:
        if breach is not None:
            breaches.append(breach)

    # Counters of orders.
    add(_count_breach("max_open_orders", "open orders", state.open_orders, limits.max_open_orders))
    add(
        _count_breach(
            "max_orders_per_minute", "orders in the last minute", state.orders_last_minute, limits.max_orders_per_minute
        )
    )

    # Trailing state of the day: these trip once reached.
    if limits.max_daily_loss is not None:
        loss = -state.daily_realized_pnl
        if loss >= limits.max_daily_loss:
            add(
                Breach(
                    "max_daily_loss",
                    loss,
                    limits.max_daily_loss,
                    f"daily loss {_fmt(loss)} has reached the limit of {_fmt(limits.max_daily_loss)}",
                )
            )
    if limits.max_drawdown is not None:
        drawdown = state.daily_peak_pnl - state.daily_realized_pnl
        if drawdown >= limits.max_drawdown:
            add(
                Breach(
                    "max_drawdown",
                    drawdown,
                    limits.max_drawdown,
                    f"drawdown {_fmt(drawdown)} from the day's peak PnL has reached the limit of {_fmt(limits.max_drawdown)}",
                )
            )
    if limits.max_consecutive_losses is not None and state.consecutive_losses >= limits.max_consecutive_losses:
        add(
            Breach(
                "max_consecutive_losses",
                state.consecutive_losses,
                limits.max_consecutive_losses,
                f"{state.consecutive_losses} consecutive losses have reached the limit of {limits.max_consecutive_losses}",
            )
        )
    if limits.max_slippage_breaches_per_day is not None and state.slippage_breaches_today >= limits.max_slippage_breaches_per_day:
        add(
            Breach(
                "max_slippage_breaches_per_day",
                state.slippage_breaches_today,
                limits.max_slippage_breaches_per_day,
                f"{state.slippage_breaches_today} slippage breaches today have reached the limit of "
                f"{limits.max_slippage_breaches_per_day}",
            )
        )

    # Size of this order.
    if limits.max_order_qty is not None and order.quantity > limits.max_order_qty:
        add(
            Breach(
                "max_order_qty",
                order.quantity,
                limits.max_order_qty,
                f"order quantity {_fmt(order.quantity)} exceeds the limit of {_fmt(limits.max_order_qty)}",
            )
        )
    # A mid of zero or below is as good as no mid: it cannot be a reference.
    mid = order.mid if order.mid is not None and order.mid > 0 else None
    if limits.max_order_notional is not None:
        price = order.limit_price if order.limit_price is not None else mid
        if price is None:
            add(
                Breach(
                    "max_order_notional",
                    _ZERO,
                    limits.max_order_notional,
                    f"no reference price to value a market order against the notional limit of {_fmt(limits.max_order_notional)}",
                )
            )
        else:
            notional = order.quantity * price
            if notional > limits.max_order_notional:
                add(
                    Breach(
                        "max_order_notional",
                        notional,
                        limits.max_order_notional,
                        f"order notional {_fmt(notional)} exceeds the limit of {_fmt(limits.max_order_notional)}",
                    )
                )

    # Price collar around the reference mid.
    if limits.price_collar_bps is not None:
        collar = limits.price_collar_bps
        if mid is None:
            add(
                Breach(
                    "price_collar_bps",
                    _ZERO,
                    collar,
                    f"no reference price: the price collar of {_fmt(collar)} bps cannot be checked",
                )
            )
        elif order.limit_price is None:
            add(
                Breach(
                    "price_collar_bps",
                    _ZERO,
                    collar,
                    f"a market order has no limit price; the price collar of {_fmt(collar)} bps needs a limit order",
                )
            )
        else:
            distance = collar_bps(order.limit_price, mid)
            if distance > collar:
                add(
                    Breach(
                        "price_collar_bps",
                        distance,
                        collar,
                        f"limit price {_fmt(order.limit_price)} is {_fmt(distance.quantize(Decimal('0.01')))} bps "
                        f"from the mid {_fmt(mid)}, beyond the collar of {_fmt(collar)} bps",
                    )
                )

    return breaches


def apply_fill_pnl(state: RiskState, pnl: Decimal) -> RiskState:
    """The state after a fill that realized ``pnl``.

    The day's PnL moves by ``pnl`` and the peak follows it up (the peak starts
    the day at 0, so the first loss is already a drawdown). A loss extends the
    run of consecutive losses, a gain ends it, and a zero PnL (a fill that
    opens a position, or a breakeven close) leaves it as it was.
    """
    new_pnl = state.daily_realized_pnl + pnl
    peak = max(state.daily_peak_pnl, new_pnl)
    if pnl < 0:
        losses = state.consecutive_losses + 1
    elif pnl > 0:
        losses = 0
    else:
        losses = state.consecutive_losses
    return replace(state, daily_realized_pnl=new_pnl, daily_peak_pnl=peak, consecutive_losses=losses)

"""Paper position accounting (pure): average cost, realized PnL per fill.

The paper venue keeps no positions, so execution books them itself: per
automation, a signed net quantity and its average entry price. A fill that
adds to the position (or opens one) realizes nothing; a fill that reduces it
realizes ``(price - average entry) * closed quantity`` (sign flipped for a
short); a fill that crosses through zero closes the old position and opens
the rest at its own price. The fee of every fill is a realized cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Position:
    quantity: Decimal = _ZERO  # Signed: long > 0, short < 0.
    avg_price: Decimal = _ZERO


def position_apply(position: Position, *, side: str, quantity: Decimal, price: Decimal,
                   fee: Decimal = _ZERO) -> tuple[Position, Decimal]:
    """The position after a fill, and the PnL the fill realized (after its fee)."""
    signed = quantity if side == "buy" else -quantity
    old = position.quantity
    if old == 0 or (old > 0) == (signed > 0):
        new_qty = old + signed
        avg = (abs(old) * position.avg_price + quantity * price) / abs(new_qty)
        return Position(new_qty, avg), -fee
    closed = min(abs(old), quantity)
    direction = Decimal(1) if old > 0 else Decimal(-1)
    realized = (price - position.avg_price) * closed * direction - fee
    new_qty = old + signed
    if new_qty == 0:
        return Position(), realized
    if (new_qty > 0) == (old > 0):
        return Position(new_qty, position.avg_price), realized
    return Position(new_qty, price), realized

"""Human gating: which trades need a person, and what exactly a person approved.

The rule (fatal mistake 7): an automation's first ``approval_threshold``
trades need a trader's OTP approval, and every trade does while
``require_approval`` is on. A trade counts once it is approved, so the
decision reads only ``approved_trade_count``. The detect worker applies the
same rule when it routes a signal; the execute worker applies it again before
it places an order, so a signal that reached execution without an approval
it needed is refused there.

An approval binds to one order: ``order_hash`` is the SHA-256 of the
canonical (signal id, automation id, symbol, side, quantity, limit price). It
is stored unique, so one approval can never be presented for another signal,
and a signal whose order changed after approval no longer matches.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any


def gating_required(automation: Any) -> bool:
    """True when the next trade of ``automation`` needs a trader's approval."""
    return bool(automation.require_approval) or automation.approved_trade_count < automation.approval_threshold


def _canonical_decimal(value: Decimal | str) -> str:
    # 0.010 and 0.01 are the same order: normalise, and never use exponent notation.
    return format(Decimal(value).normalize(), "f")


def order_hash(*, signal_id: int, automation_id: int, symbol: str, side: str, quantity: Decimal,
               limit_price: Decimal) -> str:
    canonical = json.dumps(
        {"signal": int(signal_id), "automation": int(automation_id), "symbol": symbol, "side": str(side),
         "quantity": _canonical_decimal(quantity), "limit_price": _canonical_decimal(limit_price)},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def signal_order_hash(signal: Any) -> str:
    return order_hash(signal_id=signal.pk, automation_id=signal.automation_id, symbol=signal.symbol, side=signal.side,
                      quantity=signal.quantity, limit_price=signal.limit_price)

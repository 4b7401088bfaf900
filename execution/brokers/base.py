"""The one broker interface every adapter implements (paper, ccxt venues).

Orders are addressed by our ``client_order_id`` everywhere: submitting the
same id twice must never create two orders at the venue, and asking for an
order by that id is how a worker that restarts in the middle of a submission
finds out what happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol, runtime_checkable


class BrokerOrderStatus(StrEnum):
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


FINAL_STATUSES = frozenset({BrokerOrderStatus.FILLED, BrokerOrderStatus.CANCELLED, BrokerOrderStatus.REJECTED})


class BrokerError(Exception):
    """The outcome of a broker call is unknown (network, timeout, venue down): ask again later."""


class BrokerRejected(BrokerError):
    """The venue refused the order for good (bad size, no funds, no market): do not retry."""


@dataclass(frozen=True, slots=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    side: str
    quantity: Decimal
    limit_price: Decimal


@dataclass(frozen=True, slots=True)
class BrokerFill:
    fill_id: str
    price: Decimal
    quantity: Decimal
    fee: Decimal
    filled_at: datetime


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """The venue's view of one order."""

    client_order_id: str
    broker_order_id: str
    symbol: str
    side: str
    quantity: Decimal
    limit_price: Decimal
    status: BrokerOrderStatus
    filled_qty: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    fills: tuple[BrokerFill, ...] = field(default_factory=tuple)
    reason: str = ""

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@runtime_checkable
class Broker(Protocol):
    """What the execute worker needs from a venue.

    ``submit`` is idempotent by ``client_order_id``: a second submission of
    an id the venue knows returns the existing order. ``fetch_order`` returns
    None when the venue has never seen the id.
    """

    name: str

    def submit(self, order: OrderRequest) -> BrokerOrder: ...

    def fetch_order(self, client_order_id: str, *, symbol: str) -> BrokerOrder | None: ...

    def cancel(self, client_order_id: str, *, symbol: str) -> BrokerOrder | None: ...

    def open_orders(self, symbol: str | None = None) -> list[BrokerOrder]: ...

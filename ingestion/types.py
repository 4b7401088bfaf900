"""Plain value types shared by every market-data path.

These are the contract between sources (simulator, recorded files, live
venues), the ingest worker, the detect worker and the fill model. They hold no
ORM state, so the backtester and tests use them without a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


@dataclass(frozen=True, slots=True)
class RawRef:
    """Where a raw message lives in the raw store: its stream and sequence."""

    stream: str
    seq: int


@dataclass(frozen=True, slots=True)
class QuoteTick:
    """Top of book (L1). Both clocks are kept: the venue's and ours, in ns UTC."""

    symbol: str
    source_ts_ns: int
    recv_ts_ns: int
    bid: Decimal
    bid_size: Decimal
    ask: Decimal
    ask_size: Decimal
    raw: RawRef | None = None


@dataclass(frozen=True, slots=True)
class TradeTick:
    symbol: str
    source_ts_ns: int
    recv_ts_ns: int
    price: Decimal
    size: Decimal
    aggressor: Side | None
    trade_id: str
    raw: RawRef | None = None


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """An L2 message: a full snapshot or a delta. A size of zero removes a level.

    ``first_update_id``/``last_update_id``/``prev_last_update_id`` carry the
    venue's sequence numbers where it has them (Binance ``U``/``u``/``pu``,
    Bybit ``u``/``seq``) so a book can check continuity.
    """

    symbol: str
    source_ts_ns: int
    recv_ts_ns: int
    is_snapshot: bool
    bids: tuple[tuple[Decimal, Decimal], ...]
    asks: tuple[tuple[Decimal, Decimal], ...]
    first_update_id: int | None = None
    last_update_id: int | None = None
    prev_last_update_id: int | None = None
    raw: RawRef | None = None


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """The top levels of a book at one moment: bids best-first, asks best-first."""

    symbol: str
    ts_ns: int
    bids: tuple[tuple[Decimal, Decimal], ...]
    asks: tuple[tuple[Decimal, Decimal], ...]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def best_bid(self) -> Decimal | None:
        return self.bids[0][0] if self.bids else None

    @property
    def best_ask(self) -> Decimal | None:
        return self.asks[0][0] if self.asks else None

    @property
    def mid(self) -> Decimal | None:
        if not self.bids or not self.asks:
            return None
        return (self.bids[0][0] + self.asks[0][0]) / 2


Tick = QuoteTick | TradeTick | BookUpdate

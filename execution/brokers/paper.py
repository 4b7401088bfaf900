"""The paper broker: the default venue, filling against the live book through the fill model.

It behaves like a venue the execute worker does not control:

1. Its order book of record lives in Redis (``fp:paper:order:<client id>``),
   outside the database transactions of the worker, so an order it accepted
   is still there when the worker that sent it dies before recording it.
2. ``submit`` is idempotent by client order id: the record is created with
   ``SET NX``, so the same id submitted twice (a redelivered task, two racing
   workers) returns the one existing order.
3. A new order meets the latest L2 book from the ingest worker
   (``ingestion.selectors.book_snapshot``) through ``simulate_fill``: it
   crosses the spread and walks the depth up to its limit price, with the
   stochastic slippage and the log-normal latency of the fill model. The
   random source is seeded from the client order id, so a paper fill can be
   reproduced exactly.
4. What does not cross rests as an open order. Each ``fetch_order`` (the
   reconciler calls it) matches a resting order again against the book of
   that moment, so it fills when the market comes to it; ``cancel`` takes it
   off the book.

The latency is stamped on the fill time; the call itself does not sleep
unless ``FP_PAPER_SLEEP_LATENCY=1`` (a benchmark of our own code should not
measure a simulated network).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from execution.brokers.base import (
    BrokerFill,
    BrokerOrder,
    BrokerOrderStatus,
    BrokerRejected,
    OrderRequest,
)
from execution.simulation import FillModelParams, OrderSpec, simulate_fill
from ingestion import selectors as market
from ingestion.types import Side
from trading import redis_keys
from trading.redis_client import redis_client

ORDER_KEY = "fp:paper:order:{}"
OPEN_SET = "fp:paper:open"
LOCK_KEY = "fp:paper:lock:{}"


_PARAM_VARIABLES = ("FP_PAPER_TAKER_FEE_BPS", "FP_PAPER_MAKER_FEE_BPS", "FP_PAPER_LATENCY_MEDIAN_MS",
                    "FP_PAPER_LATENCY_SIGMA", "FP_PAPER_SLIPPAGE_SIGMA_BPS", "FP_PAPER_IMPACT_COEF")


def paper_fill_params() -> FillModelParams:
    """The paper venue's fill model, from the environment (defaults: a liquid crypto perpetual).

    ``FP_PAPER_TAKER_FEE_BPS`` (4), ``FP_PAPER_MAKER_FEE_BPS`` (2),
    ``FP_PAPER_LATENCY_MEDIAN_MS`` (20), ``FP_PAPER_LATENCY_SIGMA`` (0.5),
    ``FP_PAPER_SLIPPAGE_SIGMA_BPS`` (1.0), ``FP_PAPER_IMPACT_COEF`` (0).
    Built once per set of values (twice per order otherwise).
    """
    return _fill_params(tuple(os.environ.get(name, "") for name in _PARAM_VARIABLES))


@lru_cache(maxsize=8)
def _fill_params(values: tuple[str, ...]) -> FillModelParams:
    import math

    taker, maker, latency_median, latency_sigma, slippage_sigma, impact = values
    return FillModelParams(
        taker_fee_bps=Decimal(taker or "4"),
        maker_fee_bps=Decimal(maker or "2"),
        latency_mu_ms=math.log(float(latency_median) if latency_median else 20.0),
        latency_sigma=float(latency_sigma) if latency_sigma else 0.5,
        slippage_sigma_bps=float(slippage_sigma) if slippage_sigma else 1.0,
        impact_coef=Decimal(impact or "0"),
    )


def _rng_for(client_order_id: str, attempt: int) -> random.Random:
    seed = int.from_bytes(hashlib.sha256(f"{client_order_id}:{attempt}".encode()).digest()[:8], "big")
    return random.Random(seed)


def _encode(order: BrokerOrder) -> str:
    return json.dumps({
        "client_order_id": order.client_order_id, "broker_order_id": order.broker_order_id, "symbol": order.symbol,
        "side": order.side, "quantity": str(order.quantity), "limit_price": str(order.limit_price),
        "status": str(order.status), "filled_qty": str(order.filled_qty),
        "avg_price": None if order.avg_price is None else str(order.avg_price), "reason": order.reason,
        "fills": [{"fill_id": f.fill_id, "price": str(f.price), "quantity": str(f.quantity), "fee": str(f.fee),
                   "filled_at": f.filled_at.isoformat()} for f in order.fills],
    })


def _decode(raw: bytes | str) -> BrokerOrder:
    d: dict[str, Any] = json.loads(raw)
    return BrokerOrder(
        client_order_id=d["client_order_id"], broker_order_id=d["broker_order_id"], symbol=d["symbol"], side=d["side"],
        quantity=Decimal(d["quantity"]), limit_price=Decimal(d["limit_price"]), status=BrokerOrderStatus(d["status"]),
        filled_qty=Decimal(d["filled_qty"]), avg_price=None if d["avg_price"] is None else Decimal(d["avg_price"]),
        reason=d.get("reason", ""),
        fills=tuple(BrokerFill(fill_id=f["fill_id"], price=Decimal(f["price"]), quantity=Decimal(f["quantity"]),
                               fee=Decimal(f["fee"]), filled_at=datetime.fromisoformat(f["filled_at"]))
                    for f in d["fills"]),
    )


# Create an order record unless its key exists, and file it as open or final; else answer the existing record.
_CREATE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  if ARGV[2] == '1' then redis.call('SREM', KEYS[2], ARGV[3]) else redis.call('SADD', KEYS[2], ARGV[3]) end
  return false
end
return redis.call('GET', KEYS[1])
"""


class PaperBroker:
    name = "paper"
    _create_script: Any = None

    def __init__(self, params: FillModelParams | None = None, *, sleep_latency: bool | None = None) -> None:
        self.params = params or paper_fill_params()
        self.sleep_latency = (os.environ.get("FP_PAPER_SLEEP_LATENCY") == "1") if sleep_latency is None else sleep_latency
        self.redis = redis_client()

    # -- the interface -------------------------------------------------------------------

    def submit(self, order: OrderRequest) -> BrokerOrder:
        """Accept (and match) a new order, or return the one already accepted under its client order id.

        Two round trips and no lock: the existing record and the book in one
        ``MGET``, then the record created only if still absent (``_CREATE``,
        a ``SET NX`` that answers the existing record when another submission
        of the same id got there first). Nothing else ever creates a record,
        so the lock ``fetch_order`` and ``cancel`` take for their
        read-modify-write is not needed here.
        """
        key = ORDER_KEY.format(order.client_order_id)
        raw_existing, raw_book = self.redis.mget(key, redis_keys.book(order.symbol))
        if raw_existing is not None:
            return _decode(raw_existing)
        accepted = BrokerOrder(
            client_order_id=order.client_order_id,
            broker_order_id=f"paper-{order.client_order_id}",
            symbol=order.symbol, side=str(order.side), quantity=order.quantity, limit_price=order.limit_price,
            status=BrokerOrderStatus.OPEN,
        )
        book = market.book_from_json(raw_book, 50)
        if book is None or not book.bids or not book.asks:
            rejected = _replace(accepted, status=BrokerOrderStatus.REJECTED,
                                reason=f"paper venue has no order book for {order.symbol}")
            existing = self._create(rejected)
            if existing is not None:
                return existing
            raise BrokerRejected(rejected.reason)
        result = self._match(accepted, book, attempt=0)
        existing = self._create(result)
        return result if existing is None else existing

    def fetch_order(self, client_order_id: str, *, symbol: str = "") -> BrokerOrder | None:
        with self.redis.lock(LOCK_KEY.format(client_order_id), timeout=10, blocking_timeout=10):
            order = self._load(client_order_id)
            if order is None or order.is_final:
                return order
            # A resting order meets the book of this moment.
            book = market.book_snapshot(order.symbol, n=50)
            if book is None or not book.bids or not book.asks:
                return order
            matched = self._match(order, book, attempt=len(order.fills) + 1)
            if matched != order:
                self._store(matched)
            return matched

    def cancel(self, client_order_id: str, *, symbol: str = "") -> BrokerOrder | None:
        with self.redis.lock(LOCK_KEY.format(client_order_id), timeout=10, blocking_timeout=10):
            order = self._load(client_order_id)
            if order is None or order.is_final:
                return order
            cancelled = _replace(order, status=BrokerOrderStatus.CANCELLED, reason="cancelled")
            self._store(cancelled)
            return cancelled

    def open_orders(self, symbol: str | None = None) -> list[BrokerOrder]:
        orders = []
        for coid in sorted(m.decode() for m in self.redis.smembers(OPEN_SET)):
            order = self._load(coid)
            if order is not None and not order.is_final and (symbol is None or order.symbol == symbol):
                orders.append(order)
        return orders

    def all_orders(self) -> list[BrokerOrder]:
        """Every order the paper venue ever accepted (tests and benchmarks count them)."""
        orders = []
        for key in self.redis.scan_iter(match=ORDER_KEY.format("*"), count=1000):
            raw = self.redis.get(key)
            if raw is not None:
                orders.append(_decode(raw))
        return orders

    # -- internals -------------------------------------------------------------------------

    def _load(self, client_order_id: str) -> BrokerOrder | None:
        raw = self.redis.get(ORDER_KEY.format(client_order_id))
        return None if raw is None else _decode(raw)

    def _create(self, order: BrokerOrder) -> BrokerOrder | None:
        """Store a new order unless its client order id exists; None when stored, else the existing order."""
        if self._create_script is None:
            type(self)._create_script = self.redis.register_script(_CREATE)
        raw = self._create_script(keys=[ORDER_KEY.format(order.client_order_id), OPEN_SET],
                                  args=[_encode(order), "1" if order.is_final else "0", order.client_order_id],
                                  client=self.redis)
        return None if raw is None else _decode(raw)

    def _store(self, order: BrokerOrder) -> None:
        """Overwrite an existing order's record (under its lock) and file it as open or final."""
        key = ORDER_KEY.format(order.client_order_id)
        pipe = self.redis.pipeline()
        pipe.set(key, _encode(order))
        if order.is_final:
            pipe.srem(OPEN_SET, order.client_order_id)
        else:
            pipe.sadd(OPEN_SET, order.client_order_id)
        pipe.execute()

    def _match(self, order: BrokerOrder, book: Any, *, attempt: int) -> BrokerOrder:
        remaining = order.quantity - order.filled_qty
        if remaining <= 0:
            return order
        spec = OrderSpec(side=Side(order.side), quantity=remaining, limit_price=order.limit_price, symbol=order.symbol)
        result = simulate_fill(spec, book, self.params, _rng_for(order.client_order_id, attempt))
        if self.sleep_latency:
            time.sleep(result.latency_ms / 1000)
        if result.filled_qty == 0:
            return order
        filled_at = datetime.now(tz=UTC) + timedelta(milliseconds=result.latency_ms)
        fill = BrokerFill(fill_id=f"{order.client_order_id}-{attempt}", price=result.avg_price or order.limit_price,
                          quantity=result.filled_qty, fee=result.fee, filled_at=filled_at)
        fills = (*order.fills, fill)
        filled_qty = order.filled_qty + result.filled_qty
        notional = sum((f.price * f.quantity for f in fills), Decimal(0))
        status = BrokerOrderStatus.FILLED if filled_qty >= order.quantity else BrokerOrderStatus.PARTIALLY_FILLED
        return _replace(order, fills=fills, filled_qty=filled_qty, avg_price=notional / filled_qty, status=status)


def _replace(order: BrokerOrder, **changes: Any) -> BrokerOrder:
    from dataclasses import replace

    return replace(order, **changes)

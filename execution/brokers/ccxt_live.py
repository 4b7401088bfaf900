"""The live adapter: any ccxt venue (default Binance USD-M futures), sandbox by default.

Only this module (through ``credentials.py``) touches broker credentials, and
only the execute worker imports it. Orders carry our client order id
(``newClientOrderId`` on Binance), so:

- ``submit`` of an id the venue already knows (a redelivered task) is answered
  by the venue with "duplicated client order id", and the adapter returns the
  existing order instead;
- ``fetch_order`` and ``cancel`` address the order by that id
  (``origClientOrderId``), which is what a restarted worker has.

Fills: the order endpoints report the cumulative executed quantity and its
average price, not individual trades, so a final order yields one aggregate
fill (``<venue order id>-agg``); partial fills show in ``filled_qty`` until
then. Fees are not on the order endpoints and are recorded as 0 here
(the venue's trade history is the source for them).

``api_base_url`` points every ``fapi`` endpoint at another host: the local
fake venue in tests, or a proxy.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import ccxt

from execution.brokers.base import (
    BrokerError,
    BrokerFill,
    BrokerOrder,
    BrokerOrderStatus,
    BrokerRejected,
    OrderRequest,
)
from execution.brokers.credentials import BrokerCredentials, broker_credentials

logger = logging.getLogger(__name__)


def _api_urls(exchange: Any, base_url: str) -> None:
    """Point the venue's REST endpoints at ``base_url`` (keeping each endpoint's path)."""
    base = base_url.rstrip("/")
    api = exchange.urls["api"]
    for key, url in list(api.items()):
        if not isinstance(url, str):
            continue
        for marker in ("/fapi/", "/dapi/", "/api/", "/sapi/", "/papi/", "/eapi/"):
            idx = url.find(marker)
            if idx >= 0:
                api[key] = base + url[idx:]
                break


class CcxtBroker:
    def __init__(self, *, exchange_id: str = "binanceusdm", credentials: BrokerCredentials | None = None,
                 sandbox: bool = True, api_base_url: str = "", timeout_ms: int = 5000) -> None:
        creds = credentials or broker_credentials()
        try:
            klass = getattr(ccxt, exchange_id)
        except AttributeError as exc:
            raise BrokerRejected(f"ccxt has no exchange {exchange_id!r}") from exc
        self.name = f"ccxt:{exchange_id}"
        self.exchange = klass({
            "apiKey": creds.api_key, "secret": creds.api_secret, "enableRateLimit": False, "timeout": timeout_ms,
            "options": {"warnOnFetchOpenOrdersWithoutSymbol": False, "adjustForTimeDifference": False},
        })
        if sandbox:
            self.exchange.set_sandbox_mode(True)
        if api_base_url:
            _api_urls(self.exchange, api_base_url)
        self._markets_loaded = False

    # -- helpers ----------------------------------------------------------------------------

    def _symbol(self, venue_symbol: str) -> str:
        """ccxt's unified symbol for a venue id such as ``BTCUSDT`` (a unified symbol passes through)."""
        if not self._markets_loaded:
            self._call(self.exchange.load_markets)
            self._markets_loaded = True
        if venue_symbol in self.exchange.markets:
            return venue_symbol
        found = self.exchange.markets_by_id.get(venue_symbol)
        if not found:
            raise BrokerRejected(f"{self.name} has no market {venue_symbol!r}")
        return found[0]["symbol"]

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ccxt.OrderNotFound:
            # A subclass of InvalidOrder in ccxt: "unknown order" is an answer, not a rejection.
            raise
        except (ccxt.InsufficientFunds, ccxt.InvalidOrder, ccxt.BadSymbol, ccxt.BadRequest,
                ccxt.PermissionDenied, ccxt.AuthenticationError, ccxt.OperationRejected) as exc:
            raise BrokerRejected(str(exc)) from exc
        except ccxt.BaseError as exc:
            raise BrokerError(str(exc)) from exc

    def _order(self, raw: dict[str, Any], venue_symbol: str) -> BrokerOrder:
        info = raw.get("info") or {}
        status = raw.get("status")
        filled = Decimal(str(raw.get("filled") or info.get("executedQty") or 0))
        if status == "closed":
            state = BrokerOrderStatus.FILLED
        elif status in ("canceled", "expired"):
            state = BrokerOrderStatus.CANCELLED
        elif status == "rejected":
            state = BrokerOrderStatus.REJECTED
        else:
            state = BrokerOrderStatus.PARTIALLY_FILLED if filled > 0 else BrokerOrderStatus.OPEN
        avg = raw.get("average") or info.get("avgPrice")
        avg_price = Decimal(str(avg)) if avg not in (None, "", "0", 0) and filled > 0 else None
        fills: tuple[BrokerFill, ...] = ()
        if state in (BrokerOrderStatus.FILLED, BrokerOrderStatus.CANCELLED) and filled > 0 and avg_price is not None:
            ts = raw.get("lastTradeTimestamp") or raw.get("timestamp")
            at = datetime.fromtimestamp(ts / 1000, tz=UTC) if ts else datetime.now(tz=UTC)
            fills = (BrokerFill(fill_id=f"{raw['id']}-agg", price=avg_price, quantity=filled, fee=Decimal(0),
                                filled_at=at),)
        return BrokerOrder(
            client_order_id=raw.get("clientOrderId") or info.get("clientOrderId", ""), broker_order_id=str(raw["id"]),
            symbol=venue_symbol, side=str(raw.get("side")), quantity=Decimal(str(raw.get("amount") or 0)),
            limit_price=Decimal(str(raw.get("price") or 0)), status=state, filled_qty=filled, avg_price=avg_price,
            fills=fills, reason=str(info.get("status", "")) if state == BrokerOrderStatus.REJECTED else "",
        )

    # -- the interface ---------------------------------------------------------------------

    def submit(self, order: OrderRequest) -> BrokerOrder:
        symbol = self._symbol(order.symbol)
        try:
            raw = self._call(self.exchange.create_order, symbol, "limit", order.side, float(order.quantity),
                             float(order.limit_price),
                             {"newClientOrderId": order.client_order_id, "timeInForce": "GTC"})
        except BrokerError as exc:
            # The venue already has this client order id: the earlier submission got through.
            # (Binance USD-M answers -4116, which ccxt maps to a plain ExchangeError there.)
            if "-4116" in str(exc) or "duplicat" in str(exc).lower():
                existing = self.fetch_order(order.client_order_id, symbol=order.symbol)
                if existing is not None:
                    return existing
            raise
        return self._order(raw, order.symbol)

    def fetch_order(self, client_order_id: str, *, symbol: str) -> BrokerOrder | None:
        unified = self._symbol(symbol)
        try:
            raw = self._call(self.exchange.fetch_order, None, unified, {"origClientOrderId": client_order_id})
        except ccxt.OrderNotFound:
            return None
        return self._order(raw, symbol)

    def cancel(self, client_order_id: str, *, symbol: str) -> BrokerOrder | None:
        unified = self._symbol(symbol)
        try:
            raw = self._call(self.exchange.cancel_order, None, unified, {"origClientOrderId": client_order_id})
        except ccxt.OrderNotFound:
            return self.fetch_order(client_order_id, symbol=symbol)
        return self._order(raw, symbol)

    def open_orders(self, symbol: str | None = None) -> list[BrokerOrder]:
        unified = self._symbol(symbol) if symbol else None
        raws = self._call(self.exchange.fetch_open_orders, unified)
        return [self._order(raw, raw.get("info", {}).get("symbol", symbol or "")) for raw in raws]


_cache: dict[tuple[Any, ...], CcxtBroker] = {}


def live_broker() -> CcxtBroker:
    """The adapter for the active ccxt BrokerAccount (settings from the database, secrets from the environment).

    One adapter per account settings per process, so markets load once.
    """
    from execution.models import BrokerAccount

    account = BrokerAccount.objects.filter(active=True, kind=BrokerAccount.Kind.CCXT).order_by("pk").first()
    if account is None:
        raise BrokerRejected("no active live broker account is configured")
    key = (account.pk, account.exchange_id, account.sandbox, account.api_base_url)
    if key not in _cache:
        _cache.clear()
        _cache[key] = CcxtBroker(exchange_id=account.exchange_id or "binanceusdm", sandbox=account.sandbox,
                                 api_base_url=account.api_base_url)
    return _cache[key]

"""A local HTTP server speaking the Binance USD-M futures REST API, enough for the ccxt adapter.

Endpoints: GET /fapi/v1/exchangeInfo, GET /fapi/v1/time, POST /fapi/v1/order
(``newClientOrderId``; a duplicate id answers -4116 like Binance),
GET /fapi/v1/order (``origClientOrderId``; unknown answers -2013), DELETE
/fapi/v1/order, GET /fapi/v1/openOrders. Signed endpoints check the
``X-MBX-APIKEY`` header and the HMAC-SHA256 ``signature`` with the known
secret, so a test proves the credentials reached the venue. A limit order
fills at once when it crosses ``market_price``; otherwise it rests (NEW).
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit


def _symbol_info(symbol: str, base: str) -> dict[str, Any]:
    return {
        "symbol": symbol, "pair": symbol, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000", "baseAsset": base, "quoteAsset": "USDT", "marginAsset": "USDT",
        "pricePrecision": 2, "quantityPrecision": 3, "baseAssetPrecision": 8, "quotePrecision": 8,
        "underlyingType": "COIN", "underlyingSubType": [], "settlePlan": 0, "triggerProtect": "0.0500",
        "liquidationFee": "0.012500", "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.10", "maxPrice": "1000000", "tickSize": "0.10"},
            {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "120", "stepSize": "0.001"},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": "5"},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
             "multiplierDecimal": "4"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    }


class FakeBinanceFutures:
    def __init__(self, *, api_key: str, api_secret: str, market_price: str = "100.00") -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.market_price = Decimal(market_price)
        self.orders: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.submissions = 0
        self._next_id = 1000
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self, method: str) -> None:
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                if body:
                    params.update(dict(parse_qsl(body)))
                outer.requests.append((method, parts.path))
                status, payload = outer.route(method, parts.path, params, parts.query, body, self.headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- routing ---------------------------------------------------------------------------

    def _signed_ok(self, query: str, body: str, headers: Any) -> bool:
        if headers.get("X-MBX-APIKEY") != self.api_key:
            return False
        payload = "&".join(p for p in (query, body) if p)
        unsigned, _, signature = payload.rpartition("&signature=")
        expected = hmac.new(self.api_secret.encode(), unsigned.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature)

    def route(self, method: str, path: str, params: dict[str, str], query: str, body: str,
              headers: Any) -> tuple[int, Any]:
        now = int(time.time() * 1000)
        if path == "/fapi/v1/time":
            return 200, {"serverTime": now}
        if path == "/fapi/v1/exchangeInfo":
            return 200, {"timezone": "UTC", "serverTime": now, "futuresType": "U_MARGINED", "rateLimits": [],
                         "exchangeFilters": [], "assets": [],
                         "symbols": [_symbol_info("BTCUSDT", "BTC"), _symbol_info("ETHUSDT", "ETH")]}
        if path.startswith("/fapi/v1/") and not self._signed_ok(query, body, headers):
            return 401, {"code": -1022, "msg": "Signature for this request is not valid."}
        with self._lock:
            if path == "/fapi/v1/order" and method == "POST":
                return self._create(params, now)
            if path == "/fapi/v1/order" and method == "GET":
                order = self.orders.get(params.get("origClientOrderId", ""))
                return (200, order) if order else (400, {"code": -2013, "msg": "Order does not exist."})
            if path == "/fapi/v1/order" and method == "DELETE":
                order = self.orders.get(params.get("origClientOrderId", ""))
                if order is None:
                    return 400, {"code": -2011, "msg": "Unknown order sent."}
                if order["status"] in ("NEW", "PARTIALLY_FILLED"):
                    order["status"] = "CANCELED"
                    order["updateTime"] = now
                return 200, order
            if path == "/fapi/v1/openOrders":
                return 200, [o for o in self.orders.values() if o["status"] in ("NEW", "PARTIALLY_FILLED")]
        return 404, {"code": -1, "msg": f"fake venue: no route {method} {path}"}

    def _create(self, params: dict[str, str], now: int) -> tuple[int, Any]:
        coid = params.get("newClientOrderId", "")
        if coid in self.orders:
            return 400, {"code": -4116, "msg": "ClientOrderId is duplicated."}
        self.submissions += 1
        self._next_id += 1
        price, qty, side = Decimal(params["price"]), Decimal(params["quantity"]), params["side"]
        crosses = price >= self.market_price if side == "BUY" else price <= self.market_price
        order = {
            "orderId": self._next_id, "symbol": params["symbol"], "status": "FILLED" if crosses else "NEW",
            "clientOrderId": coid, "price": str(price), "avgPrice": str(self.market_price) if crosses else "0.00",
            "origQty": str(qty), "executedQty": str(qty) if crosses else "0",
            "cumQuote": str(qty * self.market_price) if crosses else "0", "timeInForce": params.get("timeInForce", "GTC"),
            "type": "LIMIT", "reduceOnly": False, "closePosition": False, "side": side, "positionSide": "BOTH",
            "stopPrice": "0", "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": "LIMIT",
            "updateTime": now, "time": now,
        }
        self.orders[coid] = order
        return 200, order

"""Reads of market data for the detect workers and the UI."""

from __future__ import annotations

import json
from decimal import Decimal

import pandas as pd
from django.db import connection

from ingestion.types import BookSnapshot, QuoteTick
from trading import redis_keys
from trading.redis_client import redis_client

_QUOTE_COLUMNS = ["ts_ns", "bid", "ask", "bid_size", "ask_size"]
_TRADE_COLUMNS = ["ts_ns", "price", "size", "side"]


def latest_quote(symbol: str) -> QuoteTick | None:
    raw = redis_client().get(redis_keys.quote(symbol))
    if raw is None:
        return None
    data = json.loads(raw)
    return QuoteTick(
        symbol=data["symbol"], source_ts_ns=int(data["source_ts_ns"]), recv_ts_ns=int(data["recv_ts_ns"]),
        bid=Decimal(data["bid"]), bid_size=Decimal(data["bid_size"]), ask=Decimal(data["ask"]), ask_size=Decimal(data["ask_size"]),
    )


def book_snapshot(symbol: str, n: int = 20) -> BookSnapshot | None:
    raw = redis_client().get(redis_keys.book(symbol))
    if raw is None:
        return None
    data = json.loads(raw)
    return BookSnapshot(
        symbol=data["symbol"], ts_ns=int(data["ts_ns"]),
        bids=tuple((Decimal(p), Decimal(s)) for p, s in data["bids"][:n]),
        asks=tuple((Decimal(p), Decimal(s)) for p, s in data["asks"][:n]),
    )


def quotes_frame(symbol: str, n: int) -> pd.DataFrame:
    """The last ``n`` quotes of a symbol, oldest first, as floats for the features."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ts_ns, bid, ask, bid_size, ask_size FROM ("
            " SELECT (extract(epoch FROM source_ts) * 1e9)::bigint AS ts_ns, bid::float8 AS bid, ask::float8 AS ask,"
            " bid_size::float8 AS bid_size, ask_size::float8 AS ask_size, source_ts, raw_seq"
            " FROM ingestion_quote WHERE symbol = %s ORDER BY source_ts DESC, raw_seq DESC LIMIT %s"
            ") recent ORDER BY source_ts, raw_seq",
            [symbol, n],
        )
        rows = cursor.fetchall()
    frame = pd.DataFrame(rows, columns=_QUOTE_COLUMNS)
    return frame.astype({"ts_ns": "int64", "bid": "float64", "ask": "float64", "bid_size": "float64", "ask_size": "float64"})


def trades_frame(symbol: str, n: int) -> pd.DataFrame:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ts_ns, price, size, side FROM ("
            " SELECT (extract(epoch FROM source_ts) * 1e9)::bigint AS ts_ns, price::float8 AS price, size::float8 AS size,"
            " aggressor AS side, source_ts, raw_seq"
            " FROM ingestion_trade WHERE symbol = %s ORDER BY source_ts DESC, raw_seq DESC LIMIT %s"
            ") recent ORDER BY source_ts, raw_seq",
            [symbol, n],
        )
        rows = cursor.fetchall()
    frame = pd.DataFrame(rows, columns=_TRADE_COLUMNS)
    return frame.astype({"ts_ns": "int64", "price": "float64", "size": "float64", "side": "object"})

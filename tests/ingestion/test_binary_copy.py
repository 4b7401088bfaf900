"""Quotes COPied in PostgreSQL's binary format are stored exactly as from the COPY text."""

from __future__ import annotations

import pytest
from django.db import connection

from ingestion import services
from ingestion.services import IngestPipeline

DAY = 1_582_329_600_000_000  # 2020-02-22 00:00 UTC in microseconds
# (bid, bid_size, ask, ask_size): awkward but valid decimal texts, as a venue might write them.
PRICES = [
    ("9681.92", "0.67", "9682", "0.84"),
    ("0.0000000000015", ".5", "0.000000000002", "5."),  # 13 decimals: the column rounds to 12
    ("0.000000000001", "123456789012345", "0.1", "007"),  # 15 digits; leading zeros
    ("99999.99999999", "1.000000000000", "100000", "0.0001"),
    ("1234567890.12345", "0.00005", "1234567890.12346", "10000"),
    ("12.5", "3.14159", "12.50000001", "1e0"),  # an exponent: this batch goes the text way
]


def _rows(n: int, start_us: int, awkward: bool = True) -> list[tuple[int, int, bytes]]:
    out = []
    for i in range(n):
        bid, bid_size, ask, ask_size = PRICES[i % (len(PRICES) if awkward else len(PRICES) - 1)]
        ts = start_us + i * 997_003  # crosses midnight when started before it
        line = f"binance-futures,BTCUSDT,{ts},{ts + 1234},{ask_size},{ask},{bid},{bid_size}"
        out.append((i + 1, 0, line.encode()))
    return out


def _stored(stream: str, table: str = "ingestion_quote",
            columns: str = "bid, bid_size, ask, ask_size, bid::text, bid_size::text") -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT raw_seq, symbol, source_ts, recv_ts, {columns} FROM {table}"  # noqa: S608 - the test's own names
            " WHERE raw_stream = %s ORDER BY raw_seq",
            [stream],
        )
        return cursor.fetchall()


def _count_text_builds(monkeypatch) -> list[int]:
    """One entry per COPY text built on demand (a COPY that failed falls back to the text)."""
    built: list[int] = []
    maker = services._text_maker
    monkeypatch.setattr(services, "_text_maker", lambda *a: lambda made=maker(*a): built.append(1) or made())
    return built


@pytest.mark.django_db(transaction=True)
def test_binary_and_text_copy_store_the_same_quotes(monkeypatch, redis_clean):
    monkeypatch.setattr(services, "STREAM_CHUNK", 40)  # several streamed chunks
    built = []
    real = services._quote_rows_binary
    monkeypatch.setattr(services, "_quote_rows_binary", lambda *a: built.append(a) or real(*a))
    # The text fallback must not have been needed.
    texts_built = _count_text_builds(monkeypatch)
    # Five quote shapes repeat (the sixth, with an exponent, only in the last chunks), over midnight.
    records = _rows(100, DAY - 30 * 997_003, awkward=False) + _rows(30, DAY + 200 * 997_003)
    records = [(seq, recv, payload) for seq, (_s, recv, payload) in enumerate(records, 1)]

    fast = IngestPipeline(known_symbols={"BTCUSDT"}).ingest(stream="binary", fmt="tardis-quotes", records=records, detect=False)
    assert len(built) >= 2  # the binary format was used for the plain chunks...
    assert texts_built == []  # ...and PostgreSQL took it
    monkeypatch.setattr(services, "BINARY_COPY", False)
    slow = IngestPipeline(known_symbols={"BTCUSDT"}).ingest(stream="text", fmt="tardis-quotes", records=records, detect=False)

    assert fast.as_dict() == slow.as_dict()
    assert fast.quotes == len(records)
    binary, text = _stored("binary"), _stored("text")
    assert binary == text
    assert [row[8:] for row in binary[:2]] == [("9681.920000000000", "0.670000000000"), ("0.000000000002", "0.500000000000")]


@pytest.mark.django_db(transaction=True)
def test_a_redelivered_binary_batch_adds_nothing(monkeypatch, redis_clean):
    monkeypatch.setattr(services, "STREAM_CHUNK", 40)
    records = _rows(100, DAY, awkward=False)
    IngestPipeline(known_symbols={"BTCUSDT"}).ingest(stream="again", fmt="tardis-quotes", records=records[:50], detect=False)
    # The first chunk clashes on the primary key: the batch goes the staging-table way, from text built on demand.
    again = IngestPipeline(known_symbols={"BTCUSDT"}).ingest(stream="again", fmt="tardis-quotes", records=records, detect=False)
    assert again.quotes == 50
    assert [row[0] for row in _stored("again")] == list(range(1, 101))


TRADES = [("9681.92", "0.67", "buy"), ("0.0000000000015", ".5", "sell"), ("99999.99999999", "123456789012345", "buy"),
          ("12.5", "007", "")]  # fmt: skip


def _trade_rows(n: int, start_us: int, first_id: int) -> list[tuple[int, int, bytes]]:
    out = []
    for i in range(n):
        price, size, side = TRADES[i % len(TRADES)]
        ts = start_us + i * 997_003
        line = f"binance-futures,BTCUSDT,{ts},{ts + 1234},{first_id + i},{side},{price},{size}"
        out.append((i + 1, 0, line.encode()))
    return out


def _stored_trades(stream: str) -> list[tuple]:
    return _stored(stream, "ingestion_trade", "price, size, aggressor, trade_id")


@pytest.mark.django_db(transaction=True)
def test_binary_and_text_copy_store_the_same_trades(monkeypatch, redis_clean):
    monkeypatch.setattr(services, "STREAM_CHUNK", 40)
    built = []
    real = services._trade_rows_binary
    monkeypatch.setattr(services, "_trade_rows_binary", lambda *a: built.append(real(*a)) or built[-1])
    texts_built = _count_text_builds(monkeypatch)
    # Over midnight; ids cross from 7 to 8 digits in the third chunk (that chunk goes as text).
    records = _trade_rows(130, DAY - 30 * 997_003, 9_999_900)

    fast = IngestPipeline(known_symbols={"BTCUSDT"}).ingest(stream="tbinary", fmt="tardis-trades", records=records, detect=False)
    assert sum(rows is not None for rows in built) >= 2 and any(rows is None for rows in built)
    assert texts_built == []
    monkeypatch.setattr(services, "BINARY_COPY", False)
    slow = IngestPipeline(known_symbols={"BTCUSDT"}).ingest(stream="ttext", fmt="tardis-trades", records=records, detect=False)

    assert fast.as_dict() == slow.as_dict()
    assert fast.trades == len(records)
    binary, text = _stored_trades("tbinary"), _stored_trades("ttext")
    assert binary == text
    assert [row[6:] for row in binary[:4]] == [("buy", "9999900"), ("sell", "9999901"), ("buy", "9999902"), ("", "9999903")]


@pytest.mark.parametrize(("n", "first", "chunk"), [(5000, 600, 1700), (5000, 1700, 1700), (1000, 600, 1700), (599, 600, 1700)])
def test_streamed_chunks_cover_the_batch_in_order(monkeypatch, n, first, chunk):
    monkeypatch.setattr(services, "FIRST_CHUNK", first)
    monkeypatch.setattr(services, "STREAM_CHUNK", chunk)
    bounds = services._chunk_bounds(n)
    assert bounds[0] == (0, min(first, n))
    assert [start for start, _end in bounds[1:]] == [end for _start, end in bounds[:-1]]
    assert bounds[-1][1] == n and all(0 < end - start <= max(first, chunk) for start, end in bounds)

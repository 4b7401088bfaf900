"""The columnar ingest path stores and quarantines exactly what the per-record path does."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection

from ingestion import services
from ingestion.models import QuarantinedMessage
from ingestion.parsers import iter_file_records
from ingestion.services import IngestPipeline

QUOTES = Path("/work/shared/data/tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv")
TRADES = Path("/work/shared/data/tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv")


def _with_bad_rows(fmt: str, path: Path, n: int) -> list[tuple[int, int, bytes]]:
    rows = [payload for payload, _recv in iter_file_records(fmt, path)][:n]
    fields = [row.split(b",") for row in rows]
    if fmt == "tardis-quotes":
        fields[10][6] = b"99999"  # crossed: bid above ask
        fields[20][6] = fields[20][5]  # locked
        fields[30][7] = b"0"  # non-positive size
        fields[40][5] = b"0.0"  # non-positive price
        fields[50][5] = b"1" + b"0" * 20  # out of range
    else:
        fields[10][4] = fields[9][4]  # repeated trade id
        fields[30][7] = b"0"
        fields[40][6] = b"0"
    fields[60][2] = str(int(fields[60][3]) + 6_000_000).encode()  # future timestamp
    fields[70][2] = str(int(fields[70][2]) - 60_000_000).encode()  # out of order
    fields[80][1] = b"DOGEUSDT"  # unknown symbol
    out = [b",".join(f) for f in fields]
    out.insert(90, out[89])  # the same record again (duplicate quote / trade id)
    return [(seq, 0, payload) for seq, payload in enumerate(out, 1)]


def _stored(table: str, stream: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT raw_seq, symbol, source_ts, recv_ts, {'bid, bid_size, ask, ask_size' if table == 'ingestion_quote' else 'price, size, aggressor, trade_id'}"  # noqa: S608
            f" FROM {table} WHERE raw_stream = %s ORDER BY raw_seq",
            [stream],
        )
        return cursor.fetchall()


def _quarantined(stream: str) -> list[tuple]:
    return list(
        QuarantinedMessage.objects.filter(raw_stream=stream)
        .order_by("raw_seq", "code")
        .values_list("raw_seq", "symbol", "reason", "payload_excerpt")
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("fmt", "path", "table"), [("tardis-quotes", QUOTES, "ingestion_quote"), ("tardis-trades", TRADES, "ingestion_trade")]
)
def test_the_columnar_path_stores_and_quarantines_what_the_per_record_path_does(fmt, path, table, monkeypatch, redis_clean):
    records = _with_bad_rows(fmt, path, 2600)
    assert services.tardis_columns(fmt, [r[2] for r in records]) is not None

    fast = IngestPipeline(known_symbols={"BTCUSDT"})
    fast_result = fast.ingest(stream="fast", fmt=fmt, records=records, detect=False)
    with monkeypatch.context() as patch:
        patch.setattr(services, "_COLUMNAR", frozenset())
        slow = IngestPipeline(known_symbols={"BTCUSDT"})
        slow_result = slow.ingest(stream="slow", fmt=fmt, records=records, detect=False)

    assert fast_result.as_dict() == slow_result.as_dict()
    assert fast_result.quarantined >= 7
    assert fast_result.quotes + fast_result.trades + fast_result.quarantined == len(records)
    assert _stored(table, "fast") == _stored(table, "slow")
    assert len(_stored(table, "fast")) == len(records) - fast_result.quarantined
    assert _quarantined("fast") == _quarantined("slow")
    assert fast.clocks["fast"].state == slow.clocks["slow"].state
    if fmt == "tardis-quotes":
        assert fast.liquidity_states["BTCUSDT"] == slow.liquidity_states["BTCUSDT"]

    # Delivered again to a fresh worker: nothing new, no duplicate.
    again = IngestPipeline(known_symbols={"BTCUSDT"}).ingest(stream="fast", fmt=fmt, records=records, detect=False)
    assert again.quotes + again.trades == 0
    assert len(_stored(table, "fast")) == len(records) - fast_result.quarantined

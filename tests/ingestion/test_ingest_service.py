from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from ingestion.models import ClockSource, Instrument, QuarantinedMessage, Quote
from ingestion.parsers import iter_file_records
from ingestion.selectors import book_snapshot, latest_quote, quotes_frame
from ingestion.services import IngestPipeline, decode_records, encode_records

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
T0 = 1_700_000_000_000_000_000


def sim_quote(i: int, bid: str = "100.0", ask: str = "100.5", symbol: str = "SIM-A") -> bytes:
    return json.dumps(
        {"type": "quote", "symbol": symbol, "ts_ns": T0 + i * 1_000_000, "bid": bid, "bid_size": "2", "ask": ask, "ask_size": "3"}
    ).encode()


@pytest.fixture
def instrument(db):
    return Instrument.objects.create(symbol="SIM-A", tick_size=Decimal("0.1"), lot_size=Decimal("1"))


@pytest.mark.django_db
def test_it_stores_quotes_exactly_and_publishes_the_latest(instrument, redis_clean):
    records = [(i + 1, T0 + i * 1_000_000 + 5_000_000, sim_quote(i, bid=f"100.{i}")) for i in range(5)]
    result = IngestPipeline().ingest(stream="sim", fmt="sim", records=records, detect=False)
    assert result.quotes == 5
    stored = list(Quote.objects.filter(symbol="SIM-A").order_by("raw_seq").values_list("raw_seq", "bid", "ask"))
    assert stored == [(i + 1, Decimal(f"100.{i}"), Decimal("100.5")) for i in range(5)]
    latest = latest_quote("SIM-A")
    assert latest is not None and latest.bid == Decimal("100.4") and latest.recv_ts_ns == T0 + 4_000_000 + 5_000_000
    frame = quotes_frame("SIM-A", 3)
    assert list(frame["bid"]) == [100.2, 100.3, 100.4]


@pytest.mark.django_db
def test_a_batch_delivered_twice_adds_nothing(instrument, redis_clean):
    records = [(i + 1, T0 + i * 1_000_000, sim_quote(i)) for i in range(3)]
    IngestPipeline().ingest(stream="sim", fmt="sim", records=records, detect=False)
    # A fresh pipeline, as after a worker restart, sees the batch again.
    again = IngestPipeline().ingest(stream="sim", fmt="sim", records=records, detect=False)
    assert again.quotes == 0
    assert Quote.objects.count() == 3


@pytest.mark.django_db
def test_it_quarantines_bad_messages_with_their_reason_and_keeps_the_good_ones(instrument, redis_clean):
    records = [
        (1, T0, sim_quote(0)),
        (2, T0, b"\x00garbage{"),
        (3, T0 + 2_000_000, sim_quote(2, bid="101", ask="100")),  # crossed
        (4, T0 + 3_000_000, sim_quote(3, symbol="NOPE")),
        (5, T0 + 4_000_000, sim_quote(4)),
    ]
    result = IngestPipeline().ingest(stream="sim", fmt="sim", records=records, detect=False)
    assert result.quotes == 2
    assert result.quarantined == 3
    rows = {q.raw_seq: q for q in QuarantinedMessage.objects.all()}
    assert set(rows) == {2, 3, 4}
    assert rows[3].code == "crossed_book"
    assert rows[4].code == "unknown_symbol"
    assert rows[2].reason  # the parser's reason is kept verbatim
    assert rows[2].raw_stream == "sim"


@pytest.mark.django_db
def test_it_ingests_every_tardis_quote_row_and_estimates_the_clock(redis_clean):
    Instrument.objects.create(symbol="BTCUSDT", tick_size=Decimal("0.01"), lot_size=Decimal("0.001"))
    path = DATA / "tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv"
    records = [(i + 1, recv or 0, payload) for i, (payload, recv) in enumerate(iter_file_records("tardis-quotes", path))]
    pipeline = IngestPipeline()
    for start in range(0, len(records), 2000):
        pipeline.ingest(stream="file-tardis-quotes", fmt="tardis-quotes", records=records[start : start + 2000], detect=False)
    lines = path.read_text().splitlines()[1:]
    assert Quote.objects.filter(symbol="BTCUSDT").count() == len(lines) == 9999
    first, last = lines[0].split(","), lines[-1].split(",")
    first_row = Quote.objects.get(raw_stream="file-tardis-quotes", raw_seq=1)
    last_row = Quote.objects.get(raw_stream="file-tardis-quotes", raw_seq=len(lines))
    assert (first_row.ask_size, first_row.ask, first_row.bid, first_row.bid_size) == tuple(Decimal(x) for x in first[4:8])
    assert (last_row.ask_size, last_row.ask, last_row.bid, last_row.bid_size) == tuple(Decimal(x) for x in last[4:8])
    # Partitioned by day: the rows live in the 2020-02-22 partition.
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ingestion_quote_p20200222")
        assert cursor.fetchone()[0] == 9999
    clock = ClockSource.objects.get(source="file-tardis-quotes")
    lags_ms = sorted((int(r.split(",")[3]) - int(r.split(",")[2])) / 1000 for r in lines)
    # The estimator's baseline is the minimum lag over its window (1000 samples),
    # so it can't be below the whole file's minimum; every row lags > 100 ms,
    # so the drift alert stands.
    assert clock.baseline_ms >= lags_ms[0]
    assert clock.drift_alert is True
    print(
        json.dumps(
            {
                "tardis_lag_ms": {"min": lags_ms[0], "median": lags_ms[len(lags_ms) // 2], "max": lags_ms[-1]},
                "estimate": {"baseline_ms": clock.baseline_ms, "offset_ms": clock.offset_ms},
            }
        )
    )


@pytest.mark.django_db
def test_it_keeps_the_l2_book_from_bybit_and_publishes_its_top(redis_clean):
    Instrument.objects.create(symbol="XRPUSDT", tick_size=Decimal("0.0001"), lot_size=Decimal("1"))
    path = DATA / "bybit_XRPUSDT_ob500_2024-12-01.data"
    # The file keeps no receive time: take the venue's plus 50 ms.
    records = [
        (i + 1, json.loads(payload)["ts"] * 1_000_000 + 50_000_000, payload)
        for i, (payload, _) in enumerate(iter_file_records("bybit-ob", path))
    ]
    result = IngestPipeline().ingest(stream="file-bybit", fmt="bybit-ob", records=records, detect=False)
    assert result.book_updates == 50
    # Rebuild the book independently from the file with plain dicts.
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    for line in path.read_text().splitlines():
        msg = json.loads(line)
        if msg["type"] == "snapshot":
            bids.clear()
            asks.clear()
        for side, levels in ((bids, msg["data"]["b"]), (asks, msg["data"]["a"])):
            for price, size in levels:
                if Decimal(size) == 0:
                    side.pop(Decimal(price), None)
                else:
                    side[Decimal(price)] = Decimal(size)
    snap = book_snapshot("XRPUSDT", 20)
    assert snap is not None
    assert list(snap.bids) == sorted(bids.items(), reverse=True)[:20]
    assert list(snap.asks) == sorted(asks.items())[:20]


def test_records_survive_the_celery_message_encoding():
    records = [(1, 10, b"\x00\xff{}"), (2, 11, b"plain")]
    assert decode_records(encode_records(records)) == records


@pytest.mark.django_db
def test_it_publishes_liquidity_per_symbol_and_flags_a_wide_thin_book(instrument, redis_clean):
    from ingestion.liquidity_store import latest_liquidity

    # Spread 100.0/101.0 is about 99.5 bps, far above the 10 bps default; top
    # notional 2 x 100 = 200 is far below 10,000.
    records = [(i + 1, T0 + i * 1_000_000, sim_quote(i, bid="100.0", ask="101.0")) for i in range(4)]
    IngestPipeline().ingest(stream="sim", fmt="sim", records=records, detect=False)
    state = latest_liquidity("SIM-A")
    assert state is not None
    assert state.spread_bps == pytest.approx((101.0 - 100.0) / 100.5 * 10_000)
    assert state.bid_notional == pytest.approx(200.0) and state.ask_notional == pytest.approx(303.0)
    assert state.quotes_in_window == 4
    assert state.wide_spread and state.thin_book and state.low_liquidity
    raw = json.loads(redis_clean.get("fp:liquidity:SIM-A"))
    assert raw["low_liquidity"] is True and [r.split(":")[0] for r in raw["reasons"]] == ["wide_spread", "thin_book"]


@pytest.mark.django_db
def test_a_value_the_column_cannot_hold_is_quarantined_and_the_rest_is_stored(instrument, redis_clean):
    records = [
        (1, T0, sim_quote(0)),
        # 1e18 passes validation (its exponent is in range) but overflows numeric(30, 12).
        (2, T0 + 1_000_000, sim_quote(1, bid="1000000000000000000", ask="1000000000000000001")),
        (3, T0 + 2_000_000, sim_quote(2, bid="100.2")),
    ]
    result = IngestPipeline().ingest(stream="sim", fmt="sim", records=records, detect=False)
    assert result.quotes == 2
    assert sorted(Quote.objects.values_list("raw_seq", flat=True)) == [1, 3]
    row = QuarantinedMessage.objects.get()
    assert (row.raw_seq, row.code) == (2, "unstorable")


@pytest.mark.django_db
def test_a_partly_stored_batch_delivered_again_stores_only_the_missing_rows(instrument, redis_clean):
    records = [(i + 1, T0 + i * 1_000_000, sim_quote(i, bid=f"99.{i}")) for i in range(6)]
    IngestPipeline().ingest(stream="sim", fmt="sim", records=records[:3], detect=False)
    # The redelivered batch clashes on the primary key and takes the ON CONFLICT path.
    result = IngestPipeline().ingest(stream="sim", fmt="sim", records=records, detect=False)
    assert result.quotes == 3
    assert sorted(Quote.objects.values_list("raw_seq", "bid")) == [(i + 1, Decimal(f"99.{i}")) for i in range(6)]

"""The small-batch path (``IngestPipeline._store_small``): one statement, same rows as the transaction path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import psycopg
import pytest
import redis.connection

from ingestion import services
from ingestion.models import ClockSource, Instrument, QuarantinedMessage, Quote, Trade
from ingestion.services import IngestPipeline, request_detection
from trading import redis_keys

T0 = 1_700_000_000_000_000_000


def sim_quote(i: int, bid: str = "100.0", symbol: str = "SIM-A", ask: str = "100.5") -> bytes:
    return json.dumps(
        {
            "type": "quote",
            "symbol": symbol,
            "ts_ns": T0 + i * 1_000_000,
            "bid": bid,
            "bid_size": "2.50",
            "ask": ask,
            "ask_size": "3",
        }
    ).encode()


def sim_trade(i: int, trade_id: str, symbol: str = "SIM-A") -> bytes:
    return json.dumps(
        {
            "type": "trade",
            "symbol": symbol,
            "ts_ns": T0 + i * 1_000_000,
            "price": "100.25",
            "size": "0.001",
            "side": "buy",
            "id": trade_id,
        }
    ).encode()


@pytest.fixture
def instrument(db):
    Instrument.objects.create(symbol="SIM-B", tick_size=Decimal("0.1"), lot_size=Decimal("1"))
    return Instrument.objects.create(symbol="SIM-A", tick_size=Decimal("0.1"), lot_size=Decimal("1"))


def _warm(pipeline: IngestPipeline, stream: str) -> None:
    # The first batch of a day creates (or finds) its partition through the transaction path;
    # later ones know it exists and may take the one-statement path.
    warm = [(1000, T0, sim_quote(0)), (1001, T0, sim_trade(0, "1"))]
    pipeline.ingest(stream=stream, fmt="sim", records=warm, detect=False, publish=False)


def _rows(stream: str) -> list[tuple[object, ...]]:
    quotes = list(
        Quote.objects.filter(raw_stream=stream)
        .order_by("raw_seq")
        .values_list("raw_seq", "symbol", "source_ts", "recv_ts", "bid", "bid_size", "ask", "ask_size")
    )
    trades = list(
        Trade.objects.filter(raw_stream=stream)
        .order_by("raw_seq")
        .values_list("raw_seq", "symbol", "source_ts", "recv_ts", "price", "size", "aggressor", "trade_id")
    )
    return quotes + trades


def _records() -> list[tuple[int, int, bytes]]:
    return [
        (1, T0 + 5_123_456, sim_quote(1, bid="100.1")),
        (2, T0 + 6_000_001, sim_quote(2, bid="99.999999999999", symbol="SIM-B")),
        (3, T0 + 7_000_000, sim_trade(3, "123456")),
        (4, T0 + 8_000_000, sim_trade(4, "tr\\ade\tid")),  # escaped in COPY text, verbatim in the row
    ]


@contextmanager
def _statements_sent() -> Iterator[list[str]]:
    """Every statement sent, through Django's cursors or a plain psycopg cursor (the prepared ones)."""
    sent: list[str] = []
    execute = psycopg.Cursor.execute

    def recording(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(str(query))
        return execute(self, query, params, **kwargs)

    psycopg.Cursor.execute = recording  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]


@pytest.mark.django_db
def test_the_one_statement_path_stores_the_same_rows_as_the_transaction_path(instrument, redis_clean, monkeypatch):
    fast = IngestPipeline()
    _warm(fast, "small-fast")
    with _statements_sent() as sent:
        got = fast.ingest(stream="small-fast", fmt="sim", records=_records(), detect=False)
    statements = [sql for sql in sent if not sql.startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) == 1 and statements[0].startswith("WITH t0 AS (INSERT INTO ingestion_quote_p2023")

    monkeypatch.setattr(services, "SMALL_BATCH", 0)  # every batch through the transaction and COPY
    reference = IngestPipeline()
    _warm(reference, "small-ref")
    want = reference.ingest(stream="small-ref", fmt="sim", records=_records(), detect=False)

    assert (
        got.as_dict()
        == want.as_dict()
        == {"records": 4, "quotes": 2, "trades": 2, "book_updates": 0, "quarantined": 0, "symbols": ["SIM-A", "SIM-B"]}
    )
    assert _rows("small-fast") == _rows("small-ref")
    assert list(
        Trade.objects.filter(raw_stream="small-fast", raw_seq__lt=1000).order_by("raw_seq").values_list("trade_id", flat=True)
    ) == ["123456", "tr\\ade\tid"]
    assert Quote.objects.get(raw_stream="small-fast", raw_seq=2).bid == Decimal("99.999999999999")
    fast_clock = ClockSource.objects.get(source="small-fast")
    ref_clock = ClockSource.objects.get(source="small-ref")
    assert (fast_clock.samples, fast_clock.offset_ms, fast_clock.baseline_ms) == (
        ref_clock.samples,
        ref_clock.offset_ms,
        ref_clock.baseline_ms,
    )


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_it_is_one_autocommitted_statement_and_redelivery_adds_nothing(instrument, redis_clean):
    pipeline = IngestPipeline()
    _warm(pipeline, "small-auto")
    records = _records()
    with _statements_sent() as sent:
        first = pipeline.ingest(stream="small-auto", fmt="sim", records=records, detect=False)
    assert [sql[:4] for sql in sent] == ["WITH"]
    assert (first.quotes, first.trades) == (2, 2)
    # Redelivered to a fresh worker (its validator has not seen the ticks): nothing new.
    again = IngestPipeline()
    _warm(again, "small-auto")
    second = again.ingest(stream="small-auto", fmt="sim", records=records, detect=False)
    assert (second.quotes, second.trades) == (0, 0)
    assert len(_rows("small-auto")) == 6
    assert ClockSource.objects.get(source="small-auto").samples >= 4


@pytest.mark.django_db(transaction=True)
def test_a_value_postgres_refuses_sends_the_batch_the_checked_way(instrument, redis_clean):
    pipeline = IngestPipeline()
    _warm(pipeline, "small-bad")
    records = [
        (1, T0 + 1_000_000, sim_quote(1)),
        # Passes validation, overflows numeric(30, 12): the statement fails as a whole.
        (2, T0 + 2_000_000, sim_quote(2, bid="1000000000000000000", ask="1000000000000000001")),
    ]
    result = pipeline.ingest(stream="small-bad", fmt="sim", records=records, detect=False)
    assert (result.quotes, result.quarantined) == (1, 1)
    assert sorted(Quote.objects.filter(raw_stream="small-bad").values_list("raw_seq", flat=True)) == [1, 1000]
    assert result.trades == 0
    assert QuarantinedMessage.objects.get(raw_stream="small-bad").code == "unstorable"


@pytest.mark.django_db(transaction=True)
def test_detection_is_asked_after_the_quote_is_published_in_one_round_trip(instrument, redis_clean, monkeypatch):
    sent: list[tuple[str, list[object]]] = []
    monkeypatch.setattr(services.current_app, "send_task", lambda name, args=None, **kw: sent.append((name, args)))
    pipeline = IngestPipeline()
    _warm(pipeline, "small-detect")
    pipeline.ingest(stream="small-detect", fmt="sim", records=[(1, T0 + 1_000_000, sim_quote(1, bid="100.3"))])
    assert [args for _name, args in sent] == [[["SIM-A"]]]
    assert json.loads(redis_clean.get(redis_keys.quote("SIM-A")))["bid"] == "100.3"
    assert redis_clean.exists(redis_keys.detect_pending("SIM-A")) == 1
    # Coalesced while the pass is pending; the pipeline's other commands still go, in one round trip.
    round_trips: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counting_send(self, command, check_health=True):  # type: ignore[no-untyped-def]
        round_trips.append(1)
        return send(self, command, check_health)

    with monkeypatch.context() as patch:
        patch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting_send)
        pipeline.ingest(stream="small-detect", fmt="sim", records=[(2, T0 + 2_000_000, sim_quote(2, bid="100.4"))])
    assert len(round_trips) == 1
    assert len(sent) == 1
    assert json.loads(redis_clean.get(redis_keys.quote("SIM-A")))["bid"] == "100.4"
    assert request_detection([]) == []


@pytest.mark.django_db(transaction=True)
def test_the_ingest_task_stores_a_single_tick(instrument, redis_clean, monkeypatch):
    from ingestion.services import encode_records
    from ingestion.tasks import ingest_batch_task

    monkeypatch.setattr(services, "_pipeline", None)  # a fresh worker pipeline
    monkeypatch.setattr(services.current_app, "send_task", lambda *a, **kw: None)
    for seq in (1, 2, 2):  # the last one redelivered
        ingest_batch_task("small-task", "sim", encode_records([(seq, T0 + seq * 1_000_000, sim_quote(seq))]))
    assert list(Quote.objects.filter(raw_stream="small-task").order_by("raw_seq").values_list("raw_seq", flat=True)) == [1, 2]

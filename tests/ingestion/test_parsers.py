"""Parsers against the recorded files, read independently with csv/json here."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion.parsers import FORMATS, ParseError, iter_file_records, parse
from ingestion.types import BookUpdate, QuoteTick, RawRef, Side, TradeTick

DATA = Path("/work/shared/data")
QUOTES = DATA / "tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv"
TRADES = DATA / "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv"
BYBIT = DATA / "bybit_XRPUSDT_ob500_2024-12-01.data"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _parse_file(fmt: str, path: Path) -> list:
    ticks = []
    for seq, (record, recv) in enumerate(iter_file_records(fmt, path)):
        ticks.extend(parse(fmt, record, recv_ns=recv or 7, raw=RawRef("s", seq)))
    return ticks


# --------------------------------------------------------------------------
# Recorded files
# --------------------------------------------------------------------------


def test_it_parses_every_tardis_quote_row_into_one_exact_quote():
    rows = _csv_rows(QUOTES)
    ticks = _parse_file("tardis-quotes", QUOTES)

    assert len(rows) == 9999
    assert len(ticks) == len(rows)
    assert all(type(t) is QuoteTick for t in ticks)
    for row, tick in ((rows[0], ticks[0]), (rows[-1], ticks[-1])):
        assert tick.symbol == row["symbol"]
        assert tick.source_ts_ns == int(row["timestamp"]) * 1000
        assert tick.recv_ts_ns == int(row["local_timestamp"]) * 1000
        assert tick.bid == Decimal(row["bid_price"])
        assert tick.bid_size == Decimal(row["bid_amount"])
        assert tick.ask == Decimal(row["ask_price"])
        assert tick.ask_size == Decimal(row["ask_amount"])
    # The file's own first row, spelled out: exact decimals, no float noise.
    assert ticks[0].bid == Decimal("9681.92")
    assert str(ticks[0].ask) == "9682"
    assert ticks[-1].raw == RawRef("s", 9998)


def test_it_uses_the_recorders_clock_not_the_replay_time_for_tardis_rows():
    record = next(iter_file_records("tardis-quotes", QUOTES))[0]
    first = _csv_rows(QUOTES)[0]

    tick = parse("tardis-quotes", record, recv_ns=123)[0]

    assert tick.recv_ts_ns == int(first["local_timestamp"]) * 1000


def test_it_parses_every_tardis_trade_row_with_its_aggressor_and_id():
    rows = _csv_rows(TRADES)
    ticks = _parse_file("tardis-trades", TRADES)

    assert len(ticks) == len(rows) == 9999
    for row, tick in ((rows[0], ticks[0]), (rows[-1], ticks[-1])):
        assert type(tick) is TradeTick
        assert tick.trade_id == row["id"]
        assert tick.aggressor == Side(row["side"])
        assert tick.price == Decimal(row["price"])
        assert tick.size == Decimal(row["amount"])
        assert tick.source_ts_ns == int(row["timestamp"]) * 1000
        assert tick.recv_ts_ns == int(row["local_timestamp"]) * 1000
    buys = sum(1 for row in rows if row["side"] == "buy")
    assert sum(1 for t in ticks if t.aggressor is Side.BUY) == buys


def test_it_splits_csv_records_byte_exact_without_header_or_newline():
    lines = QUOTES.read_bytes().split(b"\n")
    records = [record for record, _ in iter_file_records("tardis-quotes", QUOTES)]

    assert records[0] == lines[1]
    assert records[-1] == lines[-2]
    assert len(records) == len(lines) - 2  # the header and the empty string after the final newline


def test_it_parses_the_bybit_file_into_one_snapshot_and_49_deltas():
    messages = [json.loads(line) for line in BYBIT.read_text().splitlines()]
    ticks = _parse_file("bybit-ob", BYBIT)

    assert len(ticks) == len(messages) == 50
    assert all(type(t) is BookUpdate for t in ticks)
    assert [t.is_snapshot for t in ticks] == [True] + [False] * 49
    snapshot = ticks[0]
    assert len(snapshot.bids) == len(messages[0]["data"]["b"]) == 500
    assert len(snapshot.asks) == len(messages[0]["data"]["a"]) == 500
    assert snapshot.bids[0] == (Decimal(messages[0]["data"]["b"][0][0]), Decimal(messages[0]["data"]["b"][0][1]))
    assert snapshot.source_ts_ns == messages[0]["ts"] * 1_000_000
    last, last_msg = ticks[-1], messages[-1]
    assert last.asks[-1] == tuple(Decimal(x) for x in last_msg["data"]["a"][-1])
    assert last.asks[-1][1] == 0  # a removal is kept as size 0
    assert last.last_update_id == last_msg["data"]["u"]
    assert last.prev_last_update_id == messages[-2]["data"]["u"]
    assert last.symbol == "XRPUSDT"


def test_it_strips_crlf_from_bybit_json_lines():
    raw_lines = BYBIT.read_bytes().split(b"\r\n")
    records = [record for record, _ in iter_file_records("bybit-ob", BYBIT)]

    assert records[0] == raw_lines[0]
    assert not any(r.endswith(b"\r") for r in records)


def test_it_refuses_a_csv_file_whose_header_has_other_columns(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("exchange,symbol,timestamp,local_timestamp,bid_price,ask_price\nx,y,1,2,3,4\n")

    with pytest.raises(ParseError, match="^bad_header"):
        list(iter_file_records("tardis-quotes", path))


# --------------------------------------------------------------------------
# Binance USD-M
# --------------------------------------------------------------------------

BOOK_TICKER = (
    b'{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":400900217,"E":1568014460893,'
    b'"T":1568014460891,"s":"BTCUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}}'
)


def test_it_reads_binance_book_ticker_with_transaction_time_as_source():
    tick = parse("binance-ws", BOOK_TICKER, recv_ns=1568014460999000000)[0]

    assert tick == QuoteTick(
        symbol="BTCUSDT",
        source_ts_ns=1568014460891 * 1_000_000,
        recv_ts_ns=1568014460999000000,
        bid=Decimal("25.35190000"),
        bid_size=Decimal("31.21000000"),
        ask=Decimal("25.36520000"),
        ask_size=Decimal("40.66000000"),
    )


def test_it_reads_binance_trades_with_the_maker_flag_as_the_aggressor():
    agg = (
        b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":123456789,"s":"BTCUSDT","a":5933014,'
        b'"p":"0.001","q":"100","f":100,"l":105,"T":123456785,"m":true}}'
    )
    trade = (
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":123456789,"T":123456788,"s":"BTCUSDT",'
        b'"t":12345,"p":"0.001","q":"100","X":"MARKET","m":false}}'
    )

    agg_tick = parse("binance-ws", agg, recv_ns=5)[0]
    trade_tick = parse("binance-ws", trade, recv_ns=5)[0]

    # The buyer was the maker, so the seller crossed the spread.
    assert agg_tick.aggressor is Side.SELL
    assert agg_tick.trade_id == "5933014"
    assert agg_tick.source_ts_ns == 123456785 * 1_000_000
    assert trade_tick.aggressor is Side.BUY
    assert trade_tick.trade_id == "12345"
    assert trade_tick.price == Decimal("0.001")


def test_it_reads_binance_depth_updates_with_their_sequence_links():
    depth = (
        b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":123456789,"T":123456788,'
        b'"s":"BTCUSDT","U":157,"u":160,"pu":149,"b":[["0.0024","10"]],"a":[["0.0026","100"],["0.0027","0"]]}}'
    )

    tick = parse("binance-ws", depth, recv_ns=5)[0]

    assert (tick.first_update_id, tick.last_update_id, tick.prev_last_update_id) == (157, 160, 149)
    assert tick.is_snapshot is False
    assert tick.bids == ((Decimal("0.0024"), Decimal("10")),)
    assert tick.asks[1] == (Decimal("0.0027"), Decimal("0"))


def test_it_reads_a_binance_rest_depth_snapshot_for_the_given_symbol():
    rest = b'{"lastUpdateId":1027024,"E":1589436922972,"T":1589436922959,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}'

    tick = parse("binance-ws", rest, recv_ns=5, symbol="BTCUSDT")[0]

    assert tick.is_snapshot is True
    assert tick.symbol == "BTCUSDT"
    assert tick.last_update_id == 1027024
    assert tick.source_ts_ns == 1589436922959 * 1_000_000
    assert tick.asks == ((Decimal("4.00000200"), Decimal("12.00000000")),)
    with pytest.raises(ParseError, match="^missing_symbol"):
        parse("binance-ws", rest, recv_ns=5)


def test_it_splits_binance_recordings_into_json_and_receive_time(tmp_path):
    path = tmp_path / "binance.log"
    path.write_bytes(b"1568014460999000000 " + BOOK_TICKER + b"\n")

    records = list(iter_file_records("binance-ws", path))

    assert records == [(BOOK_TICKER, 1568014460999000000)]


def test_it_returns_nothing_for_a_binance_subscription_ack():
    assert parse("binance-ws", b'{"result":null,"id":1}', recv_ns=5) == []


# --------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------


def test_it_reads_the_simulator_quote_trade_and_book_messages():
    quote = b'{"type":"quote","symbol":"SIM-A","ts_ns":100,"bid":"99.5","bid_size":"3","ask":"100.5","ask_size":"2"}'
    trade = b'{"type":"trade","symbol":"SIM-A","ts_ns":101,"price":"100.5","size":"1","side":"buy","id":"T1"}'
    book = b'{"type":"book","symbol":"SIM-A","ts_ns":102,"snapshot":false,"bids":[["99.5","0"]],"asks":[],"seq":8}'

    q = parse("sim", quote, recv_ns=200)[0]
    t = parse("sim", trade, recv_ns=201)[0]
    b = parse("sim", book, recv_ns=202)[0]

    assert q == QuoteTick("SIM-A", 100, 200, Decimal("99.5"), Decimal("3"), Decimal("100.5"), Decimal("2"))
    assert t == TradeTick("SIM-A", 101, 201, Decimal("100.5"), Decimal("1"), Side.BUY, "T1")
    assert b.bids == ((Decimal("99.5"), Decimal("0")),)
    assert (b.last_update_id, b.prev_last_update_id, b.is_snapshot) == (8, 7, False)


def test_it_keeps_json_fractions_exact_in_simulator_messages():
    quote = b'{"type":"quote","symbol":"S","ts_ns":1,"bid":0.1,"bid_size":3,"ask":0.30000000000000004,"ask_size":"2"}'

    tick = parse("sim", quote, recv_ns=2)[0]

    assert tick.bid == Decimal("0.1")
    assert tick.ask == Decimal("0.30000000000000004")
    assert tick.bid_size == Decimal(3)


# --------------------------------------------------------------------------
# Malformed input
# --------------------------------------------------------------------------

GOOD_QUOTE_ROW = b"binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,9682,9681.92,0.67"


@pytest.mark.parametrize(
    ("fmt", "payload", "code"),
    [
        ("tardis-quotes", b"binance-futures,BTCUSDT,1582329601096000", "field_count"),
        ("tardis-quotes", GOOD_QUOTE_ROW.replace(b"9681.92", b"96x1.92"), "bad_bid_price"),
        ("tardis-quotes", GOOD_QUOTE_ROW.replace(b"1582329601096000", b"-158232960"), "bad_timestamp"),
        ("tardis-quotes", b"\xff\xfe" + GOOD_QUOTE_ROW, "bad_encoding"),
        ("tardis-trades", b"binance-futures,BTCUSDT,1,2,42,buy,abc,0.1", "bad_price"),
        ("tardis-trades", b"binance-futures,BTCUSDT,1,2,,buy,1,0.1", "bad_id"),
        ("bybit-ob", b'{"topic":"orderbook.500.XRPUSDT","type":"delta","ts":1,"data":{"s":"XRPUSDT"', "bad_json"),
        ("bybit-ob", b'{"type":"delta","ts":1,"data":{"s":"XRPUSDT","b":[["1"]],"a":[],"u":5,"seq":1}}', "bad_b"),
        ("bybit-ob", b'{"type":"partial","ts":1,"data":{}}', "unsupported_type"),
        ("binance-ws", b'{"stream":"x","data":{"e":"kline","s":"BTCUSDT"}}', "unsupported_event"),
        ("binance-ws", b'{"stream":"x","data":{"e":"aggTrade","s":"BTCUSDT","a":1,"p":"1","q":"1","T":1,"m":"yes"}}', "bad_m"),
        ("sim", b'{"type":"quote","symbol":"S","ts_ns":true,"bid":"1","bid_size":"1","ask":"2","ask_size":"1"}', "bad_ts_ns"),
        ("sim", b'{"type":"trade","symbol":"S","ts_ns":1,"price":"1","size":"1","side":"long","id":"a"}', "bad_side"),
        ("sim", b"[1, 2]", "bad_json"),
        ("nope", b"{}", "unknown_format"),
    ],
)
def test_it_raises_a_parse_error_with_a_coded_reason_for_malformed_records(fmt, payload, code):
    with pytest.raises(ParseError) as info:
        parse(fmt, payload, recv_ns=1)

    assert info.value.reason.split(":")[0] == code


def test_it_refuses_a_record_for_another_symbol_than_the_stream():
    with pytest.raises(ParseError, match="^symbol_mismatch"):
        parse("tardis-quotes", GOOD_QUOTE_ROW, recv_ns=1, symbol="ETHUSDT")


def test_it_reads_a_quoted_csv_row_like_the_plain_one():
    quoted = b'"binance-futures","BTCUSDT",1582329601096000,1582329603502092,"0.84",9682,9681.92,0.67'

    assert parse("tardis-quotes", quoted, recv_ns=1) == parse("tardis-quotes", GOOD_QUOTE_ROW, recv_ns=1)


def test_its_fast_constructor_builds_ticks_equal_to_the_dataclass_constructor():
    tick = parse("tardis-quotes", GOOD_QUOTE_ROW, recv_ns=1, raw=RawRef("q", 3))[0]
    expected = QuoteTick(
        symbol="BTCUSDT",
        source_ts_ns=1582329601096000000,
        recv_ts_ns=1582329603502092000,
        bid=Decimal("9681.92"),
        bid_size=Decimal("0.67"),
        ask=Decimal("9682"),
        ask_size=Decimal("0.84"),
        raw=RawRef("q", 3),
    )

    assert tick == expected
    assert hash(tick) == hash(expected)
    with pytest.raises(AttributeError):
        tick.bid = Decimal(1)  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(sorted(FORMATS)), payload=st.binary(max_size=300))
def test_it_raises_only_parse_error_on_arbitrary_bytes(fmt, payload):
    try:
        parse(fmt, payload, recv_ns=1)
    except ParseError as exc:
        assert exc.reason


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    fmt=st.sampled_from(["bybit-ob", "binance-ws", "sim"]),
    base=st.sampled_from(
        [
            {"type": "quote", "symbol": "S", "ts_ns": 1, "bid": "1", "bid_size": "1", "ask": "2", "ask_size": "1"},
            {"type": "delta", "ts": 1, "data": {"s": "S", "b": [], "a": [], "u": 2, "seq": 1}},
            {"stream": "x", "data": {"e": "depthUpdate", "s": "S", "U": 1, "u": 2, "b": [], "a": [], "T": 1}},
        ]
    ),
    key=st.sampled_from(["type", "symbol", "ts_ns", "bid", "data", "ts", "u", "b", "e", "s"]),
    value=_json_value,
)
def test_it_raises_only_parse_error_on_json_with_wrongly_typed_fields(fmt, base, key, value):
    message = dict(base)
    if "data" in message and isinstance(message["data"], dict) and key in message["data"]:
        message["data"] = {**message["data"], key: value}
    else:
        message[key] = value
    try:
        parse(fmt, json.dumps(message).encode(), recv_ns=1)
    except ParseError as exc:
        assert exc.reason

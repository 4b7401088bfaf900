"""Each validation rule produces its own reason code; good data passes."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from ingestion.parsers import iter_file_records, parse
from ingestion.types import BookUpdate, QuoteTick, Side, TradeTick
from ingestion.validation import REASON_CODES, Validator, reason_code

DATA = Path("/work/shared/data")
S = 1_000_000_000
T0 = 1_700_000_000 * S


def quote(bid="100", ask="101", *, ts=T0, recv=None, bid_size="1", ask_size="1", symbol="BTCUSDT"):
    return QuoteTick(
        symbol=symbol,
        source_ts_ns=ts,
        recv_ts_ns=ts + 10_000_000 if recv is None else recv,
        bid=Decimal(bid),
        bid_size=Decimal(bid_size),
        ask=Decimal(ask),
        ask_size=Decimal(ask_size),
    )


def trade(trade_id="1", *, price="100", size="1", ts=T0):
    return TradeTick("BTCUSDT", ts, ts + 10_000_000, Decimal(price), Decimal(size), Side.BUY, trade_id)


def book(bids, asks, *, snapshot=True, ts=T0, u=None):
    levels = lambda side: tuple((Decimal(p), Decimal(s)) for p, s in side)  # noqa: E731
    return BookUpdate("BTCUSDT", ts, ts + 1, snapshot, levels(bids), levels(asks), u, u, None)


@pytest.mark.parametrize(
    ("tick", "code"),
    [
        (quote(bid="0"), "non_positive_price"),
        (quote(ask="-1"), "non_positive_price"),
        (quote(bid="NaN"), "non_finite_price"),
        (quote(ask="Infinity"), "non_finite_price"),
        (quote(bid="sNaN"), "non_finite_price"),
        (quote(bid_size="0"), "non_positive_size"),
        (quote(ask_size="NaN"), "non_finite_size"),
        (trade(price="-5"), "non_positive_price"),
        (quote(ask="1e999999999"), "out_of_range"),
        (trade(size="1E-40"), "out_of_range"),
        (trade(size="0"), "non_positive_size"),
        (quote(bid="101", ask="100"), "crossed_book"),
        (quote(bid="100", ask="100"), "locked_book"),
        (book([("101", "1")], [("100", "1")]), "crossed_book"),
        (book([("100", "-1")], [("101", "1")]), "non_positive_size"),
        (quote(ts=T0 + 6 * S, recv=T0), "future_timestamp"),
        (quote(symbol="DOGEUSDT"), "unknown_symbol"),
    ],
)
def test_it_rejects_a_bad_tick_with_its_reason_code(tick, code):
    validator = Validator(known_symbols={"BTCUSDT"})

    reason = validator.check(tick)

    assert reason is not None
    assert reason_code(reason) == code
    assert code in REASON_CODES


def test_it_spells_out_the_crossed_prices_in_the_reason():
    assert Validator().check(quote(bid="101", ask="100")) == "crossed_book: bid 101 > ask 100"


def test_it_accepts_a_venue_clock_slightly_ahead_within_tolerance():
    validator = Validator()

    assert validator.check(quote(ts=T0 + 4 * S, recv=T0)) is None
    assert reason_code(Validator(future_tolerance_ns=S).check(quote(ts=T0 + 2 * S, recv=T0))) == "future_timestamp"


def test_it_rejects_a_quote_older_than_the_last_accepted_one_of_the_symbol():
    validator = Validator()
    assert validator.check(quote(ts=T0)) is None

    reason = validator.check(quote(bid="99", ts=T0 - 1_000_000))

    assert reason_code(reason) == "out_of_order"
    # Another symbol and another kind keep their own clocks.
    assert validator.check(quote(ts=T0 - 5 * S, symbol="ETHUSDT")) is None
    assert validator.check(trade(ts=T0 - 5 * S)) is None


def test_it_rejects_the_identical_quote_at_the_same_timestamp_but_not_a_changed_one():
    validator = Validator()
    assert validator.check(quote()) is None

    assert reason_code(validator.check(quote())) == "duplicate"
    assert validator.check(quote(bid_size="2")) is None


def test_it_rejects_a_repeated_trade_id_and_accepts_equal_timestamps():
    validator = Validator()
    assert validator.check(trade("1")) is None
    assert validator.check(trade("2")) is None

    assert reason_code(validator.check(trade("1"))) == "duplicate"
    assert reason_code(validator.check(trade("3", ts=T0 - 1))) == "out_of_order"


def test_it_forgets_trade_ids_beyond_its_memory():
    validator = Validator(trade_id_memory=2)
    for trade_id in ("1", "2", "3"):
        assert validator.check(trade(trade_id)) is None

    assert validator.check(trade("1")) is None
    assert reason_code(validator.check(trade("3"))) == "duplicate"


def test_it_rejects_a_book_delta_already_applied_and_lets_a_snapshot_restart_numbering():
    validator = Validator()
    assert validator.check(book([("100", "1")], [("101", "1")], u=10)) is None
    assert validator.check(book([("100", "0")], [], snapshot=False, u=11)) is None

    assert reason_code(validator.check(book([("100", "2")], [], snapshot=False, u=11))) == "duplicate"
    assert validator.check(book([("99", "1")], [("101", "1")], u=1)) is None


def test_it_does_not_remember_a_rejected_tick():
    validator = Validator()
    assert reason_code(validator.check(quote(bid="102", ts=T0 + S))) == "crossed_book"

    # The crossed quote was newer, but it was refused, so an older good one still passes.
    assert validator.check(quote(ts=T0)) is None


def test_it_accepts_every_recorded_tardis_quote_and_trade():
    for fmt, name in (
        ("tardis-quotes", "tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv"),
        ("tardis-trades", "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv"),
    ):
        validator = Validator(known_symbols={"BTCUSDT"})
        reasons = [
            validator.check(tick) for record, _ in iter_file_records(fmt, DATA / name) for tick in parse(fmt, record, recv_ns=0)
        ]
        assert [r for r in reasons if r is not None] == []
        assert len(reasons) == 9999


def test_it_accepts_the_recorded_bybit_book_stream():
    path = DATA / "bybit_XRPUSDT_ob500_2024-12-01.data"
    validator = Validator()

    reasons = [
        validator.check(tick)
        for record, _ in iter_file_records("bybit-ob", path)
        for tick in parse("bybit-ob", record, recv_ns=1733011200691000000 + 10 * S)
    ]

    assert reasons == [None] * 50

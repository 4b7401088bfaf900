"""The columnar ingest path gives exactly what the per-record path gives.

``tardis_columns`` against ``parse`` record by record, the validator's batch
checks against ``Validator.check`` tick by tick (random batches with every
bad case), the clock's and liquidity monitor's array updates against their
per-tick updates, and the pipeline's stored rows and quarantine against the
raw records.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion.clock import ClockEstimator
from ingestion.liquidity import LiquidityMonitor
from ingestion.parsers import iter_file_records, parse, tardis_columns
from ingestion.types import QuoteTick, TradeTick
from ingestion.validation import Validator

DATA = Path("/work/shared/data")
QUOTES = DATA / "tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv"
TRADES = DATA / "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv"
S = 1_000_000_000
T0 = 1_700_000_000 * S


def _records(fmt: str, path: Path) -> list[bytes]:
    return [payload for payload, _recv in iter_file_records(fmt, path)]


def _float(text: str) -> float:
    try:
        return float(Decimal(text))
    except ValueError:  # a signalling NaN has no float
        return math.nan


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("fmt", "path"), [("tardis-quotes", QUOTES), ("tardis-trades", TRADES)])
def test_the_columns_hold_the_same_ticks_as_parsing_record_by_record(fmt, path):
    payloads = _records(fmt, path)
    cols = tardis_columns(fmt, payloads)
    assert cols is not None

    ticks = [parse(fmt, payload, recv_ns=0)[0] for payload in payloads]

    assert cols.symbols == [t.symbol for t in ticks]
    assert cols.source_ns.tolist() == [t.source_ts_ns for t in ticks]
    assert cols.recv_ns.tolist() == [t.recv_ts_ns for t in ticks]
    if fmt == "tardis-quotes":
        fields = [[t.bid, t.bid_size, t.ask, t.ask_size] for t in ticks]
    else:
        fields = [[t.price, t.size] for t in ticks]
        assert cols.trade_ids == [t.trade_id for t in ticks]
        assert cols.aggressor == [t.aggressor.value if t.aggressor else "" for t in ticks]
    for k, column in enumerate(cols.texts):
        # The stored text is the venue's own, and it is the same number.
        assert [Decimal(text) for text in column] == [row[k] for row in fields]
        assert cols.values[k].tolist() == [float(row[k]) for row in fields]


GOOD = b"binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,9682,9681.92,0.67"


@pytest.mark.parametrize(
    "bad",
    [
        b'binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,"9682",9681.92,0.67',
        b"binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,+9682,9681.92,0.67",
        b"binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,9.6e3,9681.92,0.67",
        b"binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,NaN,9681.92,0.67",
        b"binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,96.8.2,9681.92,0.67",
        b"binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,,9681.92,0.67",
        b"binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,9682,9681.92",
        b"binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,9682,9681.92,0.67,1",
        b"binance-futures,,1582329601096000,1582329603502092,0.84,9682,9681.92,0.67",
        b"binance-futures,BTCUSDT,-1582329601096000,1582329603502092,0.84,9682,9681.92,0.67",
        b"binance-futures,BTCUSDT,99999999999999999999,1582329603502092,0.84,9682,9681.92,0.67",
        b"binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,9682,9681.92,0.67\n",
        b"binance-futures,BTC\tUSDT,1582329601096000,1582329603502092,0.84,9682,9681.92,0.67",
        "binance-futures,BTCÜSDT,1582329601096000,1582329603502092,0.84,9682,9681.92,0.67".encode(),
        b"binance-futures," + b"X" * 33 + b",1582329601096000,1582329603502092,0.84,9682,9681.92,0.67",
    ],
)
def test_a_batch_with_one_unusual_record_is_left_to_the_per_record_parser(bad):
    assert tardis_columns("tardis-quotes", [GOOD, GOOD]) is not None

    assert tardis_columns("tardis-quotes", [GOOD, bad, GOOD]) is None


def test_a_symbol_other_than_the_streams_is_left_to_the_per_record_parser():
    assert tardis_columns("tardis-quotes", [GOOD], symbol="BTCUSDT") is not None
    assert tardis_columns("tardis-quotes", [GOOD], symbol="ETHUSDT") is None
    trade = b"binance-futures,BTCUSDT,1582329602111000,1582329602418379,,buy,9682,0.132"
    assert tardis_columns("tardis-trades", [trade]) is None  # empty trade id


# ----------------------------------------------------------------------------- validation

PRICES = ["100", "100.5", "100.50", "101", "99.99", "0", "0.0", "-1", "NaN", "sNaN", "Infinity", "1E+30", "1E-40", "1e17"]
SIZES = ["1", "1.0", "2", "0.001", "0", "-3", "NaN", "1E-40", "1E+19"]
SYMBOLS = ["BTCUSDT", "ETHUSDT", "DOGEUSDT"]


@st.composite
def quote_rows(draw):
    n = draw(st.integers(1, 60))
    rows = []
    ts = T0
    for _ in range(n):
        ts += draw(st.sampled_from([0, 0, 1, 1000, -1000, -5]))
        bid = draw(st.sampled_from(PRICES))
        ask = draw(st.sampled_from([*PRICES, bid]))
        lead = draw(st.sampled_from([-10_000_000, 0, 6 * S]))
        rows.append(
            (draw(st.sampled_from(SYMBOLS)), ts, ts - lead, bid, draw(st.sampled_from(SIZES)), ask, draw(st.sampled_from(SIZES)))
        )
    # Repeat some rows verbatim, and some with the same numbers spelt differently.
    for _ in range(draw(st.integers(0, 5))):
        i = draw(st.integers(0, len(rows) - 1))
        j = draw(st.integers(0, len(rows)))
        row = rows[i]
        if draw(st.booleans()) and "." not in row[3] and row[3].isdigit():
            row = (*row[:3], row[3] + ".0", *row[4:])
        rows.insert(j, row)
    return rows


def _quote_columns(rows):
    symbols = [r[0] for r in rows]
    source = np.array([r[1] for r in rows], dtype=np.int64)
    recv = np.array([r[2] for r in rows], dtype=np.int64)
    texts = [[r[k] for r in rows] for k in (3, 4, 5, 6)]
    values = [np.array([_float(t) for t in column]) for column in texts]
    return symbols, source, recv, texts, values


def _quote_tick(row) -> QuoteTick:
    sym, ts, recv, bid, bid_size, ask, ask_size = row
    return QuoteTick(sym, ts, recv, Decimal(bid), Decimal(bid_size), Decimal(ask), Decimal(ask_size))


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(quote_rows(), min_size=1, max_size=3), known=st.booleans())
def test_the_quote_batch_check_gives_the_per_tick_verdicts_and_state(batches, known):
    symbols = {"BTCUSDT", "ETHUSDT"} if known else None
    one_by_one = Validator(known_symbols=symbols)
    batched = Validator(known_symbols=symbols)

    for rows in batches:
        expected = [one_by_one.check(_quote_tick(row)) for row in rows]
        reasons, latest = batched.check_quote_batch(*_quote_columns(rows))

        assert [reasons.get(i) for i in range(len(rows))] == expected
        accepted = {}
        for row, verdict in zip(rows, expected, strict=True):
            if verdict is None:
                accepted[row[0]] = _quote_tick(row)
        assert latest == accepted
    for sym in SYMBOLS:
        a, b = one_by_one._state.get(sym), batched._state.get(sym)
        assert (a.last_quote if a else None) == (b.last_quote if b else None)


@st.composite
def trade_rows(draw):
    n = draw(st.integers(1, 60))
    rows = []
    ts = T0
    for _ in range(n):
        ts += draw(st.sampled_from([0, 0, 1, 1000, -1000]))
        rows.append(
            (
                draw(st.sampled_from(SYMBOLS[:2])),
                ts,
                ts + draw(st.sampled_from([10_000_000, -6 * S])),
                draw(st.sampled_from(PRICES)),
                draw(st.sampled_from(SIZES)),
                str(draw(st.integers(1, 40))),
            )
        )
    return rows


def _trade_tick(row) -> TradeTick:
    sym, ts, recv, price, size, trade_id = row
    return TradeTick(sym, ts, recv, Decimal(price), Decimal(size), None, trade_id)


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(trade_rows(), min_size=1, max_size=4), memory=st.sampled_from([3, 10, 100_000]))
def test_the_trade_batch_check_gives_the_per_tick_verdicts_and_state(batches, memory):
    one_by_one = Validator(trade_id_memory=memory)
    batched = Validator(trade_id_memory=memory)

    for rows in batches:
        expected = [one_by_one.check(_trade_tick(row)) for row in rows]
        texts = [[r[3] for r in rows], [r[4] for r in rows]]
        reasons = batched.check_trade_batch(
            [r[0] for r in rows],
            np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.int64),
            texts,
            [np.array([_float(t) for t in column]) for column in texts],
            [r[5] for r in rows],
        )

        assert [reasons.get(i) for i in range(len(rows))] == expected
    for sym in SYMBOLS[:2]:
        # A symbol whose ticks were all refused may have an empty state on one side only.
        assert _trade_memory(one_by_one, sym) == _trade_memory(batched, sym)


def _trade_memory(validator: Validator, sym: str) -> tuple[object, ...]:
    state = validator._state.get(sym)
    if state is None:
        return (None, set(), [])
    return (state.last_trade_ts_ns, state.trade_ids, list(state.trade_id_order))


def test_the_batch_checks_accept_every_recorded_tardis_tick():
    for fmt, path in (("tardis-quotes", QUOTES), ("tardis-trades", TRADES)):
        cols = tardis_columns(fmt, _records(fmt, path))
        validator = Validator(known_symbols={"BTCUSDT"})
        if fmt == "tardis-quotes":
            reasons, latest = validator.check_quote_batch(cols.symbols, cols.source_ns, cols.recv_ns, cols.texts, cols.values)
            assert latest["BTCUSDT"].bid == Decimal(cols.texts[0][-1])
        else:
            reasons = validator.check_trade_batch(
                cols.symbols, cols.source_ns, cols.recv_ns, cols.texts, cols.values, cols.trade_ids
            )
        assert reasons == {}


# ----------------------------------------------------------------------------- clock and liquidity


@pytest.mark.parametrize("size", [1, 7, 300, 1000, 4000])
def test_the_clocks_array_update_gives_the_per_sample_state(size):
    rng = np.random.default_rng(size)
    source = np.cumsum(rng.integers(0, 5_000_000, 9000)).astype(np.int64) + T0
    recv = source + rng.integers(-200_000_000, 400_000_000, 9000)
    one_by_one = ClockEstimator(window=1000)
    batched = ClockEstimator(window=1000)

    for a, b in zip(source.tolist(), recv.tolist(), strict=True):
        expected = one_by_one.update(a, b)
    for i in range(0, len(source), size):
        state = batched.update_arrays(source[i : i + size], recv[i : i + size])

    assert state == expected
    assert (list(batched._lags), list(batched._mins), list(batched._diffs_sq)) == (
        list(one_by_one._lags),
        list(one_by_one._mins),
        list(one_by_one._diffs_sq),
    )
    assert (batched._sum, batched._sum_diff_sq, batched._index) == (one_by_one._sum, one_by_one._sum_diff_sq, one_by_one._index)
    assert batched.update_arrays(source[:0], recv[:0]) is None


def test_the_liquidity_array_update_gives_the_per_quote_state():
    cols = tardis_columns("tardis-quotes", _records("tardis-quotes", QUOTES))
    ticks = [parse("tardis-quotes", p, recv_ns=0)[0] for p in _records("tardis-quotes", QUOTES)]
    one_by_one = LiquidityMonitor(window_s=5.0)
    batched = LiquidityMonitor(window_s=5.0)
    bid, bid_size, ask, ask_size = cols.values

    for tick in ticks:
        expected = one_by_one.update(tick)
    for i in range(0, len(ticks), 700):
        part = slice(i, i + 700)
        state = batched.update_arrays(
            "BTCUSDT", cols.source_ns[part], bid[part], ask[part], bid_size[part], ask_size[part], last=ticks[part][-1]
        )

    assert state == expected


def test_the_column_timestamp_text_is_the_per_tick_text():
    from ingestion.services import _ts_texts, ns_to_datetime

    rng = np.random.default_rng(7)
    us = np.concatenate(
        [
            np.array([0, 951_782_400_000_000, 1_709_251_199_999_999, 8_999_999_999_999_999], dtype=np.int64),
            rng.integers(0, 9_000_000_000_000_000, 20_000),
        ]
    )

    expected = [ns_to_datetime(int(u) * 1000).strftime("%Y-%m-%d %H:%M:%S.%f+00") for u in us]

    assert _ts_texts(us) == expected

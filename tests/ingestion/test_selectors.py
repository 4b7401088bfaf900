from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from django.db import connection

from ingestion.selectors import (
    QUOTE_WINDOWS,
    TRADE_WINDOWS,
    quotes_frame,
    quotes_window,
    trades_frame,
    trades_window,
    windows_read,
)

pytestmark = pytest.mark.django_db

T0 = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
SYMBOL = "SEL-A"


@pytest.fixture(autouse=True)
def cold_cache():
    QUOTE_WINDOWS.clear()
    TRADE_WINDOWS.clear()
    yield
    QUOTE_WINDOWS.clear()
    TRADE_WINDOWS.clear()


def ts(i: int) -> datetime:
    # Microsecond steps plus a sub-millisecond part, so a rounding slip would show.
    return datetime.fromtimestamp((T0 + i * 1_000_123_000) / 1e9, tz=UTC)


def ts_ns(i: int) -> int:
    return T0 + i * 1_000_123_000


def add_quotes(seqs: list[int], symbol: str = SYMBOL, stream: str = "sel") -> None:
    """Quote i: bid 100 + i/100, ask bid + 0.05, sizes i + 0.5 and i + 0.25, at ts(i), raw_seq i."""
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO ingestion_quote (raw_stream, raw_seq, symbol, source_ts, recv_ts, bid, bid_size, ask, ask_size)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(stream, i, symbol, ts(i), ts(i), f"{100 + i / 100:.2f}", f"{i}.5", f"{100.05 + i / 100:.2f}", f"{i}.25") for i in seqs],
        )


def add_trades(seqs: list[int], symbol: str = SYMBOL) -> None:
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO ingestion_trade (raw_stream, raw_seq, symbol, source_ts, recv_ts, price, size, aggressor, trade_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [("sel", i, symbol, ts(i), ts(i), f"{200 + i}.5", f"0.{i}", "buy" if i % 2 else "sell", f"t{i}") for i in seqs],
        )


def expected_bids(seqs: range | list[int]) -> list[float]:
    return [float(f"{100 + i / 100:.2f}") for i in seqs]


def test_it_returns_the_last_quotes_oldest_first_with_the_contract_dtypes():
    add_quotes(list(range(1, 11)))

    frame = quotes_frame(SYMBOL, 4)

    assert list(frame.columns) == ["ts_ns", "bid", "ask", "bid_size", "ask_size"]
    assert frame["ts_ns"].dtype == np.int64
    assert all(frame[c].dtype == np.float64 for c in ("bid", "ask", "bid_size", "ask_size"))
    assert list(frame["ts_ns"]) == [ts_ns(i) for i in (7, 8, 9, 10)]
    assert list(frame["bid"]) == expected_bids([7, 8, 9, 10])
    assert list(frame["ask_size"]) == [7.25, 8.25, 9.25, 10.25]


def test_it_returns_trades_with_their_aggressor_side_as_text():
    add_trades([1, 2, 3])

    frame = trades_frame(SYMBOL, 2)

    assert list(frame.columns) == ["ts_ns", "price", "size", "side"]
    assert frame["ts_ns"].dtype == np.int64 and frame["price"].dtype == np.float64
    assert list(frame["price"]) == [202.5, 203.5]
    assert list(frame["size"]) == [0.2, 0.3]
    assert list(frame["side"]) == ["sell", "buy"]


def test_it_returns_empty_frames_with_the_contract_columns_for_an_unknown_symbol():
    quotes, trades = quotes_frame("NOPE", 5), trades_window("NOPE", 5)
    assert quotes.empty and list(quotes.columns) == ["ts_ns", "bid", "ask", "bid_size", "ask_size"]
    assert trades.empty and list(trades.columns) == ["ts_ns", "price", "size", "side"]


def test_it_serves_appended_quotes_incrementally_and_equal_to_a_full_load():
    add_quotes(list(range(1, 21)))
    first = quotes_window(SYMBOL, 5)
    assert list(first["bid"]) == expected_bids(range(16, 21))

    add_quotes([21, 22, 23])
    second = quotes_window(SYMBOL, 5)

    assert list(second["bid"]) == expected_bids(range(19, 24))
    assert list(second["ts_ns"]) == [ts_ns(i) for i in range(19, 24)]
    assert second.equals(quotes_frame(SYMBOL, 5))
    assert (QUOTE_WINDOWS.full_loads, QUOTE_WINDOWS.incremental_loads) == (1, 1)


def test_it_serves_a_smaller_window_from_a_larger_cached_one():
    add_quotes(list(range(1, 31)))
    quotes_window(SYMBOL, 20)
    add_quotes([31])

    small = quotes_window(SYMBOL, 3)

    assert list(small["bid"]) == expected_bids([29, 30, 31])
    assert QUOTE_WINDOWS.full_loads == 1


def test_it_reloads_in_full_when_a_quote_lands_behind_the_cached_tail():
    # Quote 8 commits late (another ingest transaction): it sorts inside the window.
    add_quotes([*range(1, 8), *range(9, 13)])
    quotes_window(SYMBOL, 6)
    add_quotes([8, 13])

    window = quotes_window(SYMBOL, 6)

    assert list(window["bid"]) == expected_bids(range(8, 14))
    assert QUOTE_WINDOWS.full_loads == 2


def test_it_reloads_when_an_older_quote_arrives_while_the_window_holds_the_whole_history():
    add_quotes([5, 6, 7])
    assert len(quotes_window(SYMBOL, 10)) == 3
    add_quotes([2])

    window = quotes_window(SYMBOL, 10)

    assert list(window["bid"]) == expected_bids([2, 5, 6, 7])


def test_it_reloads_when_more_than_a_window_of_quotes_arrived():
    add_quotes(list(range(1, 6)))
    quotes_window(SYMBOL, 4)
    add_quotes(list(range(6, 16)))

    window = quotes_window(SYMBOL, 4)

    assert list(window["bid"]) == expected_bids(range(12, 16))
    assert QUOTE_WINDOWS.full_loads == 2


def test_it_reloads_in_full_when_a_larger_window_is_asked_for():
    add_quotes(list(range(1, 11)))
    quotes_window(SYMBOL, 3)

    window = quotes_window(SYMBOL, 8)

    assert list(window["bid"]) == expected_bids(range(3, 11))
    assert QUOTE_WINDOWS.full_loads == 2


def test_it_keeps_symbols_apart_and_extends_trades_incrementally():
    add_trades([1, 2, 3])
    add_quotes([1, 2], symbol="SEL-B")
    trades_window(SYMBOL, 3)
    add_trades([4])

    trades = trades_window(SYMBOL, 3)

    assert list(trades["price"]) == [202.5, 203.5, 204.5]
    assert list(trades["side"]) == ["sell", "buy", "sell"]
    assert trades.equals(trades_frame(SYMBOL, 3))
    assert TRADE_WINDOWS.incremental_loads == 1
    assert quotes_window(SYMBOL, 3).empty


def test_it_reads_both_windows_and_the_callers_rows_in_one_batch_equal_to_full_loads(monkeypatch):
    from ingestion import selectors

    batches: list[int] = []
    real = selectors._prepared_many
    monkeypatch.setattr(selectors, "_prepared_many", lambda statements: batches.append(len(statements)) or real(statements))
    add_quotes(list(range(1, 11)))
    add_trades([1, 2, 3, 4])
    windows_read(SYMBOL, quotes=5, trades=3)
    add_quotes([11, 12])
    add_trades([5])

    windows = windows_read(SYMBOL, quotes=5, trades=3, extra=[("SELECT %s::int + 1", [41])])

    assert batches == [2, 3]
    assert list(windows.quotes["bid"]) == expected_bids(range(8, 13))
    assert windows.quotes.equals(quotes_frame(SYMBOL, 5))
    assert list(windows.trades["price"]) == [203.5, 204.5, 205.5]
    assert windows.trades.equals(trades_frame(SYMBOL, 3))
    assert windows.extra == [[(42,)]]
    assert (QUOTE_WINDOWS.incremental_loads, TRADE_WINDOWS.incremental_loads) == (1, 1)


def test_it_reloads_a_window_in_full_within_the_same_read_when_a_row_landed_behind_the_tail():
    add_quotes([*range(1, 8), *range(9, 13)])
    add_trades([1, 2])
    windows_read(SYMBOL, quotes=6, trades=2)
    add_quotes([8, 13])

    windows = windows_read(SYMBOL, quotes=6, trades=2)

    assert list(windows.quotes["bid"]) == expected_bids(range(8, 14))
    assert list(windows.trades["price"]) == [201.5, 202.5]
    assert (QUOTE_WINDOWS.full_loads, TRADE_WINDOWS.full_loads) == (2, 1)


def test_it_skips_a_window_that_is_not_asked_for():
    add_quotes([1, 2])

    windows = windows_read(SYMBOL, quotes=2)

    assert windows.trades is None and len(windows.quotes) == 2
    assert TRADE_WINDOWS.full_loads == 0 and TRADE_WINDOWS.incremental_loads == 0

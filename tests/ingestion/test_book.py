from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from ingestion.book import BinanceBookSync, BookError, BybitBookSync, OrderBook
from ingestion.types import BookUpdate

BYBIT_FILE = Path("/work/shared/data/bybit_XRPUSDT_ob500_2024-12-01.data")
D = Decimal


def _levels(rows: list[tuple[str, str]]) -> tuple[tuple[Decimal, Decimal], ...]:
    return tuple((D(p), D(s)) for p, s in rows)


def _update(
    bids: list[tuple[str, str]] = (),  # type: ignore[assignment]
    asks: list[tuple[str, str]] = (),  # type: ignore[assignment]
    *,
    snapshot: bool = False,
    symbol: str = "X",
    first: int | None = None,
    last: int | None = None,
    prev: int | None = None,
    ts: int = 1,
) -> BookUpdate:
    return BookUpdate(
        symbol=symbol,
        source_ts_ns=ts,
        recv_ts_ns=ts,
        is_snapshot=snapshot,
        bids=_levels(list(bids)),
        asks=_levels(list(asks)),
        first_update_id=first,
        last_update_id=last,
        prev_last_update_id=prev,
    )


def _bybit_messages() -> list[dict]:
    return [json.loads(line) for line in BYBIT_FILE.read_text().splitlines() if line.strip()]


def _bybit_update(msg: dict) -> BookUpdate:
    data = msg["data"]
    return BookUpdate(
        symbol=data["s"],
        source_ts_ns=msg["ts"] * 1_000_000,
        recv_ts_ns=msg["ts"] * 1_000_000,
        is_snapshot=msg["type"] == "snapshot",
        bids=tuple((D(p), D(s)) for p, s in data["b"]),
        asks=tuple((D(p), D(s)) for p, s in data["a"]),
        last_update_id=data["u"],
    )


def _expected_bybit_book() -> tuple[dict[str, str], dict[str, str]]:
    """Plain-dict replay of the recording, on strings, independent of OrderBook."""
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    for msg in _bybit_messages():
        if msg["type"] == "snapshot":
            bids, asks = {}, {}
        for side, rows in ((bids, msg["data"]["b"]), (asks, msg["data"]["a"])):
            for price, size in rows:
                if float(size) == 0.0:
                    side.pop(price, None)
                else:
                    side[price] = size
    return bids, asks


def test_it_rebuilds_the_recorded_bybit_book_from_snapshot_and_49_deltas() -> None:
    messages = _bybit_messages()
    assert [m["type"] for m in messages].count("snapshot") == 1
    assert len(messages) == 50
    sync = BybitBookSync("XRPUSDT", tick_size=D("0.0001"))
    for msg in messages:
        assert sync.on_update(_bybit_update(msg)) is True
    expected_bids, expected_asks = _expected_bybit_book()

    book = sync.book
    assert book.bids == {D(p): D(s) for p, s in expected_bids.items()}
    assert book.asks == {D(p): D(s) for p, s in expected_asks.items()}
    assert sync.gaps == 0
    assert book.last_update_id == messages[-1]["data"]["u"]
    assert book.best_bid is not None and book.best_ask is not None
    assert book.best_bid < book.best_ask
    assert not book.is_crossed
    # The best levels agree with a plain max/min over the independent dicts.
    assert book.best_bid == max(D(p) for p in expected_bids)
    assert book.best_ask == min(D(p) for p in expected_asks)


def test_it_returns_the_top_levels_best_first_in_a_snapshot() -> None:
    sync = BybitBookSync("XRPUSDT")
    for msg in _bybit_messages():
        sync.on_update(_bybit_update(msg))
    expected_bids, expected_asks = _expected_bybit_book()
    snap = sync.book.snapshot(5)

    top_bids = sorted(((D(p), D(s)) for p, s in expected_bids.items()), reverse=True)[:5]
    top_asks = sorted((D(p), D(s)) for p, s in expected_asks.items())[:5]
    assert snap.bids == tuple(top_bids)
    assert snap.asks == tuple(top_asks)
    assert snap.symbol == "XRPUSDT"
    assert snap.best_bid == top_bids[0][0]
    assert snap.mid == (top_bids[0][0] + top_asks[0][0]) / 2
    assert snap.meta["levels_bid"] == str(len(expected_bids))


def test_it_replaces_the_book_on_a_snapshot_and_removes_levels_with_size_zero() -> None:
    book = OrderBook("X")
    book.apply(_update([("100", "1"), ("99", "2")], [("101", "3")], snapshot=True))
    book.apply(_update([("99", "0"), ("98", "5"), ("50", "0")], [("102", "4")]))
    assert book.bids == {D("100"): D("1"), D("98"): D("5")}
    assert book.asks == {D("101"): D("3"), D("102"): D("4")}
    book.apply(_update([("10", "1")], [("11", "1")], snapshot=True))
    assert book.bids == {D("10"): D("1")}
    assert book.asks == {D("11"): D("1")}
    assert book.top_bids(10) == [(D("10"), D("1"))]


def test_it_computes_microprice_imbalance_and_depth_notional_exactly() -> None:
    book = OrderBook("X")
    book.apply(_update([("100", "3"), ("99", "1")], [("102", "1"), ("103", "5")], snapshot=True))
    # Microprice leans to the ask because the ask is thin: (100*1 + 102*3) / 4.
    assert book.microprice() == D("101.5")
    assert book.mid == D("101")
    assert book.spread == D("2")
    # Top 1: bids 3, asks 1 -> (3 - 1) / 4.  Top 2: bids 4, asks 6 -> -2 / 10.
    assert book.imbalance(1) == D("0.5")
    assert book.imbalance(2) == D("-0.2")
    assert book.depth_notional(2) == (D("399"), D("617"))
    assert book.depth_notional(1) == (D("300"), D("102"))


def test_it_reports_a_crossed_or_locked_book() -> None:
    book = OrderBook("X")
    book.apply(_update([("100", "1")], [("101", "1")], snapshot=True))
    assert not book.is_crossed
    book.apply(_update([("101", "1")]))
    assert book.is_crossed
    book.apply(_update([("101", "0"), ("102", "1")]))
    assert book.is_crossed


def test_it_rejects_an_off_tick_price_and_leaves_the_book_unchanged() -> None:
    book = OrderBook("X", tick_size=D("0.5"))
    book.apply(_update([("100", "1")], [("100.5", "1")], snapshot=True))
    with pytest.raises(BookError):
        book.apply(_update([("99.5", "2"), ("99.7", "1")]))
    with pytest.raises(BookError):
        book.apply(_update([], [("-1", "1")]))
    with pytest.raises(BookError):
        book.apply(_update([("100", "-1")]))
    assert book.bids == {D("100"): D("1")}
    assert book.asks == {D("100.5"): D("1")}


def test_it_keeps_sides_sorted_under_many_random_deltas() -> None:
    import random

    rng = random.Random(7)
    book = OrderBook("X")
    reference: dict[int, int] = {}
    for _ in range(3000):
        price = rng.randint(1, 200)
        size = rng.choice([0, 0, 1, 2, 3])
        book.apply(_update([(str(price), str(size))]))
        if size:
            reference[price] = size
        else:
            reference.pop(price, None)
    expected = sorted(reference.items(), reverse=True)
    assert book.top_bids(1000) == [(D(p), D(s)) for p, s in expected]
    assert book.best_bid == D(max(reference))


# ------------------------------------------------------------ Binance sync


def _ev(first: int, last: int, prev: int, bids=(), asks=()) -> BookUpdate:  # noqa: ANN001
    return _update(list(bids), list(asks), first=first, last=last, prev=prev)


def _snap(last_id: int, bids, asks) -> BookUpdate:  # noqa: ANN001
    return _update(list(bids), list(asks), snapshot=True, last=last_id)


def test_it_buffers_until_the_snapshot_then_drops_stale_events_and_joins() -> None:
    sync = BinanceBookSync("X")
    stale = _ev(1, 5, 0, bids=[("90", "9")])
    joining = _ev(6, 10, 5, bids=[("100", "2")])
    later = _ev(11, 15, 10, asks=[("101", "0"), ("102", "7")])
    for event in (stale, joining, later):
        assert sync.on_event(event) == []
    assert sync.needs_snapshot
    assert sync.book.best_bid is None

    applied = sync.apply_snapshot(_snap(8, [("100", "1"), ("99", "1")], [("101", "1")]))

    assert applied == [joining, later]
    assert sync.stale_dropped == 1
    assert sync.is_synced
    assert sync.book.bids == {D("100"): D("2"), D("99"): D("1")}
    assert sync.book.asks == {D("102"): D("7")}
    assert sync.book.last_update_id == 15


def test_it_waits_for_the_event_that_spans_the_snapshot_when_all_buffered_events_are_older() -> None:
    sync = BinanceBookSync("X")
    sync.on_event(_ev(11, 15, 10))
    assert sync.apply_snapshot(_snap(20, [("100", "1")], [("101", "1")])) == []
    assert not sync.is_synced and not sync.needs_snapshot
    # U=16 <= 20 <= u=22: this event joins the snapshot.
    joining = _ev(16, 22, 15, bids=[("100", "4")])
    assert sync.on_event(joining) == [joining]
    assert sync.is_synced
    assert sync.book.bids == {D("100"): D("4")}


def test_it_refetches_when_the_snapshot_is_older_than_the_stream() -> None:
    sync = BinanceBookSync("X")
    sync.on_event(_ev(6, 10, 5))
    # lastUpdateId 3 < U 6: events 4..5 are missing between snapshot and stream.
    assert sync.apply_snapshot(_snap(3, [("100", "1")], [("101", "1")])) == []
    assert sync.needs_snapshot
    assert sync.rejoin_failures == 1
    assert sync.book.best_bid is None
    # A newer snapshot joins the same buffered event.
    assert len(sync.apply_snapshot(_snap(7, [("100", "1")], [("101", "1")]))) == 1
    assert sync.is_synced


def test_it_marks_a_gap_when_pu_does_not_match_the_previous_u_and_resyncs() -> None:
    fetched: list[int] = []
    snapshots = iter(
        [
            _snap(8, [("100", "1")], [("101", "1")]),
            _snap(33, [("100", "5")], [("101", "6")]),
        ]
    )

    def fetch() -> BookUpdate:
        snap = next(snapshots)
        fetched.append(snap.last_update_id or 0)
        return snap

    sync = BinanceBookSync("X", fetch_snapshot=fetch)
    assert sync.on_event(_ev(6, 10, 5)) != []
    assert fetched == [8]
    assert sync.on_event(_ev(11, 20, 10)) != []
    assert sync.gaps == 0
    # Event 21..30 was lost: the next one's pu (30) is not the previous u (20).
    after_gap = _ev(31, 40, 30, bids=[("99", "3")])
    applied = sync.on_event(after_gap)

    assert sync.gaps == 1
    assert sync.resyncs == 1
    assert fetched == [8, 33]
    # The event that revealed the gap spans the new snapshot (31 <= 33 <= 40).
    assert applied == [after_gap]
    assert sync.is_synced
    assert sync.book.bids == {D("100"): D("5"), D("99"): D("3")}
    assert sync.book.last_update_id == 40


def test_it_resets_to_awaiting_snapshot_and_counts_a_resync() -> None:
    sync = BinanceBookSync("X")
    sync.on_event(_ev(6, 10, 5))
    sync.apply_snapshot(_snap(8, [("100", "1")], [("101", "1")]))
    assert sync.is_synced
    sync.reset()
    assert sync.needs_snapshot
    assert sync.resyncs == 1
    assert len(sync.book) == 0


def test_bybit_sync_treats_u_equal_1_as_a_snapshot_and_a_skipped_u_as_a_gap() -> None:
    sync = BybitBookSync("X")
    assert sync.on_update(_update([("1", "1")], [("2", "1")], last=5)) is False
    assert sync.deltas_ignored == 1
    sync.on_update(_update([("1", "1")], [("2", "1")], snapshot=True, last=10))
    sync.on_update(_update([("1", "3")], last=11))
    assert sync.book.bids == {D("1"): D("3")}
    assert sync.on_update(_update([("1", "4")], last=13)) is False
    assert sync.gaps == 1 and not sync.synced
    # A restart of Bybit's service sends u == 1 with a full book, not flagged as snapshot.
    assert sync.on_update(_update([("5", "1")], [("6", "1")], last=1)) is True
    assert sync.synced
    assert sync.book.bids == {D("5"): D("1")}

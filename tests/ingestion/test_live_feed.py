from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from ingestion.live import live_stream_name, run_live_feed
from ingestion.models import QuarantinedMessage, Quote, Trade
from ingestion.rawstore import RawStore
from ingestion.selectors import book_snapshot
from ingestion.services import IngestPipeline, decode_records, raw_stream_register
from tests.ingestion.venue_server import FakeBinanceVenue
from trading.queues import INGEST_BATCH_TASK


def run_feed_against_venue(store: RawStore, max_events: int) -> tuple[FakeBinanceVenue, list[tuple[str, list]], dict]:
    sent: list[tuple[str, list]] = []

    async def main() -> tuple[FakeBinanceVenue, dict]:
        venue = FakeBinanceVenue(("BTCUSDT",), max_events=max_events)
        await venue.start()
        stop = asyncio.Event()
        feed = asyncio.create_task(
            run_live_feed(
                symbols=["BTCUSDT"],
                store=store,
                stop=stop,
                send=lambda name, args: sent.append((name, args)),
                ws_url=venue.ws_url,
                rest_url=venue.rest_url,
                batch_ms=20,
            )
        )
        try:
            venue.start_engine()
            await asyncio.wait_for(venue.done.wait(), 15)
            expected = lambda: len(venue.sent_ws) + len(venue.sent_rest)  # noqa: E731
            for _ in range(200):
                if sum(len(args[2]) for _name, args in sent) >= expected():
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            counters = await asyncio.wait_for(feed, 10)
            await venue.stop()
        return venue, counters

    venue, counters = asyncio.run(asyncio.wait_for(main(), 30))
    return venue, sent, counters


@pytest.mark.django_db
def test_the_live_feed_stores_every_frame_first_and_its_batches_rebuild_the_venues_book(settings, tmp_path, redis_clean):
    settings.RAW_STORE_DIR = tmp_path / "raw"
    store = RawStore(settings.RAW_STORE_DIR)
    stream = live_stream_name("BTCUSDT")
    raw_stream_register(name=stream, fmt="binance-ws", symbol="BTCUSDT")
    venue, sent, counters = run_feed_against_venue(store, max_events=120)

    # Raw first and byte-exact: every frame and REST body the venue sent, in order.
    raw = list(store.read(stream))
    assert [r.payload for r in raw if b'"lastUpdateId"' not in r.payload] == venue.sent_ws
    assert [r.payload for r in raw if b'"lastUpdateId"' in r.payload] == venue.sent_rest
    assert counters["BTCUSDT"]["appended"] == len(raw)
    # Handed to the ingest queue exactly once each, in order.
    assert all(name == INGEST_BATCH_TASK and args[0] == stream and args[1] == "binance-ws" for name, args in sent)
    handed = [seq for _name, args in sent for seq, _recv, _payload in decode_records(args[2])]
    assert handed == [r.seq for r in raw]

    # What the ingest worker does with those batches gives the venue's state.
    pipeline = IngestPipeline()
    for _name, args in sent:
        pipeline.ingest(stream=args[0], fmt=args[1], records=decode_records(args[2]), symbol=args[3], detect=False)
    frames = [json.loads(f)["data"] for f in venue.sent_ws]
    assert Quote.objects.filter(raw_stream=stream).count() == sum(1 for d in frames if d["e"] == "bookTicker")
    assert Trade.objects.filter(raw_stream=stream).count() == sum(1 for d in frames if d["e"] == "trade")
    # Depth events older than a snapshot may be refused as already applied; nothing else is.
    assert set(QuarantinedMessage.objects.filter(raw_stream=stream).values_list("code", flat=True)) <= {"duplicate"}
    bids, asks = venue.book("BTCUSDT")
    snap = book_snapshot("BTCUSDT", 50)
    assert snap is not None
    assert list(snap.bids) == sorted(bids.items(), reverse=True)[:50]
    assert list(snap.asks) == sorted(asks.items())[:50]
    assert snap.bids[0][0] < snap.asks[0][0]
    assert isinstance(snap.bids[0][0], Decimal)


def test_a_failed_hand_over_is_resent_from_the_raw_store(tmp_path, redis_clean):
    from ingestion.handover import RawHandOver

    calls: list[list] = []
    broken = {"now": False}

    def send(name, args):
        if broken["now"]:
            raise ConnectionError("broker down")
        calls.append(args)

    store = RawStore(tmp_path / "raw")
    handover = RawHandOver(stream="binance-TEST", fmt="binance-ws", store=store, send=send, symbol="TEST")
    try:
        for i in range(5):
            handover.on_raw(f"frame {i}".encode(), 1_000 + i)
        assert handover.hand_over() == 5
        for i in range(5, 8):
            handover.on_raw(f"frame {i}".encode(), 1_000 + i)
        broken["now"] = True
        with pytest.raises(ConnectionError):
            handover.hand_over()
        broken["now"] = False
        for i in range(8, 10):
            handover.on_raw(f"frame {i}".encode(), 1_000 + i)
        # The lost batch (6..8) goes again, from the raw store, with what followed.
        assert handover.hand_over() == 5
    finally:
        handover.close()
    handed = [(seq, payload) for args in calls for seq, _recv, payload in decode_records(args[2])]
    assert handed == [(i + 1, f"frame {i}".encode()) for i in range(10)]
    assert all(args[3] == "TEST" for args in calls)

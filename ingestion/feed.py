"""The feed process: simulator (or another source) -> raw store -> ingest queue.

Raw first: every message is appended to the raw store before anything else
happens to it. The feed then hands the batch to the ingest queue and records,
in Redis, the last sequence number handed over. A feed that restarts, or that
could not reach the broker for a while, re-sends everything after that mark
from the raw store, so a crash between "stored" and "queued" loses nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal

from celery import current_app
from django.conf import settings

from ingestion.rawstore import RawStore
from ingestion.selectors import latest_quote
from ingestion.services import encode_records, open_raw_writer, raw_stream_register
from ingestion.simulator import DEFAULT_SYMBOLS, FaultConfig, MarketSimulator, SymbolSpec
from trading import redis_keys
from trading.queues import INGEST_BATCH_TASK
from trading.redis_client import redis_client

logger = logging.getLogger(__name__)

MAX_MESSAGES_PER_BATCH = 5000
RESEND_CHUNK = 2000


def simulator_from_settings() -> MarketSimulator:
    """A simulator on the configured symbols, resuming from the last published prices."""
    specs: dict[str, SymbolSpec] = {}
    for symbol in settings.FEED_SYMBOLS:
        spec = DEFAULT_SYMBOLS.get(symbol) or SymbolSpec(symbol, Decimal("100.00"), Decimal("0.01"), Decimal("0.01"), 0.6)
        last = latest_quote(symbol)
        if last is not None:
            mid = ((last.bid + last.ask) / 2).quantize(spec.tick_size)
            if mid > 0:
                spec = replace(spec, start_price=mid)
        specs[symbol] = spec
    faults = FaultConfig(malformed_prob=settings.FEED_MALFORMED_PROB, crossed_prob=settings.FEED_CROSSED_PROB)
    return MarketSimulator(specs, seed=settings.FEED_SEED + int(time.time()), faults=faults)


class Feed:
    def __init__(self, *, stream: str, fmt: str, store: RawStore, send: Callable[..., object] | None = None) -> None:
        self.stream = stream
        self.fmt = fmt
        self.store = store
        raw_stream_register(name=stream, fmt=fmt)
        self.writer = open_raw_writer(store, stream)
        self.send = send or current_app.send_task
        self.redis = redis_client()

    @property
    def sent_seq(self) -> int:
        raw = self.redis.get(redis_keys.feed_sent_seq(self.stream))
        return int(raw) if raw is not None else 0

    def _mark_sent(self, seq: int) -> None:
        self.redis.set(redis_keys.feed_sent_seq(self.stream), seq)

    def _send(self, records: list[tuple[int, int, bytes]]) -> None:
        self.send(INGEST_BATCH_TASK, args=[self.stream, self.fmt, encode_records(records)])
        self._mark_sent(records[-1][0])

    def catch_up(self) -> int:
        """Hand over everything in the raw store after the last mark. Returns how many."""
        sent = self.sent_seq
        if self.writer.last_seq <= sent:
            return 0
        chunk: list[tuple[int, int, bytes]] = []
        total = 0
        for record in self.store.read(self.stream, from_seq=sent + 1):
            chunk.append((record.seq, record.recv_ns, record.payload))
            if len(chunk) >= RESEND_CHUNK:
                self._send(chunk)
                total += len(chunk)
                chunk = []
        if chunk:
            self._send(chunk)
            total += len(chunk)
        return total

    def publish(self, payloads: list[bytes], recv_ns: int) -> int:
        """Append to the raw store (first), then hand the batch to ingest."""
        if not payloads:
            return 0
        refs = self.writer.append_many(payloads, recv_ns=recv_ns)
        self.writer.flush()
        records = [(ref.seq, recv_ns, payload) for ref, payload in zip(refs, payloads, strict=True)]
        if self.sent_seq < records[0][0] - 1:
            # A previous hand-over failed: resend from the raw store in order.
            self.catch_up()
        else:
            self._send(records)
        return len(records)


def run_simulated_feed(*, stop: Callable[[], bool], batch_ms: int | None = None) -> None:
    """The feed process's main loop."""
    batch_ms = batch_ms or settings.FEED_BATCH_MS
    store = RawStore(settings.RAW_STORE_DIR)
    feed = Feed(stream="sim", fmt="sim", store=store)
    simulator = simulator_from_settings()
    resent = feed.catch_up()
    if resent:
        logger.info("feed: re-sent %s raw records not yet handed to ingest", resent)
    try:
        while not stop():
            started = time.monotonic()
            now_ns = time.time_ns()
            payloads = simulator.next_batch(now_ns, MAX_MESSAGES_PER_BATCH)
            try:
                feed.publish(payloads, recv_ns=now_ns)
            except Exception:
                # The messages are in the raw store already; the next round's
                # catch-up hands them over once the broker answers again.
                logger.exception("feed: hand-over to the ingest queue failed; will retry from the raw store")
            elapsed = time.monotonic() - started
            time.sleep(max(0.0, batch_ms / 1000 - elapsed))
    finally:
        feed.writer.close()

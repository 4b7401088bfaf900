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

from ingestion.handover import RawHandOver
from ingestion.rawstore import RawStore
from ingestion.selectors import latest_quote
from ingestion.services import raw_stream_register
from ingestion.simulator import DEFAULT_SYMBOLS, FaultConfig, MarketSimulator, SymbolSpec

logger = logging.getLogger(__name__)

MAX_MESSAGES_PER_BATCH = 5000


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


def run_simulated_feed(*, stop: Callable[[], bool], batch_ms: int | None = None) -> None:
    """The feed process's main loop."""
    batch_ms = batch_ms or settings.FEED_BATCH_MS
    store = RawStore(settings.RAW_STORE_DIR)
    raw_stream_register(name="sim", fmt="sim")
    feed = RawHandOver(stream="sim", fmt="sim", store=store, send=current_app.send_task)
    simulator = simulator_from_settings()
    resent = feed.catch_up()
    if resent:
        logger.info("feed: re-sent %s raw records not yet handed to ingest", resent)
    try:
        while not stop():
            started = time.monotonic()
            now_ns = time.time_ns()
            payloads = simulator.next_batch(now_ns, MAX_MESSAGES_PER_BATCH)
            if payloads:
                feed.append_many(payloads, recv_ns=now_ns)
            try:
                feed.hand_over()
            except Exception:
                # The messages are in the raw store already; the next round's
                # catch-up hands them over once the broker answers again.
                logger.exception("feed: hand-over to the ingest queue failed; will retry from the raw store")
            elapsed = time.monotonic() - started
            time.sleep(max(0.0, batch_ms / 1000 - elapsed))
    finally:
        feed.close()

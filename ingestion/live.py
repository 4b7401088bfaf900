"""The live venue feed: Binance USD-M -> raw store -> ingest queue.

Like the simulator feed (``ingestion.feed``), raw comes first: every
websocket frame and every REST depth snapshot is appended to the raw store
the moment the connector receives it, before the connector parses it. Every
``batch_ms`` the new records are handed to the ingest queue by task name, and
the last sequence number handed over is kept in Redis; after a crash or a
broker outage everything after that mark is re-sent from the raw store, so a
record can be late but never lost (ingest is idempotent, so a re-send adds
nothing).

One connection and one raw stream per symbol (``binance-<SYMBOL>``, format
``binance-ws``). A REST depth snapshot names no symbol, so the stream it is
stored in must say which book it belongs to (``RawStream.symbol``), and
keeping a symbol's frames and snapshots in one stream keeps them in the order
the book sync rules need on replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ingestion.binance_live import DEFAULT_REST_URL, DEFAULT_WS_URL, BinanceUsdmConnector
from ingestion.handover import RawHandOver
from ingestion.rawstore import RawStore

logger = logging.getLogger(__name__)

LIVE_FORMAT = "binance-ws"


def live_stream_name(symbol: str) -> str:
    return f"binance-{symbol.upper()}"


async def run_live_feed(
    *,
    symbols: list[str],
    store: RawStore,
    stop: asyncio.Event,
    send: Callable[..., Any],
    ws_url: str = DEFAULT_WS_URL,
    rest_url: str = DEFAULT_REST_URL,
    batch_ms: int = 200,
    connector_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The live feed process's main loop; returns per-symbol counters when ``stop`` is set.

    The caller registers the raw streams (``raw_stream_register``) first: this
    coroutine touches no ORM, because Django's ORM refuses async contexts.
    """
    hand_overs = {
        s.upper(): RawHandOver(stream=live_stream_name(s), fmt=LIVE_FORMAT, store=store, send=send, symbol=s.upper())
        for s in symbols
    }
    connectors = {
        s: BinanceUsdmConnector([s], on_raw=h.on_raw, ws_url=ws_url, rest_url=rest_url, **(connector_options or {}))
        for s, h in hand_overs.items()
    }
    try:
        for symbol, handover in hand_overs.items():
            resent = handover.catch_up()
            if resent:
                logger.info("live feed %s: re-sent %s raw records not yet handed to ingest", symbol, resent)
        tasks = [asyncio.create_task(c.run(stop)) for c in connectors.values()]
        while not stop.is_set():
            started = time.monotonic()
            _hand_over_all(hand_overs)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, batch_ms / 1000 - (time.monotonic() - started)))
        await asyncio.gather(*tasks, return_exceptions=True)
        _hand_over_all(hand_overs)
    finally:
        for handover in hand_overs.values():
            handover.close()
    return {
        s: {"appended": h.appended, "batches_sent": h.batches_sent, **connectors[s].counters.as_dict()}
        for s, h in hand_overs.items()
    }


def _hand_over_all(hand_overs: dict[str, RawHandOver]) -> None:
    for symbol, handover in hand_overs.items():
        try:
            handover.hand_over()
        except Exception:
            # The records are in the raw store already; the next round's
            # catch-up hands them over once the broker answers again.
            logger.exception("live feed %s: hand-over to the ingest queue failed; will retry from the raw store", symbol)

"""``manage.py run_live_feed --symbol BTCUSDT [--symbol ETHUSDT] [--ws-url U] [--rest-url U]``: the live venue feed.

Streams Binance USD-M bookTicker, trade and diff depth (plus REST snapshots)
into the raw store, one stream ``binance-<SYMBOL>`` per symbol, and hands the
records to the ingest queue. Runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from ingestion.binance_live import DEFAULT_REST_URL, DEFAULT_WS_URL
from ingestion.live import LIVE_FORMAT, live_stream_name, run_live_feed
from ingestion.rawstore import RawStore
from ingestion.services import raw_stream_register


class Command(BaseCommand):
    help = "Run the live Binance USD-M feed: raw store first, then the ingest queue."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--symbol", action="append", required=True)
        parser.add_argument("--ws-url", default=DEFAULT_WS_URL)
        parser.add_argument("--rest-url", default=DEFAULT_REST_URL)
        parser.add_argument("--batch-ms", type=int, default=settings.FEED_BATCH_MS)

    def handle(self, *args: Any, **options: Any) -> None:
        symbols = [s.upper() for s in options["symbol"]]
        for symbol in symbols:
            raw_stream_register(name=live_stream_name(symbol), fmt=LIVE_FORMAT, symbol=symbol)

        async def main() -> dict[str, Any]:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            return await run_live_feed(
                symbols=symbols,
                store=RawStore(settings.RAW_STORE_DIR),
                stop=stop,
                send=current_app.send_task,
                ws_url=options["ws_url"],
                rest_url=options["rest_url"],
                batch_ms=options["batch_ms"],
            )

        self.stdout.write(json.dumps(asyncio.run(main())))

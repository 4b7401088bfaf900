from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand

from ingestion.feed import run_simulated_feed
from trading.heartbeat import HeartbeatThread


class Command(BaseCommand):
    help = "Run the feed process: the market simulator, appended to the raw store, handed to the ingest queue."

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        heartbeat = HeartbeatThread("feed")
        heartbeat.start()
        self.stdout.write("feed: running the market simulator")
        run_simulated_feed(stop=stop.is_set)
        heartbeat.stop_event.set()

"""``manage.py replay_raw [--date D] [--stream S ...] [--publish]``: rebuild the tick tables from the raw store.

The raw store is the truth: after any crash this restores the database. It
runs every stored record through the same ``IngestPipeline`` as live ingest;
rows are keyed by their raw reference, so replaying twice adds nothing.
``--date`` limits it to one UTC receive day of the raw store. Prints a JSON
report per stream.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from ingestion.rawstore import RawStore
from ingestion.services import INGEST_BATCH, raw_replay


class Command(BaseCommand):
    help = "Rebuild quotes and trades (and quarantine, clocks) from the raw store, idempotently."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--date", type=date.fromisoformat, default=None, help="raw-store day, YYYY-MM-DD (UTC)")
        parser.add_argument("--stream", action="append", default=None, help="only this stream (repeatable)")
        parser.add_argument("--batch", type=int, default=INGEST_BATCH)
        parser.add_argument("--publish", action="store_true", help="also publish quotes, books and liquidity to Redis")

    def handle(self, *args: Any, **options: Any) -> None:
        report = raw_replay(
            store=RawStore(settings.RAW_STORE_DIR),
            day=options["date"],
            streams=options["stream"],
            batch=options["batch"],
            publish=options["publish"],
        )
        self.stdout.write(json.dumps(report))

"""``manage.py prune_ticks [--days N] [--dry-run] [--verify-raw]``: drop old tick partitions that raw can restore.

Drops quote and trade day partitions older than ``--days`` (default
``settings.TICK_RETENTION_DAYS``, else 90) whose raw records all lie in
sealed raw-store days, so ``replay_raw`` can always bring them back. Prints
one JSON object listing what was dropped and what was kept and why.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from ingestion.rawstore import RawStore
from ingestion.retention import DEFAULT_RETENTION_DAYS, decisions_as_dicts, ticks_prune


class Command(BaseCommand):
    help = "Drop quote/trade day partitions past hot retention once the raw store has sealed their records."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=getattr(settings, "TICK_RETENTION_DAYS", DEFAULT_RETENTION_DAYS))
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument("--verify-raw", action="store_true", help="also re-verify the sealed raw days involved")

    def handle(self, *args: Any, **options: Any) -> None:
        decisions = ticks_prune(
            store=RawStore(settings.RAW_STORE_DIR),
            retention_days=options["days"],
            dry_run=options["dry_run"],
            verify=options["verify_raw"],
        )
        self.stdout.write(json.dumps({"retention_days": options["days"], "partitions": decisions_as_dicts(decisions)}))

"""``manage.py seal_raw [--date YYYY-MM-DD]``: seal one UTC day of the raw store (default yesterday)."""

from __future__ import annotations

import io
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from ingestion.rawstore import seal_raw_main


class Command(BaseCommand):
    help = "Verify a day of the raw store, write its MANIFEST.json and make its segments read-only."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--date", type=date.fromisoformat, default=None, help="UTC day, default yesterday")

    def handle(self, *args: Any, **options: Any) -> None:
        day = options["date"] or (datetime.now(UTC).date() - timedelta(days=1))
        # Collect the report first: OutputWrapper adds its own line endings to print().
        buf = io.StringIO()
        code = seal_raw_main(settings.RAW_STORE_DIR, day, out=buf)
        self.stdout.write(buf.getvalue(), ending="")
        if code:
            sys.exit(code)

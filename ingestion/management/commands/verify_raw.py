"""``manage.py verify_raw [--date YYYY-MM-DD] [--all]``: check the raw store for tampering.

Without ``--date`` every day is checked. Prints one line per problem naming
the segment and sequence number, and exits 1 when there is any.
"""

from __future__ import annotations

import io
import sys
from datetime import date
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from ingestion.rawstore import verify_raw_main


class Command(BaseCommand):
    help = "Verify the raw store: hashes, chain, sequence, truncation and sealed manifests."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--date", type=date.fromisoformat, default=None, help="UTC day, YYYY-MM-DD")
        parser.add_argument("--all", action="store_true", help="check every day (the default without --date)")

    def handle(self, *args: Any, **options: Any) -> None:
        # Collect the report first: OutputWrapper adds its own line endings to print().
        buf = io.StringIO()
        code = verify_raw_main(settings.RAW_STORE_DIR, options["date"], options["all"], out=buf)
        self.stdout.write(buf.getvalue(), ending="")
        if code:
            sys.exit(code)

"""``manage.py ingest_file --format F PATH [--symbol S] [--stream NAME] [--queue]``: load a recorded file.

Every record goes to the raw store first (stream ``file-<format>-<basename>``
unless ``--stream`` names one), then is ingested inline (default) or handed to
the ingest queue (``--queue``). Prints the counts as one JSON object. Loading
the same file into the same stream twice is refused (exit 1); a load that
crashed part-way resumes where the raw store stops. ``replay_raw --stream``
rebuilds a loaded file's ticks from the raw store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ingestion.parsers import FORMATS, ParseError
from ingestion.rawstore import RawStore
from ingestion.services import INGEST_BATCH, FileAlreadyIngestedError, file_ingest


class Command(BaseCommand):
    help = "Append a recorded market-data file to the raw store and ingest it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", dest="fmt", required=True, choices=sorted(FORMATS))
        parser.add_argument("--symbol", default=None, help="the file's symbol (required for binance-ws REST snapshots)")
        parser.add_argument("--stream", default=None, help="raw-store stream (default file-<format>-<basename>)")
        parser.add_argument("--queue", action="store_true", help="hand batches to the ingest queue instead of ingesting inline")
        parser.add_argument("--batch", type=int, default=INGEST_BATCH)
        parser.add_argument("--no-publish", action="store_true", help="do not publish quotes, books and liquidity to Redis")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["path"]
        if not path.is_file():
            raise CommandError(f"no such file: {path}")
        try:
            out = file_ingest(
                path=path,
                fmt=options["fmt"],
                store=RawStore(settings.RAW_STORE_DIR),
                stream=options["stream"],
                symbol=options["symbol"],
                queue=options["queue"],
                batch=options["batch"],
                publish=not options["no_publish"],
            )
        except FileAlreadyIngestedError as exc:
            raise CommandError(str(exc)) from None
        except (ParseError, ValueError) as exc:
            raise CommandError(f"cannot load {path}: {exc}") from None
        self.stdout.write(json.dumps(out))

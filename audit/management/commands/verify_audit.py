"""``manage.py verify_audit``: exit 1 and name the first broken record when the audit trail was tampered with."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.verify import verify_audit


class Command(BaseCommand):
    help = "Verify the audit event hash chain, every history row against its seal, and the append-only triggers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the full result as JSON.")
        parser.add_argument("--max-problems", type=int, default=20, help="How many problems to list (default 20).")

    def handle(self, *args: Any, **options: Any) -> None:
        result = verify_audit(progress=lambda n: self.stderr.write(f"... {n} events checked"))
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))
        if result.ok:
            self.stdout.write(self.style.SUCCESS(
                f"OK: {result.events_checked} audit events and {result.history_rows_checked} history rows verified"))
            return
        for problem in result.problems[: options["max_problems"]]:
            self.stderr.write(str(problem))
        raise CommandError(f"audit trail BROKEN ({len(result.problems)} problem(s)); first: {result.first}")

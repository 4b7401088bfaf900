"""``manage.py compliance_report --from YYYY-MM-DD --to YYYY-MM-DD [--output PATH]``: printable HTML self-assessment."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.models import AuditEvent
from audit.report import compliance_report_html
from audit.services import audit_event_record


class Command(BaseCommand):
    help = "Map the controls to the twelve fatal mistakes and RTS 6, with evidence from the records."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="start", required=True, type=dt.date.fromisoformat)
        parser.add_argument("--to", dest="end", required=True, type=dt.date.fromisoformat)
        parser.add_argument("--output", help="Write the HTML here instead of stdout.")
        parser.add_argument("--user", default="", help="Who asks for the report (recorded in the audit log).")
        parser.add_argument("--no-verify", action="store_true", help="Skip the full audit chain verification.")

    def handle(self, *args: Any, **options: Any) -> None:
        start, end = options["start"], options["end"]
        if end < start:
            raise CommandError("--to is before --from")
        html = compliance_report_html(start=start, end=end, verify=not options["no_verify"])
        audit_event_record(kind=AuditEvent.Kind.EXPORT, actor_label=options["user"] or "manage.py compliance_report",
                           reason=f"compliance report {start} to {end}",
                           data={"report": "compliance", "from": str(start), "to": str(end),
                                 "output": options["output"] or "stdout"})
        if options["output"]:
            Path(options["output"]).write_text(html)
            self.stderr.write(f"wrote {options['output']}")
        else:
            self.stdout.write(html)

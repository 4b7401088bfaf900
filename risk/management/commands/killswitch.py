"""``python manage.py killswitch on|off|status --reason "..." [--user U]``: the operator's kill switch."""

from __future__ import annotations

import getpass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from risk import services
from risk.selectors import kill_switch_state
from trading.api import DomainError


class Command(BaseCommand):
    help = "Engage (on) or release (off) the global kill switch, or show it (status). on/off need --reason."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["on", "off", "status"])
        parser.add_argument("--reason", default="", help="Why; recorded in the audit log (required for on/off).")
        parser.add_argument("--user", default="", help="The username acting; defaults to cli:<OS user>.")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action != "status":
            reason = (options["reason"] or "").strip()
            if not reason:
                raise CommandError('--reason "..." is required to turn the kill switch on or off')
            actor: Any = f"cli:{getpass.getuser()}"
            if options["user"]:
                try:
                    actor = get_user_model().objects.get(**{get_user_model().USERNAME_FIELD: options["user"]})
                except get_user_model().DoesNotExist as exc:
                    raise CommandError(f"no user named {options['user']!r}") from exc
            try:
                if action == "on":
                    services.kill_switch_engage(actor=actor, reason=reason)
                else:
                    services.kill_switch_release(actor=actor, reason=reason)
            except DomainError as exc:
                raise CommandError(exc.message) from exc
        switch = kill_switch_state()
        if switch.engaged:
            self.stdout.write(f"kill switch: ENGAGED since {switch.changed_at:%Y-%m-%d %H:%M:%S} UTC "
                              f"by {switch.changed_by}: {switch.reason}")
        else:
            when = f" since {switch.changed_at:%Y-%m-%d %H:%M:%S} UTC by {switch.changed_by}" if switch.changed_at else ""
            self.stdout.write(f"kill switch: off{when}")

"""``manage.py setup_roles``: create the viewer, trader, risk_officer, compliance and admin groups (idempotent)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.roles import roles_setup


class Command(BaseCommand):
    help = "Create or update the role groups and their permissions."

    def handle(self, *args: Any, **options: Any) -> None:
        for role, count in roles_setup().items():
            self.stdout.write(f"{role}: {count} permissions")

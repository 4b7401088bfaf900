"""Seed a demo: one user per role with a TOTP device, instruments, paper automations.

Idempotent: a second run reuses what exists and prints the same logins.
Passwords are generated once and kept in ``var/demo-credentials.json``
(owner-only), so they are never in the repository.
"""

from __future__ import annotations

import base64
import json
import secrets
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from automations.models import Automation
from automations.strategies import validate_params
from ingestion.models import Instrument
from ingestion.simulator import DEFAULT_SYMBOLS

ROLES = {
    "admin": "admin",
    "trader": "trader",
    "risk": "risk_officer",
    "compliance": "compliance",
    "viewer": "viewer",
}

DEMO_AUTOMATIONS = [
    ("BTC microprice reversion", "SIM-BTCUSD", "microprice_reversion", {"quantity": "0.01"}),
    ("ETH imbalance breakout", "SIM-ETHUSD", "imbalance_breakout", {"quantity": "0.1"}),
    ("XRP trade-flow momentum", "SIM-XRPUSD", "trade_flow_momentum", {"quantity": "100"}),
]


def totp_secret_base32(device: TOTPDevice) -> str:
    return base64.b32encode(bytes.fromhex(device.key)).decode().rstrip("=")


class Command(BaseCommand):
    help = "Seed demo users (one per role, with TOTP), instruments and paper automations. Safe to run again."

    def handle(self, *args: Any, **options: Any) -> None:
        if "setup_roles" in _commands():
            call_command("setup_roles", verbosity=0)
        creds_file = settings.VAR_DIR / "demo-credentials.json"
        creds: dict[str, str] = json.loads(creds_file.read_text()) if creds_file.exists() else {}
        with transaction.atomic():
            self._instruments()
            users = self._users(creds)
            self._automations(users["admin"])
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        creds_file.write_text(json.dumps(creds, indent=2))
        creds_file.chmod(0o600)
        self.stdout.write("\nDemo logins (password / TOTP secret / otpauth URI):")
        for username, user in users.items():
            device = TOTPDevice.objects.get(user=user, name="default")
            self.stdout.write(
                f"  {username:<11} role={ROLES[username]:<13} password={creds.get(username, '(set before; not kept here)')}"
            )
            self.stdout.write(f"              totp secret={totp_secret_base32(device)}")
            self.stdout.write(f"              {device.config_url}")

    def _instruments(self) -> None:
        for symbol in settings.FEED_SYMBOLS:
            spec = DEFAULT_SYMBOLS.get(symbol)
            Instrument.objects.get_or_create(
                symbol=symbol,
                defaults={
                    "venue": "sim",
                    "tick_size": spec.tick_size if spec else Decimal("0.01"),
                    "lot_size": spec.lot_size if spec else Decimal("0.01"),
                },
            )

    def _users(self, creds: dict[str, str]) -> dict[str, Any]:
        user_model = get_user_model()
        users = {}
        for username, role in ROLES.items():
            user = user_model.objects.filter(username=username).first()
            if user is None:
                password = creds.get(username) or secrets.token_urlsafe(12)
                creds[username] = password
                user = user_model.objects.create_user(
                    username=username,
                    password=password,
                    email=f"{username}@first-principle.local",
                    is_staff=role in {"admin", "compliance", "risk_officer"},
                    is_superuser=role == "admin",
                )
            group, _ = Group.objects.get_or_create(name=role)
            user.groups.add(group)
            TOTPDevice.objects.get_or_create(user=user, name="default", defaults={"confirmed": True})
            users[username] = user
        return users

    def _automations(self, actor: Any) -> None:
        for name, symbol, strategy, params in DEMO_AUTOMATIONS:
            if symbol not in settings.FEED_SYMBOLS or Automation.objects.filter(name=name).exists():
                continue
            automation = Automation(
                name=name,
                symbol=symbol,
                strategy=strategy,
                parameters=_json_params(validate_params(strategy, params)),
                status=Automation.Status.ACTIVE,
                mode=Automation.Mode.PAPER,
                approval_threshold=10,
                last_changed_by=actor,
            )
            automation._change_reason = "demo seed"  # type: ignore[attr-defined]
            automation._history_user = actor  # type: ignore[attr-defined]
            automation.save()


def _commands() -> set[str]:
    from django.core.management import get_commands

    return set(get_commands())


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validated parameters as JSON values: Decimals become exact strings."""
    return {key: str(value) if isinstance(value, Decimal) else value for key, value in params.items()}

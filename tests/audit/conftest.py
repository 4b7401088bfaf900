from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

# Django imports live inside the fixtures: pure tests in this folder run with -p no:django.


@pytest.fixture(autouse=True)
def _no_alert_broker(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Alerts go to Celery by name; capture them instead of reaching a broker."""
    sent: list[tuple[str, dict[str, Any]]] = []
    from celery import current_app

    monkeypatch.setattr(current_app, "send_task", lambda name, kwargs=None, **kw: sent.append((name, kwargs or {})))
    return sent


@pytest.fixture
def alerts(_no_alert_broker: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return _no_alert_broker


@pytest.fixture
def roles(db: None) -> None:
    from audit.roles import roles_setup

    roles_setup()


@pytest.fixture
def make_user(roles: None):
    from django.contrib.auth import get_user_model

    from audit.services import role_assign

    User = get_user_model()
    root = User.objects.create_superuser("root", "root@example.com", "x" * 16)

    def make(username: str, role: str | None, *, staff: bool = True) -> Any:
        user = User.objects.create_user(username, f"{username}@example.com", "y" * 16, is_staff=staff)
        if role:
            role_assign(user=user, role=role, reason=f"test setup: {username} is {role}", actor=root)
        return User.objects.get(pk=user.pk)

    make.root = root
    return make


def otp_client(user: Any, *, verified: bool = True) -> Any:
    from django.test import Client
    from django_otp.plugins.otp_totp.models import TOTPDevice

    client = Client()
    client.force_login(user)
    if verified:
        device = TOTPDevice.objects.create(user=user, name="test", confirmed=True)
        session = client.session
        session["otp_device_id"] = device.persistent_id
        session.save()
    return client


@pytest.fixture
def automation(make_user: Any) -> Any:
    from audit.history import acting_as
    from automations.models import Automation

    with acting_as(make_user.root, "test setup: create the automation"):
        return Automation.objects.create(name="mm-btc", symbol="SIM-BTCUSD", strategy="momentum",
                                         parameters={"window": 20}, approval_threshold=10)


@pytest.fixture
def risk_limit(automation: Any, make_user: Any) -> Any:
    from audit.history import acting_as
    from risk.models import RiskLimit

    with acting_as(make_user.root, "test setup: limits"):
        return RiskLimit.objects.create(automation=automation, max_order_qty=Decimal("2"), max_open_orders=3)

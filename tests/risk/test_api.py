"""The risk API: who may engage and release the kill switch, reset a breaker, change a limit."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, User
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from risk.models import BreakerTrip, RiskLimit
from risk.selectors import kill_switch_engaged
from risk.services import pretrade_check, risk_limit_set
from tests.risk.conftest import make_automation

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.risk.urls_for_tests"), pytest.mark.usefixtures("celery_eager", "role_permissions")]


def user(name: str, group: str | None = None) -> tuple[APIClient, User, TOTPDevice]:
    u = User.objects.create_user(name, password="x" * 16)
    if group:
        u.groups.add(Group.objects.get_or_create(name=group)[0])
    device = TOTPDevice.objects.create(user=u, name="phone", confirmed=True)
    # As django-otp's middleware marks a session that passed OTP with this device.
    u.otp_device = device
    u.is_verified = lambda: True
    client = APIClient()
    client.force_authenticate(u)
    return client, u, device


def code(device: TOTPDevice) -> str:
    return str(totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits)).zfill(device.digits)


def test_a_trader_may_engage_but_not_release_and_a_risk_officer_releases_with_otp(sent_tasks):
    make_automation()
    trader, _, _ = user("tom", "trader")
    nobody, _, _ = user("ned")
    officer, _, device = user("rita", "risk_officer")
    assert nobody.post("/api/risk/kill-switch/engage/", {"reason": "x"}, format="json").status_code == 403
    assert trader.post("/api/risk/kill-switch/engage/", {}, format="json").status_code == 400
    r = trader.post("/api/risk/kill-switch/engage/", {"reason": "spread blew out"}, format="json")
    assert r.status_code == 200 and r.json()["engaged"] is True and r.json()["changed_by"] == "tom"
    assert kill_switch_engaged()
    assert trader.post("/api/risk/kill-switch/release/", {"reason": "ok", "otp_token": "123456"},
                       format="json").status_code == 403
    bad = "000000" if code(device) != "000000" else "111111"
    r = officer.post("/api/risk/kill-switch/release/", {"reason": "ok", "otp_token": bad}, format="json")
    assert r.status_code == 403 and r.json()["code"] == "otp_invalid"
    assert kill_switch_engaged()
    device.refresh_from_db()
    device.throttling_failure_count = 0
    device.save()
    r = officer.post("/api/risk/kill-switch/release/", {"reason": "venue stable", "otp_token": code(device)},
                     format="json")
    assert r.status_code == 200 and r.json()["engaged"] is False
    assert officer.get("/api/risk/kill-switch/").json()["engaged"] is False


def test_a_risk_officer_resets_a_breaker_over_the_api():
    a = make_automation()
    risk_limit_set(automation=a, actor="t", reason="t", max_open_orders=0)
    pretrade_check(automation_id=a.pk, side="buy", quantity=Decimal(1), limit_price=Decimal(100), mid=Decimal(100))
    trip = BreakerTrip.objects.get()
    officer, _, device = user("rita", "risk_officer")
    listed = officer.get("/api/risk/breakers/").json()
    assert [t["id"] for t in listed] == [trip.pk] and listed[0]["automation"] == "auto-1"
    r = officer.post(f"/api/risk/breakers/{trip.pk}/reset/", {"reason": "fixed", "otp_token": code(device)}, format="json")
    assert r.status_code == 200 and r.json()["reset_by"] == "rita"
    assert officer.get("/api/risk/breakers/").json() == []
    assert any(x["kind"] == "breaker_trip" for x in officer.get("/api/risk/alerts/").json())


def test_limits_change_over_the_api_needs_a_risk_officer_and_otp():
    a = make_automation()
    trader, _, tdev = user("tom", "trader")
    officer, _, device = user("rita", "risk_officer")
    body = {"automation": a.pk, "reason": "tighter", "limits": {"max_open_orders": "2", "max_daily_loss": "500"}}
    assert trader.post("/api/risk/limits/", {**body, "otp_token": code(tdev)}, format="json").status_code == 403
    r = officer.post("/api/risk/limits/", {**body, "otp_token": code(device)}, format="json")
    assert r.status_code == 200, r.content
    row = RiskLimit.objects.get(automation=a)
    assert (row.max_open_orders, row.max_daily_loss) == (2, Decimal("500"))
    assert row.history.first().history_change_reason == "tighter"

"""The execution API: approve/reject/mode over HTTP, orders with fills, 4xx JSON errors, OpenAPI schema."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from automations.models import Automation, Signal
from execution import services
from execution.models import BrokerAccount, Order
from tests.execution.conftest import make_automation, make_signal, make_user, totp

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.execution.urls")]


def _client(user) -> APIClient:
    """A session signed in and past OTP, as after the trader login page."""
    from django_otp import DEVICE_ID_SESSION_KEY

    client = APIClient()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = user.totpdevice_set.filter(confirmed=True).first().persistent_id
    session.save()
    return client


def test_approve_returns_the_updated_signal(market):
    automation = make_automation(approval_threshold=3)
    trader, device = make_user("tina", "trader")
    signal = make_signal(automation)
    response = _client(trader).post(f"/api/signals/{signal.pk}/approve", {"otp": totp(device)}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "approved" and response.json()["id"] == signal.pk


@pytest.mark.parametrize("body, status", [({}, 400), ({"otp": "12"}, 400), ({"otp": "123456"}, 403)])
def test_approve_refusals_are_4xx_json_with_a_detail(market, body, status):
    automation = make_automation(approval_threshold=3)
    trader, _ = make_user("tina", "trader")
    signal = make_signal(automation)
    response = _client(trader).post(f"/api/signals/{signal.pk}/approve", body, format="json")
    assert response.status_code == status
    assert "detail" in response.json() or "otp" in response.json()
    assert Signal.objects.get(pk=signal.pk).status == Signal.Status.PENDING_APPROVAL


def test_anonymous_and_unknown_signals_are_refused(market):
    automation = make_automation(approval_threshold=3)
    signal = make_signal(automation)
    assert APIClient().post(f"/api/signals/{signal.pk}/approve", {"otp": "123456"}, format="json").status_code == 403
    trader, device = make_user("tina", "trader")
    missing = _client(trader).post("/api/signals/999999/approve", {"otp": totp(device)}, format="json")
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]


def test_reject_needs_a_reason(market):
    automation = make_automation(approval_threshold=3)
    trader, _ = make_user("tina", "trader")
    signal = make_signal(automation)
    client = _client(trader)
    assert client.post(f"/api/signals/{signal.pk}/reject", {"reason": ""}, format="json").status_code == 400
    ok = client.post(f"/api/signals/{signal.pk}/reject", {"reason": "thin book"}, format="json")
    assert ok.status_code == 200 and ok.json()["status"] == "rejected"


def test_orders_list_filters_and_detail_shows_fills(market):
    automation = make_automation()
    filled = services.order_execute(signal_id=make_signal(automation, status=Signal.Status.QUEUED).pk)
    resting = services.order_execute(signal_id=make_signal(automation, status=Signal.Status.QUEUED,
                                                           limit_price="99.50").pk)
    viewer, _ = make_user("vic", "viewer")
    client = _client(viewer)
    listing = client.get("/api/orders/", {"status": "submitted"}).json()
    assert [o["id"] for o in listing["results"]] == [resting.pk]
    detail = client.get(f"/api/orders/{filled.pk}/").json()
    assert detail["status"] == "filled" and len(detail["fills"]) == 1
    assert detail["fills"][0]["modelled_slippage_bps"] is not None
    assert detail["fills"][0]["realized_slippage_bps"] is not None
    assert client.get("/api/orders/999999/").status_code == 404
    assert client.get("/api/orders/", {"automation": "x"}).status_code == 400


def test_switching_to_live_needs_a_risk_officer_an_otp_and_a_reason(market):
    automation = make_automation()
    account = BrokerAccount(name="binance-testnet", kind=BrokerAccount.Kind.CCXT, exchange_id="binanceusdm")
    account._change_reason = "test setup"
    account.save()
    trader, trader_device = make_user("tina", "trader")
    officer, device = make_user("rita", "risk_officer")
    url = f"/api/automations/{automation.pk}/mode"
    assert _client(trader).post(url, {"mode": "live", "otp": totp(trader_device), "reason": "go"},
                                format="json").status_code == 403
    assert _client(officer).post(url, {"mode": "live", "otp": totp(device)}, format="json").status_code == 400
    assert _client(officer).post(url, {"mode": "live", "otp": "000000", "reason": "go"},
                                 format="json").status_code == 403
    assert Automation.objects.get(pk=automation.pk).mode == "paper"
    device.throttling_failure_count = 0
    device.throttling_failure_timestamp = None
    device.save()
    ok = _client(officer).post(url, {"mode": "live", "otp": totp(device), "reason": "approved by committee"},
                               format="json")
    assert ok.status_code == 200, ok.content
    assert ok.json()["mode"] == "live"
    assert Automation.objects.get(pk=automation.pk).history.first().history_change_reason == "approved by committee"


def test_the_schema_documents_the_execution_endpoints():
    schema = APIClient().get("/api/schema/", {"format": "json"}).json()
    for path in ("/api/signals/{signal_id}/approve", "/api/signals/{signal_id}/reject", "/api/orders/",
                 "/api/orders/{order_id}/", "/api/automations/{automation_id}/mode"):
        assert path in schema["paths"], path
    assert Order.objects.count() == 0

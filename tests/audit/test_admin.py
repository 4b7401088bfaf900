from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest
from django.test import Client

from audit.models import AuditEvent
from risk.models import RiskLimit

from .conftest import otp_client


def _limit_url(limit: RiskLimit) -> str:
    return f"/admin/risk/risklimit/{limit.pk}/change/"


def _post_limit(client: Client, limit: RiskLimit, qty: str, reason: str = "tighten after review"):
    return client.post(_limit_url(limit), {"automation": limit.automation_id, "max_order_qty": qty,
                                           "max_open_orders": limit.max_open_orders, "slippage_breach_bps": "50",
                                           "change_reason": reason})


@pytest.mark.django_db
def test_anonymous_and_non_otp_users_are_sent_to_the_otp_login(make_user):
    staff = make_user("sam", "compliance")
    for client in (Client(), otp_client(staff, verified=False)):
        response = client.get("/admin/audit/auditevent/")
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
def test_compliance_reads_everything_and_changes_nothing(make_user, risk_limit, automation):
    client = otp_client(make_user("cora", "compliance"))
    for url in ["/admin/audit/auditevent/", "/admin/risk/risklimit/", "/admin/automations/automation/",
                "/admin/automations/historicalautomation/", "/admin/risk/historicalrisklimit/",
                "/admin/execution/order/", "/admin/automations/signal/", _limit_url(risk_limit)]:
        assert client.get(url).status_code == 200, url
    page = client.get(_limit_url(risk_limit)).content.decode()
    assert 'name="change_reason"' not in page  # a read-only view: no form to submit
    assert _post_limit(client, risk_limit, "99").status_code == 403
    risk_limit.refresh_from_db()
    assert risk_limit.max_order_qty == Decimal("2")
    assert client.get("/admin/risk/risklimit/add/").status_code == 403
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.PERMISSION_DENIED, actor_label="cora").count() == 2


@pytest.mark.django_db
def test_a_trader_cannot_change_a_risk_limit(make_user, risk_limit):
    client = otp_client(make_user("tom", "trader"))
    assert _post_limit(client, risk_limit, "1000").status_code == 403
    risk_limit.refresh_from_db()
    assert risk_limit.max_order_qty == Decimal("2")
    denial = AuditEvent.objects.get(kind=AuditEvent.Kind.PERMISSION_DENIED)
    assert denial.actor_label == "tom" and denial.data["path"] == _limit_url(risk_limit)


@pytest.mark.django_db
def test_a_risk_officer_changes_a_limit_with_a_reason_recorded_in_history(make_user, risk_limit):
    officer = make_user("olga", "risk_officer")
    client = otp_client(officer)
    assert _post_limit(client, risk_limit, "", reason="").status_code == 200  # the form insists on a reason
    response = _post_limit(client, risk_limit, "1.5", reason="tighten after the 3 June review")
    assert response.status_code == 302, response.content[:500]
    risk_limit.refresh_from_db()
    assert risk_limit.max_order_qty == Decimal("1.5")
    latest = risk_limit.history.order_by("-history_id").first()
    assert (latest.history_user_id, latest.history_change_reason) == (officer.pk, "tighten after the 3 June review")
    history_page = client.get("/admin/risk/historicalrisklimit/", {"q": "3 June"}).content.decode()
    assert "max_order_qty" in history_page and "2.000000000000" in history_page and "1.500000000000" in history_page


@pytest.mark.django_db
def test_the_history_page_filters_by_user_object_date_and_reason(make_user, automation):
    client = otp_client(make_user("cora", "compliance"))
    base = "/admin/automations/historicalautomation/"
    hid = automation.history.get().history_id
    assert f">{hid}<" in client.get(base, {"object_id": automation.pk, "date_from": "2000-01-01",
                                           "history_user__id__exact": make_user.root.pk}).content.decode()
    assert f">{hid}<" not in client.get(base, {"q": "no such reason"}).content.decode()
    assert f">{hid}<" not in client.get(base, {"date_to": "2000-01-01"}).content.decode()


@pytest.mark.django_db
def test_a_filtered_export_is_streamed_and_audited(make_user, automation):
    client = otp_client(make_user("cora", "compliance"))
    response = client.get("/admin/audit/auditevent/export/", {"kind__exact": "history", "format": "csv"})
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    expected = AuditEvent.objects.filter(kind="history").count()
    assert len(rows) == expected and {r["kind"] for r in rows} == {"history"}
    export = AuditEvent.objects.filter(kind=AuditEvent.Kind.EXPORT).get()
    assert export.actor_label == "cora"
    assert export.data["rows"] == expected and export.data["filters"] == "kind__exact=history"
    response = client.get("/admin/automations/historicalautomation/export/", {"format": "json"})
    assert [r["history_change_reason"] for r in json.loads(b"".join(response.streaming_content))] == [
        "test setup: create the automation"]


@pytest.mark.django_db
def test_a_trader_cannot_export(make_user):
    client = otp_client(make_user("tom", "trader"))
    assert client.get("/admin/automations/signal/export/", {"format": "csv"}).status_code == 403
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.EXPORT).exists()


@pytest.mark.django_db
def test_the_signal_story_shows_context_transitions_and_audit_events(make_user, automation):
    from django.utils import timezone

    from audit.services import audit_event_record
    from automations.models import Signal, SignalTransition

    signal = Signal.objects.create(automation=automation, symbol="SIM-BTCUSD", side="buy", quantity=Decimal("1"),
                                   limit_price=Decimal("100"), reason="breakout", regime={"volatility": "low"},
                                   bid=Decimal("99.5"), ask=Decimal("100.5"), created_at=timezone.now())
    SignalTransition.objects.create(signal=signal, at=timezone.now(), from_status="new", to_status="pending_approval",
                                    actor_label="worker-detect", reason="gated: 1 of 10")
    audit_event_record(kind=AuditEvent.Kind.SIGNAL_STATE, subject=signal, actor_label="worker-detect", reason="gated")
    page = otp_client(make_user("cora", "compliance")).get(f"/admin/automations/signal/{signal.pk}/change/").content.decode()
    for text in ("full story", "breakout", "99.5", "volatility", "gated: 1 of 10", "Signal state change",
                 "No snapshot stored", "No order was placed"):
        assert text in page, text


@pytest.mark.django_db
def test_setup_roles_is_idempotent(roles):
    from django.contrib.auth.models import Group

    from audit.roles import roles_setup

    first = {g.name: set(g.permissions.values_list("codename", flat=True)) for g in Group.objects.all()}
    roles_setup()
    second = {g.name: set(g.permissions.values_list("codename", flat=True)) for g in Group.objects.all()}
    assert first == second and sorted(first) == ["admin", "compliance", "risk_officer", "trader", "viewer"]
    assert "change_risklimit" not in first["trader"] and "change_risklimit" in first["risk_officer"]
    assert not any(c.startswith(("change_", "add_", "delete_")) for c in first["compliance"])

from __future__ import annotations

from decimal import Decimal

import pytest
from django_otp import DEVICE_ID_SESSION_KEY
from rest_framework.test import APIClient

from audit.models import AuditEvent
from automations.models import Automation, Signal
from automations.services import signal_create, signal_transition
from automations.snapshots import snapshot_create
from tests.automations.conftest import make_automation, make_book, make_user

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.automations.urls")]

VALID = {
    "name": "mr-1",
    "symbol": "TEST-BTC",
    "strategy": "microprice_reversion",
    "parameters": {"quantity": "0.5"},
    "approval_threshold": 3,
    "reason": "new strategy trial",
}


def client_for(role: str | None, *, verified: bool = True, username: str | None = None) -> APIClient:
    user = make_user(username or f"u-{role}-{verified}", role)
    client = APIClient()
    client.force_login(user)
    if verified:
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = user.totpdevice_set.get().persistent_id
        session.save()
    return client


def test_it_lets_a_risk_officer_create_an_automation_paused_with_history_and_audit():
    client = client_for("risk_officer")

    response = client.post("/api/automations/create", VALID, format="json")

    assert response.status_code == 201, response.json()
    automation = Automation.objects.get(name="mr-1")
    assert automation.status == Automation.Status.PAUSED and automation.mode == Automation.Mode.PAPER
    assert automation.approval_threshold == 3
    assert automation.last_changed_by.username == "u-risk_officer-True"
    history = automation.history.get()
    assert history.history_change_reason == "new strategy trial"
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.CONFIG_CHANGE, subject_id=str(automation.pk))
    assert event.reason == "new strategy trial" and event.actor_label == "u-risk_officer-True"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**VALID, "reason": ""}, "reason"),
        ({k: v for k, v in VALID.items() if k != "reason"}, "reason"),
        ({**VALID, "strategy": "nope"}, "unknown strategy"),
        ({**VALID, "parameters": {"quantity": "-1"}}, "quantity"),
        ({**VALID, "parameters": {}}, "quantity: is required"),
        ({**VALID, "allowed_regimes": {"weather": ["sunny"]}}, "weather"),
        ({**VALID, "snapshot_levels": 500}, "snapshot_levels"),
        ({**VALID, "signal_expiry_seconds": 0}, "signal_expiry_seconds"),
    ],
)
def test_it_refuses_bad_configuration_with_a_400_and_a_message(body, message):
    client = client_for("risk_officer")

    response = client.post("/api/automations/create", body, format="json")

    assert response.status_code == 400
    assert message in str(response.json())
    assert not Automation.objects.filter(name="mr-1").exists()


def test_it_updates_with_a_reason_and_records_the_diff():
    automation = make_automation(name="mr-1", approval_threshold=5)
    client = client_for("admin")

    response = client.post(
        f"/api/automations/{automation.pk}/update", {"approval_threshold": 7, "reason": "more gating"}, format="json"
    )

    assert response.status_code == 200, response.json()
    assert response.json()["approval_threshold"] == 7
    event = AuditEvent.objects.filter(kind=AuditEvent.Kind.CONFIG_CHANGE, subject_id=str(automation.pk)).latest("id")
    assert event.data["changes"] == {"approval_threshold": [5, 7]}
    assert automation.history.latest().history_change_reason == "more gating"
    missing = client.post(f"/api/automations/{automation.pk}/update", {"approval_threshold": 8}, format="json")
    assert missing.status_code == 400


@pytest.mark.parametrize(
    ("role", "read", "operate", "configure"),
    [
        ("viewer", 200, 403, 403),
        ("compliance", 200, 403, 403),
        ("trader", 200, 200, 403),
        ("risk_officer", 200, 200, 201),
        (None, 403, 403, 403),
    ],
)
def test_it_checks_roles_per_operation(role, read, operate, configure):
    automation = make_automation(name="a-1")
    client = client_for(role)

    assert client.get("/api/automations/").status_code == read
    assert client.get("/api/signals/").status_code == read
    assert client.post(f"/api/automations/{automation.pk}/pause", {"reason": "lunch"}, format="json").status_code == operate
    assert client.post("/api/automations/create", VALID, format="json").status_code == configure


def test_it_refuses_a_session_that_did_not_pass_otp_and_audits_it():
    client = client_for("admin", verified=False)

    response = client.get("/api/automations/")

    assert response.status_code == 403
    assert "OTP" in response.json()["detail"]
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.PERMISSION_DENIED).exists()


def test_it_pauses_and_resumes_with_a_reason_and_refuses_a_double_pause():
    automation = make_automation(name="a-1")
    client = client_for("trader")

    paused = client.post(f"/api/automations/{automation.pk}/pause", {"reason": "news"}, format="json")
    again = client.post(f"/api/automations/{automation.pk}/pause", {"reason": "news"}, format="json")
    resumed = client.post(f"/api/automations/{automation.pk}/resume", {"reason": "calm"}, format="json")
    no_reason = client.post(f"/api/automations/{automation.pk}/pause", {}, format="json")

    assert paused.json()["status"] == "paused"
    assert again.status_code == 409 and "cannot pause" in again.json()["detail"]
    assert resumed.json()["status"] == "active"
    assert no_reason.status_code == 400
    states = AuditEvent.objects.filter(kind=AuditEvent.Kind.AUTOMATION_STATE, subject_id=str(automation.pk)).order_by("id")
    assert [(e.data["action"], e.reason) for e in states] == [("pause", "news"), ("resume", "calm")]


def test_it_answers_404_and_400_never_500_on_bad_ids_and_filters():
    client = client_for("viewer")
    assert client.get("/api/automations/999999/").status_code == 404
    assert client.get("/api/signals/999999/").status_code == 404
    assert client.get("/api/signals/?status=bogus").status_code == 400
    assert client.get("/api/signals/?since_seq=-1").status_code == 400
    assert client.get("/api/signals/?since=yesterday").status_code == 400


def _signal(automation, **context):
    return signal_create(
        automation=automation, side="buy", quantity=Decimal("1"), limit_price=Decimal("100.1"), reason="t", **context
    )


def test_it_filters_signals_and_shows_the_snapshot_levels_in_the_detail():
    a, b = make_automation(name="a"), make_automation(name="b", symbol="TEST-ETH")
    book = make_book(levels=5)
    with_snapshot = _signal(a, snapshot=snapshot_create(book=book, levels=5))
    signal_transition(signal=with_snapshot, to_status=Signal.Status.PENDING_APPROVAL, actor_label="t")
    _signal(b)
    client = client_for("viewer")

    pending = client.get("/api/signals/?status=pending_approval").json()
    by_symbol = client.get("/api/signals/?symbol=TEST-ETH").json()
    detail = client.get(f"/api/signals/{with_snapshot.pk}/").json()

    assert [s["id"] for s in pending["results"]] == [with_snapshot.pk]
    assert [s["symbol"] for s in by_symbol["results"]] == ["TEST-ETH"]
    assert detail["snapshot"]["verified"] is True
    assert detail["snapshot"]["bids"] == [[str(p), str(s)] for p, s in book.bids]
    assert [t["to"] for t in detail["transitions"]] == ["new", "pending_approval"]


def test_it_returns_every_change_after_a_sequence_for_a_client_that_saw_a_gap():
    automation = make_automation()
    first = _signal(automation)
    seen = first.sequence
    second = _signal(automation)
    signal_transition(signal=first, to_status=Signal.Status.QUEUED, actor_label="t")
    client = client_for("viewer")

    body = client.get(f"/api/signals/?since_seq={seen}").json()

    # Oldest change first; the first signal shows its latest state only once.
    assert [(s["id"], s["status"]) for s in body["results"]] == [(second.pk, "new"), (first.pk, "queued")]
    assert body["last_seq"] == first.sequence
    assert client.get(f"/api/signals/?since_seq={body['last_seq']}").json()["results"] == []


def test_it_lists_every_operation_in_the_openapi_schema():
    client = client_for("viewer")
    schema = client.get("/api/schema/", {"format": "json"}).json()
    ops = {op["operationId"] for path in schema["paths"].values() for op in path.values() if isinstance(op, dict)}
    assert {
        "automations_list",
        "automations_create",
        "automations_read",
        "automations_update",
        "automations_pause",
        "automations_resume",
        "signals_list",
        "signals_read",
    } <= ops

from __future__ import annotations

from decimal import Decimal

import pytest

from audit.history import MissingReason, UnauthorizedChange, acting_as
from audit.models import AuditEvent


@pytest.mark.django_db
def test_it_refuses_a_save_of_a_versioned_model_without_a_reason(automation):
    automation.status = "active"
    with pytest.raises(MissingReason, match="needs a reason"):
        automation.save()


@pytest.mark.django_db
def test_it_records_user_and_reason_of_a_change_in_history(automation, make_user):
    officer = make_user("olga", "risk_officer")
    automation.approval_threshold = 25
    with acting_as(officer, "raise gating after the incident of 12 May"):
        automation.save()
    latest = automation.history.order_by("-history_id").first()
    assert latest.history_user_id == officer.pk
    assert latest.history_change_reason == "raise gating after the incident of 12 May"
    event = AuditEvent.objects.filter(kind=AuditEvent.Kind.HISTORY, subject_id=str(latest.history_id)).get()
    assert event.actor_id == officer.pk
    assert event.data["changes"] == {"approval_threshold": [10, 25]}


@pytest.mark.django_db
def test_it_uses_the_instance_change_reason_when_one_is_set(automation):
    automation.symbol = "SIM-ETHUSD"
    automation._change_reason = "move to ETH"
    automation.save()
    assert automation.history.order_by("-history_id").first().history_change_reason == "move to ETH"
    # The reason covered one change; a second save must give its own.
    automation.symbol = "SIM-XRPUSD"
    with pytest.raises(MissingReason):
        automation.save()


@pytest.mark.django_db
def test_it_needs_no_reason_for_counter_only_saves_and_writes_no_history(automation):
    before = automation.history.count()
    automation.approved_trade_count = 3
    automation.save(update_fields=["approved_trade_count"])
    assert automation.history.count() == before


@pytest.mark.django_db
def test_it_refuses_a_trader_changing_a_risk_limit_and_records_and_alerts(risk_limit, make_user, alerts):
    trader = make_user("tom", "trader")
    risk_limit.max_order_qty = Decimal("50")
    with pytest.raises(UnauthorizedChange, match="risk.change_risklimit"):
        with acting_as(trader, "I want bigger orders"):
            risk_limit.save()
    refused = AuditEvent.objects.filter(kind=AuditEvent.Kind.CONFIG_REFUSED).order_by("-id").first()
    assert refused is not None and refused.actor_id == trader.pk
    assert refused.data["why"] == "permission"
    assert ("risk.tasks.alert_raise_task", ) == tuple({name for name, _ in alerts})
    assert any(kw["kind"] == "unauthorized_config_change" and "tom" in kw["subject"] for _, kw in alerts)


@pytest.mark.django_db
def test_it_records_a_missing_reason_refusal_and_raises_an_alert(automation, alerts):
    automation.mode = "live"
    with pytest.raises(MissingReason):
        automation.save()
    refused = AuditEvent.objects.filter(kind=AuditEvent.Kind.CONFIG_REFUSED).order_by("-id").first()
    assert refused.data == {"model": "automations.automation", "object_id": str(automation.pk), "action": "change",
                            "why": "missing_reason"}
    assert [kw["kind"] for _, kw in alerts] == ["unauthorized_config_change"]


@pytest.mark.django_db
def test_it_versions_role_grants_with_who_and_why(make_user):
    user = make_user("cora", "compliance")
    assignment = user.role_assignments.get()
    record = assignment.history.get()
    assert record.history_user_id == make_user.root.pk
    assert record.history_change_reason == "test setup: cora is compliance"
    assert list(user.groups.values_list("name", flat=True)) == ["compliance"]


def test_a_user_objects_cached_roles_follow_a_grant_a_revoke_and_an_unmanaged_change(make_user, alerts):
    from django.contrib.auth.models import Group

    from audit.services import role_assign, role_revoke
    from trading.permissions import user_roles

    user = make_user("tom", "trader")
    assert user_roles(user) == {"trader"}  # cached on this object from here on
    role_assign(user=user, role="risk_officer", reason="covering the desk", actor=make_user.root)
    assert user_roles(user) == {"trader", "risk_officer"}
    role_revoke(user=user, role="trader", reason="no longer trades", actor=make_user.root)
    assert user_roles(user) == {"risk_officer"}
    user.groups.clear()  # outside the role services: audited and alerted, and forgotten here too
    assert user_roles(user) == set()
    user.groups.add(Group.objects.get(name="viewer"))
    assert user_roles(user) == {"viewer"}

"""Breaker trips (durable), resets with role + TOTP + reason, the kill switch, alert delivery."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from automations.models import Automation, Signal, SignalTransition
from risk import services
from risk.models import Alert, BreakerTrip, KillSwitch, RiskState
from risk.selectors import kill_switch_engaged
from risk.services import breaker_reset, kill_switch_engage, kill_switch_release, pretrade_check, risk_limit_set
from risk.tasks import alert_deliver_task, breaker_trip_ensure_task
from tests.risk.conftest import WebhookServer, make_automation
from trading.api import DomainError
from trading.queues import ORDERS_CANCEL_ALL_TASK

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("celery_eager")]
D = Decimal


def order(a: Automation, qty: str = "1"):
    return pretrade_check(automation_id=a.pk, side="buy", quantity=D(qty), limit_price=D("100"), mid=D("100"))


def officer(name: str = "rita") -> tuple[User, TOTPDevice]:
    user = User.objects.create_user(name, password="x" * 16)
    user.groups.add(Group.objects.get_or_create(name="risk_officer")[0])
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return user, device


def code(device: TOTPDevice) -> str:
    return str(totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits)).zfill(device.digits)


def signal(a: Automation, status: str) -> Signal:
    from django.utils import timezone

    return Signal.objects.create(automation=a, symbol=a.symbol, side="buy", quantity=D("1"), limit_price=D("100"),
                                 reason="test", status=status, created_at=timezone.now())


def test_a_breach_pauses_the_automation_records_the_trip_and_the_webhook_receives_the_alert(
    webhook: WebhookServer, settings, django_capture_on_commit_callbacks
):
    settings.ALERT_EMAILS = ["risk@example.com"]
    a = make_automation()
    risk_limit_set(automation=a, actor="test", reason="test", max_order_qty=D("1"))
    with django_capture_on_commit_callbacks(execute=True):
        breaches = order(a, qty="5")
    assert [b.limit for b in breaches] == ["max_order_qty"]
    a.refresh_from_db()
    assert a.status == Automation.Status.PAUSED
    assert a.history.first().history_change_reason.startswith("circuit breaker tripped: order quantity 5")
    trip = BreakerTrip.objects.get(automation=a)
    assert (trip.limit, trip.value, trip.threshold) == ("max_order_qty", "5", "1")
    assert AuditEvent.objects.filter(kind="breaker_trip", subject_id=str(trip.pk)).exists()
    assert AuditEvent.objects.filter(kind="automation_state", subject_id=str(a.pk)).exists()
    kinds = set(Alert.objects.values_list("kind", flat=True))
    assert {"breaker_trip", "auto_pause"} <= kinds
    texts = [p["text"] for p in webhook.received]
    assert any("Breaker tripped: max_order_qty on auto-1" in t for t in texts)
    assert any("auto-paused" in t for t in texts)
    assert all({"text", "blocks", "attachments"} <= set(p) for p in webhook.received)
    assert Alert.objects.filter(kind="breaker_trip").get().delivery_state == Alert.Delivery.DELIVERED
    assert any("max_order_qty" in m.subject for m in mail.outbox)
    assert mail.outbox[0].to == ["risk@example.com"]


def test_the_trip_survives_a_rollback_of_the_order_transaction(monkeypatch):
    sent: list[dict] = []
    monkeypatch.setattr(breaker_trip_ensure_task, "apply_async", lambda kwargs, **kw: sent.append(kwargs))
    a = make_automation()
    risk_limit_set(automation=a, actor="test", reason="test", max_order_qty=D("1"))
    with pytest.raises(RuntimeError), transaction.atomic():
        assert order(a, qty="5")
        raise RuntimeError("the execute worker crashed before committing the rejection")
    assert not BreakerTrip.objects.exists()
    assert len(sent) == 1
    # What the detect worker does with the durable copy:
    assert breaker_trip_ensure_task(**sent[0]) is True
    trip = BreakerTrip.objects.get()
    assert str(trip.trip_key) == sent[0]["trip_key"] and trip.limit == "max_order_qty"
    a.refresh_from_db()
    assert a.status == Automation.Status.PAUSED
    assert RiskState.objects.get(automation=a).tripped
    # Delivered twice (a redelivered task): still one trip.
    assert breaker_trip_ensure_task(**sent[0]) is False
    assert BreakerTrip.objects.count() == 1


def test_the_backup_does_nothing_when_the_order_transaction_committed(monkeypatch):
    sent: list[dict] = []
    monkeypatch.setattr(breaker_trip_ensure_task, "apply_async", lambda kwargs, **kw: sent.append(kwargs))
    a = make_automation()
    risk_limit_set(automation=a, actor="test", reason="test", max_open_orders=0)
    assert order(a)
    assert breaker_trip_ensure_task(**sent[0]) is False
    assert BreakerTrip.objects.count() == 1
    assert Alert.objects.filter(kind="breaker_trip").count() == 1


def test_a_breaker_reset_needs_the_role_a_fresh_totp_and_a_reason():
    a = make_automation()
    risk_limit_set(automation=a, actor="test", reason="test", max_open_orders=0)
    order(a)
    trip = BreakerTrip.objects.get()
    trader = User.objects.create_user("tom", password="x" * 16)
    TOTPDevice.objects.create(user=trader, name="p", confirmed=True)
    with pytest.raises(DomainError) as denied:
        breaker_reset(trip=trip, user=trader, otp_token="000000", reason="fixed")
    assert denied.value.status_code == 403
    rita, device = officer()
    with pytest.raises(DomainError):
        breaker_reset(trip=trip, user=rita, otp_token=code(device), reason="")
    with pytest.raises(DomainError) as bad_otp:
        breaker_reset(trip=trip, user=rita, otp_token="000000" if code(device) != "000000" else "111111", reason="ok")
    assert bad_otp.value.code == "otp_invalid"
    assert AuditEvent.objects.filter(kind="otp_failed").exists()
    assert AuditEvent.objects.filter(kind="permission_denied").exists()
    trip.refresh_from_db()
    assert trip.reset_at is None
    device.refresh_from_db()
    device.throttling_failure_count = 0
    device.throttling_failure_timestamp = None
    device.save()
    token = code(device)
    reset = breaker_reset(trip=trip, user=rita, otp_token=token, reason="limit was a typo; corrected to 5")
    assert reset.reset_by == "rita" and reset.reset_reason.startswith("limit was a typo")
    assert not RiskState.objects.get(automation=a).tripped
    assert AuditEvent.objects.filter(kind="breaker_reset", subject_id=str(trip.pk)).exists()
    a.refresh_from_db()
    assert a.status == Automation.Status.PAUSED  # a reset never restarts trading by itself
    # The same code cannot be used twice.
    risk_limit_set(automation=a, actor="test", reason="test", max_open_orders=0)
    a.status = Automation.Status.ACTIVE
    a._change_reason = "resume"
    a.save()
    order(a)
    second = BreakerTrip.objects.filter(reset_at__isnull=True).get()
    with pytest.raises(DomainError):
        breaker_reset(trip=second, user=rita, otp_token=token, reason="again")


def test_the_kill_switch_halts_everything_expires_waiting_signals_and_cancels_all_orders(
    sent_tasks, django_capture_on_commit_callbacks
):
    a, b = make_automation("a"), make_automation("b", status=Automation.Status.PAUSED)
    waiting = [signal(a, s) for s in ("pending_approval", "queued", "approved")]
    fresh = signal(b, "new")
    done = signal(a, "filled")
    assert order(a) == []
    with django_capture_on_commit_callbacks(execute=True):
        kill_switch_engage(actor="cli:ops", reason="exchange outage")
    assert kill_switch_engaged()
    assert set(Automation.objects.values_list("status", flat=True)) == {"halted"}
    for s in waiting:
        s.refresh_from_db()
        assert s.status == "expired"
        assert SignalTransition.objects.filter(signal=s, to_status="expired").exists()
    fresh.refresh_from_db()
    done.refresh_from_db()
    assert (fresh.status, done.status) == ("filtered", "filled")
    assert sent_tasks == [(ORDERS_CANCEL_ALL_TASK, ["kill switch engaged by cli:ops: exchange outage"])]
    assert [x.limit for x in order(a)] == ["kill_switch"]
    assert Alert.objects.filter(kind="kill_switch_on", severity="critical").exists()
    ks = KillSwitch.objects.get()
    assert ks.history.first().history_change_reason == "exchange outage"
    assert AuditEvent.objects.filter(kind="kill_switch").count() == 1
    kill_switch_release(actor="cli:ops", reason="venue back")
    assert not kill_switch_engaged()
    assert Alert.objects.filter(kind="kill_switch_off").exists()
    # Automations stay halted until resumed one by one.
    assert set(Automation.objects.values_list("status", flat=True)) == {"halted"}
    with pytest.raises(DomainError):
        kill_switch_release(actor="cli:ops", reason="twice")


def test_the_killswitch_command_turns_it_on_and_off_and_refuses_bad_input(sent_tasks, capsys):
    make_automation()
    with pytest.raises(CommandError):
        call_command("killswitch", "on")
    with pytest.raises(CommandError):
        call_command("killswitch", "on", "--reason", "x", "--user", "nobody")
    call_command("killswitch", "on", "--reason", "drill")
    assert "ENGAGED" in capsys.readouterr().out
    assert kill_switch_engaged()
    call_command("killswitch", "off", "--reason", "drill over")
    assert "kill switch: off" in capsys.readouterr().out
    assert not kill_switch_engaged()


@pytest.fixture
def retries_run_inline(celery_eager):
    # Eager Celery runs a retry in place only when it does not propagate the Retry.
    from trading.celery import app

    app.conf.task_eager_propagates = False
    yield
    app.conf.task_eager_propagates = True


@pytest.mark.usefixtures("retries_run_inline")
def test_alert_delivery_retries_when_the_webhook_first_fails(settings, django_capture_on_commit_callbacks):
    server = WebhookServer(fail_first=2)
    settings.ALERT_WEBHOOK_URL = server.url
    settings.ALERT_MAX_ATTEMPTS = 5
    try:
        with django_capture_on_commit_callbacks(execute=True):
            alert = services.alert_raise(kind="clock_drift", severity="warning", subject="drift", message="120 ms")
        alert.refresh_from_db()
        assert server.hits == 3
        assert alert.delivery_state == Alert.Delivery.DELIVERED
        assert alert.attempts == 3
        assert server.received[0]["text"] == "[WARNING] drift"
    finally:
        server.close()


@pytest.mark.usefixtures("retries_run_inline")
def test_alert_delivery_gives_up_after_the_maximum_attempts(settings):
    server = WebhookServer(fail_first=100)
    settings.ALERT_WEBHOOK_URL = server.url
    settings.ALERT_MAX_ATTEMPTS = 3
    try:
        alert = services.alert_raise(kind="x", severity="info", subject="s", message="m")
        alert_deliver_task.apply(args=[alert.pk])
        alert.refresh_from_db()
        assert (alert.delivery_state, alert.attempts, server.hits) == ("failed", 3, 3)
        assert "500" in alert.last_error
    finally:
        server.close()


def test_backoff_grows_exponentially():
    assert [services.alert_retry_delay_s(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]


def test_alerts_with_the_same_key_inside_the_window_are_one_alert(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = services.alert_raise(kind="k", severity="info", subject="a", message="m", dedup_key="same")
        second = services.alert_raise(kind="k", severity="info", subject="b", message="m", dedup_key="same")
    assert first.pk == second.pk
    assert Alert.objects.count() == 1
    assert Alert.objects.get().delivery_state == Alert.Delivery.NOT_CONFIGURED


def test_other_layers_raise_alerts_by_task_name():
    from risk.tasks import alert_raise_task

    alert_raise_task.apply(kwargs={"kind": "clock_drift", "severity": "warning", "subject": "offset 140 ms",
                                   "message": "binance clock offset 140 ms"})
    assert Alert.objects.get().kind == "clock_drift"

"""Human gating at the service level: approvals, refusals, and the execute worker's second look."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from automations.detection import detect_symbol
from automations.models import Automation, Signal
from execution import services
from execution.brokers.paper import PaperBroker
from execution.gating import gating_required, order_hash
from execution.models import Approval, Order
from tests.execution.conftest import (
    BASE_NS,
    insert_quote,
    make_automation,
    make_signal,
    make_user,
    totp,
)
from trading.api import DomainError
from trading.queues import ORDER_EXECUTE_TASK

pytestmark = pytest.mark.django_db

S = Signal.Status


def _detect_once(symbol: str, n: int, capture) -> Signal:
    insert_quote(symbol, BASE_NS + n * 100_000_000)
    before = Signal.objects.count()
    with capture(execute=True):
        detect_symbol(symbol=symbol)
    assert Signal.objects.count() == before + 1
    return Signal.objects.order_by("-id").first()


def test_it_gates_the_first_two_trades_and_sends_the_third_straight_to_execution(market, always_buy, sent_tasks,
                                                                                 django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    automation = make_automation(approval_threshold=2)
    trader, device = make_user("tina", "trader")
    for i in range(20):
        insert_quote(market["symbol"], BASE_NS + i * 1_000_000)

    first = _detect_once(market["symbol"], 1, capture)
    assert first.status == S.PENDING_APPROVAL
    assert ORDER_EXECUTE_TASK not in [name for name, _ in sent_tasks]
    with capture(execute=True):
        services.signal_approve(signal_id=first.pk, user=trader, otp_token=totp(device))
    assert sent_tasks[-1] == (ORDER_EXECUTE_TASK, [first.pk])
    services.order_execute(signal_id=first.pk)

    second = _detect_once(market["symbol"], 2, capture)
    assert second.status == S.PENDING_APPROVAL
    # A second approval in the same 30 s step uses the next step's code (django-otp accepts t+1 once).
    services.signal_approve(signal_id=second.pk, user=trader, otp_token=totp(device, 1))
    services.order_execute(signal_id=second.pk)

    third = _detect_once(market["symbol"], 3, capture)
    assert third.status == S.QUEUED
    assert sent_tasks[-1] == (ORDER_EXECUTE_TASK, [third.pk])
    services.order_execute(signal_id=third.pk)

    automation.refresh_from_db()
    assert (automation.approved_trade_count, automation.automatic_trade_count) == (2, 1)
    orders = {o.signal_id: o for o in Order.objects.all()}
    assert orders[first.pk].gated and orders[second.pk].gated and not orders[third.pk].gated
    assert {o.status for o in orders.values()} == {Order.Status.FILLED}
    for signal in (first, second, third):
        signal.refresh_from_db()
        assert signal.status == S.FILLED
    assert len(PaperBroker().all_orders()) == 3


def test_it_records_who_approved_with_which_device_and_the_order_hash(market):
    automation = make_automation(approval_threshold=5)
    trader, device = make_user("tina", "trader")
    signal = make_signal(automation)
    services.signal_approve(signal_id=signal.pk, user=trader, otp_token=totp(device))

    approval = Approval.objects.get(signal=signal)
    expected = order_hash(signal_id=signal.pk, automation_id=automation.pk, symbol="TEST-BTC", side="buy",
                          quantity=Decimal("0.50"), limit_price=Decimal("100.1"))
    assert (approval.user, approval.device_id, approval.order_hash) == (trader, device.persistent_id, expected)
    signal.refresh_from_db()
    assert signal.status == S.APPROVED
    event = AuditEvent.objects.filter(kind=AuditEvent.Kind.APPROVAL).latest("id")
    assert event.data["order_hash"] == expected and event.actor == trader


def test_an_approval_record_already_there_refuses_the_approval_and_changes_nothing(market):
    automation = make_automation(approval_threshold=5)
    trader, device = make_user("tina", "trader")
    other, other_device = make_user("otto", "trader")
    signal = make_signal(automation)
    # A decision row the signal's status does not show (written by hand, say): the insert clashes on the signal.
    Approval.objects.create(signal=signal, user=other, device_id=other_device.persistent_id, decision="approve",
                            order_hash="f" * 64, decided_at=timezone.now())
    with pytest.raises(DomainError) as refused:
        services.signal_approve(signal_id=signal.pk, user=trader, otp_token=totp(device))
    assert refused.value.code == "duplicate"
    signal.refresh_from_db()
    automation.refresh_from_db()
    assert signal.status == S.PENDING_APPROVAL and automation.approved_trade_count == 0
    assert list(Approval.objects.filter(signal=signal).values_list("user", flat=True)) == [other.pk]


@pytest.mark.parametrize("token", ["", "000000x", None])
def test_it_refuses_a_missing_otp(market, token):
    automation = make_automation(approval_threshold=5)
    trader, _ = make_user("tina", "trader")
    signal = make_signal(automation)
    with pytest.raises(DomainError) as exc:
        services.signal_approve(signal_id=signal.pk, user=trader, otp_token=token or "")
    assert exc.value.code == "otp_invalid"
    signal.refresh_from_db()
    assert signal.status == S.PENDING_APPROVAL
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.OTP_FAILED, actor=trader).count() == 1


def test_it_refuses_a_wrong_otp_and_then_throttles_the_device(market):
    automation = make_automation(approval_threshold=5)
    trader, device = make_user("tina", "trader")
    signal = make_signal(automation)
    good = totp(device)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    with pytest.raises(DomainError) as exc:
        services.signal_approve(signal_id=signal.pk, user=trader, otp_token=wrong)
    assert exc.value.status_code == 403
    device.refresh_from_db()
    # The failure survived the refusal: django-otp's throttle counter was committed.
    assert device.throttling_failure_count == 1
    # Right after a failure even the right code is refused (throttled), so guessing is slow.
    with pytest.raises(DomainError):
        services.signal_approve(signal_id=signal.pk, user=trader, otp_token=good)
    assert not Approval.objects.filter(signal=signal).exists()


def test_it_refuses_a_reused_otp(market):
    automation = make_automation(approval_threshold=5)
    trader, device = make_user("tina", "trader")
    first, second = make_signal(automation), make_signal(automation)
    code = totp(device)
    services.signal_approve(signal_id=first.pk, user=trader, otp_token=code)
    with pytest.raises(DomainError) as exc:
        services.signal_approve(signal_id=second.pk, user=trader, otp_token=code)
    assert exc.value.code == "otp_invalid"
    second.refresh_from_db()
    assert second.status == S.PENDING_APPROVAL


def test_it_refuses_an_expired_signal_even_before_the_sweep_marks_it(market):
    automation = make_automation(approval_threshold=5)
    trader, device = make_user("tina", "trader")
    signal = make_signal(automation, expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(DomainError) as exc:
        services.signal_approve(signal_id=signal.pk, user=trader, otp_token=totp(device))
    assert exc.value.code == "expired"
    assert "expired" in exc.value.message
    # The code was not consumed by a refused approval: it still works elsewhere.
    other = make_signal(automation)
    services.signal_approve(signal_id=other.pk, user=trader, otp_token=totp(device))


def test_it_refuses_a_signal_whose_price_moved_beyond_the_collar(market):
    automation = make_automation(approval_threshold=5)
    trader, device = make_user("tina", "trader")
    signal = make_signal(automation, limit_price="98.00")  # 209 bps below the 100.05 mid; default collar 100 bps.
    with pytest.raises(DomainError) as exc:
        services.signal_approve(signal_id=signal.pk, user=trader, otp_token=totp(device))
    assert exc.value.code == "stale"
    assert "collar" in exc.value.message


def test_it_refuses_approval_by_a_user_who_is_not_a_trader(market):
    automation = make_automation(approval_threshold=5)
    viewer, device = make_user("vic", "viewer")
    signal = make_signal(automation)
    with pytest.raises(DomainError) as exc:
        services.signal_approve(signal_id=signal.pk, user=viewer, otp_token=totp(device))
    assert exc.value.status_code == 403
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.PERMISSION_DENIED, actor=viewer).exists()
    signal.refresh_from_db()
    assert signal.status == S.PENDING_APPROVAL


def test_it_applies_the_four_eyes_rule(market):
    editor, editor_device = make_user("eddie", "trader")
    other, other_device = make_user("olga", "trader")
    automation = make_automation(approval_threshold=5, four_eyes=True, last_changed_by=editor)
    signal = make_signal(automation)
    with pytest.raises(DomainError) as exc:
        services.signal_approve(signal_id=signal.pk, user=editor, otp_token=totp(editor_device))
    assert exc.value.code == "four_eyes"
    services.signal_approve(signal_id=signal.pk, user=other, otp_token=totp(other_device))
    signal.refresh_from_db()
    assert signal.status == S.APPROVED


def test_it_rejects_only_with_a_reason(market):
    automation = make_automation(approval_threshold=5)
    trader, _ = make_user("tina", "trader")
    signal = make_signal(automation)
    with pytest.raises(DomainError) as exc:
        services.signal_reject(signal_id=signal.pk, user=trader, reason="  ")
    assert exc.value.status_code == 400
    services.signal_reject(signal_id=signal.pk, user=trader, reason="spread too wide")
    signal.refresh_from_db()
    assert signal.status == S.REJECTED
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.REJECTION, reason="spread too wide").exists()
    assert services.order_execute(signal_id=signal.pk) is None
    assert not Order.objects.exists()


def test_the_execute_worker_refuses_an_approved_signal_whose_order_changed(market):
    automation = make_automation(approval_threshold=5)
    trader, device = make_user("tina", "trader")
    signal = make_signal(automation)
    services.signal_approve(signal_id=signal.pk, user=trader, otp_token=totp(device))
    Signal.objects.filter(pk=signal.pk).update(quantity=Decimal("50"))  # Tampered behind the services' back.
    assert services.order_execute(signal_id=signal.pk) is None
    signal.refresh_from_db()
    assert signal.status == S.FAILED and "order hash" in signal.status_reason
    assert PaperBroker().all_orders() == []


def test_a_forged_execute_message_for_a_pending_or_ungated_signal_places_nothing(market):
    automation = make_automation(approval_threshold=5)
    pending = make_signal(automation)
    assert services.order_execute(signal_id=pending.pk) is None
    assert services.order_execute(signal_id=999_999) is None
    # A queued signal of an automation that still needs approvals is refused, not traded.
    queued = make_signal(automation, status=S.QUEUED)
    assert services.order_execute(signal_id=queued.pk) is None
    queued.refresh_from_db()
    assert queued.status == S.FAILED and "approval" in queued.status_reason
    assert PaperBroker().all_orders() == [] and not Order.objects.exists()


def test_gating_required_counts_only_approved_trades():
    auto = Automation(approval_threshold=2, approved_trade_count=1, automatic_trade_count=50)
    assert gating_required(auto)
    auto.approved_trade_count = 2
    assert not gating_required(auto)
    auto.require_approval = True
    assert gating_required(auto)

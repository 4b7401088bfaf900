from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from automations.models import Signal, SignalTransition
from automations.services import signal_create, signal_transition, signals_expire
from tests.automations.conftest import make_automation
from tests.automations.reference_transition import signal_transition_orm
from trading.api import DomainError

pytestmark = pytest.mark.django_db

S = Signal.Status
LEGAL = [
    (S.NEW, S.FILTERED),
    (S.NEW, S.PENDING_APPROVAL),
    (S.NEW, S.QUEUED),
    (S.PENDING_APPROVAL, S.APPROVED),
    (S.PENDING_APPROVAL, S.REJECTED),
    (S.PENDING_APPROVAL, S.EXPIRED),
    (S.QUEUED, S.ORDERED),
    (S.QUEUED, S.FAILED),
    (S.QUEUED, S.EXPIRED),
    (S.APPROVED, S.ORDERED),
    (S.APPROVED, S.FAILED),
    (S.APPROVED, S.EXPIRED),
    (S.ORDERED, S.FILLED),
    (S.ORDERED, S.FAILED),
]
LEGAL_SET = set(LEGAL)
ILLEGAL = [(a, b) for a in S.values for b in S.values if (a, b) not in LEGAL_SET]

# The shortest legal path from new to each state, to put a signal there honestly.
PATH = {
    S.NEW: [],
    S.FILTERED: [S.FILTERED],
    S.PENDING_APPROVAL: [S.PENDING_APPROVAL],
    S.QUEUED: [S.QUEUED],
    S.APPROVED: [S.PENDING_APPROVAL, S.APPROVED],
    S.REJECTED: [S.PENDING_APPROVAL, S.REJECTED],
    S.EXPIRED: [S.PENDING_APPROVAL, S.EXPIRED],
    S.ORDERED: [S.QUEUED, S.ORDERED],
    S.FILLED: [S.QUEUED, S.ORDERED, S.FILLED],
    S.FAILED: [S.QUEUED, S.FAILED],
}


def new_signal(automation=None, **context):
    automation = automation or make_automation()
    return signal_create(
        automation=automation, side="buy", quantity=Decimal("0.01"), limit_price=Decimal("100.1"), reason="test", **context
    )


def signal_in(status):
    signal = new_signal()
    for step in PATH[status]:
        signal_transition(signal=signal, to_status=step, actor_label="test")
    return signal


@pytest.mark.parametrize(("src", "dst"), LEGAL)
def test_it_allows_each_legal_transition_and_records_it(src, dst):
    signal = signal_in(src)
    events_before = AuditEvent.objects.filter(kind=AuditEvent.Kind.SIGNAL_STATE).count()
    seq_before = signal.sequence

    signal_transition(signal=signal, to_status=dst, actor_label="tester", reason="because")

    stored = Signal.objects.get(pk=signal.pk)
    assert stored.status == dst
    assert stored.sequence > seq_before
    last = SignalTransition.objects.filter(signal=signal).last()
    assert (last.from_status, last.to_status, last.actor_label, last.reason) == (src, dst, "tester", "because")
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.SIGNAL_STATE).count() == events_before + 1
    event = AuditEvent.objects.filter(kind=AuditEvent.Kind.SIGNAL_STATE).order_by("-id").first()
    assert event.data["from"] == src and event.data["to"] == dst and event.subject_id == str(signal.pk)


@pytest.mark.parametrize(("src", "dst"), ILLEGAL)
def test_it_refuses_every_illegal_transition_and_changes_nothing(src, dst):
    signal = signal_in(src)
    transitions = SignalTransition.objects.filter(signal=signal).count()

    with pytest.raises(DomainError):
        signal_transition(signal=signal, to_status=dst, actor_label="tester")

    assert Signal.objects.get(pk=signal.pk).status == src
    assert SignalTransition.objects.filter(signal=signal).count() == transitions


def test_it_records_the_birth_of_a_signal_as_a_transition_from_nothing():
    signal = new_signal()
    first = SignalTransition.objects.get(signal=signal)
    assert (first.from_status, first.to_status) == ("", S.NEW)
    assert signal.expires_at == signal.created_at + timedelta(seconds=120)


def test_it_refuses_to_approve_a_pending_signal_past_its_expiry_even_before_the_sweep():
    past = timezone.now() - timedelta(seconds=300)
    signal = new_signal(created_at=past, expires_at=past + timedelta(seconds=120))
    signal_transition(signal=signal, to_status=S.PENDING_APPROVAL, actor_label="test")

    with pytest.raises(DomainError, match="expired"):
        signal_transition(signal=signal, to_status=S.APPROVED, actor_label="trader")
    assert Signal.objects.get(pk=signal.pk).status == S.PENDING_APPROVAL


def test_it_expires_only_pending_signals_past_their_time_and_they_can_never_be_approved():
    automation = make_automation(signal_expiry_seconds=60)
    now = timezone.now()
    old = new_signal(automation, created_at=now - timedelta(seconds=61))
    fresh = new_signal(automation, created_at=now - timedelta(seconds=30))
    for signal in (old, fresh):
        signal_transition(signal=signal, to_status=S.PENDING_APPROVAL, actor_label="test")

    assert signals_expire(now=now) == 1

    assert Signal.objects.get(pk=old.pk).status == S.EXPIRED
    assert Signal.objects.get(pk=fresh.pk).status == S.PENDING_APPROVAL
    assert SignalTransition.objects.filter(signal=old).last().actor_label == "signal-expiry"
    with pytest.raises(DomainError):
        signal_transition(signal=old, to_status=S.APPROVED, actor_label="trader")


def test_it_gives_each_change_a_larger_push_sequence():
    signal = new_signal()
    first = signal.sequence
    signal_transition(signal=signal, to_status=S.PENDING_APPROVAL, actor_label="test")
    second = signal.sequence
    signal_transition(signal=signal, to_status=S.REJECTED, actor_label="test")
    assert first < second < signal.sequence
    assert list(SignalTransition.objects.filter(signal=signal).values_list("sequence", flat=True)) == [
        first,
        second,
        signal.sequence,
    ]


def test_a_transition_on_a_row_the_caller_holds_locked_skips_the_second_read() -> None:
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    signal = new_signal()
    with transaction.atomic():
        held = Signal.objects.select_for_update().get(pk=signal.pk)
        with CaptureQueriesContext(connection) as queries:
            signal_transition(signal=held, to_status=S.PENDING_APPROVAL, actor_label="test", reason="held", locked=True)
    assert not any("FOR UPDATE" in q["sql"] and "automations_signal" in q["sql"] for q in queries.captured_queries)
    signal.refresh_from_db()
    assert signal.status == S.PENDING_APPROVAL and held.status == S.PENDING_APPROVAL
    assert SignalTransition.objects.filter(signal=signal, to_status=S.PENDING_APPROVAL).count() == 1
    # The legality is still judged on the held row: a second move from the same state is refused.
    with transaction.atomic(), pytest.raises(DomainError):
        held = Signal.objects.select_for_update().get(pk=signal.pk)
        signal_transition(signal=held, to_status=S.NEW, actor_label="test", reason="back", locked=True)


@pytest.mark.django_db(transaction=True)
def test_locked_true_outside_a_transaction_is_refused() -> None:
    signal = new_signal()
    with pytest.raises(RuntimeError):
        signal_transition(signal=signal, to_status=S.PENDING_APPROVAL, actor_label="test", reason="x", locked=True)


def _story(signal, messages, base):
    """What a signal's moves left: its row, transitions, audit events and pushes, push numbers made relative."""
    stored = Signal.objects.get(pk=signal.pk)
    events = AuditEvent.objects.filter(subject_type="automations.signal", subject_id=str(signal.pk)).order_by("id")
    return {
        "signal": (stored.status, stored.status_reason, stored.decided_at is not None, stored.sequence - base),
        "transitions": [(t.from_status, t.to_status, t.actor_label, t.reason, t.sequence - base, t.at is not None)
                        for t in SignalTransition.objects.filter(signal=signal).order_by("id")],
        "events": [(e.kind, e.actor_id, e.actor_label, e.reason,
                    {**e.data, "sequence": e.data["sequence"] - base, "automation_id": e.data["automation_id"] > 0})
                   for e in events],
        "pushes": [{**m, "seq": m["seq"] - base,
                    "signal": {**m["signal"], "id": None, "automation_id": None, "automation_name": None,
                               "created_at": None, "expires_at": None, "decided_at": m["signal"]["decided_at"] is not None,
                               "sequence": m["signal"]["sequence"] - base}}
                   for m in messages],
    }


@pytest.mark.parametrize("locked", [False, True])
@pytest.mark.parametrize("status", [S.APPROVED, S.FILLED, S.FAILED, S.EXPIRED, S.REJECTED])
def test_a_transition_writes_the_rows_and_pushes_of_the_orm_reference(monkeypatch, django_capture_on_commit_callbacks,
                                                                        status, locked):
    from django.db import transaction

    from audit.verify import verify_audit
    from automations import services

    stories = []
    for move in (signal_transition_orm, signal_transition):
        messages: list[dict] = []
        monkeypatch.setattr(services, "signal_push", messages.append)
        signal = new_signal(make_automation(name=f"auto-{move.__name__}"))
        signal_transition(signal=signal, to_status=PATH[status][0], actor_label="test")
        base = signal.sequence
        messages.clear()
        for step in PATH[status][1:]:
            with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
                held = Signal.objects.select_for_update().get(pk=signal.pk) if locked else signal
                move(signal=held, to_status=step, actor_label="tester", reason=f"to {step}", locked=locked)
                if locked:
                    signal = held
        with pytest.raises(DomainError):
            move(signal=Signal.objects.get(pk=signal.pk), to_status=S.NEW, actor_label="tester")
        stories.append(_story(signal, messages, base))
    reference, new = stories
    assert len(new["transitions"]) == len(PATH[status]) + 1 and len(new["pushes"]) == len(PATH[status]) - 1
    assert new == reference
    assert verify_audit().ok


@pytest.mark.django_db(transaction=True)
def test_concurrent_transitions_keep_one_audit_chain() -> None:
    """The chain's lock and head ride in the move's round trip: the head read is a statement of its own, after
    the lock, so each writer chains onto the event the previous holder committed."""
    import threading

    from django.db import connection

    from audit.verify import verify_audit

    signals = [new_signal(make_automation(name=f"auto-race-{i}")) for i in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(signals))

    def walk(signal: Signal) -> None:
        try:
            start.wait(10)
            for step in (S.PENDING_APPROVAL, S.APPROVED, S.ORDERED, S.FILLED):
                signal_transition(signal=signal, to_status=step, actor_label="race")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=walk, args=(signal,)) for signal in signals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert all(Signal.objects.get(pk=s.pk).status == S.FILLED for s in signals)
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.SIGNAL_STATE, actor_label="race").count() == 16
    assert verify_audit().ok

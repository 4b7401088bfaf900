"""The detect worker's signal statement takes the audit chain's lock and head last, after its row locks."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction

from audit.models import AuditEvent
from audit.services import _CHAIN_LOCK_KEY, audit_event_record
from automations.models import Automation, Signal
from automations.services import RoutedSignal, signals_create_routed
from tests.audit.test_chain_lock_head import raw_connection, wait_until_blocked_on_advisory_lock
from tests.automations.conftest import BASE_NS, make_automation

S = Signal.Status


def routed(automation: Automation, ts_ns: int) -> RoutedSignal:
    return RoutedSignal(automation=automation, side="buy", quantity=Decimal("0.01"), limit_price=Decimal("100.10"),
                        reason="why", to_status=S.QUEUED, status_reason="routed", context={"market_ts_ns": ts_ns})


@pytest.mark.django_db(transaction=True)
def test_the_signal_statement_holds_the_automations_row_before_it_waits_for_the_chain_and_chains_after_its_holder():
    automation = make_automation()
    audit_event_record(kind=AuditEvent.Kind.SYSTEM, actor_label="test", reason="genesis")
    result: dict[str, Any] = {}
    holder = raw_connection()
    # The chain's holder: another writer with the lock, which appends and commits while detection waits.
    holder.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
    ready = threading.Event()

    def detect() -> None:
        try:
            result["pid"] = connection.cursor().connection.info.backend_pid
            ready.set()
            with transaction.atomic():
                result["signals"] = signals_create_routed(signals=[routed(automation, BASE_NS)], count_automatic=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc
            ready.set()
        finally:
            connection.close()

    thread = threading.Thread(target=detect)
    thread.start()
    try:
        assert ready.wait(10)
        wait_until_blocked_on_advisory_lock(result["pid"])
        # While detection waits for the chain, the automation's counter row is already its: the row lock came first.
        with raw_connection() as probe, pytest.raises(psycopg.errors.LockNotAvailable):
            probe.execute("SELECT 1 FROM automations_automation WHERE id = %s FOR UPDATE NOWAIT", [automation.pk])
        (holders_hash,) = holder.execute(
            "INSERT INTO audit_auditevent (at, actor_label, kind, subject_type, subject_id, reason, data, prev_hash, "
            "hash) SELECT now(), 'holder', 'system', '', '', '', '{}', hash, md5(hash) || md5(hash) "
            "FROM audit_auditevent ORDER BY id DESC LIMIT 1 RETURNING hash").fetchone()
        holder.commit()
    finally:
        holder.close()  # A failed check must not leave detection waiting for ever.
        thread.join(10)
    assert "error" not in result, result
    (signal,) = result["signals"]
    events = list(AuditEvent.objects.order_by("id").values_list("actor_label", "prev_hash", "hash", "data"))
    # Detection's two events follow the holder's, the first chained to the hash the holder committed.
    assert [e[0] for e in events[-3:]] == ["holder", "worker-detect", "worker-detect"]
    assert events[-2][1] == holders_hash
    assert events[-1][1] == events[-2][2]
    assert [e[3]["to"] for e in events[-2:]] == [S.NEW, S.QUEUED]
    assert Automation.objects.get(pk=automation.pk).automatic_trade_count == 1
    assert Signal.objects.get(pk=signal.pk).status == S.QUEUED

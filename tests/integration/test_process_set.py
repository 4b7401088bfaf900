"""The real process set: supervisord, web, feed, three Celery workers, beat.

One stack for the module (starting it costs tens of seconds on two cores);
the tests run in file order and leave it running for the next.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from ingestion.rawstore import RawStore
from tests.integration.stack import Stack, drop_database, make_stack, wait_for

pytestmark = pytest.mark.integration

BROKER_ENV = {"FP_BROKER_API_KEY": "it-key-7f3a", "FP_BROKER_API_SECRET": "it-secret-91bd"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    stack = make_stack(tmp_path_factory.mktemp("stack"), extra_env={
        **BROKER_ENV,
        # Inject malformed and crossed messages into the simulated feed, so the
        # quarantine path runs in the real processes.
        "FEED_MALFORMED_PROB": "0.02",
        "FEED_CROSSED_PROB": "0.01",
    })
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        print(stack.log.read_text()[-3000:])
        drop_database(stack.database_url)


def quote_count(stack: Stack) -> int:
    return stack.scalar("SELECT count(*) FROM ingestion_quote")


def signal_count(stack: Stack, since_epoch: float = 0.0) -> int:
    return stack.scalar("SELECT count(*) FROM automations_signal WHERE created_at >= to_timestamp(%s)", (since_epoch,))


def test_simulated_ticks_become_stored_quotes_and_then_signals(stack: Stack) -> None:
    wait_for(lambda: quote_count(stack) > 50, timeout=60, what="quotes to be stored")
    wait_for(lambda: signal_count(stack) > 0, timeout=120, what="the detect worker to create a signal")
    symbols = {row[0] for row in stack.sql("SELECT DISTINCT symbol FROM ingestion_quote")}
    assert symbols == {"SIM-BTCUSD", "SIM-ETHUSD", "SIM-XRPUSD"}


def test_a_malformed_feed_message_is_quarantined_with_its_reason_and_the_feed_goes_on(stack: Stack) -> None:
    rows = wait_for(lambda: stack.sql("SELECT code, reason, raw_seq FROM ingestion_quarantinedmessage WHERE raw_stream = 'sim'"),
                    timeout=60, what="a quarantined message")
    assert all(reason for _, reason, _ in rows)
    last_bad = max(seq for _, _, seq in rows)
    # The feed went on: quotes stored from raw records after the bad one.
    wait_for(lambda: stack.scalar("SELECT count(*) FROM ingestion_quote WHERE raw_seq > %s", (last_bad,)) > 5,
             timeout=30, what="quotes after the quarantined message")
    assert stack.proc_environ(stack.pid("feed"))  # the feed process is alive


def test_broker_credentials_are_only_in_the_execute_workers_environment(stack: Stack) -> None:
    seen = {}
    for name in ("web", "feed", "worker-ingest", "worker-detect", "worker-execute", "beat"):
        environ = stack.proc_environ(stack.pid(name))
        seen[name] = {key for key in BROKER_ENV if environ.get(key) == BROKER_ENV[key]}
        assert environ.get("FP_PROCESS_NAME") == name
    assert seen == {"web": set(), "feed": set(), "worker-ingest": set(), "worker-detect": set(),
                    "worker-execute": set(BROKER_ENV), "beat": set()}


def test_killing_the_detect_worker_loses_no_tick_and_detection_resumes_after_restart(stack: Stack) -> None:
    old_pid = stack.pid("worker-detect")
    quotes_before = quote_count(stack)
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.time()

    # Ingestion carries on while detection is down.
    wait_for(lambda: quote_count(stack) > quotes_before + 20, timeout=30, what="ingestion to continue")

    # The supervisor brings the worker back under a new pid.
    new_pid = wait_for(lambda: (p := stack.pid("worker-detect")) and p != old_pid and "RUNNING" in stack.supervisorctl("status", "worker-detect") and p,
                       timeout=60, what="the supervisor to restart the detect worker")
    assert new_pid != old_pid
    wait_for(lambda: signal_count(stack, since_epoch=killed_at + 1) > 0, timeout=120,
             what="detection to resume after the restart")

    # Stop the feed, let ingest drain, and count: every quote in the raw store
    # is stored, except those quarantined with a reason.
    stack.supervisorctl("stop", "feed")
    stable = {"last": -1, "since": time.monotonic()}

    def drained() -> bool:
        now = quote_count(stack)
        if now != stable["last"]:
            stable.update(last=now, since=time.monotonic())
        return time.monotonic() - stable["since"] > 4

    wait_for(drained, timeout=60, what="ingest to drain")
    quarantined = {row[0] for row in stack.sql("SELECT raw_seq FROM ingestion_quarantinedmessage WHERE raw_stream = 'sim'")}
    raw_quotes = 0
    for record in RawStore(stack.var_dir / "raw").read("sim"):
        try:
            message = json.loads(record.payload)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("type") == "quote" and record.seq not in quarantined:
            raw_quotes += 1
    assert raw_quotes > 0
    assert quote_count(stack) == raw_quotes
    stack.supervisorctl("start", "feed")


def test_health_answers_503_within_30s_of_a_process_dying_and_200_after_restart(stack: Stack) -> None:
    wait_for(lambda: stack.health()[0] == 200, timeout=60, what="a healthy stack")
    stack.supervisorctl("stop", "worker-ingest")
    stopped_at = time.monotonic()
    status, body = wait_for(lambda: (r := stack.health())[0] == 503 and r, timeout=45, interval=1, what="/health to answer 503")
    elapsed = time.monotonic() - stopped_at
    assert elapsed <= 31, f"/health took {elapsed:.1f}s to notice"
    assert body["processes"]["worker-ingest"]["ok"] is False
    assert body["processes"]["worker-detect"]["ok"] is True
    stack.supervisorctl("start", "worker-ingest")
    wait_for(lambda: stack.health()[0] == 200, timeout=60, interval=1, what="/health to answer 200 again")


UNGATE = """
from django.contrib.auth import get_user_model
from automations.models import Automation
from automations.services import automation_update
admin = get_user_model().objects.get(username="admin")
for automation in Automation.objects.all():
    automation_update(automation=automation, actor=admin, reason="integration test: trade without approval",
                      changes={"approval_threshold": 0})
"""


def open_orders(stack: Stack) -> int:
    return stack.scalar("SELECT count(*) FROM execution_order WHERE status IN ('pending','submitting','submitted','partially_filled')")


def test_the_kill_switch_stops_a_running_pipeline_and_leaves_no_open_order(stack: Stack) -> None:
    stack.manage("shell", "-c", UNGATE)
    wait_for(lambda: stack.scalar("SELECT count(*) FROM execution_order") > 0, timeout=120,
             what="the pipeline to place orders automatically")

    result = stack.manage("killswitch", "on", "--reason", "integration drill", "--user", "risk", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    engaged_at = time.time()

    wait_for(lambda: open_orders(stack) == 0, timeout=30, what="every open order to be cancelled or settled")
    assert stack.scalar("SELECT count(*) FROM automations_automation WHERE status <> 'halted'") == 0
    orders_after_kill = stack.scalar("SELECT count(*) FROM execution_order")
    quotes_after_kill = quote_count(stack)
    time.sleep(10)
    # Market data keeps flowing, but nothing trades while the switch is on.
    assert quote_count(stack) > quotes_after_kill
    assert stack.scalar("SELECT count(*) FROM execution_order") == orders_after_kill
    assert open_orders(stack) == 0
    assert stack.scalar("SELECT count(*) FROM automations_signal WHERE status IN ('pending_approval','queued','approved')") == 0
    assert stack.scalar("SELECT engaged FROM risk_killswitch WHERE id = 1") is True
    assert stack.scalar("SELECT count(*) FROM risk_alert WHERE kind = 'kill_switch_on' AND created_at >= to_timestamp(%s)",
                        (engaged_at - 5,)) == 1

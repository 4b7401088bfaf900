from __future__ import annotations

import pytest

from automations.models import Automation
from risk.services import automations_halt_all
from tests.risk.conftest import make_automation

pytestmark = pytest.mark.django_db


def test_a_halt_keeps_a_long_breaker_message_whole_in_the_history(sent_tasks) -> None:
    automation = make_automation("long-reason")
    # A global breaker's message names the limit, value, threshold and order;
    # it easily passes simple-history's default 100-character reason column.
    reason = " / ".join(["global limit: price collar 161.3 bps exceeds 100 bps on order fp-9 buy 0.01 SIM-BTCUSD @ 50810.2"] * 3)
    assert len(reason) > 100
    automations_halt_all(reason=reason, actor_label="worker-execute")
    automation.refresh_from_db()
    assert automation.status == Automation.Status.HALTED
    assert automation.history.latest().history_change_reason == reason

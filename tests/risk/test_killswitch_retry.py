from __future__ import annotations

import pytest
from django.db import OperationalError

from automations.models import Automation
from risk import services
from risk.selectors import kill_switch_engaged
from tests.risk.conftest import make_automation

pytestmark = pytest.mark.django_db(transaction=True)


class _Deadlock(Exception):
    sqlstate = "40P01"


def test_the_kill_switch_sweep_retries_a_deadlock_with_a_busy_pipeline_and_still_halts(monkeypatch, sent_tasks):
    automation = make_automation("busy")
    real_halt = services.automations_halt_all
    calls = {"n": 0}

    def deadlock_once(**kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            error = OperationalError("deadlock detected")
            error.__cause__ = _Deadlock()
            raise error
        return real_halt(**kwargs)

    monkeypatch.setattr(services, "automations_halt_all", deadlock_once)
    services.kill_switch_engage(actor=None, reason="drill with a busy pipeline")
    assert calls["n"] == 2
    assert kill_switch_engaged()
    automation.refresh_from_db()
    assert automation.status == Automation.Status.HALTED


def test_other_database_errors_are_not_retried(monkeypatch, sent_tasks):
    make_automation("broken")

    def broken(**kwargs):
        raise OperationalError("connection lost")

    monkeypatch.setattr(services, "automations_halt_all", broken)
    with pytest.raises(OperationalError):
        services.kill_switch_engage(actor=None, reason="drill")
    # Trading is stopped all the same: the switch committed before the sweep.
    assert kill_switch_engaged()

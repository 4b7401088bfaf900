"""The emergency-pause runbook's commands run and do what the runbook says."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import pytest
from django.core.management import call_command

from automations.models import Automation
from risk.selectors import kill_switch_engaged
from tests.risk.conftest import make_automation
from trading.queues import ORDERS_CANCEL_ALL_TASK

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("celery_eager")]

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbooks" / "emergency-pause.md"


def runbook_commands() -> list[list[str]]:
    text = RUNBOOK.read_text()
    blocks = re.findall(r"```shell\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            if line.strip().startswith("python manage.py "):
                commands.append(shlex.split(line.strip())[2:])
    return commands


def run(args: list[str]) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_the_runbook_names_stop_check_and_resume_commands_in_that_order():
    names = [" ".join(c[:2]) for c in runbook_commands()]
    assert names.index("killswitch on") < names.index("killswitch status") < names.index("killswitch off")
    assert "risk_status --json" in [" ".join(c[:2]) for c in runbook_commands()]


def test_every_runbook_command_runs_and_has_the_documented_effect(sent_tasks, django_capture_on_commit_callbacks):
    a = make_automation("alpha")
    b = make_automation("beta")
    for args in runbook_commands():
        with django_capture_on_commit_callbacks(execute=True):
            output = run(args)
        if args[:2] == ["killswitch", "on"]:
            assert kill_switch_engaged()
            assert set(Automation.objects.values_list("status", flat=True)) == {"halted"}
            assert [name for name, _ in sent_tasks] == [ORDERS_CANCEL_ALL_TASK]
        elif args[:2] == ["killswitch", "status"]:
            assert "kill switch: ENGAGED" in output
        elif args == ["risk_status"] and kill_switch_engaged():
            assert "kill switch: ENGAGED" in output
            assert re.search(r"alpha\s+halted", output) and re.search(r"beta\s+halted", output)
        elif args[:2] == ["risk_status", "--json"]:
            assert '"engaged": true' in output
        elif args[:2] == ["killswitch", "off"]:
            assert not kill_switch_engaged()
            assert "kill switch: off" in output
    assert not kill_switch_engaged()
    # Releasing leaves automations halted: resuming is a separate, deliberate step.
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.status, b.status) == ("halted", "halted")

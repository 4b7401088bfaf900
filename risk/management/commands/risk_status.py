"""``python manage.py risk_status [--json]``: the kill switch, tripped breakers, automations and counters."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from automations.models import Automation
from risk.selectors import alerts_recent, breaker_trips_open, kill_switch_state, risk_states


def risk_status_report() -> dict[str, Any]:
    switch = kill_switch_state()
    states = {s.automation_id: s for s in risk_states()}
    global_state = states.get(None)
    return {
        "kill_switch": {
            "engaged": switch.engaged, "reason": switch.reason, "changed_by": switch.changed_by,
            "changed_at": switch.changed_at.isoformat() if switch.changed_at else None,
        },
        "breakers_open": [
            {"id": t.pk, "scope": t.automation.name if t.automation else "global", "limit": t.limit, "value": t.value,
             "threshold": t.threshold, "tripped_at": t.tripped_at.isoformat(), "message": t.message}
            for t in breaker_trips_open()
        ],
        # The global open-order count is kept on the global row only while a
        # global stateful limit is set (see risk.services.pretrade_check);
        # the sum of the automations' counts is always the true one.
        "global": {**_state_dict(global_state),
                   "open_orders": sum(s.open_orders for s in states.values() if s.automation_id is not None)},
        "automations": [
            {"id": a.pk, "name": a.name, "status": a.status, "mode": a.mode, **_state_dict(states.get(a.pk))}
            for a in Automation.objects.order_by("name")
        ],
        "alerts_recent": [
            {"id": a.pk, "kind": a.kind, "severity": a.severity, "subject": a.subject,
             "created_at": a.created_at.isoformat(), "delivery": a.delivery_state}
            for a in alerts_recent(limit=10)
        ],
    }


def _state_dict(state: Any) -> dict[str, Any]:
    if state is None:
        return {"open_orders": 0, "daily_pnl": "0", "consecutive_losses": 0, "tripped": False}
    return {
        "open_orders": state.open_orders, "daily_pnl": format(state.daily_realized_pnl.normalize(), "f"),
        "consecutive_losses": state.consecutive_losses, "tripped": state.tripped,
    }


class Command(BaseCommand):
    help = "Show the kill switch, open breaker trips, each automation's status and risk counters, recent alerts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")

    def handle(self, *args: Any, **options: Any) -> None:
        report = risk_status_report()
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
            return
        ks = report["kill_switch"]
        if ks["engaged"]:
            self.stdout.write(f"kill switch: ENGAGED since {ks['changed_at']} by {ks['changed_by']}: {ks['reason']}")
        else:
            self.stdout.write("kill switch: off")
        trips = report["breakers_open"]
        self.stdout.write(f"tripped breakers: {len(trips)}")
        for t in trips:
            self.stdout.write(f"  #{t['id']} {t['scope']}: {t['limit']} value {t['value']} / limit {t['threshold']} "
                              f"at {t['tripped_at']} - {t['message']}")
        g = report["global"]
        self.stdout.write(f"global: open orders {g['open_orders']}, day PnL {g['daily_pnl']}, tripped {g['tripped']}")
        by_status: dict[str, int] = {}
        for a in report["automations"]:
            by_status[a["status"]] = by_status.get(a["status"], 0) + 1
        summary = ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())) or "none"
        self.stdout.write(f"automations: {summary}")
        for a in report["automations"]:
            self.stdout.write(f"  {a['name']:<24} {a['status']:<7} {a['mode']:<5} open orders {a['open_orders']}, "
                              f"day PnL {a['daily_pnl']}, losing streak {a['consecutive_losses']}, tripped {a['tripped']}")
        self.stdout.write("recent alerts:")
        for al in report["alerts_recent"]:
            self.stdout.write(f"  #{al['id']} [{al['severity']}] {al['subject']} ({al['delivery']})")

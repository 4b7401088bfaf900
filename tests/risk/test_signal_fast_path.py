"""The one-statement signal-rate path (``risk_signal_record``) against the locked reference path.

Over a grid of windows, limits and trading days on both scopes, the
function records a signal exactly when the reference records it, and leaves
both risk-state rows exactly as the reference leaves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from risk.models import RiskState
from risk.services import _signal_rate_check_locked, _today, risk_limit_set, signal_rate_check
from tests.risk.conftest import make_automation
from tests.risk.test_pretrade_fast_path import NO_LIMITS, _set_state

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("celery_eager")]
D = Decimal
COMPARED = ("trading_day", "open_orders", "daily_realized_pnl", "daily_peak_pnl", "consecutive_losses",
            "slippage_breaches_today", "signal_times", "order_times", "tripped")


@dataclass
class Case:
    name: str
    limits: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


def _cases(now_s: float) -> list[Case]:
    yesterday = timezone.now().date() - timedelta(days=1)
    old, recent = [now_s - 4000, now_s - 3700], [now_s - 100, now_s - 50, now_s - 10]
    return [
        Case("no limits, empty"),
        Case("no limits, old entries pruned", state={"signal_times": old + recent}),
        Case("no limits keeps the newest 100", state={"signal_times": [now_s - 3000 + i for i in range(150)]}),
        Case("below the limit", {"max_signals_per_hour": 4}, {"signal_times": recent}),
        Case("at the limit", {"max_signals_per_hour": 3}, {"signal_times": recent}),
        Case("at the limit counting only the hour", {"max_signals_per_hour": 3}, {"signal_times": old + recent[1:]}),
        Case("zero limit", {"max_signals_per_hour": 0}),
        Case("order window pruned, rate limit keeps 2", {"max_orders_per_minute": 2},
             {"order_times": [now_s - 90, now_s - 30, now_s - 20, now_s - 5]}),
        Case("order window without a rate limit keeps none", state={"order_times": [now_s - 30, now_s - 5]}),
        Case("a new day rolls the record", {"max_signals_per_hour": 9},
             {"trading_day": yesterday, "daily_realized_pnl": D("-50"), "daily_peak_pnl": D("20"),
              "slippage_breaches_today": 3, "consecutive_losses": 2, "open_orders": 1}),
    ]


def _rows(automation_id: int) -> list[tuple[Any, ...]]:
    rows = RiskState.objects.filter(automation_id=automation_id) | RiskState.objects.filter(automation__isnull=True)
    return [tuple(getattr(r, f) for f in COMPARED) for r in rows.order_by("automation_id")]


def _function_outcome(automation_id: int, now: Any) -> tuple[bool, list[tuple[Any, ...]]]:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT risk_signal_record(%s, %s, %s)", [automation_id, _today(now), now.timestamp()])
            (recorded,) = cursor.fetchone()
        rows = _rows(automation_id)
        transaction.set_rollback(True)
    return bool(recorded), rows


def _reference_outcome(automation_id: int, now: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[bool, list[tuple[Any, ...]]]:
    monkeypatch.setattr(timezone, "now", lambda: now)
    try:
        with transaction.atomic():
            breach = _signal_rate_check_locked(automation_id=automation_id, actor_label="test")
            rows = _rows(automation_id)
            transaction.set_rollback(True)
    finally:
        monkeypatch.undo()
    return breach is None, rows


@pytest.mark.parametrize("scope", ["automation", "global"])
def test_the_sql_signal_path_records_and_writes_exactly_what_the_reference_does(
    scope: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_automation()
    risk_limit_set(actor="test", reason="grid", **NO_LIMITS)
    risk_limit_set(automation=a, actor="test", reason="grid", **NO_LIMITS)
    assert signal_rate_check(automation=a.pk) is None  # Creates the scope's rows.
    now = timezone.now()
    outcomes = []
    for case in _cases(now.timestamp()):
        target = a if scope == "automation" else None
        risk_limit_set(automation=target, actor="test", reason=case.name, **{**NO_LIMITS, **case.limits})
        _set_state(a.pk, {})
        _set_state(None, {})
        _set_state(target.pk if target else None, case.state)
        expected = _reference_outcome(a.pk, now, monkeypatch)
        got = _function_outcome(a.pk, now)
        outcomes.append(expected[0])
        assert got[0] == expected[0], case.name
        if expected[0]:
            assert got[1] == expected[1], case.name
        else:
            # The function decides only "passes": a refusal changes nothing (the reference then words and trips).
            assert got[1] == _rows(a.pk), case.name
    assert set(outcomes) == {True, False}


def test_the_signal_check_falls_back_to_the_reference_for_a_scope_without_rows() -> None:
    a = make_automation()
    assert not RiskState.objects.filter(automation=a).exists()
    assert signal_rate_check(automation=a) is None
    assert len(RiskState.objects.get(automation=a).signal_times) == 1
    assert signal_rate_check(automation=a.pk) is None  # The fast path now.
    assert len(RiskState.objects.get(automation=a).signal_times) == 2

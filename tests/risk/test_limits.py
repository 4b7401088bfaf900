"""Every limit through the database path: refused at the threshold, accepted just below it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from automations.models import Automation
from risk.models import Alert, BreakerTrip, RiskLimit, RiskState
from risk.services import order_closed, pretrade_check, risk_limit_set, signal_rate_check
from tests.risk.conftest import make_automation
from trading.api import DomainError

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("celery_eager")]
D = Decimal


def limits(automation: Automation | None, **values: object) -> None:
    risk_limit_set(automation=automation, actor="test", reason="test limits", **values)


def check(automation: Automation, qty: str = "1", price: str | None = "100", mid: str | None = "100", side: str = "buy"):
    return pretrade_check(
        automation_id=automation.pk, side=side, quantity=D(qty),
        limit_price=D(price) if price is not None else None, mid=D(mid) if mid is not None else None,
    )


def assert_tripped(automation: Automation, limit: str) -> None:
    automation.refresh_from_db()
    assert automation.status == Automation.Status.PAUSED
    trip = BreakerTrip.objects.get(automation=automation, limit=limit)
    assert trip.reset_at is None
    assert RiskState.objects.get(automation=automation).tripped is True
    assert Alert.objects.filter(kind="breaker_trip").exists()
    assert Alert.objects.filter(kind="auto_pause").exists()


def test_it_refuses_a_limit_change_without_a_reason():
    a = make_automation()
    with pytest.raises(DomainError):
        risk_limit_set(automation=a, actor="test", reason="  ", max_open_orders=1)
    assert not RiskLimit.objects.exists()


def test_it_versions_a_limit_change_with_its_reason_and_audits_it():
    a = make_automation()
    risk_limit_set(automation=a, actor="alice", reason="tighten before CPI", max_open_orders=3)
    risk_limit_set(automation=a, actor="alice", reason="back to normal", max_open_orders=5)
    row = RiskLimit.objects.get(automation=a)
    assert row.max_open_orders == 5
    reasons = list(row.history.order_by("history_id").values_list("history_change_reason", "max_open_orders"))
    assert reasons == [("tighten before CPI", 3), ("back to normal", 5)]
    events = AuditEvent.objects.filter(kind="limit_change").order_by("id")
    assert [e.reason for e in events] == ["tighten before CPI", "back to normal"]
    assert events.last().data["before"] == {"max_open_orders": 3}


def test_it_refuses_a_negative_or_unknown_limit():
    with pytest.raises(DomainError):
        risk_limit_set(actor="t", reason="r", max_open_orders=-1)
    with pytest.raises(DomainError):
        risk_limit_set(actor="t", reason="r", max_bananas=1)


def test_max_open_orders_passes_below_and_refuses_at_the_limit():
    a = make_automation()
    limits(a, max_open_orders=2)
    assert check(a) == []
    assert check(a) == []  # open orders 1 -> 2: just below the limit passes
    breaches = check(a)  # open orders 2: a third would exceed
    assert [b.limit for b in breaches] == ["max_open_orders"]
    assert "would exceed the limit of 2" in breaches[0].message
    assert RiskState.objects.get(automation=a).open_orders == 2
    assert_tripped(a, "max_open_orders")


def test_max_orders_per_minute_counts_orders_even_after_they_close():
    a = make_automation()
    limits(a, max_orders_per_minute=2)
    assert check(a) == []
    order_closed(automation_id=a.pk, realized_pnl=D(0))
    assert check(a) == []
    order_closed(automation_id=a.pk, realized_pnl=D(0))
    assert RiskState.objects.get(automation=a).open_orders == 0
    assert [b.limit for b in check(a)] == ["max_orders_per_minute"]
    assert_tripped(a, "max_orders_per_minute")


def test_orders_older_than_a_minute_leave_the_window():
    a = make_automation()
    limits(a, max_orders_per_minute=1)
    assert check(a) == []
    state = RiskState.objects.get(automation=a)
    state.order_times = [t - 61 for t in state.order_times]
    state.save()
    assert check(a) == []


def test_max_order_qty_is_inclusive():
    a = make_automation()
    limits(a, max_order_qty=D("2"))
    assert check(a, qty="2") == []
    breaches = check(a, qty="2.000000001")
    assert [b.limit for b in breaches] == ["max_order_qty"]
    assert_tripped(a, "max_order_qty")


def test_max_order_notional_is_inclusive():
    a = make_automation()
    limits(a, max_order_notional=D("1000"))
    assert check(a, qty="10", price="100") == []
    assert [b.limit for b in check(a, qty="10", price="100.01", mid="100")] == ["max_order_notional"]
    assert_tripped(a, "max_order_notional")


def test_price_collar_refuses_beyond_the_collar_from_the_mid():
    a = make_automation()
    limits(a, price_collar_bps=D("50"))
    assert check(a, price="100.5", mid="100") == []  # exactly 50 bps
    breaches = check(a, price="100.51", mid="100")
    assert [b.limit for b in breaches] == ["price_collar_bps"]
    assert_tripped(a, "price_collar_bps")


def test_daily_loss_trips_when_the_loss_reaches_the_limit():
    a = make_automation()
    limits(a, max_daily_loss=D("100"))
    assert check(a) == []
    assert order_closed(automation_id=a.pk, realized_pnl=D("-99.99")) == []
    assert check(a) == []  # a loss of 99.99 is just below the limit
    tripped = order_closed(automation_id=a.pk, realized_pnl=D("-0.01"))
    assert [b.limit for b in tripped] == ["max_daily_loss"]
    assert_tripped(a, "max_daily_loss")
    refused = check(a)
    assert [b.limit for b in refused] == ["breaker_tripped"]
    assert "max_daily_loss" in refused[0].message


def test_drawdown_from_the_days_peak_trips_at_the_limit():
    a = make_automation()
    limits(a, max_drawdown=D("50"))
    order_closed(automation_id=a.pk, realized_pnl=D("100"))
    assert order_closed(automation_id=a.pk, realized_pnl=D("-49.99")) == []
    assert check(a) == []
    tripped = order_closed(automation_id=a.pk, realized_pnl=D("-0.01"))
    assert [b.limit for b in tripped] == ["max_drawdown"]
    state = RiskState.objects.get(automation=a)
    assert state.daily_peak_pnl == D("100") and state.daily_realized_pnl == D("50")
    assert_tripped(a, "max_drawdown")


def test_consecutive_losses_trip_at_the_limit_and_a_win_resets_the_run():
    a = make_automation()
    limits(a, max_consecutive_losses=3)
    order_closed(automation_id=a.pk, realized_pnl=D("-1"))
    order_closed(automation_id=a.pk, realized_pnl=D("-1"))
    order_closed(automation_id=a.pk, realized_pnl=D("2"))  # the run restarts
    order_closed(automation_id=a.pk, realized_pnl=D("-1"))
    assert order_closed(automation_id=a.pk, realized_pnl=D("-1")) == []
    assert check(a) == []  # two losses in a row: just below
    assert [b.limit for b in order_closed(automation_id=a.pk, realized_pnl=D("-1"))] == ["max_consecutive_losses"]
    assert_tripped(a, "max_consecutive_losses")


def test_slippage_breaches_per_day_trip_at_the_limit():
    a = make_automation()
    limits(a, max_slippage_breaches_per_day=2)
    assert order_closed(automation_id=a.pk, realized_pnl=D(0), slippage_breach=True) == []
    assert check(a) == []
    tripped = order_closed(automation_id=a.pk, realized_pnl=D(0), slippage_breach=True)
    assert [b.limit for b in tripped] == ["max_slippage_breaches_per_day"]
    assert_tripped(a, "max_slippage_breaches_per_day")


def test_signals_per_hour_refuses_the_signal_over_the_limit_and_trips_once():
    a = make_automation()
    limits(a, max_signals_per_hour=3)
    assert [signal_rate_check(automation=a) for _ in range(3)] == [None, None, None]
    breach = signal_rate_check(automation=a)
    assert breach is not None and breach.limit == "max_signals_per_hour"
    assert signal_rate_check(automation=a) is not None
    assert BreakerTrip.objects.filter(automation=a, limit="max_signals_per_hour").count() == 1
    assert len(RiskState.objects.get(automation=a).signal_times) == 3
    assert_tripped(a, "max_signals_per_hour")


def test_signals_older_than_an_hour_leave_the_window():
    a = make_automation()
    limits(a, max_signals_per_hour=1)
    assert signal_rate_check(automation=a) is None
    state = RiskState.objects.get(automation=a)
    state.signal_times = [t - 3601 for t in state.signal_times]
    state.save()
    assert signal_rate_check(automation=a) is None


def test_a_new_utc_day_resets_the_daily_record_but_not_the_breaker():
    a = make_automation()
    limits(a, max_daily_loss=D("100"))
    order_closed(automation_id=a.pk, realized_pnl=D("-60"))
    state = RiskState.objects.get(automation=a)
    state.trading_day = timezone.now().date() - timedelta(days=1)
    state.save()
    order_closed(automation_id=a.pk, realized_pnl=D("-60"))  # would be 120 on one day
    state.refresh_from_db()
    assert state.trading_day == timezone.now().date()
    assert state.daily_realized_pnl == D("-60")
    assert not BreakerTrip.objects.exists()


def test_a_global_limit_counts_every_automation_and_halts_them_all():
    a, b = make_automation("a"), make_automation("b")
    limits(None, max_open_orders=1)
    assert check(a) == []
    breaches = check(b)
    assert [x.limit for x in breaches] == ["max_open_orders"]
    assert breaches[0].message.startswith("global limit:")
    trip = BreakerTrip.objects.get()
    assert trip.automation is None
    assert set(Automation.objects.values_list("status", flat=True)) == {Automation.Status.HALTED}
    assert RiskState.objects.get(automation=None).tripped
    assert [x.limit for x in check(a)] in (["breaker_tripped"], ["automation_not_active"])


def test_it_refuses_without_tripping_when_the_automation_is_not_active():
    a = make_automation(status=Automation.Status.PAUSED)
    breaches = check(a)
    assert [b.limit for b in breaches] == ["automation_not_active"]
    assert not BreakerTrip.objects.exists()
    assert RiskState.objects.get(automation=a).open_orders == 0


def test_unset_limits_never_refuse():
    a = make_automation()
    assert all(check(a, qty="1000000", price="1", mid="100") == [] for _ in range(5))
    assert RiskState.objects.get(automation=a).open_orders == 5

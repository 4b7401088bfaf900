"""The order path's hand-written statements leave the same rows as the ORM path they replaced.

Each scenario runs twice, on two automations configured alike: once through
``tests/execution/reference_orders.py`` (the ORM version, kept as the
reference) and once through ``execution.services``. The paper broker's
stochastic slippage is off, so both orders meet the book the same way. Rows
are compared after ids, push numbers and clock times are replaced by
placeholders (their presence is compared).
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from audit.verify import verify_audit
from automations.models import Automation, Signal, SignalTransition
from automations.services import signal_transition
from execution import services
from execution.brokers import BrokerFill, BrokerOrder, BrokerOrderStatus, OrderRequest, broker_override
from execution.brokers.paper import PaperBroker
from execution.gating import signal_order_hash
from execution.models import Approval, Fill, Order
from execution.selectors import SLIPPAGE_MIN_FILLS, slippage_gap
from risk.models import Alert, BreakerTrip, KillSwitch, RiskState
from risk.services import risk_limit_set
from tests.execution import reference_orders
from tests.execution.conftest import make_automation, make_signal, make_user

S = Signal.Status
ORDER_FIELDS = ("broker", "symbol", "side", "quantity", "limit_price", "status", "status_reason", "filled_qty",
                "avg_fill_price", "arrival_mid", "modelled_slippage_bps", "gated")
FILL_FIELDS = ("price", "quantity", "fee", "modelled_slippage_bps", "realized_slippage_bps", "realized_pnl",
               "position_after", "avg_price_after")
STATE_FIELDS = ("open_orders", "daily_realized_pnl", "daily_peak_pnl", "consecutive_losses", "slippage_breaches_today",
                "tripped")
ID_KEYS = {"sequence", "automation_id", "signal_id", "client_order_id", "order_hash"}


@pytest.fixture(autouse=True)
def _no_random_slippage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FP_PAPER_SLIPPAGE_SIGMA_BPS", "0")


def _text(value: Any, names: dict[str, str]) -> Any:
    if not isinstance(value, str):
        return value
    for real, placeholder in names.items():
        value = value.replace(real, placeholder)
    value = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", "<time>", value)
    return re.sub(r"fp-\d+", "fp-<signal>", value)


def _data(data: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {k: ("<id>" if k in ID_KEYS else _text(v, names)) for k, v in sorted(data.items())}


def _rows(automation: Automation, signals: list[Signal]) -> dict[str, Any]:
    """Everything the execution of ``signals`` wrote, with ids and times replaced by placeholders."""
    names = {automation.name: "<automation>"}
    orders = list(Order.objects.filter(signal__in=signals).order_by("id"))
    subjects = [("automations.signal", str(s.pk)) for s in signals] + [("execution.order", str(o.pk)) for o in orders]
    events = [e for e in AuditEvent.objects.order_by("id")
              if (e.subject_type, e.subject_id) in subjects or (e.data or {}).get("automation_id") == automation.pk]
    return {
        "orders": [{**{f: _text(getattr(o, f), names) for f in ORDER_FIELDS},
                    "times": (o.created_at is not None, o.submitted_at is not None, o.closed_at is not None)}
                   for o in orders],
        "fills": [{**{f: getattr(x, f) for f in FILL_FIELDS}, "broker_fill_id": _text(x.broker_fill_id, names)}
                  for x in Fill.objects.filter(order__in=orders).order_by("id")],
        "signals": [(s.status, _text(s.status_reason, names), s.decided_at is not None)
                    for s in Signal.objects.filter(pk__in=[s.pk for s in signals]).order_by("id")],
        "transitions": [(t.from_status, t.to_status, t.actor_label, _text(t.reason, names))
                        for t in SignalTransition.objects.filter(signal__in=signals).order_by("id")],
        "events": [(e.kind, e.actor_label, e.subject_type, _text(e.reason, names), _data(e.data or {}, names))
                   for e in events],
        "risk": [{f: getattr(state, f) for f in STATE_FIELDS} for state in RiskState.objects.filter(automation=automation)],
        "trips": [(t.limit, t.value, t.threshold, _text(t.message, names))
                  for t in BreakerTrip.objects.filter(automation=automation).order_by("id")],
        "automation_status": Automation.objects.get(pk=automation.pk).status,
    }


def _approve(signal: Signal, *, order_hash: str | None = None) -> None:
    user = make_user(f"trader-{signal.pk}", "trader")[0]
    Approval.objects.create(signal=signal, user=user, device_id="phone", decision="approve",
                            order_hash=order_hash or signal_order_hash(signal), decided_at=timezone.now())
    signal_transition(signal=signal, to_status=S.APPROVED, actor_label="test")


@pytest.fixture(autouse=True)
def _trip_backups_held(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A trip's durable copy is a task; run eagerly it would close the test's connection (Celery's Django fixup)."""
    from risk.tasks import breaker_trip_ensure_task

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(breaker_trip_ensure_task, "apply_async", lambda kwargs, **kw: sent.append(kwargs))
    return sent


def _scenario_signals(name: str, automation: Automation) -> list[Signal]:
    if name == "risk_rejected":
        risk_limit_set(automation=automation, actor="test", reason="test", max_order_qty=Decimal("0.1"))
    if name == "paused":
        Automation.objects.filter(pk=automation.pk).update(status=Automation.Status.PAUSED)
    if name == "kill_switch":
        switch = KillSwitch(pk=1, engaged=True, reason="test")
        switch._change_reason = "test setup"
        switch.save()
    if name == "expired":
        return [make_signal(automation, status=S.QUEUED, expires_at=timezone.now() - timedelta(seconds=1))]
    if name == "needs_approval":
        Automation.objects.filter(pk=automation.pk).update(approval_threshold=3)
        return [make_signal(automation, status=S.QUEUED)]
    if name == "approved":
        signal = make_signal(automation, status=S.PENDING_APPROVAL)
        _approve(signal)
        return [signal]
    if name == "approval_mismatch":
        signal = make_signal(automation, status=S.PENDING_APPROVAL)
        _approve(signal, order_hash=f"{signal.pk:064d}")
        return [signal]
    if name == "rests":
        return [make_signal(automation, status=S.QUEUED, limit_price="99.90")]
    if name == "partial":
        return [make_signal(automation, status=S.QUEUED, quantity="10", limit_price="100.20")]
    if name == "round_trip":
        # A buy, then a sell of more than the position: realized PnL, a flip, a losing streak.
        return [make_signal(automation, status=S.QUEUED, quantity="1", limit_price="100.30"),
                make_signal(automation, status=S.QUEUED, side="sell", quantity="1.5", limit_price="99.80")]
    return [make_signal(automation, status=S.QUEUED, quantity="3", limit_price="100.30")]


SCENARIOS = ["fill", "partial", "rests", "round_trip", "risk_rejected", "paused", "kill_switch", "expired",
             "needs_approval", "approved", "approval_mismatch"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", SCENARIOS)
def test_the_order_path_leaves_the_rows_of_the_orm_reference(market, name):
    results = []
    paths = (("ref", reference_orders.order_execute, reference_orders.order_settle),
             ("new", services.order_execute, services.order_settle))
    for label, execute, settle in paths:
        automation = make_automation(name=f"{label}-{name}")
        signals = _scenario_signals(name, automation)
        for signal in signals:
            execute(signal_id=signal.pk)
            execute(signal_id=signal.pk)  # A repeated task changes nothing.
        if name == "partial":
            # The reconciler's way: the resting rest meets the book again and fills; booked on top of the first fill.
            order = Order.objects.get(signal=signals[0])
            assert order.status == Order.Status.PARTIALLY_FILLED
            settle(order_id=order.pk, broker_order=PaperBroker().fetch_order(order.client_order_id))
        results.append(_rows(automation, signals))
        if name == "kill_switch":
            KillSwitch.objects.filter(pk=1).update(engaged=False)
    reference, new = results
    assert reference["orders"] or name in ("paused", "kill_switch", "expired", "needs_approval", "approval_mismatch")
    assert new == reference
    assert verify_audit().ok


class _FillsAtTheLimit:
    """A venue that fills every order in full at its limit price (far worse than the model expects)."""

    def submit(self, request: OrderRequest) -> BrokerOrder:
        fill = BrokerFill(fill_id=f"{request.client_order_id}-0", price=request.limit_price, quantity=request.quantity,
                          fee=Decimal(0), filled_at=timezone.now())
        return BrokerOrder(client_order_id=request.client_order_id, broker_order_id=f"limit-{request.client_order_id}",
                           symbol=request.symbol, side=request.side, quantity=request.quantity,
                           limit_price=request.limit_price, status=BrokerOrderStatus.FILLED,
                           filled_qty=request.quantity, avg_price=request.limit_price, fills=(fill,))


@pytest.mark.django_db(transaction=True)
def test_the_slippage_gap_alert_is_raised_once_the_close_commits(market):
    automation = make_automation()
    broker_override("paper", _FillsAtTheLimit())  # type: ignore[arg-type]
    try:
        for i in range(SLIPPAGE_MIN_FILLS):
            signal = make_signal(automation, status=S.QUEUED, quantity="0.5", limit_price="101.00")
            assert services.order_execute(signal_id=signal.pk).status == Order.Status.FILLED
            # Below the minimum sample there is no ratio, so no alert.
            assert Alert.objects.filter(kind="slippage_gap").exists() == (i + 1 >= SLIPPAGE_MIN_FILLS)
    finally:
        broker_override("paper", None)
    gap = slippage_gap(automation.pk)
    assert gap is not None and gap.fills == SLIPPAGE_MIN_FILLS and gap.ratio > services.SLIPPAGE_GAP_RATIO
    assert Alert.objects.filter(kind="slippage_gap").count() == 1


@pytest.mark.django_db
def test_the_slippage_gap_sums_in_sql_equal_the_python_sums_over_the_last_fills(market, monkeypatch):
    monkeypatch.setenv("FP_PAPER_SLIPPAGE_SIGMA_BPS", "3")
    automation = make_automation()
    for i in range(7):
        signal = make_signal(automation, status=S.QUEUED, side="buy" if i % 3 else "sell",
                             quantity=str(Decimal("0.3") + Decimal(i) / 7), limit_price="101.00" if i % 3 else "99.00")
        services.order_execute(signal_id=signal.pk)
    rows = list(Fill.objects.filter(order__automation=automation).order_by("-id")
                .values_list("quantity", "realized_slippage_bps", "modelled_slippage_bps")[:6])
    weight = sum(float(q) for q, _, _ in rows)
    realized = sum(float(q) * r for q, r, _ in rows) / weight
    modelled = sum(float(q) * m for q, _, m in rows) / weight
    gap = slippage_gap(automation.pk, window=6)
    assert (gap.fills, gap.automation_name) == (6, automation.name)
    assert gap.realized_bps == pytest.approx(realized, rel=1e-12)
    assert gap.modelled_bps == pytest.approx(modelled, rel=1e-12)
    assert gap.ratio == pytest.approx(abs(realized - modelled) / max(abs(modelled), 1.0), rel=1e-12)
    assert slippage_gap(automation.pk, window=6, min_fills=7).ratio is None
    assert slippage_gap(make_automation(name="no-fills").pk) is None


@pytest.mark.django_db(transaction=True)
def test_a_decision_that_waited_for_the_signal_lock_reads_what_the_holder_committed(market):
    """The read after the lock is a statement of its own: it sees an approval committed while it waited."""
    import threading
    import time

    from django.db import connection, transaction

    automation = make_automation()
    signal = make_signal(automation, status=S.PENDING_APPROVAL)
    holding, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def approve_slowly() -> None:
        try:
            with transaction.atomic():
                locked = Signal.objects.select_for_update().get(pk=signal.pk)
                holding.set()
                time.sleep(0.5)  # The execute task is now waiting for this row.
                _approve(locked)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()
            connection.close()

    thread = threading.Thread(target=approve_slowly)
    thread.start()
    assert holding.wait(10)
    order = services.order_execute(signal_id=signal.pk)
    thread.join(10)
    assert errors == [] and done.is_set()
    assert order is not None and order.gated and order.status == Order.Status.FILLED
    assert Signal.objects.get(pk=signal.pk).status == S.FILLED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["ref", "new"])
def test_the_signal_pushes_are_those_of_the_reference_and_the_ordered_one_waits_for_the_brokers_answer(
        market, monkeypatch, path):
    """The decision's push leaves once the broker has answered (not during the call), before the fill's push."""
    from automations import services as automation_services
    from automations.selectors import signal_payload

    seen: list[Any] = []
    monkeypatch.setattr(automation_services, "signal_push", lambda message: seen.append(message))
    monkeypatch.setattr(services, "signal_push", lambda message: seen.append(message))
    paper = PaperBroker()

    class _Noting:
        def submit(self, request: OrderRequest) -> BrokerOrder:
            seen.append("broker")
            return paper.submit(request)

    broker_override("paper", _Noting())  # type: ignore[arg-type]
    try:
        automation = make_automation(name=f"push-{path}")
        signal = make_signal(automation, status=S.QUEUED, quantity="3", limit_price="100.30")
        seen.clear()  # The signal's birth and routing.
        execute = reference_orders.order_execute if path == "ref" else services.order_execute
        order = execute(signal_id=signal.pk)
    finally:
        broker_override("paper", None)
    assert order is not None and order.status == Order.Status.FILLED
    pushes = [m for m in seen if m != "broker"]
    assert [m["signal"]["status"] for m in pushes] == [S.ORDERED, S.FILLED]
    assert pushes[0]["seq"] < pushes[1]["seq"] == Signal.objects.get(pk=signal.pk).sequence
    transitions = list(SignalTransition.objects.filter(signal=signal).order_by("id"))
    assert [m["seq"] for m in pushes] == [t.sequence for t in transitions[-2:]]
    assert pushes[1]["signal"] == signal_payload(Signal.objects.select_related("automation").get(pk=signal.pk))
    if path == "new":
        assert seen.index("broker") < seen.index(pushes[0])


@pytest.mark.django_db(transaction=True)
def test_a_decision_whose_commit_fails_announces_nothing(market, monkeypatch):
    """The ordered push is held back past the commit: when the COMMIT itself fails, it is dropped, not sent."""
    from django.db import DatabaseError, connection

    from automations import services as automation_services

    seen: list[Any] = []
    monkeypatch.setattr(automation_services, "signal_push", seen.append)
    monkeypatch.setattr(services, "signal_push", seen.append)
    automation = make_automation(name="commit-fails")
    signal = make_signal(automation, status=S.QUEUED, quantity="3", limit_price="100.30")
    seen.clear()
    wrapper = type(connection._connections[connection._alias])
    commit, failed = wrapper.commit, []

    def failing_commit(self: Any) -> None:
        if failed:
            return commit(self)
        failed.append(True)  # Once: the decision's COMMIT.
        self.rollback()
        raise DatabaseError("commit failed")

    monkeypatch.setattr(wrapper, "commit", failing_commit)
    with pytest.raises(DatabaseError):
        services.order_execute(signal_id=signal.pk)
    assert seen == []
    assert not Order.objects.filter(signal=signal).exists()
    assert Signal.objects.get(pk=signal.pk).status == S.QUEUED
    order = services.order_execute(signal_id=signal.pk)  # The redelivered task.
    assert order is not None and order.status == Order.Status.FILLED
    assert [m["signal"]["status"] for m in seen] == [S.ORDERED, S.FILLED]

"""Orders: one per signal however often or concurrently the task runs; fills, slippage, cancel-all, reconcile."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection

from automations.models import Signal
from execution import services
from execution.brokers import BrokerFill, BrokerOrder, BrokerOrderStatus, OrderRequest
from execution.brokers.paper import PaperBroker
from execution.models import Fill, Order
from execution.simulation import slippage_bps
from ingestion.types import Side
from risk.models import RiskState
from tests.execution.conftest import make_automation, make_book, make_signal, publish_market

S = Signal.Status
OS = Order.Status


@pytest.mark.django_db
def test_running_the_task_twice_gives_one_order_and_one_broker_order(market):
    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED)
    first = services.order_execute(signal_id=signal.pk)
    second = services.order_execute(signal_id=signal.pk)
    assert first.pk == second.pk
    assert Order.objects.count() == 1
    assert [o.client_order_id for o in PaperBroker().all_orders()] == [f"fp-{signal.pk}"]
    state = RiskState.objects.get(automation=automation)
    assert state.open_orders == 0  # Reserved by the pre-trade check, released when the order filled.


@pytest.mark.django_db(transaction=True)
def test_running_the_task_concurrently_gives_one_order(market):
    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            services.order_execute(signal_id=signal.pk)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert Order.objects.filter(signal=signal).count() == 1
    assert len(PaperBroker().all_orders()) == 1
    assert Order.objects.get().status == OS.FILLED
    assert Fill.objects.count() == 1


@pytest.mark.django_db
def test_a_paper_fill_stores_modelled_and_realized_slippage_against_the_arrival_mid(market):
    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED, quantity="3", limit_price="100.30")
    order = services.order_execute(signal_id=signal.pk)
    assert order.status == OS.FILLED
    fills = list(order.fills.all())
    assert len(fills) == 1
    fill = fills[0]
    # The mid at decision was (100.00 + 100.10) / 2; the fill's realized slippage is measured from it.
    assert order.arrival_mid == Decimal("100.05")
    assert fill.realized_slippage_bps == pytest.approx(float((fill.price - Decimal("100.05")) / Decimal("100.05") * 10_000))
    # Modelled: 2.25 at 100.10 and 0.75 at 100.20 -> VWAP 100.125, 7.496 bps above the mid.
    assert fill.modelled_slippage_bps == pytest.approx((100.125 - 100.05) / 100.05 * 1e4, rel=1e-6)
    assert fill.realized_slippage_bps == pytest.approx(float(slippage_bps(Side.BUY, fill.price, Decimal("100.05"))))
    # 4 bps taker fee on the notional is the realized PnL of an opening trade.
    assert fill.fee > 0 and fill.realized_pnl == -fill.fee
    signal.refresh_from_db()
    assert signal.status == S.FILLED


@pytest.mark.django_db
def test_the_kill_switch_stops_execution_before_any_broker_call(market):
    from risk.models import KillSwitch

    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED)
    switch = KillSwitch(pk=1, engaged=True, reason="test")
    switch._change_reason = "test setup"
    switch.save()
    assert services.order_execute(signal_id=signal.pk) is None
    signal.refresh_from_db()
    assert signal.status == S.FAILED and "kill switch" in signal.status_reason
    assert PaperBroker().all_orders() == []


@pytest.mark.django_db
def test_a_resting_limit_order_stays_open_and_cancel_all_cancels_it(market):
    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED, limit_price="99.90")  # Below the 100.10 ask: rests.
    order = services.order_execute(signal_id=signal.pk)
    assert order.status == OS.SUBMITTED
    assert [o.client_order_id for o in PaperBroker().open_orders()] == [order.client_order_id]
    assert RiskState.objects.get(automation=automation).open_orders == 1

    result = services.orders_cancel_all(reason="test")
    assert result["at_broker"] == 1
    order.refresh_from_db()
    signal.refresh_from_db()
    assert order.status == OS.CANCELLED and signal.status == S.FAILED
    assert PaperBroker().open_orders() == []
    assert RiskState.objects.get(automation=automation).open_orders == 0


@pytest.mark.django_db
def test_the_reconciler_fills_a_resting_order_once_the_market_reaches_it(market):
    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED, limit_price="99.90")
    order = services.order_execute(signal_id=signal.pk)
    assert order.status == OS.SUBMITTED
    publish_market(market["redis"], make_book(bid="99.70", ask="99.80"))
    services.orders_reconcile()
    order.refresh_from_db()
    assert order.status == OS.FILLED and order.avg_fill_price <= Decimal("99.90")


@pytest.mark.django_db
def test_a_submission_found_at_the_broker_is_recorded_not_resubmitted(market):
    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED)
    order, created = services._order_decide(signal.pk)
    # The worker that created it reached the broker and died before recording anything.
    assert created and order.status == OS.SUBMITTING
    broker = PaperBroker()
    accepted = broker.submit(OrderRequest(order.client_order_id, order.symbol, order.side, order.quantity,
                                          order.limit_price))
    assert accepted.status == BrokerOrderStatus.FILLED
    again = services.order_execute(signal_id=signal.pk)
    assert again.status == OS.FILLED
    assert len(broker.all_orders()) == 1
    assert [f.broker_fill_id for f in again.fills.all()] == [accepted.fills[0].fill_id]


@pytest.mark.django_db
def test_the_paper_broker_returns_the_existing_order_for_a_repeated_client_order_id(market):
    broker = PaperBroker()
    request = OrderRequest("fp-test-1", "TEST-BTC", "sell", Decimal("1"), Decimal("99.00"))
    first = broker.submit(request)
    second = broker.submit(OrderRequest("fp-test-1", "TEST-BTC", "sell", Decimal("9"), Decimal("50")))
    assert first == second
    assert first.fills[0].price <= Decimal("100.00") and first.filled_qty == Decimal("1")


@pytest.mark.django_db(transaction=True)
def test_a_task_for_a_signal_another_worker_is_submitting_does_nothing(market):
    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED)
    import psycopg

    from trading.embedded import database_url

    # Another worker's connection holds the signal's submission lock (it is between its commit and the broker).
    other = psycopg.connect(database_url(connection.settings_dict).replace("postgres://", "postgresql://"),
                            autocommit=True)
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [services._ADVISORY_BASE + signal.pk])
        assert services.order_execute(signal_id=signal.pk) is None
        assert Order.objects.filter(signal=signal).count() == 0
        assert PaperBroker().all_orders() == []
    finally:
        other.close()
    order = services.order_execute(signal_id=signal.pk)
    assert order is not None and order.status == OS.FILLED
    assert len(PaperBroker().all_orders()) == 1


@pytest.mark.django_db
def test_a_new_order_is_born_claimed_and_stamped_when_the_broker_answered(market):
    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED)
    order, created = services._order_decide(signal.pk)
    assert created and order.status == OS.SUBMITTING and order.submitted_at is None
    again, created_again = services._order_decide(signal.pk)
    assert again.pk == order.pk and not created_again
    settled = services._order_submit_locked(order, claimed=True)
    assert settled.status == OS.FILLED
    assert order.created_at <= settled.submitted_at <= settled.closed_at


def _now():  # type: ignore[no-untyped-def]
    from django.utils import timezone

    return timezone.now()


def _fills_so_far(order: Order, *fills: tuple[str, str, str]) -> BrokerOrder:
    from django.utils import timezone

    booked = tuple(BrokerFill(fill_id, Decimal(price), Decimal(qty), Decimal(0), timezone.now())
                   for fill_id, price, qty in fills)
    filled = sum((f.quantity for f in booked), Decimal(0))
    done = filled == order.quantity
    return BrokerOrder(client_order_id=order.client_order_id, broker_order_id=f"b-{order.pk}", symbol=order.symbol,
                       side=order.side, quantity=order.quantity, limit_price=order.limit_price,
                       status=BrokerOrderStatus.FILLED if done else BrokerOrderStatus.PARTIALLY_FILLED,
                       filled_qty=filled, avg_price=booked[-1].price, fills=booked)


@pytest.mark.django_db
def test_a_partly_filled_order_books_its_later_fills_on_the_position_it_left(market):
    """Short 1 at 100, then a buy of 1 filled 0.4 at 99 and, later, 0.6 at 98: PnL 0.4 + 1.2, flat at the end.

    The second settlement once counted the order's first fill twice (short 0.2 instead of 0.6 left),
    booking 0.4 instead of 1.2 on the second fill.
    """
    automation = make_automation()
    sell = Order.objects.create(signal=make_signal(automation, status=S.QUEUED, side="sell"), automation=automation,
                                client_order_id="fp-pnl-1", broker="paper", symbol="TEST-BTC", side="sell",
                                quantity=Decimal(1), limit_price=Decimal(100), status=OS.SUBMITTED, created_at=_now())
    services.order_settle(order_id=sell.pk, broker_order=_fills_so_far(sell, ("s1", "100", "1")))
    buy = Order.objects.create(signal=make_signal(automation, status=S.QUEUED), automation=automation,
                               client_order_id="fp-pnl-2", broker="paper", symbol="TEST-BTC", side="buy",
                               quantity=Decimal(1), limit_price=Decimal(101), status=OS.SUBMITTED, created_at=_now())
    services.order_settle(order_id=buy.pk, broker_order=_fills_so_far(buy, ("b1", "99", "0.4")))
    services.order_settle(order_id=buy.pk, broker_order=_fills_so_far(buy, ("b1", "99", "0.4"), ("b2", "98", "0.6")))
    pnl = dict(Fill.objects.filter(order=buy).values_list("broker_fill_id", "realized_pnl"))
    assert pnl == {"b1": Decimal("0.4"), "b2": Decimal("1.2")}
    last = Fill.objects.filter(order__automation=automation).latest("id")
    assert last.position_after == 0
    assert services._automation_position(automation.pk).quantity == 0


@pytest.mark.django_db
def test_fills_booked_before_positions_were_stored_are_replayed_once(market):
    automation = make_automation()
    sell = Order.objects.create(signal=make_signal(automation, status=S.QUEUED, side="sell"), automation=automation,
                                client_order_id="fp-pnl-3", broker="paper", symbol="TEST-BTC", side="sell",
                                quantity=Decimal(2), limit_price=Decimal(100), status=OS.SUBMITTED, created_at=_now())
    services.order_settle(order_id=sell.pk, broker_order=_fills_so_far(sell, ("s1", "100", "2")))
    Fill.objects.filter(order=sell).update(position_after=None, avg_price_after=None)  # As if booked before 0003.
    position = services._automation_position(automation.pk)
    assert (position.quantity, position.avg_price) == (Decimal(-2), Decimal(100))


def _lock_is_free(key: int) -> bool:
    """Whether another connection can take the advisory lock ``key`` (and give it back)."""
    import psycopg

    from trading.embedded import database_url

    with psycopg.connect(database_url(connection.settings_dict).replace("postgres://", "postgresql://"),
                         autocommit=True) as other:
        taken = other.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]
        if taken:
            other.execute("SELECT pg_advisory_unlock(%s)", [key])
        return bool(taken)


@pytest.mark.django_db(transaction=True)
def test_the_submission_lock_taken_with_the_decision_is_given_back_after_a_failure_and_a_success(market, monkeypatch):
    automation = make_automation()
    signal = make_signal(automation, status=S.QUEUED)
    key = services._ADVISORY_BASE + signal.pk

    def fails(**kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("risk is down")

    checked = services.pretrade_check_call
    monkeypatch.setattr(services, "pretrade_check_call", fails)
    with pytest.raises(RuntimeError, match="risk is down"):
        services.order_execute(signal_id=signal.pk)
    assert _lock_is_free(key)
    assert Order.objects.filter(signal=signal).count() == 0  # The decision rolled back.
    monkeypatch.setattr(services, "pretrade_check_call", checked)
    assert services.order_execute(signal_id=signal.pk).status == OS.FILLED
    assert _lock_is_free(key)


@pytest.mark.django_db(transaction=True)
def test_with_asynchronous_decision_commits_the_order_is_made_durable_before_the_broker_sees_it(market, monkeypatch):
    from execution.brokers import broker_for_mode, broker_override

    calls: list[str] = []
    checked, barrier = services.pretrade_check_call, services._commits_make_durable
    monkeypatch.setattr(services, "PRETRADE_ASYNC_COMMIT", True)
    monkeypatch.setattr(services, "pretrade_check_call",
                        lambda **kw: calls.append(f"check sync={kw['synchronous_commit']}") or checked(**kw))
    monkeypatch.setattr(services, "_commits_make_durable", lambda: calls.append("barrier") or barrier())

    class Spy:
        def __init__(self) -> None:
            self.paper = broker_for_mode("paper")

        def submit(self, request):  # type: ignore[no-untyped-def]
            calls.append("submit")
            return self.paper.submit(request)

    broker_override("paper", Spy())  # type: ignore[arg-type]
    try:
        automation = make_automation()
        order = services.order_execute(signal_id=make_signal(automation, status=S.QUEUED).pk)
    finally:
        broker_override("paper", None)
    assert calls == ["check sync=False", "barrier", "submit"]
    assert order.status == OS.FILLED and RiskState.objects.get(automation=automation).open_orders == 0

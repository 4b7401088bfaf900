from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection

from automations.detection import detect_symbol
from automations.models import Automation, Signal
from automations.services import signal_transition
from automations.snapshots import snapshot_load
from ingestion.selectors import window_cache_clear
from risk.models import RiskLimit
from tests.automations.conftest import AlwaysBuy, insert_quotes, make_automation, make_book, publish_market
from trading.queues import ORDER_EXECUTE_TASK

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def cold_windows():
    # Every test rebuilds the tick table with the same keys; start each from a cold window cache.
    window_cache_clear()
    yield
    window_cache_clear()


def new_quote(market, step: int) -> int:
    ts = market["last_ns"] + step * 100_000_000
    insert_quotes(market["symbol"], [(ts, "100.00", "1.5", "100.10", "2.25")])
    publish_market(market["redis"], market["symbol"], make_book(market["symbol"], ts_ns=ts))
    return ts


def test_it_queues_a_signal_with_its_context_and_sends_only_the_id_to_execution(market, always_buy, sent_tasks):
    automation = make_automation(approval_threshold=0)

    result = detect_symbol(symbol=market["symbol"])

    signal = Signal.objects.get(automation=automation)
    assert result.signals == {"queued": 1}
    assert signal.status == Signal.Status.QUEUED
    assert (signal.bid, signal.ask) == (Decimal("100.00"), Decimal("100.10"))
    assert signal.mid == Decimal("100.05")
    assert signal.spread_bps == pytest.approx(0.10 / 100.05 * 1e4)
    assert signal.market_ts_ns == market["last_ns"]
    assert set(signal.regime) >= {"volatility", "trend", "liquidity"}
    assert signal.features["x"] == 1.0
    assert sent_tasks == [(ORDER_EXECUTE_TASK, [signal.pk], None)]
    assert Automation.objects.get(pk=automation.pk).automatic_trade_count == 1


def test_it_attaches_a_snapshot_equal_to_the_book_at_signal_time(market, always_buy, sent_tasks):
    make_automation(snapshot_levels=20)

    detect_symbol(symbol=market["symbol"])

    signal = Signal.objects.get()
    loaded = snapshot_load(signal.snapshot)
    book = market["book"]
    assert loaded.ts_ns == book.ts_ns
    assert len(loaded.bids) == 20
    for level in range(20):
        assert loaded.bids[level] == book.bids[level]
        assert loaded.asks[level] == book.asks[level]


def test_it_records_a_signal_without_snapshot_when_the_book_is_missing(market, always_buy, sent_tasks):
    make_automation()
    market["redis"].delete("fp:book:" + market["symbol"])

    detect_symbol(symbol=market["symbol"])

    assert Signal.objects.get().snapshot is None


def test_it_holds_the_first_n_signals_for_approval_then_goes_automatic(market, always_buy, sent_tasks):
    automation = make_automation(approval_threshold=2)

    detect_symbol(symbol=market["symbol"])
    new_quote(market, 1)
    detect_symbol(symbol=market["symbol"])
    first, second = Signal.objects.order_by("id")
    assert [first.status, second.status] == [Signal.Status.PENDING_APPROVAL] * 2
    assert first.needs_approval and second.needs_approval
    assert sent_tasks == []

    # Pending signals are not approved trades: a third signal still waits.
    new_quote(market, 2)
    detect_symbol(symbol=market["symbol"])
    assert Signal.objects.order_by("id").last().status == Signal.Status.PENDING_APPROVAL

    # Once two trades are approved (the approval flow bumps the counter), the next goes straight through.
    for signal in (first, second):
        signal_transition(signal=signal, to_status=Signal.Status.APPROVED, actor_label="trader")
    Automation.objects.filter(pk=automation.pk).update(approved_trade_count=2)
    new_quote(market, 3)
    detect_symbol(symbol=market["symbol"])
    last = Signal.objects.order_by("id").last()
    assert last.status == Signal.Status.QUEUED and not last.needs_approval
    assert sent_tasks == [(ORDER_EXECUTE_TASK, [last.pk], None)]


def test_it_always_asks_for_approval_when_the_automation_requires_it(market, always_buy, sent_tasks):
    make_automation(approval_threshold=0, require_approval=True)
    detect_symbol(symbol=market["symbol"])
    assert Signal.objects.get().status == Signal.Status.PENDING_APPROVAL
    assert sent_tasks == []


def test_it_filters_a_signal_outside_the_allowed_regimes_and_never_sends_it(market, always_buy, sent_tasks):
    # Twenty identical quotes carry no trend: the regime is "ranging".
    automation = make_automation(allowed_regimes={"trend": ["trending"]})

    detect_symbol(symbol=market["symbol"])

    signal = Signal.objects.get(automation=automation)
    assert signal.status == Signal.Status.FILTERED
    assert signal.regime["trend"] == "ranging"
    assert "regime not allowed" in signal.status_reason and "trend=ranging" in signal.status_reason
    assert sent_tasks == []


def test_it_filters_signals_beyond_the_signal_rate_limit_and_the_breaker_pauses(market, always_buy, sent_tasks):
    automation = make_automation()
    limit = RiskLimit(automation=automation, max_signals_per_hour=1)
    limit._change_reason = "test limit"
    limit.save()

    detect_symbol(symbol=market["symbol"])
    new_quote(market, 1)
    detect_symbol(symbol=market["symbol"])

    first, second = Signal.objects.order_by("id")
    assert first.status == Signal.Status.QUEUED
    assert second.status == Signal.Status.FILTERED
    assert second.status_reason.startswith("signal-rate limit:")
    assert Automation.objects.get(pk=automation.pk).status != Automation.Status.ACTIVE
    assert sent_tasks == [(ORDER_EXECUTE_TASK, [first.pk], None)]


def test_it_never_signals_twice_on_the_same_quote(market, always_buy, sent_tasks):
    make_automation()

    detect_symbol(symbol=market["symbol"])
    again = detect_symbol(symbol=market["symbol"])
    # Even with the Redis memory lost, the database refuses the duplicate.
    market["redis"].delete("fp:detect-last:" + market["symbol"])
    third = detect_symbol(symbol=market["symbol"])

    assert again.skipped_same_data == 1 and again.signals == {}
    assert third.signals == {}
    assert Signal.objects.count() == 1
    assert len(sent_tasks) == 1


def test_it_evaluates_every_active_automation_on_one_window_and_skips_paused_ones(market, always_buy, sent_tasks):
    for i in range(5):
        make_automation(name=f"a{i}")
    make_automation(name="paused", status=Automation.Status.PAUSED)
    make_automation(name="other-symbol", symbol="TEST-ETH")

    result = detect_symbol(symbol=market["symbol"])

    assert result.automations == 5 and result.evaluated == 5
    assert Signal.objects.filter(symbol=market["symbol"]).count() == 5
    # Every signal of the batch shares the one stored snapshot of the book.
    assert Signal.objects.values("snapshot").distinct().count() == 1


# The pass's Redis commands: pending flag, lock and release ride in its own pipelines.

LOCK_KEY = "fp:detect-lock:TEST-BTC"
PENDING_KEY = "fp:detect-pending:TEST-BTC"


def test_the_task_clears_the_pending_flag_and_the_pass_releases_its_lock(market, always_buy, sent_tasks):
    from automations.tasks import detect_symbol_task

    make_automation()
    market["redis"].set(PENDING_KEY, "1")

    result = detect_symbol_task(market["symbol"])

    assert result["signals"] == {"queued": 1}
    assert market["redis"].exists(PENDING_KEY) == 0
    assert market["redis"].exists(LOCK_KEY) == 0


def test_it_waits_for_a_busy_symbol_and_runs_once_the_lock_is_free(market, always_buy, sent_tasks, monkeypatch):
    monkeypatch.setattr("automations.detection.LOCK_POLL_S", 0.02)
    make_automation()
    # Another worker holds the symbol for 200 ms more.
    market["redis"].set(LOCK_KEY, "other-worker", px=200)
    market["redis"].set(PENDING_KEY, "1")

    result = detect_symbol(symbol=market["symbol"], clear_pending=True)

    assert result.signals == {"queued": 1}
    assert market["redis"].exists(PENDING_KEY) == 0
    assert market["redis"].exists(LOCK_KEY) == 0


def test_it_drops_the_request_when_the_symbol_stays_busy_and_leaves_the_other_lock_alone(
    market, always_buy, sent_tasks, monkeypatch
):
    monkeypatch.setattr("automations.detection.LOCK_WAIT_S", 0.1)
    monkeypatch.setattr("automations.detection.LOCK_POLL_S", 0.02)
    make_automation()
    market["redis"].set(LOCK_KEY, "other-worker", px=60_000)
    market["redis"].set(PENDING_KEY, "1")

    result = detect_symbol(symbol=market["symbol"], clear_pending=True)

    assert result.automations == 0 and result.signals == {}
    assert Signal.objects.count() == 0
    # The flag was cleared before waiting: the data that arrives meanwhile asks again.
    assert market["redis"].exists(PENDING_KEY) == 0
    assert market["redis"].get(LOCK_KEY) == b"other-worker"


def test_it_never_releases_a_lock_another_worker_took_after_its_own_expired(market, sent_tasks, monkeypatch):
    client = market["redis"]

    class TakeOver(AlwaysBuy):
        def evaluate(self, window, params, features=None):
            # This worker's lock expires mid-pass and another worker takes the symbol.
            client.set(LOCK_KEY, "other-worker", px=60_000)
            return super().evaluate(window, params, features)

    monkeypatch.setattr("automations.detection.get_strategy", lambda name: TakeOver())
    make_automation()

    result = detect_symbol(symbol=market["symbol"])

    assert result.signals == {"queued": 1}
    assert client.get(LOCK_KEY) == b"other-worker"


def test_it_releases_its_lock_when_redis_no_longer_knows_the_release_script(market, always_buy, sent_tasks, monkeypatch):
    import hashlib
    import uuid

    from automations import detection

    # A script text Redis has never seen stands for a script cache emptied by a restart.
    lua = detection._RELEASE_LUA + f" -- {uuid.uuid4().hex}"
    sha = hashlib.sha1(lua.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1.
    monkeypatch.setattr(detection, "_RELEASE_LUA", lua)
    monkeypatch.setattr(detection, "_RELEASE_SHA", sha)
    make_automation()
    assert market["redis"].script_exists(sha) == [False]

    result = detect_symbol(symbol=market["symbol"])

    assert result.signals == {"queued": 1}
    assert market["redis"].exists(LOCK_KEY) == 0
    assert market["redis"].script_exists(sha) == [True]


def test_an_automation_added_later_that_reads_trade_flow_sees_the_trades_on_its_first_pass(market, sent_tasks, monkeypatch):
    # The window reads are sized from the symbol's last pass, which needed no trades.
    seen_trades: dict[str, int] = {}

    class Flow(AlwaysBuy):
        def trade_lookback_ns(self, params):
            return 10**9 if "window_ms" in params else 0

        def evaluate(self, window, params, features=None):
            seen_trades["flow" if "window_ms" in params else "quotes-only"] = len(window.trades)
            return []

    monkeypatch.setattr("automations.detection.get_strategy", lambda name: Flow())
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_trade WHERE raw_stream = 'test'")
        cursor.executemany(
            "INSERT INTO ingestion_trade (raw_stream, raw_seq, symbol, source_ts, recv_ts, price, size, aggressor, trade_id)"
            " VALUES ('test', %s, %s, to_timestamp(%s), to_timestamp(%s), '100.05', '0.5', 'buy', %s)",
            [
                (i, market["symbol"], (market["last_ns"] - i * 10**6) / 1e9, (market["last_ns"] - i * 10**6) / 1e9, f"t{i}")
                for i in range(1, 4)
            ],
        )
    try:
        make_automation(name="quotes-only")
        detect_symbol(symbol=market["symbol"])
        assert seen_trades == {"quotes-only": 0}

        make_automation(name="flow", strategy="trade_flow_momentum")
        new_quote(market, 1)
        detect_symbol(symbol=market["symbol"])

        assert seen_trades == {"quotes-only": 3, "flow": 3}
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM ingestion_trade WHERE raw_stream = 'test'")


def test_a_results_as_dict_is_what_dataclasses_asdict_gives_and_shares_no_dict():
    import dataclasses

    from automations.detection import DetectResult

    result = DetectResult(
        symbol="X", automations=2, signals={"queued": 1}, timings_ms={"total": 1.5}, market_ts_ns=5, lag_ms=0.5, error="e"
    )
    as_dict = result.as_dict()
    assert as_dict == dataclasses.asdict(result)
    as_dict["signals"]["queued"] = 9
    as_dict["timings_ms"].clear()
    assert result.signals == {"queued": 1} and result.timings_ms == {"total": 1.5}

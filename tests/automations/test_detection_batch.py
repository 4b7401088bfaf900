"""Multi-symbol detection passes, batched signal creation and the window reads they share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.verify import VerifyResult, verify_events
from automations import detection
from automations.detection import detect_symbols
from automations.models import Automation, L2Snapshot, Signal, SignalTransition
from automations.services import RoutedSignal, signal_create, signal_transition, signals_create_routed
from automations.snapshots import snapshot_build, snapshot_create, snapshot_load
from automations.tasks import detect_symbols_task
from ingestion import selectors
from tests.automations.conftest import BASE_NS, AlwaysBuy, insert_quotes, make_automation, make_book, publish_market
from trading import redis_keys
from trading.api import DomainError
from trading.queues import DETECT_SYMBOLS_TASK, ORDER_EXECUTE_TASK

S = Signal.Status
SYMBOLS = ["TEST-BTC", "TEST-ETH", "TEST-SOL"]


@pytest.fixture(autouse=True)
def cold_windows():
    selectors.window_cache_clear()
    yield
    selectors.window_cache_clear()


@pytest.fixture
def markets(redis_clean):
    """Three symbols with 20 quotes each (distinct prices) and their books and quotes in Redis."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_quote WHERE raw_stream = 'test'")
    last = {}
    for k, symbol in enumerate(SYMBOLS):
        rows = [(BASE_NS + i * 100_000_000 + k * 1000, "100.00", "1.5", "100.10", "2.25") for i in range(20)]
        insert_quotes(symbol, rows)
        publish_market(redis_clean, symbol, make_book(symbol, ts_ns=rows[-1][0]))
        last[symbol] = rows[-1][0]
    yield {"last_ns": last, "redis": redis_clean}
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_quote WHERE raw_stream = 'test'")


def new_quote(markets, symbol: str, step: int) -> int:
    ts = markets["last_ns"][symbol] + step * 100_000_000
    insert_quotes(symbol, [(ts, "100.00", "1.5", "100.10", "2.25")])
    publish_market(markets["redis"], symbol, make_book(symbol, ts_ns=ts))
    return ts


# --- batched creation: the same rows as one at a time --------------------------------------------


def _story(signal: Signal) -> dict:
    """Everything a signal leaves behind, without ids, times and sequence numbers (which differ by construction)."""
    signal = Signal.objects.get(pk=signal.pk)
    transitions = list(
        SignalTransition.objects.filter(signal=signal)
        .order_by("id")
        .values_list("from_status", "to_status", "actor_label", "reason", "sequence")
    )
    events = list(
        AuditEvent.objects.filter(subject_type="automations.signal", subject_id=str(signal.pk))
        .order_by("id")
        .values_list("kind", "actor_label", "reason", "data")
    )
    sequences = [t[4] for t in transitions]
    return {
        "row": {
            f: getattr(signal, f)
            for f in (
                "symbol",
                "side",
                "quantity",
                "limit_price",
                "reason",
                "status",
                "status_reason",
                "needs_approval",
                "bid",
                "ask",
                "mid",
                "spread_bps",
                "market_ts_ns",
                "features",
                "regime",
                "snapshot_id",
            )
        },
        "decided": signal.decided_at is not None,
        "row_sequence_is_last": signal.sequence == sequences[-1],
        "sequences_ascend": sequences == sorted(sequences) and len(set(sequences)) == len(sequences),
        "transitions": [t[:4] for t in transitions],
        "events": [
            (kind, label, reason, {k: v for k, v in data.items() if k != "sequence"}) for kind, label, reason, data in events
        ],
        "event_sequences": [data["sequence"] for *_rest, data in events] == sequences,
    }


@pytest.mark.django_db
@pytest.mark.parametrize("to_status", [S.FILTERED, S.PENDING_APPROVAL, S.QUEUED])
def test_batched_creation_writes_the_same_rows_as_one_at_a_time(to_status):
    one = make_automation(name="one")
    many = make_automation(name="many")
    snapshot = L2Snapshot.objects.create(symbol="TEST-BTC", ts=timezone.now(), levels=1, data=b"x", sha256="0" * 64)
    context = {
        "features": {"x": 1.0},
        "regime": {"volatility": "low"},
        "bid": Decimal("100.00"),
        "ask": Decimal("100.10"),
        "mid": Decimal("100.05"),
        "spread_bps": 10.0,
        "market_ts_ns": BASE_NS,
        "snapshot": snapshot,
        "needs_approval": to_status == S.PENDING_APPROVAL,
    }

    single = signal_create(
        automation=one,
        side="buy",
        quantity=Decimal("0.01"),
        limit_price=Decimal("100.10"),
        reason="why",
        actor_label="worker-detect",
        **context,
    )
    signal_transition(signal=single, to_status=to_status, actor_label="worker-detect", reason="routed")
    batched = signals_create_routed(
        signals=[
            RoutedSignal(
                automation=many,
                side="buy",
                quantity=Decimal("0.01"),
                limit_price=Decimal("100.10"),
                reason="why",
                to_status=to_status,
                status_reason="routed",
                context=dict(context),
            ),
        ]
    )

    a, b = _story(single), _story(batched[0])
    # The automation differs by construction; everything else must match.
    for story, automation in ((a, one), (b, many)):
        for event in story["events"]:
            assert event[3].pop("automation_id") == automation.pk
    assert a == b
    assert b["transitions"] == [("", S.NEW, "worker-detect", "why"), (S.NEW, to_status, "worker-detect", "routed")]
    assert b["decided"] == (to_status == S.FILTERED)
    assert b["row_sequence_is_last"] and b["sequences_ascend"] and b["event_sequences"]


@pytest.mark.django_db
def test_batched_creation_keeps_the_audit_chain_intact_and_each_signals_events_in_order():
    automations = [make_automation(name=f"a{i}") for i in range(4)]
    signals = signals_create_routed(
        signals=[
            RoutedSignal(
                automation=a,
                side="sell",
                quantity=Decimal("0.02"),
                limit_price=Decimal("99.5"),
                reason=f"r{i}",
                to_status=[S.QUEUED, S.FILTERED][i % 2],
                status_reason=f"s{i}",
                context={"market_ts_ns": BASE_NS + i},
            )
            for i, a in enumerate(automations)
        ]
    )

    result = VerifyResult()
    verify_events(result)
    assert result.ok, result.problems
    assert len(signals) == 4 and len({s.pk for s in signals}) == 4
    for i, signal in enumerate(signals):
        tos = list(
            AuditEvent.objects.filter(subject_type="automations.signal", subject_id=str(signal.pk))
            .order_by("id")
            .values_list("data__to", flat=True)
        )
        assert tos == [S.NEW, [S.QUEUED, S.FILTERED][i % 2]]


@pytest.mark.django_db
def test_batched_creation_refuses_an_illegal_first_move_before_writing_anything():
    automation = make_automation()
    with pytest.raises(DomainError, match="cannot go to approved"):
        signals_create_routed(
            signals=[
                RoutedSignal(
                    automation=automation,
                    side="buy",
                    quantity=Decimal("1"),
                    limit_price=Decimal("1"),
                    reason="r",
                    to_status=S.QUEUED,
                    status_reason="",
                    context={},
                ),
                RoutedSignal(
                    automation=automation,
                    side="sell",
                    quantity=Decimal("1"),
                    limit_price=Decimal("1"),
                    reason="r",
                    to_status=S.APPROVED,
                    status_reason="",
                    context={},
                ),
            ]
        )
    assert Signal.objects.count() == 0
    assert SignalTransition.objects.count() == 0


def _routed(automation, *, to_status=S.QUEUED, **context) -> RoutedSignal:
    return RoutedSignal(
        automation=automation,
        side="buy",
        quantity=Decimal("0.01"),
        limit_price=Decimal("100.10"),
        reason="why",
        to_status=to_status,
        status_reason="routed",
        context={"market_ts_ns": BASE_NS, **context},
    )


@pytest.mark.django_db
def test_the_one_statement_insert_keeps_every_value_exact_like_the_orm():
    one, many = make_automation(name="one"), make_automation(name="many")
    at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    context = {
        "features": {"z": -0.1234567890123456789, "big": 1e300, "tiny": 5e-324, "none": None, "text": 'é"\\'},
        "regime": {"volatility": "high", "nested": {"a": [1, 2.5, "x"]}},
        "bid": Decimal("123456789012345678.123456789012"),
        "ask": Decimal("0.000000000001"),
        "mid": None,
        "spread_bps": 0.1 + 0.2,
        "market_ts": at,
        "market_ts_ns": 1_767_225_600_123_456_789,
        "created_at": at,
        "expires_at": at + timedelta(seconds=7),
        "needs_approval": True,
    }
    quantity, price = Decimal("1E-12"), Decimal("99999999999999999.999999999999")
    single = signal_create(automation=one, side="sell", quantity=quantity, limit_price=price, reason="r é", **context)
    [batched] = signals_create_routed(
        signals=[
            RoutedSignal(
                automation=many,
                side="sell",
                quantity=quantity,
                limit_price=price,
                reason="r é",
                to_status=S.PENDING_APPROVAL,
                status_reason="s",
                context=dict(context),
            )
        ]
    )
    fields = [
        f.attname
        for f in Signal._meta.concrete_fields
        if f.attname not in ("id", "automation_id", "status", "status_reason", "sequence")
    ]
    a, b = Signal.objects.get(pk=single.pk), Signal.objects.get(pk=batched.pk)
    assert {f: getattr(a, f) for f in fields} == {f: getattr(b, f) for f in fields}
    assert b.features["z"] == -0.1234567890123456789 and b.spread_bps == 0.1 + 0.2
    assert b.bid == Decimal("123456789012345678.123456789012") and b.quantity == quantity and b.mid is None
    assert b.market_ts == at and b.expires_at == at + timedelta(seconds=7)


@pytest.mark.django_db
def test_an_unsaved_snapshot_is_stored_once_with_its_signals_and_equals_snapshot_create():
    a, b = make_automation(name="a"), make_automation(name="b")
    book = make_book(levels=30)
    reference = snapshot_create(book=book, levels=20)
    shared, deeper = snapshot_build(book=book, levels=20), snapshot_build(book=book, levels=30)

    signals = signals_create_routed(
        signals=[_routed(a, snapshot=shared), _routed(b, snapshot=shared), _routed(a, snapshot=deeper, market_ts_ns=BASE_NS + 1)]
    )

    assert shared.pk is not None and deeper.pk is not None and shared.pk != deeper.pk
    assert L2Snapshot.objects.count() == 3  # the reference, then one row per distinct unsaved snapshot
    assert [s.snapshot_id for s in signals] == [shared.pk, shared.pk, deeper.pk]
    assert [Signal.objects.get(pk=s.pk).snapshot_id for s in signals] == [shared.pk, shared.pk, deeper.pk]
    stored = L2Snapshot.objects.get(pk=shared.pk)
    fields = ("symbol", "ts", "levels", "sha256", "storage", "archive_ref", "archived_at")
    assert {f: getattr(stored, f) for f in fields} == {f: getattr(reference, f) for f in fields}
    assert bytes(stored.data) == bytes(reference.data)
    assert snapshot_load(stored) == snapshot_load(reference)
    assert L2Snapshot.objects.get(pk=deeper.pk).levels == 30


@pytest.mark.django_db
def test_a_saved_snapshot_is_referenced_not_stored_again():
    automation = make_automation()
    saved = snapshot_create(book=make_book(), levels=5)
    [signal] = signals_create_routed(signals=[_routed(automation, snapshot=saved)])
    assert Signal.objects.get(pk=signal.pk).snapshot_id == saved.pk
    assert L2Snapshot.objects.count() == 1


@pytest.mark.django_db
def test_count_automatic_adds_each_automations_queued_signals_and_nothing_else():
    a, b, c = make_automation(name="a"), make_automation(name="b"), make_automation(name="c")
    signals_create_routed(
        signals=[
            _routed(a),
            _routed(a, market_ts_ns=BASE_NS + 1),
            _routed(b, to_status=S.PENDING_APPROVAL),
            _routed(c, to_status=S.FILTERED),
            _routed(b, market_ts_ns=BASE_NS + 2),
        ],
        count_automatic=True,
    )
    signals_create_routed(signals=[_routed(c, market_ts_ns=BASE_NS + 3)])  # not counted
    counts = dict(Automation.objects.values_list("name", "automatic_trade_count"))
    assert counts == {"a": 2, "b": 1, "c": 0}
    assert not Automation.history.filter(history_type="~").exists()  # the counter stays out of history


@pytest.mark.django_db
def test_a_duplicate_signal_in_the_statement_raises_djangos_integrity_error_and_writes_nothing():
    automation = make_automation()
    signals_create_routed(signals=[_routed(automation)])
    before = (Signal.objects.count(), SignalTransition.objects.count(), L2Snapshot.objects.count())
    with pytest.raises(IntegrityError), transaction.atomic():
        signals_create_routed(signals=[_routed(automation, snapshot=snapshot_build(book=make_book(), levels=5))])
    assert (Signal.objects.count(), SignalTransition.objects.count(), L2Snapshot.objects.count()) == before


def _commit_mode() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_an_asynchronous_commit_is_asked_for_the_signals_transaction_only():
    automation = make_automation()
    assert _commit_mode() == "on"
    with transaction.atomic():
        signals_create_routed(signals=[_routed(automation)], synchronous_commit=False)
        assert _commit_mode() == "off"
    assert _commit_mode() == "on"  # SET LOCAL: the session's setting is back after the commit
    assert Signal.objects.count() == 1 and SignalTransition.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_by_default_the_callers_commit_mode_is_left_as_it_is():
    automation = make_automation()
    with transaction.atomic():
        signals_create_routed(signals=[_routed(automation)])
        assert _commit_mode() == "on"
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")
        signals_create_routed(signals=[_routed(automation, market_ts_ns=BASE_NS + 1)])
        assert _commit_mode() == "off"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("durable", [True, False])
def test_a_detection_pass_commits_its_signals_durably_unless_asked_not_to(markets, always_buy, sent_tasks, monkeypatch,
                                                                          durable):
    monkeypatch.setattr(detection, "SIGNALS_SYNCHRONOUS_COMMIT", durable)
    make_automation(symbol=SYMBOLS[0])
    seen = []
    create = detection.signals_create_routed

    def spy(**kwargs):
        signals = create(**kwargs)
        seen.append(_commit_mode())
        return signals

    monkeypatch.setattr(detection, "signals_create_routed", spy)
    [result] = detect_symbols(symbols=[SYMBOLS[0]])
    assert result.signals == {"queued": 1}
    assert seen == (["on"] if durable else ["off"])
    assert _commit_mode() == "on"


@pytest.mark.django_db
def test_states_and_done_equal_the_orm_reads():
    a, b = make_automation(name="a", approval_threshold=3), make_automation(name="b", require_approval=True)
    Automation.objects.filter(pk=b.pk).update(status=Automation.Status.PAUSED, approved_trade_count=2)  # history-ok: test
    signals_create_routed(signals=[_routed(a), _routed(b, market_ts_ns=BASE_NS + 5)])
    signals_create_routed(signals=[_routed(a, market_ts_ns=BASE_NS + 9)])
    ids, times = [a.pk, b.pk], [BASE_NS, BASE_NS + 5, BASE_NS + 7]

    states, done = detection._states_and_done(ids, times)

    fields = detection._STATE_FIELDS
    assert states == {row["id"]: row for row in Automation.objects.filter(pk__in=ids).values(*fields)}
    assert done == set(
        Signal.objects.filter(automation_id__in=ids, market_ts_ns__in=times).values_list("automation_id", "market_ts_ns", "side")
    )
    assert done == {(a.pk, BASE_NS, "buy"), (b.pk, BASE_NS + 5, "buy")}
    assert detection._states_and_done(ids, [])[1] == set()


# --- multi-symbol passes --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_one_pass_over_several_symbols_gives_each_its_signals_snapshot_and_window(markets, always_buy, sent_tasks):
    for symbol in SYMBOLS:
        make_automation(name=f"{symbol}-1", symbol=symbol)
        make_automation(name=f"{symbol}-2", symbol=symbol, require_approval=True)
    for symbol in SYMBOLS:
        markets["redis"].set(redis_keys.detect_pending(symbol), "1")

    results = detect_symbols_task([*SYMBOLS, SYMBOLS[0]])

    assert [r["symbol"] for r in results] == SYMBOLS
    for result in results:
        assert result["signals"] == {"queued": 1, "pending_approval": 1}
        assert result["market_ts_ns"] == markets["last_ns"][result["symbol"]]
    for symbol in SYMBOLS:
        signals = list(Signal.objects.filter(symbol=symbol))
        assert {s.market_ts_ns for s in signals} == {markets["last_ns"][symbol]}
        # One snapshot per symbol, of that symbol's book.
        assert len({s.snapshot_id for s in signals}) == 1
        assert snapshot_load(signals[0].snapshot).symbol == symbol
        assert markets["redis"].exists(redis_keys.detect_pending(symbol)) == 0
        assert markets["redis"].exists(detection.lock_key(symbol)) == 0
    queued = Signal.objects.filter(status=S.QUEUED).order_by("id")
    assert sorted(args[0] for _name, args, _kw in sent_tasks) == [s.pk for s in queued]
    assert {name for name, _args, _kw in sent_tasks} == {ORDER_EXECUTE_TASK}
    assert sorted(Automation.objects.values_list("automatic_trade_count", flat=True)) == [0, 0, 0, 1, 1, 1]


@pytest.mark.django_db(transaction=True)
def test_a_busy_symbol_waits_while_the_others_run_first(markets, always_buy, sent_tasks, monkeypatch):
    monkeypatch.setattr(detection, "LOCK_POLL_S", 0.02)
    for symbol in SYMBOLS:
        make_automation(name=symbol, symbol=symbol)
    busy = SYMBOLS[1]
    markets["redis"].set(detection.lock_key(busy), "other-worker", px=300)
    order: list[str] = []
    real = detection._detect_many
    monkeypatch.setattr(
        detection,
        "_detect_many",
        lambda client, locks, acquired, results: (order.append(sorted(acquired)), real(client, locks, acquired, results))[1],
    )

    results = detect_symbols(symbols=SYMBOLS)

    assert order == [sorted(set(SYMBOLS) - {busy}), [busy]]
    assert all(r.signals == {"queued": 1} for r in results)


@pytest.mark.django_db(transaction=True)
def test_a_symbol_that_fails_is_reported_and_retried_while_the_others_go_on(markets, always_buy, sent_tasks, monkeypatch):
    real_tag = detection.tag_regime

    def tag(window, features=None):
        if window.symbol == "TEST-ETH":
            raise RuntimeError("bad window")
        return real_tag(window, features=features)

    monkeypatch.setattr(detection, "tag_regime", tag)
    for symbol in SYMBOLS:
        make_automation(name=symbol, symbol=symbol)

    results = {r.symbol: r for r in detect_symbols(symbols=SYMBOLS)}

    assert results["TEST-ETH"].error == "RuntimeError: bad window" and results["TEST-ETH"].signals == {}
    assert results["TEST-BTC"].signals == results["TEST-SOL"].signals == {"queued": 1}
    # The failed symbol's data is not marked evaluated: the next pass tries it again.
    monkeypatch.setattr(detection, "tag_regime", real_tag)
    again = {r.symbol: r for r in detect_symbols(symbols=SYMBOLS)}
    assert again["TEST-ETH"].signals == {"queued": 1}
    assert again["TEST-BTC"].skipped_same_data == 1 and again["TEST-BTC"].signals == {}


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_met_inside_the_batch_falls_back_to_one_transaction_per_signal(markets, always_buy, sent_tasks, monkeypatch):
    automations = {symbol: make_automation(name=symbol, symbol=symbol) for symbol in SYMBOLS}
    target = automations["TEST-ETH"]
    calls = []
    real_check = detection._signal_rate_check

    def check(automation):
        # After the batch's duplicate check, a signal for the same quote appears (a worker whose lock had expired).
        if not calls:
            Signal.objects.create(
                automation=target,
                symbol="TEST-ETH",
                side="buy",
                quantity=Decimal("0.01"),
                limit_price=Decimal("100.10"),
                reason="other worker",
                status=S.QUEUED,
                market_ts_ns=markets["last_ns"]["TEST-ETH"],
                created_at=timezone.now(),
            )
        calls.append(automation.pk)
        return real_check(automation)

    monkeypatch.setattr(detection, "_signal_rate_check", check)

    results = {r.symbol: r for r in detect_symbols(symbols=SYMBOLS)}

    # The batch rolled back (the inserted row with it); one by one, every signal is created, each with a stored snapshot.
    assert {s: r.signals for s, r in results.items()} == {s: {"queued": 1} for s in SYMBOLS}
    assert Signal.objects.count() == 3
    for signal in Signal.objects.all():
        assert L2Snapshot.objects.filter(pk=signal.snapshot_id).exists()
        assert SignalTransition.objects.filter(signal=signal).count() == 2
    result = VerifyResult()
    verify_events(result)
    assert result.ok, result.problems


@pytest.mark.django_db(transaction=True)
def test_coalesced_requests_lose_no_batch(markets, always_buy, monkeypatch, settings):
    """A batch ingested while a pass runs finds its flag cleared, asks again, and the next pass evaluates it."""
    from celery import current_app

    from ingestion.services import request_detection

    settings.DETECT_TASK_GROUPS = 1

    make_automation(name="btc", symbol="TEST-BTC")
    make_automation(name="eth", symbol="TEST-ETH")
    client = markets["redis"]
    requests: list[list[str]] = []
    # The ingest side's real request: flag SET NX per symbol, ONE task for the symbols it flagged.
    monkeypatch.setattr(
        current_app,
        "send_task",
        lambda name, args=None, kwargs=None, **kw: requests.append(args[0]) if name == DETECT_SYMBOLS_TASK else None,
    )

    assert request_detection(["TEST-BTC", "TEST-ETH", "TEST-BTC"]) == ["TEST-BTC", "TEST-ETH"]
    assert request_detection(["TEST-BTC", "TEST-ETH"]) == []  # Coalesced: both flags are still set.
    assert requests == [["TEST-BTC", "TEST-ETH"]]
    landed: dict[str, int] = {}

    class IngestMeanwhile(AlwaysBuy):
        def evaluate(self, window, params, features=None):
            # A batch for BTC lands while the pass is running, after its data was read.
            if not landed:
                landed["TEST-BTC"] = new_quote(markets, "TEST-BTC", 1)
                request_detection(["TEST-BTC"])
            return super().evaluate(window, params, features)

    monkeypatch.setattr("automations.detection.get_strategy", lambda name: IngestMeanwhile())
    detect_symbols_task(requests[0])
    assert requests[1:] == [["TEST-BTC"]]
    detect_symbols_task(requests[1])

    btc = list(Signal.objects.filter(symbol="TEST-BTC").order_by("market_ts_ns").values_list("market_ts_ns", flat=True))
    assert btc == [markets["last_ns"]["TEST-BTC"], landed["TEST-BTC"]]
    assert client.exists(redis_keys.detect_pending("TEST-BTC")) == 0


@pytest.mark.django_db
def test_a_batch_asks_for_one_task_per_group_of_symbols_and_a_symbol_stays_in_its_group(redis_clean, monkeypatch, settings):
    from celery import current_app

    from ingestion.services import request_detection

    settings.DETECT_TASK_GROUPS = 2
    sent: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(current_app, "send_task", lambda name, args=None, kwargs=None, **kw: sent.append((name, args[0])))
    symbols = [f"SYM-{i}" for i in range(40)]

    assert request_detection(symbols) == symbols
    assert len(sent) == 2 and {name for name, _ in sent} == {DETECT_SYMBOLS_TASK}
    first = [set(group) for _, group in sent]
    assert first[0] | first[1] == set(symbols) and not first[0] & first[1]

    # Coalesced per symbol: only the symbols whose pass started (flag cleared) are asked for again, in the same groups.
    redis_clean.delete(*(redis_keys.detect_pending(s) for s in symbols[:10]))
    sent.clear()
    assert request_detection(symbols) == symbols[:10]
    for _, group in sent:
        assert any(set(group) <= g for g in first)
    assert sorted(s for _, group in sent for s in group) == sorted(symbols[:10])


# --- the shared window reads ---------------------------------------------------------------------


def _frames(symbols, quotes=5, trades=0):
    return selectors.windows_read_many([selectors.WindowRequest(symbol=s, quotes=quotes, trades=trades) for s in symbols])


@pytest.mark.django_db(transaction=True)
def test_windows_read_many_gives_the_frames_of_reading_each_symbol_alone(markets):
    symbols = SYMBOLS + ["TEST-NONE"]
    for step in range(4):
        got = _frames(symbols)
        for symbol, windows in zip(symbols, got, strict=True):
            expected = selectors.quotes_frame(symbol, 5)
            assert windows.quotes.equals(expected), (step, symbol)
        if step == 1:
            # A row lands behind the cached tail of one symbol (out-of-order commit): the next read must see it.
            insert_quotes("TEST-ETH", [(markets["last_ns"]["TEST-ETH"] - 50_000_000, "99.00", "1", "99.10", "1")])
        else:
            for k, symbol in enumerate(SYMBOLS[: step + 1]):
                insert_quotes(
                    symbol, [(markets["last_ns"][symbol] + (step + 1) * 100_000_000 + k * 1000, "101.00", "1", "101.10", "1")]
                )
    assert selectors.QUOTE_WINDOWS.incremental_loads > 0


@pytest.mark.django_db
def test_windows_read_many_refuses_a_symbol_asked_twice():
    with pytest.raises(ValueError, match="once per call"):
        _frames(["TEST-BTC", "TEST-BTC"])


@pytest.mark.django_db
def test_detect_symbols_refuses_an_empty_symbol():
    with pytest.raises(ValueError, match="non-empty string"):
        detect_symbols(symbols=["TEST-BTC", ""])


@pytest.mark.parametrize("rows", [0, 1, 300])
def test_window_frames_equal_the_public_pandas_construction(rows):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(rows)
    for table in (selectors._QUOTES, selectors._TRADES):
        arrays = [np.arange(rows, dtype=np.int64) * 1000, np.arange(rows, dtype=np.int64)]
        for dtype in table.dtypes:
            if dtype is object:
                column = np.empty(rows, dtype=object)
                column[:] = rng.choice(["buy", "sell", "unknown"], rows).tolist()
            else:
                column = rng.random(rows)
            arrays.append(column)
        fast = selectors._frame(arrays, table)
        public = pd.DataFrame(dict(zip(table.columns, [arrays[0], *arrays[2:]], strict=True)))
        pd.testing.assert_frame_equal(fast, public, check_exact=True)
        assert fast.index.equals(pd.RangeIndex(rows))
        # Later writes to the cache's arrays must not show through a frame already handed out, nor the reverse.
        if rows:
            fast.loc[0, table.columns[1]] = fast[table.columns[1]].iloc[0]
            pd.testing.assert_frame_equal(selectors._frame(arrays, table), public, check_exact=True)


@pytest.mark.django_db(transaction=True)
def test_a_trades_span_keeps_every_trade_a_look_back_can_see(markets):
    import pandas as pd

    from automations.features import compute_features
    from automations.strategies import MarketWindow

    symbol = "TEST-BTC"
    last = markets["last_ns"][symbol]
    # 40 trades 50 ms apart (times in whole microseconds), the newest at the last quote.
    times = [last - i * 50_000_000 for i in range(40)][::-1]
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_trade WHERE raw_stream = 'test'")
        cursor.executemany(
            "INSERT INTO ingestion_trade (raw_stream, raw_seq, symbol, source_ts, recv_ts, price, size, aggressor, trade_id)"
            " VALUES ('test', %s, %s, to_timestamp(%s::float8 / 1e9), to_timestamp(%s::float8 / 1e9), '100.05', %s, %s, %s)",
            [(i + 1, symbol, ts, ts, f"{0.1 + i / 100:.2f}", "buy" if i % 3 else "sell", f"t{i}") for i, ts in enumerate(times)],
        )
    try:
        span = 600_000_000
        full = _frames([symbol], quotes=5, trades=2000)[0].trades
        selectors.window_cache_clear()
        cut = selectors.windows_read_many([selectors.WindowRequest(symbol=symbol, quotes=5, trades=2000, trades_span_ns=span)])[
            0
        ].trades

        expected = full[full["ts_ns"] > full["ts_ns"].iloc[-1] - span].reset_index(drop=True)
        pd.testing.assert_frame_equal(cut, expected)
        assert 0 < len(cut) < len(full) == 40
        quotes = selectors.quotes_frame(symbol, 5)
        counted: list[int] = []
        for now_ns in (int(full["ts_ns"].iloc[-1]), int(full["ts_ns"].iloc[-1]) + 100_000_000):
            a = compute_features(MarketWindow(symbol=symbol, quotes=quotes, trades=full, book=None, now_ns=now_ns))
            b = compute_features(MarketWindow(symbol=symbol, quotes=quotes, trades=cut, book=None, now_ns=now_ns))
            for look_back in (50_000_000, 300_000_000, span):
                # Same trades and count; the sums come from cumulative sums that start elsewhere, so the
                # last bit may differ (as it already does whenever the 2,000-trade window slides).
                (net_a, gross_a, count_a), (net_b, gross_b, count_b) = a.trade_flow(look_back), b.trade_flow(look_back)
                assert count_a == count_b
                counted.append(count_a)
                assert net_b == pytest.approx(net_a, rel=1e-12, abs=1e-12)
                assert gross_b == pytest.approx(gross_a, rel=1e-12)
        assert max(counted) == len(cut) and min(counted) == 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM ingestion_trade WHERE raw_stream = 'test'")


@pytest.mark.django_db(transaction=True)
def test_a_global_signal_rate_breach_in_a_pass_stops_the_passs_later_signals(markets, always_buy, sent_tasks):
    from risk.models import RiskLimit

    automations = [make_automation(name=symbol, symbol=symbol) for symbol in SYMBOLS]
    limit = RiskLimit(automation=None, max_signals_per_hour=1)
    limit._change_reason = "test limit"
    limit.save()

    results = detect_symbols(symbols=SYMBOLS)

    # In order: the first passes the limit, the second breaches it (the global breaker halts every
    # automation), the third's automation is no longer active when its turn comes: no signal at all.
    assert [r.signals for r in results] == [{"queued": 1}, {"filtered": 1}, {}]
    first, second = Signal.objects.order_by("id")
    assert (first.automation_id, second.automation_id) == (automations[0].pk, automations[1].pk)
    assert second.status_reason.startswith("signal-rate limit:")
    assert not Automation.objects.filter(status=Automation.Status.ACTIVE).exists()
    assert sent_tasks == [(ORDER_EXECUTE_TASK, [first.pk], None)]


@pytest.mark.django_db(transaction=True)
def test_waiting_for_busy_symbols_polls_the_locks_not_the_whole_read(markets, always_buy, sent_tasks, monkeypatch):
    import time as real_time
    import types

    client = markets["redis"]
    for symbol in SYMBOLS:
        make_automation(name=symbol, symbol=symbol)
        client.set(detection.lock_key(symbol), "other-worker", px=60_000)
    polls: list[int] = []

    def sleep(seconds):
        # The other worker releases its locks after the fifth poll.
        polls.append(1)
        if len(polls) == 5:
            client.delete(*(detection.lock_key(symbol) for symbol in SYMBOLS))

    monkeypatch.setattr(
        detection,
        "time",
        types.SimpleNamespace(
            sleep=sleep,
            monotonic=real_time.monotonic,
            perf_counter=real_time.perf_counter,
            process_time=real_time.process_time,
            time_ns=real_time.time_ns,
        ),
    )
    attempts: list[str] = []
    real = detection._SymbolLock.acquire_in
    monkeypatch.setattr(
        detection._SymbolLock, "acquire_in", lambda self, pipe: (attempts.append(self.symbol), real(self, pipe))[1]
    )

    results = detect_symbols(symbols=SYMBOLS)

    assert all(r.signals == {"queued": 1} for r in results)
    assert len(polls) == 5
    # Five polls, but the full read (with its lock attempt) only twice per symbol: first, and once seen free.
    assert sorted(attempts) == sorted(SYMBOLS * 2)

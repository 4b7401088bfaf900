"""The detection path: new market data on symbols -> signals, routed.

``detect_symbols`` runs in the detect worker, once per ingested batch for
the symbols it touched (``detect_symbols_task``; the ingest worker coalesces
requests with a pending flag per symbol); ``detect_symbol`` is the same for
one symbol. It imports no broker code and holds no credentials: a signal
reaches execution only as an id, by Celery task name, after the signal's
transaction commits.

One pass over N symbols, in three round trips when nothing signals (Redis,
PostgreSQL, Redis), whatever N:

1. One Redis pipeline: per symbol, clear its pending flag
   (``clear_pending``), take its lock (``SET NX PX`` with a token), read the
   last evaluated venue timestamp per automation, the book and the latest
   quote. Symbols another worker holds are run after the free ones, once
   their lock is free (waiting at most ``LOCK_WAIT_S``).
2. One PostgreSQL round trip (``ingestion.selectors.windows_read_many``):
   the fingerprints of the symbols' ACTIVE automations (one statement) and
   the quote and trade windows from the process's incremental window cache
   (one statement per table for all symbols), sized as each symbol's last
   pass needed (the last ``max(min_history, regime history)`` quotes; the
   trades within the longest trade look-back when any strategy reads trade
   flow). The automations are loaded again only when the fingerprint moved;
   a window they need that was not read costs one more read on that pass.
3. Per symbol: skip automations that already evaluated the latest quote (a
   unique constraint on (automation, market_ts_ns, side) is the backstop);
   compute features ONCE and tag the regime ONCE, shared by the symbol's
   automations; evaluate each automation's strategy. A symbol that fails here
   is logged and left out (its data is evaluated again by the next pass).
4. Every intent of the pass, in ONE transaction (``_route_many``): read the
   automations' gating state and the signals they already have for these
   market times (one prepared statement), then per intent, in order, decide
   its route:
   - ``filtered`` when the regime is not in the automation's allowed set, or
     when the signal-rate limit is breached (risk's ``signal_rate_check``,
     called per signal inside the transaction; risk trips the breaker);
   - ``pending_approval`` when the automation requires approval or fewer than
     ``approval_threshold`` of its trades have been approved;
   - else ``queued``, counted as automatic, and the execute task is sent by
     name on commit (before the live pushes);
   then create the signals with their context (bid/ask/mid/spread, features,
   regime, market time, the L2 snapshot shared by the symbol's signals of
   this pass) through ``signals_create_routed``: the same rows as creating
   and moving them one by one (signal, two transitions, two audit events on
   the chain, two pushes); the snapshots, signals, transitions and automatic
   counters in one statement, the audit events in one chain append. A
   duplicate met there rolls the batch back and routes each intent in a
   transaction of its own.
5. One Redis pipeline: record the evaluated timestamps, then release the
   locks (compare-and-delete on each token), so the next holder sees them.

The book and quote are read before the windows (the flag must be cleared
before the data is read, and the lock taken before the last evaluated
timestamps are). A batch committed between the two reads can give a window
one batch newer than the book; that batch asked for its own pass, which
reads the matching book. The stored snapshot keeps the book's own time.

Gating rule, precisely: a signal needs approval while
``approved_trade_count < approval_threshold`` (or ``require_approval``).
Pending signals do not count as approved, so with N=2 and two signals
pending, a third signal waits for approval too; only once two trades have
been approved does the next signal go straight to execution. Rejected and
expired signals never count. The count is read inside the pass's signal
transaction (all intents of one automation in a pass see the same count, as
nothing of theirs can be approved before it commits); a concurrent approval
can only make a signal wait that might have gone automatic, never the other
way round. After a signal-rate breach the automations' state is read again,
so intents after a breaker paused their automation are dropped, as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
from celery import current_app
from django.db import IntegrityError, transaction
from django.db.models import F
from redis.exceptions import NoScriptError

from automations.features import TRADE_COLUMNS, compute_features
from automations.models import Automation, L2Snapshot, Signal
from automations.regime import regime_allowed, tag_regime
from automations.services import RoutedSignal, signal_create, signal_transition, signals_create_routed
from automations.snapshots import snapshot_build
from automations.strategies import Intent, MarketWindow, Strategy, get_strategy
from ingestion import selectors as market
from trading import redis_keys
from trading.db import prepared_rows
from trading.queues import ORDER_EXECUTE_TASK
from trading.redis_client import redis_client

logger = logging.getLogger(__name__)

ACTOR = "worker-detect"
# The regime tagger compares the last 50 quotes' volatility with the earlier
# ones and measures trend over 100 quote changes: 300 quotes give it history.
REGIME_QUOTES = 300
# Trade flow is aggregated over a time window; this many recent prints cover
# the default lookbacks on liquid symbols without loading a day of trades.
TRADE_ROWS = 2000
LAST_EVALUATED_TTL_S = 86_400
# Whether the pass's signal transaction waits for the WAL flush at COMMIT.
# Durable by default: a crash of PostgreSQL itself must not lose a signal
# (with its transitions and audit events) that detection will not produce
# again. FP_SIGNALS_ASYNC_COMMIT=1 sets synchronous_commit = off for that
# transaction only, for disks whose fsync costs milliseconds (measured on this
# machine: a commit's flush is 0.24 ms median when quiet, 3-4 ms at load 4).
# What that trades away: a PostgreSQL crash within a fraction of a second of
# the commit can lose the pass's signals, all or nothing (the chain stays
# intact); nothing outside the database has acted on them by then, since the
# execute worker commits its order synchronously, which flushes the WAL past
# the signal, before it calls a broker.
SIGNALS_SYNCHRONOUS_COMMIT = os.environ.get("FP_SIGNALS_ASYNC_COMMIT") != "1"
# The per-symbol lock: held at most this long (a crashed worker's lock
# expires), waited for at most LOCK_WAIT_S, polled every LOCK_POLL_S.
LOCK_TIMEOUT_MS = 60_000
LOCK_WAIT_S = 15.0
LOCK_POLL_S = 0.02
# Compare-and-delete: a worker releases the lock only while it still holds
# it (its token), never a lock another worker took after this one expired.
_RELEASE_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_RELEASE_SHA = hashlib.sha1(_RELEASE_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1.


def last_evaluated_key(symbol: str) -> str:
    return f"fp:detect-last:{symbol}"


def lock_key(symbol: str) -> str:
    return f"fp:detect-lock:{symbol}"


@dataclass
class DetectResult:
    symbol: str
    automations: int = 0
    evaluated: int = 0
    skipped_same_data: int = 0
    intents: int = 0
    signals: dict[str, int] = field(default_factory=dict)
    market_ts_ns: int | None = None
    lag_ms: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, what ``dataclasses.asdict`` gives, by hand (its deep copy cost 0.2 ms a pass)."""
        out = dict(vars(self))
        out["signals"], out["timings_ms"] = dict(self.signals), dict(self.timings_ms)
        return out


@dataclass
class _Plan:
    automation: Automation
    strategy: Strategy
    params: dict[str, Any]


_params_cache: dict[tuple[int, datetime | None], dict[str, Any]] = {}
# Per symbol: (fingerprint, automations). The fingerprint is the count, the
# newest ``updated_at`` and the highest id of the symbol's active automations;
# any save (status, parameters, gating) moves ``updated_at``, so one cheap
# aggregate query tells whether the thousand rows must be loaded again. A
# stale entry could at worst evaluate an automation just paused, and
# ``_route`` re-reads the status inside the signal's transaction anyway.
_automations_cache: dict[str, tuple[tuple[Any, ...], list[Automation]]] = {}


# Per symbol: the quote window and how far back in time the trades were
# needed on the last pass (0: no trades). The window reads are sent with the
# fingerprint before the automations are known, so they are sized from the
# last pass; a change in the automations costs one more read on the pass that
# sees it. The trades frame holds only the trades within that look-back of
# the newest trade: every strategy looks at ``(now_ns - its look-back,
# now_ns]`` with ``now_ns`` at or after the newest trade, so it sees the same
# trades, and the frame and its features cost a fraction of the full window.
_window_needs: dict[str, tuple[int, int]] = {}

# Plain SQL (it runs on every pass, and the ORM's aggregate compilation cost
# as much as the query), sent in the same round trip as the window reads.
# The status test is a FILTER, not a WHERE: the planner then reads only the
# symbol's few rows from the symbol index, instead of AND-ing it with the
# status index, which holds every active automation of every symbol.
_FINGERPRINT_SQL = (
    "SELECT symbol, count(*) FILTER (WHERE status = %s), max(updated_at) FILTER (WHERE status = %s),"  # noqa: S608 - the model's own table.
    f" max(id) FILTER (WHERE status = %s) FROM {Automation._meta.db_table} WHERE symbol = ANY(%s) GROUP BY symbol"
)


def _active_automations(symbol: str, fingerprint: tuple[Any, ...]) -> list[Automation]:
    """The symbol's active automations, loaded again only when their fingerprint moved."""
    hit = _automations_cache.get(symbol)
    if hit is not None and hit[0] == fingerprint:
        return hit[1]
    rows = list(
        Automation.objects.filter(symbol=symbol, status=Automation.Status.ACTIVE)
        .only(
            "id",
            "symbol",
            "strategy",
            "parameters",
            "status",
            "allowed_regimes",
            "snapshot_levels",
            "signal_expiry_seconds",
            "updated_at",
            "name",
        )
        .order_by("id")
    )
    if len(_automations_cache) > 10_000:
        _automations_cache.clear()
    _automations_cache[symbol] = (fingerprint, rows)
    return rows


def _plan(automation: Automation) -> _Plan | None:
    """The strategy and validated parameters of an automation (cached until it changes)."""
    try:
        strategy = get_strategy(automation.strategy)
        key = (automation.pk, automation.updated_at)
        params = _params_cache.get(key)
        if params is None:
            params = strategy.validate_params(automation.parameters)
            if len(_params_cache) > 10_000:
                _params_cache.clear()
            _params_cache[key] = params
    except ValueError as exc:
        # Parameters are validated on every change; this guards rows written
        # around the services. The automation cannot run, so it is skipped loudly.
        logger.error("automation %s cannot be evaluated: %s", automation.pk, exc)
        return None
    return _Plan(automation=automation, strategy=strategy, params=params)


def _finite_dict(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            out[key] = value if math.isfinite(value) else None
        else:
            out[key] = value if isinstance(value, (str, bool, type(None))) else str(value)
    return out


def _signal_rate_check(automation: Automation) -> Any:
    """The automation's signal-rate breaker (risk). Returns a Breach or None."""
    from risk.services import signal_rate_check

    return signal_rate_check(automation=automation)


@dataclass
class _Batch:
    symbol: str
    regime: Any
    regime_dict: dict[str, Any]
    base_features: dict[str, Any]
    bid: Decimal | None
    ask: Decimal | None
    mid: Decimal | None
    spread_bps: float | None
    market_ts_ns: int
    book: Any
    snapshots: dict[int, L2Snapshot | None] = field(default_factory=dict)

    def snapshot(self, levels: int, *, save: bool = True) -> L2Snapshot | None:
        """One snapshot per depth per batch, shared by every signal of the batch.

        ``save=False``: built, not stored; ``signals_create_routed`` inserts it
        with the signals (the instance then has its id, and is shared as stored).
        """
        if self.book is None:
            return None
        snapshot = self.snapshots.get(levels)
        if snapshot is None:
            snapshot = self.snapshots[levels] = snapshot_build(book=self.book, levels=levels)
        if save and snapshot.pk is None:
            snapshot.save(force_insert=True)
        return snapshot


def _route(plan: _Plan, intent: Intent, batch: _Batch) -> str | None:
    """Create and route one signal; return its final status (None when skipped)."""
    automation = plan.automation
    allowed, why = regime_allowed(batch.regime, automation.allowed_regimes)
    snapshot = batch.snapshot(automation.snapshot_levels)
    market_ts = datetime.fromtimestamp(batch.market_ts_ns / 1e9, tz=UTC)
    try:
        with transaction.atomic():
            state = (
                Automation.objects.filter(pk=automation.pk)
                .values("status", "approved_trade_count", "approval_threshold", "require_approval")
                .first()
            )
            # Paused since the batch started (by a person or a breaker): no signal.
            if state is None or state["status"] != Automation.Status.ACTIVE:
                return None
            needs_approval = state["require_approval"] or state["approved_trade_count"] < state["approval_threshold"]
            signal = signal_create(
                automation=automation,
                side=str(intent.side),
                quantity=intent.quantity,
                limit_price=intent.limit_price,
                reason=intent.reason,
                actor_label=ACTOR,
                features=_finite_dict({**batch.base_features, **intent.features}),
                regime=batch.regime_dict,
                bid=batch.bid,
                ask=batch.ask,
                mid=batch.mid,
                spread_bps=batch.spread_bps,
                market_ts=market_ts,
                market_ts_ns=batch.market_ts_ns,
                snapshot=snapshot,
                needs_approval=needs_approval,
            )
            if not allowed:
                signal_transition(
                    signal=signal, to_status=Signal.Status.FILTERED, actor_label=ACTOR, reason=f"regime not allowed: {why}"
                )
                return Signal.Status.FILTERED
            breach = _signal_rate_check(automation)
            if breach is not None:
                signal_transition(
                    signal=signal,
                    to_status=Signal.Status.FILTERED,
                    actor_label=ACTOR,
                    reason=f"signal-rate limit: {breach.message}",
                )
                return Signal.Status.FILTERED
            if needs_approval:
                why_gate = (
                    "the automation requires approval for every trade"
                    if state["require_approval"]
                    else f"approval needed: {state['approved_trade_count']} of the first "
                    f"{state['approval_threshold']} trades approved"
                )
                signal_transition(signal=signal, to_status=Signal.Status.PENDING_APPROVAL, actor_label=ACTOR, reason=why_gate)
                return Signal.Status.PENDING_APPROVAL
            signal_transition(
                signal=signal,
                to_status=Signal.Status.QUEUED,
                actor_label=ACTOR,
                reason=f"automatic: {state['approved_trade_count']} trades approved (threshold {state['approval_threshold']})",
            )
            # The counter is excluded from history, and F() keeps it atomic across detect workers.
            Automation.objects.filter(pk=automation.pk).update(  # history-ok: counter
                automatic_trade_count=F("automatic_trade_count") + 1
            )
            signal_id = signal.pk
            transaction.on_commit(lambda: current_app.send_task(ORDER_EXECUTE_TASK, args=[signal_id]))
            return Signal.Status.QUEUED
    except IntegrityError:
        # The same quote already produced this signal (a re-run after a crash).
        logger.info("duplicate signal skipped: automation %s at %s", automation.pk, batch.market_ts_ns)
        return None


def _route_many(work: list[tuple[_Plan, Intent, _Batch]]) -> list[str | None]:
    """Create and route every signal of a pass in ONE transaction; their final statuses in order (None when skipped).

    The same decisions as ``_route``, signal by signal and in order, with the
    writes batched (``signals_create_routed``). When the batch fails on a
    duplicate (a signal committed for the same quote since the check, e.g. by
    a worker whose lock had expired), nothing of it is kept and every signal
    goes through ``_route`` on its own transaction instead.
    """
    if not work:
        return []
    try:
        with transaction.atomic():
            return _route_many_atomic(work)
    except IntegrityError:
        logger.info("a signal of this pass already exists; routing its %s signals one by one", len(work))
        # The rolled-back transaction took the batches' stored snapshots with it.
        for item in work:
            item[2].snapshots.clear()
        return [_route(plan, intent, batch) for plan, intent, batch in work]


_STATE_FIELDS = ("id", "status", "approved_trade_count", "approval_threshold", "require_approval")
# The gating state of the pass's automations and the signals they already have
# for the pass's market times, in one prepared statement (it runs on every pass
# that signals; the ORM's compilation of the two queries cost more than both).
_STATES_SQL = (
    f"SELECT {', '.join('a.' + f for f in _STATE_FIELDS)},"  # noqa: S608 - the models' own tables and columns.
    f" ARRAY(SELECT s.market_ts_ns FROM {Signal._meta.db_table} s WHERE s.automation_id = a.id"
    " AND s.market_ts_ns = ANY(%(ts)s::bigint[]) ORDER BY s.id),"
    f" ARRAY(SELECT s.side FROM {Signal._meta.db_table} s WHERE s.automation_id = a.id"
    " AND s.market_ts_ns = ANY(%(ts)s::bigint[]) ORDER BY s.id)"
    f" FROM {Automation._meta.db_table} a WHERE a.id = ANY(%(ids)s::bigint[])"
)


def _states_and_done(ids: list[int], market_ts_ns: list[int]) -> tuple[dict[int, dict[str, Any]], set[tuple[int, int, str]]]:
    """The automations' gating state by id, and the (automation, market time, side) keys of their existing signals."""
    rows = prepared_rows(_STATES_SQL, {"ids": ids, "ts": market_ts_ns})
    states = {row[0]: dict(zip(_STATE_FIELDS, row[:5], strict=True)) for row in rows}
    done = {(row[0], ts, side) for row in rows for ts, side in zip(row[5], row[6], strict=True)}
    return states, done


def _route_many_atomic(work: list[tuple[_Plan, Intent, _Batch]]) -> list[str | None]:
    ids = sorted({plan.automation.pk for plan, _intent, _batch in work})
    # One read of the gating state of every automation of the pass, in the transaction (as ``_route`` reads it),
    # with the signals the same quotes already produced (a re-run after a crash): those are skipped, like
    # ``_route``'s IntegrityError.
    states, done = _states_and_done(ids, sorted({b.market_ts_ns for _p, _i, b in work}))
    statuses: list[str | None] = []
    routed: list[RoutedSignal] = []
    # The execute tasks are sent on commit BEFORE the live pushes (registered
    # later, with the transitions): the order step must not wait behind them.
    signal_ids: list[int] = []
    transaction.on_commit(lambda: [current_app.send_task(ORDER_EXECUTE_TASK, args=[pk]) for pk in signal_ids])
    for plan, intent, batch in work:
        automation = plan.automation
        state = states.get(automation.pk)
        key = (automation.pk, batch.market_ts_ns, str(intent.side))
        # Paused since the batch started (by a person or a breaker): no signal.
        if state is None or state["status"] != Automation.Status.ACTIVE or key in done:
            if key in done:
                logger.info("duplicate signal skipped: automation %s at %s", automation.pk, batch.market_ts_ns)
            statuses.append(None)
            continue
        done.add(key)
        needs_approval = state["require_approval"] or state["approved_trade_count"] < state["approval_threshold"]
        allowed, why = regime_allowed(batch.regime, automation.allowed_regimes)
        if not allowed:
            to_status, status_reason = Signal.Status.FILTERED, f"regime not allowed: {why}"
        elif (breach := _signal_rate_check(automation)) is not None:
            to_status, status_reason = Signal.Status.FILTERED, f"signal-rate limit: {breach.message}"
            # The breaker may have paused this automation (or all of them): later signals see it.
            states.update(_states_and_done(ids, [])[0])
        elif needs_approval:
            to_status = Signal.Status.PENDING_APPROVAL
            status_reason = (
                "the automation requires approval for every trade"
                if state["require_approval"]
                else f"approval needed: {state['approved_trade_count']} of the first "
                f"{state['approval_threshold']} trades approved"
            )
        else:
            to_status = Signal.Status.QUEUED
            status_reason = (
                f"automatic: {state['approved_trade_count']} trades approved (threshold {state['approval_threshold']})"
            )
        routed.append(
            RoutedSignal(
                automation=automation,
                side=str(intent.side),
                quantity=intent.quantity,
                limit_price=intent.limit_price,
                reason=intent.reason,
                to_status=to_status,
                status_reason=status_reason,
                context={
                    "features": _finite_dict({**batch.base_features, **intent.features}),
                    "regime": batch.regime_dict,
                    "bid": batch.bid,
                    "ask": batch.ask,
                    "mid": batch.mid,
                    "spread_bps": batch.spread_bps,
                    "market_ts": datetime.fromtimestamp(batch.market_ts_ns / 1e9, tz=UTC),
                    "market_ts_ns": batch.market_ts_ns,
                    "snapshot": batch.snapshot(automation.snapshot_levels, save=False),
                    "needs_approval": needs_approval,
                },
            )
        )
        statuses.append(to_status)
    # The same statement adds the queued signals to the automations' automatic-trade counters
    # (excluded from history; an increment in SQL, so atomic across detect workers).
    signals = signals_create_routed(
        signals=routed, actor_label=ACTOR, count_automatic=True, synchronous_commit=SIGNALS_SYNCHRONOUS_COMMIT
    )
    signal_ids.extend(signal.pk for signal in signals if signal.status == Signal.Status.QUEUED)
    return statuses


_EMPTY_TRADES: pd.DataFrame | None = None


def _empty_trades() -> pd.DataFrame:
    """The empty trades frame of a symbol whose strategies read no trades: built once (it cost 0.7 ms a pass).

    Frames handed to features and strategies are read, never written (the
    window cache shares its frames across passes the same way).
    """
    global _EMPTY_TRADES
    if _EMPTY_TRADES is None:
        _EMPTY_TRADES = pd.DataFrame(
            {c: pd.Series(dtype="object" if c == "side" else ("int64" if c == "ts_ns" else "float64")) for c in TRADE_COLUMNS}
        )
    return _EMPTY_TRADES


@dataclass
class _Reads:
    """What the first Redis round trip brings back with the lock."""

    last_seen: dict[str, int]
    book_raw: bytes | None
    quote_raw: bytes | None


class _SymbolLock:
    """One detection per symbol at a time, its commands riding in the pass's own pipelines.

    ``SET NX PX`` with a random token goes in the first read pipeline; the
    release (compare-and-delete by token, a Lua script called by its SHA) in
    the last write pipeline. The script is loaded into Redis only when Redis
    does not know it yet (first use after a restart).
    """

    def __init__(self, client: Any, symbol: str) -> None:
        self.client = client
        self.symbol = symbol
        self.key = lock_key(symbol)
        self.token = secrets.token_hex(16)
        self.held = False

    def acquire_in(self, pipe: Any) -> None:
        pipe.set(self.key, self.token, nx=True, px=LOCK_TIMEOUT_MS)

    def release_in(self, pipe: Any) -> None:
        pipe.evalsha(_RELEASE_SHA, 1, self.key, self.token)

    def released(self, reply: Any) -> None:
        """Handle the reply of ``release_in``'s command."""
        if isinstance(reply, NoScriptError):
            # Redis lost its script cache (a restart): load the script once, release again.
            self.release()
            return
        self.held = False
        if isinstance(reply, Exception):
            raise reply
        if not reply:
            # The lock expired under a very slow run; nothing to release.
            logger.warning("detection lock on %s had expired", self.symbol)

    def release(self) -> None:
        if not self.held:
            return
        try:
            reply = self.client.evalsha(_RELEASE_SHA, 1, self.key, self.token)
        except NoScriptError:
            self.client.script_load(_RELEASE_LUA)
            reply = self.client.evalsha(_RELEASE_SHA, 1, self.key, self.token)
        self.released(reply)


def _lock_and_read_many(
    client: Any, locks: dict[str, _SymbolLock], symbols: list[str], *, clear_pending: bool, deadline: float
) -> tuple[dict[str, _Reads], list[str]]:
    """Clear the pending flags, take the locks and read the Redis keys of ``symbols`` in one round trip.

    Returns the reads of the symbols whose lock was taken and the symbols
    still busy. The reads after ``SET NX`` see every write of the previous
    holder, which wrote them before its release. When some locks were
    taken, the caller runs those symbols first and asks again for the busy
    ones. When none was, this waits until one of them is free (one
    ``EXISTS`` over the lock keys every ``LOCK_POLL_S``, not the whole read
    pipeline) and tries again without the flags, until ``deadline``.
    """
    acquired: dict[str, _Reads] = {}
    todo = list(symbols)
    while True:
        pipe = client.pipeline(transaction=False)
        for symbol in todo:
            if clear_pending:
                # First: data ingested from now on asks for a new detection, so
                # nothing that arrives during this run is missed.
                pipe.delete(redis_keys.detect_pending(symbol))
            locks[symbol].acquire_in(pipe)
            pipe.hgetall(last_evaluated_key(symbol))
            pipe.get(redis_keys.book(symbol))
            pipe.get(redis_keys.quote(symbol))
        replies = pipe.execute()
        width = 5 if clear_pending else 4
        busy = []
        for index, symbol in enumerate(todo):
            got, seen_raw, book_raw, quote_raw = replies[index * width + width - 4 : (index + 1) * width]
            if got:
                locks[symbol].held = True
                acquired[symbol] = _Reads(
                    last_seen={k.decode(): int(v) for k, v in seen_raw.items()}, book_raw=book_raw, quote_raw=quote_raw
                )
            else:
                busy.append(symbol)
        clear_pending = False
        todo = busy
        if not todo or acquired:
            return acquired, todo
        keys = [locks[symbol].key for symbol in todo]
        while True:
            if time.monotonic() + LOCK_POLL_S > deadline:
                return acquired, todo
            time.sleep(LOCK_POLL_S)
            if client.exists(*keys) < len(keys):
                break


def detect_symbol(*, symbol: str, clear_pending: bool = False) -> DetectResult:
    """Evaluate every active automation on ``symbol`` against its latest data (see the module docstring).

    ``clear_pending``: the detect task passes True, so the ingest side's
    coalescing flag is cleared in the same round trip that takes the lock.
    """
    return detect_symbols(symbols=[symbol], clear_pending=clear_pending)[0]


def detect_symbols(*, symbols: list[str], clear_pending: bool = False) -> list[DetectResult]:
    """``detect_symbol`` for several symbols in one pass: the round trips and the signal transaction are shared.

    One result per distinct symbol, in order. Symbols another worker holds
    are waited for (up to ``LOCK_WAIT_S``) after the free ones have run; a
    symbol still busy then is dropped with a warning (its result is empty).
    A symbol whose evaluation raises is logged and left out of the pass (its
    result carries the error, and its data is evaluated again by the next
    pass); the other symbols go on.
    """
    symbols = list(dict.fromkeys(symbols))
    for symbol in symbols:
        if not isinstance(symbol, str) or not symbol:
            raise ValueError(f"detect_symbols: every symbol must be a non-empty string, got {symbol!r}")
    client = redis_client()
    locks = {symbol: _SymbolLock(client, symbol) for symbol in symbols}
    results = {symbol: DetectResult(symbol=symbol) for symbol in symbols}
    deadline = time.monotonic() + LOCK_WAIT_S
    todo = symbols
    try:
        while todo:
            t0 = time.perf_counter()
            # One detection per symbol at a time: two workers on the same data
            # would race on the same quote; the second waits and then sees nothing new.
            acquired, todo = _lock_and_read_many(client, locks, todo, clear_pending=clear_pending, deadline=deadline)
            clear_pending = False
            lock_ms = (time.perf_counter() - t0) * 1e3
            if acquired:
                _detect_many(client, locks, acquired, results)
                for symbol in acquired:
                    results[symbol].timings_ms["lock_and_read"] = lock_ms
            elif todo:
                for symbol in todo:
                    logger.warning("detection on %s still busy after %s s; this request is dropped", symbol, LOCK_WAIT_S)
                break
    finally:
        # Normally released in the last write pipeline; this covers errors.
        for lock in locks.values():
            try:
                lock.release()
            except Exception:
                # Redis is unreachable: the lock expires on its own after LOCK_TIMEOUT_MS.
                logger.warning("detection lock on %s could not be released", lock.symbol, exc_info=True)
    return [results[symbol] for symbol in symbols]


@dataclass
class _SymbolPass:
    """One symbol's state through a pass."""

    symbol: str
    reads: _Reads
    result: DetectResult
    sized: tuple[int, int]
    windows: Any = None
    plans: list[_Plan] = field(default_factory=list)
    due: list[_Plan] = field(default_factory=list)
    market_ts_ns: int | None = None
    batch: _Batch | None = None


def _fingerprints(rows: list[tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    return {row[0]: tuple(row[1:]) for row in rows}


def _detect_many(
    client: Any, locks: dict[str, _SymbolLock], acquired: dict[str, _Reads], results: dict[str, DetectResult]
) -> None:
    started, cpu = time.perf_counter(), [time.process_time()]

    def cpu_lap() -> float:
        """CPU ms of this process since the last lap (the phases' own cost, whatever the machine's load)."""
        cpu.append(time.process_time())
        return (cpu[-1] - cpu[-2]) * 1e3

    passes = [
        _SymbolPass(symbol=symbol, reads=reads, result=results[symbol], sized=_window_needs.get(symbol, (REGIME_QUOTES, 0)))
        for symbol, reads in acquired.items()
    ]
    # 1. One PostgreSQL round trip: the automations' fingerprints of every
    # symbol and the quote and trade windows, sized from each symbol's last
    # pass. The window cache moves only the rows ingested since this worker's
    # last pass on the symbol, and checks in the same statement that nothing
    # landed behind its tail (see ingestion.selectors).
    requests = [
        market.WindowRequest(
            symbol=p.symbol, quotes=p.sized[0], trades=TRADE_ROWS if p.sized[1] else 0, trades_span_ns=p.sized[1]
        )
        for p in passes
    ]
    requests[0] = dataclasses.replace(
        requests[0], extra=[(_FINGERPRINT_SQL, [*[Automation.Status.ACTIVE.value] * 3, list(acquired)])]
    )
    windows = market.windows_read_many(requests)
    fingerprints = _fingerprints(windows[0].extra[0])
    if len(_window_needs) > 10_000:
        _window_needs.clear()
    again: list[market.WindowRequest] = []
    for p, w in zip(passes, windows, strict=True):
        p.windows = w
        automations = _active_automations(p.symbol, fingerprints.get(p.symbol, (0, None, None)))
        p.result.automations = len(automations)
        if not automations:
            # No window reads for this symbol until an automation appears.
            _window_needs[p.symbol] = (0, 0)
            continue
        p.plans = [plan for plan in (_plan(a) for a in automations) if plan is not None]
        need_quotes = max([REGIME_QUOTES, *(plan.strategy.min_history(plan.params) + 1 for plan in p.plans)])
        lookback_ns = max([0, *(int(plan.strategy.trade_lookback_ns(plan.params)) for plan in p.plans)])
        _window_needs[p.symbol] = (need_quotes, lookback_ns)
        # A window the automations need that was not read (or a trades frame
        # cut shorter than they look back): one more round trip, shared.
        more_quotes = need_quotes if need_quotes != p.sized[0] else 0
        more_trades = TRADE_ROWS if lookback_ns > p.sized[1] or (lookback_ns and w.trades is None) else 0
        if more_quotes or more_trades:
            again.append(
                market.WindowRequest(symbol=p.symbol, quotes=more_quotes, trades=more_trades, trades_span_ns=lookback_ns)
            )
    if again:
        by_symbol = {p.symbol: p for p in passes}
        for request, w in zip(again, market.windows_read_many(again), strict=True):
            old = by_symbol[request.symbol].windows
            by_symbol[request.symbol].windows = market.Windows(
                quotes=w.quotes if request.quotes else old.quotes,
                trades=w.trades if request.trades else old.trades,
                extra=old.extra,
            )
    load_ms = (time.perf_counter() - started) * 1e3
    cpu_ms = {"cpu_load": cpu_lap()}

    # 2. Per symbol: skip automations that already evaluated the latest
    # quote, compute features and the regime once, evaluate the strategies.
    work: list[tuple[_Plan, Intent, _Batch]] = []
    for p in passes:
        p.result.timings_ms["load_quotes"] = load_ms
        if not p.plans:
            continue
        try:
            work.extend(_evaluate_symbol(p))
        except Exception as exc:
            # One symbol's bad data must not stop the others; its last
            # evaluated time is not recorded, so the next pass tries again.
            logger.exception("detection on %s failed", p.symbol)
            p.result.error = f"{type(exc).__name__}: {exc}"
            p.due = []

    cpu_ms["cpu_evaluate"] = cpu_lap()

    # 3. One transaction for every signal of the pass.
    t0 = time.perf_counter()
    for item, status in zip(work, _route_many(work), strict=True):
        if status is not None:
            signals = results[item[2].symbol].signals
            signals[status] = signals.get(status, 0) + 1
    signals_ms = (time.perf_counter() - t0) * 1e3
    cpu_ms["cpu_signals"] = cpu_lap()

    # 4. One Redis pipeline: record the evaluated timestamps, then release the
    # locks (compare-and-delete on each token), so the next holder sees them.
    # Independent writes: no MULTI/EXEC needed.
    t0 = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    written = 0
    for p in passes:
        if p.due and p.market_ts_ns is not None:
            key = last_evaluated_key(p.symbol)
            pipe.hset(key, mapping={str(plan.automation.pk): p.market_ts_ns for plan in p.due})
            pipe.expire(key, LAST_EVALUATED_TTL_S)
            written += 2
    for p in passes:
        locks[p.symbol].release_in(pipe)
    replies = pipe.execute(raise_on_error=False)
    for reply in replies[:written]:
        if isinstance(reply, Exception):
            raise reply
    for p, reply in zip(passes, replies[written:], strict=True):
        locks[p.symbol].released(reply)
    release_ms = (time.perf_counter() - t0) * 1e3
    cpu_ms["cpu_write_and_release"] = cpu_lap()
    total_ms = (time.perf_counter() - started) * 1e3
    for p in passes:
        p.result.timings_ms.update(signals=signals_ms, write_and_release=release_ms, total=total_ms, **cpu_ms)
        if len(passes) > 1:
            # Phases are shared by the pass's symbols: say how many, so sums are not taken as per symbol.
            p.result.timings_ms["symbols_in_pass"] = float(len(passes))


def _last_ts_ns(frame: pd.DataFrame) -> int:
    # ``iat`` skips building a column Series: a tenth of ``frame["ts_ns"].iloc[-1]``'s cost.
    return int(frame.iat[-1, frame.columns.get_loc("ts_ns")])


def _evaluate_symbol(p: _SymbolPass) -> list[tuple[_Plan, Intent, _Batch]]:
    """Features, regime and every due automation's intents on one symbol's window."""
    result = p.result
    quotes = p.windows.quotes
    if quotes is None or quotes.empty:
        return []
    market_ts_ns = _last_ts_ns(quotes)
    p.market_ts_ns = result.market_ts_ns = market_ts_ns
    # The last evaluated quote per automation came with the lock; the book
    # is parsed only when some automation is due.
    p.due = [plan for plan in p.plans if p.reads.last_seen.get(str(plan.automation.pk), -1) < market_ts_ns]
    result.skipped_same_data = len(p.plans) - len(p.due)
    if not p.due:
        return []
    t0 = time.perf_counter()
    trades = p.windows.trades if p.windows.trades is not None else _empty_trades()
    levels = max(plan.automation.snapshot_levels for plan in p.due)
    book = market.book_from_json(p.reads.book_raw, n=levels)
    quote = market.quote_from_json(p.reads.quote_raw)
    now_ns = max(market_ts_ns, _last_ts_ns(trades) if len(trades) else 0)
    window = MarketWindow(symbol=p.symbol, quotes=quotes, trades=trades, book=book, now_ns=now_ns)
    features = compute_features(window)
    regime = tag_regime(window, features=features)
    result.timings_ms["load_rest_and_features"] = (time.perf_counter() - t0) * 1e3
    if quote is not None:
        result.lag_ms = (time.time_ns() - quote.recv_ts_ns) / 1e6

    bid, ask = features.last_bid_decimal(), features.last_ask_decimal()
    valid_book = bid > 0 and ask > 0
    batch = _Batch(
        symbol=p.symbol,
        regime=regime,
        regime_dict=regime.as_dict(),
        base_features={
            "microprice": float(features.microprice[-1]),
            "tob_imbalance": float(features.tob_imbalance[-1]),
            "l2_imbalance": features.l2_imbalance(10),
        },
        bid=bid if valid_book else None,
        ask=ask if valid_book else None,
        mid=(bid + ask) / 2 if valid_book else None,
        spread_bps=float(features.spread_bps[-1]) if math.isfinite(float(features.spread_bps[-1])) else None,
        market_ts_ns=market_ts_ns,
        book=book,
    )
    p.batch = batch

    t0 = time.perf_counter()
    work: list[tuple[_Plan, Intent, _Batch]] = []
    for plan in p.due:
        try:
            intents = plan.strategy.evaluate(window, plan.params, features)
        except Exception:
            # One broken strategy must not stop the others on the symbol.
            logger.exception("strategy %s failed for automation %s", plan.automation.strategy, plan.automation.pk)
            continue
        work.extend((plan, intent, batch) for intent in intents)
    result.evaluated = len(p.due)
    result.intents = len(work)
    result.timings_ms["evaluate"] = (time.perf_counter() - t0) * 1e3
    return work

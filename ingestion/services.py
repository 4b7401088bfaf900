"""The ingest path: raw records in, ticks stored, books and quotes published.

``IngestPipeline.ingest`` is what the ingest worker runs for each batch the
feed hands it, and what ``replay_raw`` and ``ingest_file`` run over the raw
store. Per batch:

1. parse each raw record; an unreadable one is quarantined with its reason;
2. validate each tick; a bad one is quarantined with its reason;
3. estimate each source's clock (latency baseline and offset) and raise a
   drift alert, by task name, when the offset passes 100 ms;
4. COPY quotes and trades into the day-partitioned tables; the primary key is
   the raw-store reference, so a batch delivered twice adds nothing;
5. apply L2 updates to the in-memory books, then publish the latest quote and
   the top of each book to Redis for the detect workers;
6. after commit, ask for one detection per touched symbol (coalesced).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from celery import current_app
from django.db import connection, transaction
from django.utils import timezone

from ingestion.book import BookError, OrderBook
from ingestion.clock import ClockEstimator
from ingestion.models import ClockSource, Instrument, QuarantinedMessage
from ingestion.parsers import ParseError, parse
from ingestion.types import BookUpdate, QuoteTick, RawRef, TradeTick
from ingestion.validation import Validator, reason_code
from trading import redis_keys
from trading.queues import ALERT_RAISE_TASK, DETECT_SYMBOL_TASK
from trading.redis_client import redis_client

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BOOK_LEVELS_PUBLISHED = 50
EXCERPT_BYTES = 500

Record = tuple[int, int, bytes]  # (raw seq, receive time ns, payload)


def ns_to_datetime(ns: int) -> datetime:
    # Integer arithmetic keeps microseconds exact; a float division would not.
    return EPOCH + timedelta(microseconds=ns // 1000)


@dataclass
class IngestResult:
    quotes: int = 0
    trades: int = 0
    book_updates: int = 0
    quarantined: int = 0
    symbols: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        return {"quotes": self.quotes, "trades": self.trades, "book_updates": self.book_updates,
                "quarantined": self.quarantined, "symbols": sorted(self.symbols)}


def encode_records(records: Iterable[Record]) -> list[list[object]]:
    """Records as JSON-safe lists for a Celery message (payload base64)."""
    return [[seq, recv_ns, base64.b64encode(payload).decode()] for seq, recv_ns, payload in records]


def decode_records(rows: Iterable[Sequence[object]]) -> list[Record]:
    return [(int(seq), int(recv_ns), base64.b64decode(str(payload))) for seq, recv_ns, payload in rows]  # type: ignore[call-overload]


class _Partitions:
    """Creates daily partitions on demand; remembers which exist."""

    def __init__(self) -> None:
        self.known: set[tuple[str, date]] = set()

    def ensure(self, cursor, table: str, days: Iterable[date]) -> None:
        for day in days:
            if (table, day) in self.known:
                continue
            name = f"{table}_p{day:%Y%m%d}"
            # An advisory lock per table stops two workers racing to create
            # the same partition.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [table])
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "  # noqa: S608 - names built from a date
                "FOR VALUES FROM (%s) TO (%s)",
                [datetime(day.year, day.month, day.day, tzinfo=UTC), datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)],
            )
            self.known.add((table, day))


class IngestPipeline:
    """Per-process ingest state: validators, clock estimators and books per stream/symbol."""

    def __init__(self, *, known_symbols: Iterable[str] | None = None, clock_alert_ms: float = 100.0) -> None:
        self.known_symbols = set(known_symbols) if known_symbols is not None else None
        self.validators: dict[str, Validator] = {}
        self.clocks: dict[str, ClockEstimator] = {}
        self.books: dict[str, OrderBook] = {}
        self.clock_alert_ms = clock_alert_ms
        self.partitions = _Partitions()
        self._drift_alerted: set[str] = set()

    def _validator(self, stream: str) -> Validator:
        validator = self.validators.get(stream)
        if validator is None:
            known = self.known_symbols
            if known is None:
                known = set(Instrument.objects.filter(active=True).values_list("symbol", flat=True)) or None
            validator = self.validators[stream] = Validator(known_symbols=known)
        return validator

    def ingest(self, *, stream: str, fmt: str, records: Sequence[Record], symbol: str | None = None,
               publish: bool = True, detect: bool = True) -> IngestResult:
        result = IngestResult()
        validator = self._validator(stream)
        clock = self.clocks.setdefault(stream, ClockEstimator(alert_ms=self.clock_alert_ms))
        quotes: list[QuoteTick] = []
        trades: list[TradeTick] = []
        quarantine: list[QuarantinedMessage] = []
        touched_books: set[str] = set()
        clock_state = None

        for seq, recv_ns, payload in records:
            ref = RawRef(stream, seq)
            try:
                ticks = parse(fmt, payload, recv_ns=recv_ns, symbol=symbol, raw=ref)
            except ParseError as exc:
                quarantine.append(_quarantine_row(ref, "", exc.reason, payload))
                continue
            for tick in ticks:
                problem = validator.check(tick)
                if problem is not None:
                    quarantine.append(_quarantine_row(ref, tick.symbol, problem, payload))
                    continue
                kind = type(tick)
                if kind is QuoteTick:
                    quotes.append(tick)  # type: ignore[arg-type]
                    clock_state = clock.update(tick.source_ts_ns, tick.recv_ts_ns)
                elif kind is TradeTick:
                    trades.append(tick)  # type: ignore[arg-type]
                    clock_state = clock.update(tick.source_ts_ns, tick.recv_ts_ns)
                else:
                    update: BookUpdate = tick  # type: ignore[assignment]
                    book = self.books.get(update.symbol)
                    if book is None:
                        book = self.books[update.symbol] = OrderBook(update.symbol)
                    try:
                        book.apply(update)
                    except BookError as exc:
                        quarantine.append(_quarantine_row(ref, update.symbol, f"book_rejected: {exc}", payload))
                        continue
                    result.book_updates += 1
                    touched_books.add(update.symbol)
                result.symbols.add(tick.symbol)

        try:
            self._store(result, quotes, trades, quarantine, clock_state, stream, detect)
        except Exception:
            # The batch will be redelivered: forget what the validator learned
            # from it, or the retry would see its own ticks as duplicates.
            self.validators.pop(stream, None)
            raise

        if publish:
            self._publish(quotes, touched_books)
        return result

    def _store(self, result: IngestResult, quotes: list[QuoteTick], trades: list[TradeTick],
               quarantine: list[QuarantinedMessage], clock_state, stream: str, detect: bool) -> None:
        with transaction.atomic():
            with connection.cursor() as cursor:
                if quotes:
                    self.partitions.ensure(cursor, "ingestion_quote", {ns_to_datetime(q.source_ts_ns).date() for q in quotes})
                    result.quotes = _copy_quotes(cursor, quotes)
                if trades:
                    self.partitions.ensure(cursor, "ingestion_trade", {ns_to_datetime(t.source_ts_ns).date() for t in trades})
                    result.trades = _copy_trades(cursor, trades)
            if quarantine:
                QuarantinedMessage.objects.bulk_create(quarantine, ignore_conflicts=True)
                result.quarantined = len(quarantine)
            if clock_state is not None:
                self._record_clock(stream, clock_state)
            if detect and result.symbols:
                symbols = sorted(result.symbols)
                transaction.on_commit(lambda: request_detection(symbols))

    def _record_clock(self, stream: str, state) -> None:
        ClockSource.objects.update_or_create(
            source=stream,
            defaults={"updated_at": timezone.now(), "baseline_ms": state.baseline_ms, "offset_ms": state.offset_ms,
                      "jitter_ms": state.jitter_ms, "samples": state.total_samples, "drift_alert": state.drift_alert},
        )
        if state.drift_alert and stream not in self._drift_alerted:
            self._drift_alerted.add(stream)
            message = (f"Clock offset of source {stream} estimated at {state.offset_ms:.1f} ms "
                       f"(baseline lag {state.baseline_ms:.1f} ms over {state.samples} samples), above {self.clock_alert_ms:.0f} ms.")
            transaction.on_commit(lambda: current_app.send_task(
                ALERT_RAISE_TASK, kwargs={"kind": "clock_drift", "severity": "warning", "subject": f"Clock drift on {stream}",
                                          "message": message, "dedup_key": f"clock_drift:{stream}"}))
        elif not state.drift_alert:
            self._drift_alerted.discard(stream)

    def _publish(self, quotes: list[QuoteTick], touched_books: set[str]) -> None:
        latest: dict[str, QuoteTick] = {}
        for quote in quotes:
            latest[quote.symbol] = quote
        if not latest and not touched_books:
            return
        pipe = redis_client().pipeline(transaction=False)
        for sym, quote in latest.items():
            pipe.set(redis_keys.quote(sym), json.dumps({
                "symbol": sym, "source_ts_ns": quote.source_ts_ns, "recv_ts_ns": quote.recv_ts_ns,
                "bid": str(quote.bid), "bid_size": str(quote.bid_size), "ask": str(quote.ask), "ask_size": str(quote.ask_size),
            }))
        for sym in touched_books:
            snap = self.books[sym].snapshot(BOOK_LEVELS_PUBLISHED)
            pipe.set(redis_keys.book(sym), json.dumps({
                "symbol": sym, "ts_ns": snap.ts_ns,
                "bids": [[str(p), str(s)] for p, s in snap.bids], "asks": [[str(p), str(s)] for p, s in snap.asks],
            }))
        pipe.execute()


def _quarantine_row(ref: RawRef, symbol: str, reason: str, payload: bytes) -> QuarantinedMessage:
    return QuarantinedMessage(
        raw_stream=ref.stream, raw_seq=ref.seq, symbol=_text(symbol)[:32], code=reason_code(reason)[:48],
        reason=_text(reason), payload_excerpt=_text(payload[:EXCERPT_BYTES].decode("utf-8", errors="backslashreplace")),
    )


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; a hostile payload must not make the
    # quarantine itself fail, so NUL is shown escaped.
    return value.replace("\x00", "\\x00")


_QUOTE_COLUMNS = "raw_stream, raw_seq, symbol, source_ts, recv_ts, bid, bid_size, ask, ask_size"
_TRADE_COLUMNS = "raw_stream, raw_seq, symbol, source_ts, recv_ts, price, size, aggressor, trade_id"


def _copy_rows(cursor, table: str, columns: str, rows: Iterable[tuple]) -> int:
    """COPY into a temporary table, then insert what is new: COPY itself has no ON CONFLICT."""
    staging = f"_stage_{table}"
    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    with cursor.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
        for row in rows:
            copy.write_row(row)
    cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ON CONFLICT DO NOTHING")  # noqa: S608
    inserted = cursor.rowcount
    cursor.execute(f"TRUNCATE {staging}")
    return inserted


def _copy_quotes(cursor, quotes: list[QuoteTick]) -> int:
    return _copy_rows(cursor, "ingestion_quote", _QUOTE_COLUMNS, (
        (q.raw.stream, q.raw.seq, q.symbol, ns_to_datetime(q.source_ts_ns), ns_to_datetime(q.recv_ts_ns),
         q.bid, q.bid_size, q.ask, q.ask_size) for q in quotes if q.raw is not None))


def _copy_trades(cursor, trades: list[TradeTick]) -> int:
    return _copy_rows(cursor, "ingestion_trade", _TRADE_COLUMNS, (
        (t.raw.stream, t.raw.seq, t.symbol, ns_to_datetime(t.source_ts_ns), ns_to_datetime(t.recv_ts_ns),
         t.price, t.size, t.aggressor.value if t.aggressor else "", t.trade_id) for t in trades if t.raw is not None))


def request_detection(symbols: Iterable[str]) -> list[str]:
    """Enqueue one detection per symbol unless one is already waiting (coalescing)."""
    client = redis_client()
    sent = []
    for sym in symbols:
        # The detect task clears this flag when it starts, so data arriving
        # while it runs triggers exactly one more pass.
        if client.set(redis_keys.detect_pending(sym), "1", nx=True, ex=30):
            current_app.send_task(DETECT_SYMBOL_TASK, args=[sym])
            sent.append(sym)
    return sent


_pipeline_lock = threading.Lock()
_pipeline: IngestPipeline | None = None


def worker_pipeline() -> IngestPipeline:
    """The ingest worker's long-lived pipeline (books and clocks persist across batches)."""
    global _pipeline
    with _pipeline_lock:
        if _pipeline is None:
            _pipeline = IngestPipeline()
        return _pipeline

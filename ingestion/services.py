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
5. apply L2 updates to the per-symbol books (with the venue's sync rules),
   update the liquidity monitor, then publish the latest quote, the top of
   each book and each symbol's liquidity state to Redis for the detect workers;
6. after commit, ask for one detection per touched symbol (coalesced).

Speed. The worker is CPU-bound in Python, so the hot loop does as little per
tick as it can. Tardis batches of the usual shape take a columnar path
(``_parse_columns``): the whole batch is split into columns in one pass
(``parsers.tardis_columns``), checked with array operations
(``Validator.check_quote_batch``/``check_trade_batch``, exact Decimal rules
wherever a float could be wrong), and written as COPY text column by column,
prices and sizes as the venue's own decimal text; the clock estimator and the
liquidity monitor take the batch's arrays at once. Other formats, and any
Tardis batch holding an unusual record, go record by record (timestamps
formatted from a per-second cache, the clock and liquidity monitor still
updated once per batch). Both paths give the same rows and quarantine
reasons (``tests/ingestion/test_columnar*.py``).

A batch is COPied in chunks straight into its day partitions, from a helper
thread while the next chunk is parsed, inside a savepoint; the columnar
path's chunks go in PostgreSQL's binary COPY format (fixed-size numpy
records: timestamps as integers, prices and sizes as exact numeric digits),
their COPY text built only if a fallback needs it. Only when that
fails on a primary-key clash (a redelivered or replayed batch) does it take
the slower staging-table path with ``ON CONFLICT DO NOTHING`` (through the
parent table); only when it fails on a value PostgreSQL cannot hold (a
numeric overflow, an over-long field) are rows checked one by one and the
offending ones quarantined as ``unstorable``.

A small batch (a live tick, ``SMALL_BATCH`` records at most) is parsed
outside any transaction and, when nothing is to be quarantined and its
partitions are known, stored by one autocommitted statement (rows and clock
row as CTEs, ``INSERT ... ON CONFLICT DO NOTHING``); the quote publish and
the detection flags then share one Redis round trip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import psycopg.errors
from celery import current_app
from django.conf import settings
from django.db import DataError, IntegrityError, ProgrammingError, connection, transaction
from django.utils import timezone

from ingestion import liquidity_store
from ingestion.book import BinanceBookSync, BookError, BybitBookSync, OrderBook
from ingestion.clock import ClockEstimator, ClockState
from ingestion.liquidity import LiquidityMonitor, LiquidityState
from ingestion.models import IngestedFile, Instrument, QuarantinedMessage, RawStream
from ingestion.parsers import FORMATS, ParseError, iter_file_records, parse, tardis_columns
from ingestion.rawstore import CorruptTailError, RawStore, RawWriter
from ingestion.types import BookUpdate, QuoteTick, TradeTick
from ingestion.validation import Validator, reason_code
from trading import redis_keys
from trading.db import prepared_rows
from trading.queues import ALERT_RAISE_TASK, DETECT_SYMBOLS_TASK, INGEST_BATCH_TASK
from trading.redis_client import redis_client

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S
BOOK_LEVELS_PUBLISHED = 50
EXCERPT_BYTES = 500
SYMBOL_MAX = 32
TRADE_ID_MAX = 64
# numeric(30, 12): 18 digits before the point. Decimal.adjusted() is the
# exponent of the leading digit, so 18 already means >= 1e18: too big.
_NUMERIC_MAX_ADJUSTED = 17

Record = tuple[int, int, bytes]  # (raw seq, receive time ns, payload)


def ns_to_datetime(ns: int) -> datetime:
    # Integer arithmetic keeps microseconds exact; a float division would not.
    return EPOCH + timedelta(microseconds=ns // 1000)


@dataclass
class IngestResult:
    records: int = 0
    quotes: int = 0
    trades: int = 0
    book_updates: int = 0
    quarantined: int = 0
    symbols: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        return {
            "records": self.records,
            "quotes": self.quotes,
            "trades": self.trades,
            "book_updates": self.book_updates,
            "quarantined": self.quarantined,
            "symbols": sorted(self.symbols),
        }

    def add(self, other: IngestResult) -> None:
        self.records += other.records
        self.quotes += other.quotes
        self.trades += other.trades
        self.book_updates += other.book_updates
        self.quarantined += other.quarantined
        self.symbols |= other.symbols


def encode_records(records: Iterable[Record]) -> list[list[object]]:
    """Records as JSON-safe lists for a Celery message (payload base64)."""
    return [[seq, recv_ns, base64.b64encode(payload).decode()] for seq, recv_ns, payload in records]


def decode_records(rows: Iterable[Sequence[object]]) -> list[Record]:
    return [(int(seq), int(recv_ns), base64.b64decode(str(payload))) for seq, recv_ns, payload in rows]  # type: ignore[call-overload]


# ----------------------------------------------------------------------------- COPY text


class _TsText:
    """Formats ns timestamps as PostgreSQL timestamptz text, one strftime per second.

    Ticks arrive many per second, so the ``YYYY-MM-DD HH:MM:SS`` prefix is
    cached per whole second and only the microseconds are formatted per tick.
    Truncation to microseconds matches ``ns_to_datetime`` (floor division).
    """

    __slots__ = ("cache",)
    _MAX = 1 << 16

    def __init__(self) -> None:
        self.cache: dict[int, str] = {}

    def prefix(self, sec: int) -> str:
        text = (EPOCH + timedelta(seconds=sec)).strftime("%Y-%m-%d %H:%M:%S")
        if len(self.cache) >= self._MAX:
            self.cache.clear()
        self.cache[sec] = text
        return text


def _copy_escape(text: str) -> str:
    # COPY text format: backslash, tab, newline and carriage return are escaped.
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _unstorable_text(text: str, limit: int) -> bool:
    # PostgreSQL text cannot hold NUL, and the column has a length limit.
    return len(text) > limit or "\x00" in text


def _numeric_problem(text: str) -> str | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return f"not a number {text!r}"
    if value and value.adjusted() > _NUMERIC_MAX_ADJUSTED:
        return f"{text} does not fit numeric(30, 12)"
    return None


# ----------------------------------------------------------------------------- partitions


def partition_name(table: str, day_number: int) -> str:
    """The day partition of a tick table (``ingestion_quote_p20200222``) for a day counted from the epoch."""
    return f"{table}_p{date(1970, 1, 1) + timedelta(days=day_number):%Y%m%d}"


class _Partitions:
    """Creates daily partitions on demand; remembers for a while which exist.

    The memory expires because retention (``prune_ticks``) may drop an old
    partition behind a long-lived worker's back; rows for that day would then
    land in the default partition and block re-creating it.
    """

    TTL_S = 300.0

    def __init__(self) -> None:
        self.known: dict[tuple[str, int], float] = {}

    def ensure(self, cursor: Any, table: str, day_numbers: Iterable[int]) -> None:
        for number in day_numbers:
            if self.fresh(table, number):
                continue
            day = date(1970, 1, 1) + timedelta(days=number)
            name = partition_name(table, number)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            # An advisory lock per table stops two workers racing to create
            # the same partition.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [table])
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM (%s) TO (%s)",
                [start, start + timedelta(days=1)],
            )
            self.known[(table, number)] = time.monotonic()

    def fresh(self, table: str, day_number: int) -> bool:
        """Whether the day's partition is known to exist (created or seen within ``TTL_S``)."""
        seen = self.known.get((table, day_number))
        return seen is not None and time.monotonic() - seen < self.TTL_S


# ----------------------------------------------------------------------------- books


class _BookKeeper:
    """One symbol's L2 book, kept by the rules of the venue it comes from.

    Binance diff-depth joins a REST snapshot by update ids and resyncs on a
    gap; Bybit resets on a snapshot and ignores deltas until one arrives; the
    simulator's books (and anything else) are applied as they come.
    """

    __slots__ = ("binance", "book", "bybit")

    def __init__(self, symbol: str, fmt: str) -> None:
        self.binance = BinanceBookSync(symbol) if fmt == "binance-ws" else None
        self.bybit = BybitBookSync(symbol) if fmt == "bybit-ob" else None
        if self.binance is not None:
            self.book = self.binance.book
        elif self.bybit is not None:
            self.book = self.bybit.book
        else:
            self.book = OrderBook(symbol)

    def apply(self, update: BookUpdate) -> bool:
        """Apply one update; return whether the book is in sync afterwards."""
        if self.binance is not None:
            if update.is_snapshot:
                self.binance.apply_snapshot(update)
            else:
                self.binance.on_event(update)
            return self.binance.is_synced
        if self.bybit is not None:
            self.bybit.on_update(update)
            return self.bybit.synced
        self.book.apply(update)
        return True


# ----------------------------------------------------------------------------- pipeline


@dataclass(slots=True)
class _Piece:
    """``rows`` rows of one table, all of one UTC day (``day`` = days since the epoch), as COPY input.

    ``text`` is the COPY text. A piece of the columnar path bound for the streamed COPY may
    instead hold the rows in PostgreSQL's binary COPY format (``binary``, no header) and build
    its text only if a fallback path asks for it (``make_text``).
    """

    table: str
    day: int
    text_: str | None
    rows: int
    binary: bytes | None = None
    make_text: Any = None
    binary_columns: str = ""

    @property
    def text(self) -> str:
        if self.text_ is None:
            self.text_ = self.make_text()
        return self.text_


@dataclass
class _Batch:
    """What one batch produced, in record order, for the COPY, the clock, the liquidity monitor and Redis."""

    pieces: list[_Piece] = field(default_factory=list)
    # Clock samples: per chunk either (source ns array, receive ns array) or a list of (source, receive).
    samples: list[tuple[np.ndarray, np.ndarray] | list[tuple[int, int]]] = field(default_factory=list)
    # Liquidity input: per chunk either a list of QuoteTicks or one symbol's arrays.
    liquidity: list[list[QuoteTick] | tuple[Any, ...]] = field(default_factory=list)
    latest: dict[str, QuoteTick] = field(default_factory=dict)
    quarantine: list[QuarantinedMessage] = field(default_factory=list)
    books: set[str] = field(default_factory=set)
    last_recv_ns: int | None = None

    def rows(self, table: str) -> int:
        return sum(piece.rows for piece in self.pieces if piece.table == table)


class IngestPipeline:
    """Per-process ingest state: validators, clock estimators, books and liquidity per stream/symbol."""

    def __init__(
        self,
        *,
        known_symbols: Iterable[str] | None = None,
        clock_alert_ms: float = 100.0,
        liquidity: LiquidityMonitor | None = None,
    ) -> None:
        self.known_symbols = set(known_symbols) if known_symbols is not None else None
        self.validators: dict[str, Validator] = {}
        self.clocks: dict[str, ClockEstimator] = {}
        self.books: dict[str, _BookKeeper] = {}
        self.liquidity = liquidity or LiquidityMonitor()
        self.liquidity_states: dict[str, LiquidityState] = {}
        self.clock_alert_ms = clock_alert_ms
        self.partitions = _Partitions()
        self._drift_alerted: set[str] = set()
        self._ts = _TsText()
        self._safe_symbols: dict[str, str | None] = {}
        self._stream_info: dict[str, RawStream | None] = {}
        self._copier: ThreadPoolExecutor | None = None
        # Set while ``_parse_and_copy`` streams: the columnar path may then give binary COPY pieces.
        self._binary_copy = False

    def _stream(self, stream: str) -> RawStream | None:
        if stream not in self._stream_info:
            self._stream_info[stream] = RawStream.objects.filter(name=stream).first()
        return self._stream_info[stream]

    def _validator(self, stream: str) -> Validator:
        validator = self.validators.get(stream)
        if validator is None:
            known = self.known_symbols
            info = self._stream(stream) if known is None else None
            if known is None and (info is None or info.check_symbols):
                known = set(Instrument.objects.filter(active=True).values_list("symbol", flat=True)) or None
            validator = self.validators[stream] = Validator(known_symbols=known)
        return validator

    def _symbol_text(self, symbol: str) -> str | None:
        """The symbol as COPY text, or None if the column cannot hold it (cached per symbol)."""
        if symbol in self._safe_symbols:
            return self._safe_symbols[symbol]
        text = None if _unstorable_text(symbol, SYMBOL_MAX) else _copy_escape(symbol)
        self._safe_symbols[symbol] = text
        return text

    def ingest(
        self,
        *,
        stream: str,
        fmt: str,
        records: Sequence[Record],
        symbol: str | None = None,
        publish: bool = True,
        detect: bool = True,
    ) -> IngestResult:
        result = IngestResult(records=len(records))
        if symbol is None:
            # A stream that needs a symbol for its parser (a Binance REST
            # snapshot names none) recorded it when it was registered.
            info = self._stream(stream)
            symbol = (info.symbol or None) if info is not None else None
        validator = self._validator(stream)
        clock = self.clocks.get(stream)
        if clock is None:
            clock = self.clocks[stream] = ClockEstimator(alert_ms=self.clock_alert_ms)
        batch = _Batch()
        try:
            if len(records) <= SMALL_BATCH:
                # A live tick or a few: parsed outside any transaction, then (usually) stored by one
                # autocommitted statement (``_store_small``); the transaction below only when that
                # path does not apply or did not take the batch.
                self._parse_batch(stream, fmt, records, symbol, validator, result, batch)
                clock_state = _clock_update(clock, batch.samples)
                if not self._store_small(result, batch, clock_state, stream):
                    with transaction.atomic():
                        self._store(result, batch, clock_state, stream)
            else:
                with transaction.atomic():
                    streamed, clock_state = self._parse_and_copy(stream, fmt, records, symbol, validator, result, batch, clock)
                    self._store(result, batch, clock_state, stream, streamed)
        except Exception:
            # The batch will be redelivered: forget what the validator learned
            # from it (or the retry would see its own ticks as duplicates) and
            # which partitions it created (their creation was rolled back).
            self.validators.pop(stream, None)
            self.partitions.known.clear()
            raise
        detect_now: list[str] = []
        if detect and result.symbols:
            symbols = sorted(result.symbols)
            if connection.in_atomic_block:
                # Inside a caller's transaction: ask once that commits.
                transaction.on_commit(lambda: request_detection(symbols))
            else:
                detect_now = symbols
        self._update_liquidity(batch)
        pipe = self._publish(batch) if publish else None
        if detect_now:
            # The quote is published before detection is asked for, in the same round trip.
            request_detection(detect_now, pipe=pipe)
        elif pipe is not None:
            pipe.execute()
        return result

    def _update_liquidity(self, batch: _Batch) -> None:
        for part in batch.liquidity:
            if isinstance(part, list):
                self.liquidity_states.update(self.liquidity.update_many(part))
            else:
                sym, *arrays, last = part
                self.liquidity_states[sym] = self.liquidity.update_arrays(sym, *arrays, last=last)

    def _parse_and_copy(
        self,
        stream: str,
        fmt: str,
        records: Sequence[Record],
        symbol: str | None,
        validator: Validator,
        result: IngestResult,
        batch: _Batch,
        clock: ClockEstimator,
    ) -> tuple[bool, ClockState | None]:
        """Parse in chunks and COPY each chunk from a helper thread while the next one is parsed.

        PostgreSQL (on the other core) then works on chunk k while Python
        parses chunk k+1; psycopg releases the GIL while it waits on the
        server. All chunks go through one savepoint on the same connection
        and transaction, in order. The clock is updated while the last chunk
        is COPied. Returns (streamed, clock state): streamed is True when
        every row was stored this way; False when the batch was small (parsed
        only) or a chunk clashed with stored rows or held an unstorable value:
        the savepoint is then rolled back and ``_store`` takes the checked
        path for the whole batch.
        """
        if len(records) <= STREAM_CHUNK:
            self._parse_batch(stream, fmt, records, symbol, validator, result, batch)
            return False, _clock_update(clock, batch.samples)
        connection.ensure_connection()
        raw = connection.connection
        executor = self._executor()
        sid = transaction.savepoint()
        pending = None
        failed = False
        sent = 0
        self._binary_copy = BINARY_COPY
        try:
            for start, end in _chunk_bounds(len(records)):
                self._parse_batch(stream, fmt, records[start:end], symbol, validator, result, batch)
                if failed:
                    continue
                if pending is not None:
                    failed = _copy_failed(pending)
                    pending = None
                    if failed:
                        continue
                pieces = batch.pieces[sent:]
                if not pieces:
                    continue
                if not all(self.partitions.fresh(piece.table, piece.day) for piece in pieces):
                    with connection.cursor() as cursor:
                        for piece in pieces:
                            self.partitions.ensure(cursor, piece.table, (piece.day,))
                sent = len(batch.pieces)
                pending = executor.submit(_copy_chunk, raw, pieces)
            # PostgreSQL has the last chunk: meanwhile, the clock (the state goes in the clock row).
            clock_state = _clock_update(clock, batch.samples)
            if pending is not None and not failed:
                failed = _copy_failed(pending)
                pending = None
        finally:
            self._binary_copy = False
            if pending is not None:
                # Something failed in the main thread: the helper must be done
                # with the connection before the transaction is rolled back.
                wait([pending])
        if failed:
            transaction.savepoint_rollback(sid)
            # A missing partition (dropped by retention behind the memory of
            # ``_Partitions``) is one way to fail: forget them all.
            self.partitions.known.clear()
            return False, clock_state
        transaction.savepoint_commit(sid)
        result.quotes = batch.rows("ingestion_quote")
        result.trades = batch.rows("ingestion_trade")
        return True, clock_state

    def _executor(self) -> ThreadPoolExecutor:
        if self._copier is None:
            self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-copy")
            # The copy thread needs the GIL for a moment at each step of a COPY (send the
            # statement, the data, read the result) while this thread parses; with the default
            # 5 ms switch interval each of those moments could wait up to 5 ms, so PostgreSQL
            # sat idle between chunks. A 0.2 ms interval measured ~15 % more ticks/s end to end
            # (benchmarks/ingest_throughput.py, median of 4 runs each). Process-wide, and only
            # lowered: the ingest worker, ingest_file and replay_raw run this pipeline.
            sys.setswitchinterval(min(sys.getswitchinterval(), COPY_SWITCH_INTERVAL_S))
        return self._copier

    def _parse_batch(
        self,
        stream: str,
        fmt: str,
        records: Sequence[Record],
        symbol: str | None,
        validator: Validator,
        result: IngestResult,
        batch: _Batch | None = None,
    ) -> _Batch:
        """Steps 1-2 and the COPY text of every accepted tick: the hot loop. Appends to ``batch``.

        Tardis batches of the usual shape take the columnar path
        (``_parse_columns``); anything else goes record by record here.
        """
        batch = batch if batch is not None else _Batch()
        if fmt in _COLUMNAR and self._parse_columns(stream, fmt, records, symbol, validator, result, batch):
            return batch
        parser = FORMATS.get(fmt)
        check = validator.check
        quote_rows: dict[int, list[str]] = {}
        trade_rows: dict[int, list[str]] = {}
        quotes: list[QuoteTick] = []
        samples: list[tuple[int, int]] = []
        quotes_put = quotes.append
        sample_put = samples.append
        quarantine = batch.quarantine
        symbols = result.symbols
        ts_cache = self._ts.cache
        ts_prefix = self._ts.prefix
        symbol_text = self._symbol_text
        stream_text = _copy_escape(stream)
        last_src = last_recv = -1
        src_text = recv_text = ""
        for seq, recv_ns, payload in records:
            try:
                if parser is None:
                    raise ParseError(f"unknown_format: {fmt!r}")
                ticks = parser(payload, recv_ns=recv_ns, symbol=symbol, raw=None)
            except ParseError as exc:
                quarantine.append(_quarantine_row(stream, seq, "", exc.reason, payload))
                continue
            except Exception:
                # ``parse`` turns a malformed message's exception into a
                # ParseError (and lets a real bug through); the hot path calls
                # the parser directly and only goes through ``parse`` here.
                try:
                    ticks = parse(fmt, payload, recv_ns=recv_ns, symbol=symbol, raw=None)
                except ParseError as exc:
                    quarantine.append(_quarantine_row(stream, seq, "", exc.reason, payload))
                    continue
            for tick in ticks:
                problem = check(tick)
                if problem is not None:
                    quarantine.append(_quarantine_row(stream, seq, tick.symbol, problem, payload))
                    continue
                kind = type(tick)
                if kind is QuoteTick or kind is TradeTick:
                    sym = symbol_text(tick.symbol)
                    src = tick.source_ts_ns
                    recv = tick.recv_ts_ns
                    # A feed batch shares one receive time and bursts share a venue
                    # time, so the previous text is reused when the value repeats.
                    # ``str(us + 10**6)[1:]`` zero-pads the microseconds several
                    # times faster than a ``:06d`` format spec.
                    if src != last_src:
                        sec = src // NS_PER_S
                        last_src = src
                        src_text = (
                            f"{ts_cache.get(sec) or ts_prefix(sec)}.{str(src // 1000 - sec * 1_000_000 + 1_000_000)[1:]}+00"
                        )
                    if recv != last_recv:
                        sec = recv // NS_PER_S
                        last_recv = recv
                        recv_text = (
                            f"{ts_cache.get(sec) or ts_prefix(sec)}.{str(recv // 1000 - sec * 1_000_000 + 1_000_000)[1:]}+00"
                        )
                    if kind is QuoteTick:
                        if sym is None:
                            quarantine.append(
                                _quarantine_row(stream, seq, tick.symbol, "unstorable: symbol too long or holds NUL", payload)
                            )
                            continue
                        # ``!s``: Decimal's ``__format__`` is several times slower than ``__str__``.
                        q: QuoteTick = tick  # type: ignore[assignment]
                        _rows_of_day(quote_rows, src // NS_PER_DAY).append(
                            f"{stream_text}\t{seq}\t{sym}\t{src_text}\t{recv_text}\t{q.bid!s}\t{q.bid_size!s}\t{q.ask!s}\t{q.ask_size!s}\n"
                        )
                        quotes_put(q)
                    else:
                        trade_id = tick.trade_id  # type: ignore[union-attr]
                        if not trade_id.isdigit():
                            if sym is None or _unstorable_text(trade_id, TRADE_ID_MAX):
                                quarantine.append(
                                    _quarantine_row(
                                        stream, seq, tick.symbol, "unstorable: symbol or trade id too long or holds NUL", payload
                                    )
                                )
                                continue
                            trade_id = _copy_escape(trade_id)
                        elif sym is None or len(trade_id) > TRADE_ID_MAX:
                            quarantine.append(
                                _quarantine_row(stream, seq, tick.symbol, "unstorable: symbol or trade id too long", payload)
                            )
                            continue
                        aggressor = tick.aggressor  # type: ignore[union-attr]
                        t: TradeTick = tick  # type: ignore[assignment]
                        _rows_of_day(trade_rows, src // NS_PER_DAY).append(
                            f"{stream_text}\t{seq}\t{sym}\t{src_text}\t{recv_text}\t{t.price!s}\t{t.size!s}\t{aggressor.value if aggressor else ''}\t{trade_id}\n"
                        )
                    sample_put((src, recv))
                else:
                    update: BookUpdate = tick  # type: ignore[assignment]
                    keeper = self.books.get(update.symbol)
                    if keeper is None:
                        keeper = self.books[update.symbol] = _BookKeeper(update.symbol, fmt)
                    try:
                        keeper.apply(update)
                    except BookError as exc:
                        quarantine.append(_quarantine_row(stream, seq, update.symbol, f"book_rejected: {exc}", payload))
                        continue
                    result.book_updates += 1
                    batch.books.add(update.symbol)
                symbols.add(tick.symbol)
        for table, by_day in (("ingestion_quote", quote_rows), ("ingestion_trade", trade_rows)):
            batch.pieces.extend(_Piece(table, day, "".join(rows), len(rows)) for day, rows in by_day.items())
        if samples:
            batch.samples.append(samples)
            batch.last_recv_ns = samples[-1][1]
        if quotes:
            batch.liquidity.append(quotes)
            for quote in quotes:
                batch.latest[quote.symbol] = quote
        return batch

    def _parse_columns(
        self,
        stream: str,
        fmt: str,
        records: Sequence[Record],
        symbol: str | None,
        validator: Validator,
        result: IngestResult,
        batch: _Batch,
    ) -> bool:
        """The columnar hot path for Tardis rows; False (nothing done) when the batch is not of the usual shape.

        Steps:
        1. ``tardis_columns`` splits the whole batch into columns (prices and
           sizes stay the venue's text; floats alongside for the checks);
        2. the validator's batch checks give every row's verdict, the refused
           rows go to quarantine with their reason and raw reference;
        3. the accepted rows become COPY text per UTC day, column by column
           (timestamps formatted by numpy, the decimal text as received);
        4. clock samples and the liquidity input are kept as arrays, for one
           update per batch.
        """
        cols = tardis_columns(fmt, [record[2] for record in records], symbol)
        if cols is None:
            return False
        n = len(records)
        if fmt == "tardis-quotes":
            reasons, latest = validator.check_quote_batch(cols.symbols, cols.source_ns, cols.recv_ns, cols.texts, cols.values)
            table = "ingestion_quote"
        else:
            reasons = validator.check_trade_batch(
                cols.symbols, cols.source_ns, cols.recv_ns, cols.texts, cols.values, cols.trade_ids or []
            )
            latest = {}
            table = "ingestion_trade"
        for i in sorted(reasons):
            seq, _recv, payload = records[i]
            batch.quarantine.append(_quarantine_row(stream, seq, cols.symbols[i], reasons[i], payload))
        if len(reasons) == n:
            return True
        accepted = np.setdiff1d(np.arange(n), np.fromiter(reasons, dtype=np.int64, count=len(reasons))) if reasons else None
        seqs = np.fromiter(map(itemgetter(0), records), dtype=np.int64, count=n)
        source_ns, recv_ns, source_us, recv_us = cols.source_ns, cols.recv_ns, cols.source_us, cols.recv_us
        if accepted is not None:
            source_ns, recv_ns, source_us, recv_us, seqs = (
                a[accepted] for a in (cols.source_ns, cols.recv_ns, cols.source_us, cols.recv_us, seqs)
            )
        pick = _picker(accepted)
        syms = pick(cols.symbols)
        names = set(syms)

        def text_columns() -> list[list[str]]:
            columns: list[list[str]] = [
                list(map(str, seqs.tolist())),
                syms,
                _ts_texts(source_us),
                _ts_texts(recv_us),
                *(pick(column) for column in cols.texts),
            ]
            if cols.trade_ids is not None and cols.aggressor is not None:
                columns += [pick(cols.aggressor), pick(cols.trade_ids)]
            return columns

        stream_text = _copy_escape(stream)
        days = source_ns // NS_PER_DAY
        first_day, last_day = int(days[0]), int(days[-1])
        one_day = first_day == last_day and (days == first_day).all()
        binary = None
        if self._binary_copy and cols.decimals is not None and len(names) == 1:
            exact = cols.decimals if accepted is None else [(m[accepted], k[accepted]) for m, k in cols.decimals]
            if table == "ingestion_quote":
                binary = _quote_rows_binary(stream, syms[0], seqs, source_us, recv_us, exact)
                aggressors = None
                binary_columns = _QUOTE_COLUMNS
            elif cols.trade_ids is not None and cols.aggressor is not None:
                aggressors = pick(cols.aggressor)
                binary = _trade_rows_binary(stream, syms[0], seqs, source_us, recv_us, exact, pick(cols.trade_ids))
                binary_columns = _TRADE_COLUMNS_BINARY
        if binary is not None:
            # Binary COPY for the streamed path; the text only if a fallback asks for it.
            for day in [first_day] if one_day else np.unique(days).tolist():
                rows = None if one_day else np.flatnonzero(days == day).tolist()
                part = binary if rows is None else binary[rows]
                data = part.tobytes() if aggressors is None else _with_aggressors(part, aggressors, rows)
                text = _text_maker(stream_text, text_columns, rows)
                batch.pieces.append(_Piece(table, day, None, len(part), data, text, binary_columns))
        elif one_day:
            batch.pieces.append(_Piece(table, first_day, _rows_text(stream_text, text_columns()), len(syms)))
        else:
            columns = text_columns()
            for day in np.unique(days).tolist():
                rows = np.flatnonzero(days == day).tolist()
                part = [list(map(column.__getitem__, rows)) for column in columns]
                batch.pieces.append(_Piece(table, day, _rows_text(stream_text, part), len(rows)))
        batch.samples.append((source_ns, recv_ns))
        batch.last_recv_ns = int(recv_ns[-1])
        result.symbols |= names
        if latest:
            values = cols.values if accepted is None else [v[accepted] for v in cols.values]
            bid, bid_size, ask, ask_size = values
            for name in sorted(names):
                rows_of = slice(None) if len(names) == 1 else np.flatnonzero(np.array(syms, dtype=object) == name)
                batch.liquidity.append(
                    (name, source_ns[rows_of], bid[rows_of], ask[rows_of], bid_size[rows_of], ask_size[rows_of], latest[name])
                )
            batch.latest.update(latest)
        return True

    def _store(
        self,
        result: IngestResult,
        batch: _Batch,
        clock_state: ClockState | None,
        stream: str,
        streamed: bool = False,
    ) -> None:
        """Step 4 inside the caller's transaction: the ticks (unless streamed already), quarantine, clock row."""
        if not streamed and batch.pieces:
            with connection.cursor() as cursor:
                for table, columns in (("ingestion_quote", _QUOTE_COLUMNS), ("ingestion_trade", _TRADE_COLUMNS)):
                    pieces = [piece for piece in batch.pieces if piece.table == table]
                    if not pieces:
                        continue
                    self.partitions.ensure(cursor, table, {piece.day for piece in pieces})
                    rows = "".join(piece.text for piece in pieces).splitlines(keepends=True)
                    count = self._copy(cursor, table, columns, rows, batch)
                    if table == "ingestion_quote":
                        result.quotes = count
                    else:
                        result.trades = count
        if batch.quarantine:
            QuarantinedMessage.objects.bulk_create(batch.quarantine, ignore_conflicts=True)
            result.quarantined = len(batch.quarantine)
        if clock_state is not None:
            with connection.cursor() as cursor:
                cursor.execute(f"{_CLOCK_UPSERT} RETURNING 1", _clock_params(stream, clock_state))
            self._clock_alert(stream, clock_state, batch)

    def _store_small(self, result: IngestResult, batch: _Batch, clock_state: ClockState | None, stream: str) -> bool:
        """Step 4 for a small batch in ONE statement, atomic by itself; False (nothing stored) when it does not apply.

        A live tick arrives alone, and a transaction (BEGIN, savepoints around the COPY, the
        clock row, COMMIT) cost it a dozen round trips. Here the rows go in as
        ``INSERT ... ON CONFLICT DO NOTHING`` straight into their day partitions and the clock
        row as an upsert, both data-modifying CTEs of one autocommitted statement: it stores
        everything or nothing, and a redelivered batch adds nothing. It applies when nothing
        is to be quarantined, the rows are few and their partitions known to exist; a value
        PostgreSQL refuses (a numeric overflow, a vanished partition) makes the statement fail
        as a whole, and ``_store`` then takes the batch with its checks. Inside a caller's
        transaction the statement runs in a savepoint, so that failure leaves it usable.
        Same rows as ``_store`` (``tests/ingestion/test_ingest_small.py``).
        """
        pieces = batch.pieces
        if batch.quarantine or sum(piece.rows for piece in pieces) > SMALL_ROWS:
            return False
        if not all(self.partitions.fresh(piece.table, piece.day) for piece in pieces):
            return False
        if not pieces and clock_state is None:
            return True
        ctes: list[str] = []
        params: list[Any] = []
        for k, piece in enumerate(pieces):
            columns = _QUOTE_COLUMNS if piece.table == "ingestion_quote" else _TRADE_COLUMNS
            rows = piece.text.split("\n")[:-1]  # every row ends with a newline
            values = ",".join([_ROW_PLACEHOLDERS] * len(rows))
            for row in rows:
                params.extend(_copy_fields(row))
            # Table and column names are ours; every value is a parameter.
            ctes.append(
                f"t{k} AS (INSERT INTO {partition_name(piece.table, piece.day)} ({columns}) VALUES {values} "  # noqa: S608
                "ON CONFLICT DO NOTHING RETURNING 1)"
            )
        if clock_state is not None:
            ctes.append(f"c AS ({_CLOCK_UPSERT} RETURNING 1)")
            params.extend(_clock_params(stream, clock_state))
        counts = ", ".join(f"(SELECT count(*) FROM t{k})" for k in range(len(pieces))) or "0"  # noqa: S608
        sql = f"WITH {', '.join(ctes)} SELECT {counts}"
        try:
            # Prepared once per connection: a live tick's statement text repeats, and its parse and plan cost
            # more than the insert.
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                [stored] = prepared_rows(sql, params)
        except (DataError, IntegrityError, ProgrammingError) as exc:
            logger.info("small ingest batch of %s went the checked way: %s", stream, exc)
            if isinstance(exc, ProgrammingError):
                self.partitions.known.clear()  # a partition dropped behind our memory
            return False
        for piece, count in zip(pieces, stored, strict=False):
            if piece.table == "ingestion_quote":
                result.quotes += count
            else:
                result.trades += count
        if clock_state is not None:
            self._clock_alert(stream, clock_state, batch)
        return True

    def _copy(self, cursor: Any, table: str, columns: str, rows: list[str], batch: _Batch) -> int:
        """COPY the rows; returns how many were new. See the module docstring for the fallbacks."""
        data = "".join(rows)
        try:
            with transaction.atomic():
                _copy_text(cursor, table, columns, data)
            return len(rows)
        except psycopg.errors.UniqueViolation:
            pass
        except psycopg.errors.DataError:
            rows = self._drop_unstorable(table, rows, batch)
            data = "".join(rows)
            try:
                with transaction.atomic():
                    _copy_text(cursor, table, columns, data)
                return len(rows)
            except psycopg.errors.UniqueViolation:
                pass
        return _copy_new_only(cursor, table, columns, data)

    @staticmethod
    def _drop_unstorable(table: str, rows: list[str], batch: _Batch) -> list[str]:
        numeric = (5, 6, 7, 8) if table == "ingestion_quote" else (5, 6)
        kept = []
        for row in rows:
            fields = row.rstrip("\n").split("\t")
            problem = next((p for i in numeric if (p := _numeric_problem(fields[i])) is not None), None)
            if problem is None:
                kept.append(row)
            else:
                batch.quarantine.append(
                    QuarantinedMessage(
                        raw_stream=fields[0],
                        raw_seq=int(fields[1]),
                        symbol=fields[2][:SYMBOL_MAX],
                        code="unstorable",
                        reason=f"unstorable: {problem}",
                        payload_excerpt=_text(row[:EXCERPT_BYTES]),
                    )
                )
        return kept

    def _clock_alert(self, stream: str, state: ClockState, batch: _Batch) -> None:
        """Raise the drift alert (by task name, after commit) when the offset first passes the threshold."""
        if state.drift_alert and stream not in self._drift_alerted:
            self._drift_alerted.add(stream)
            at = ns_to_datetime(batch.last_recv_ns).isoformat() if batch.last_recv_ns is not None else timezone.now().isoformat()
            message = (
                f"Clock offset of source {stream} estimated at {state.offset_ms:.1f} ms "
                f"(baseline lag {state.baseline_ms:.1f} ms, jitter {state.jitter_ms:.1f} ms over {state.samples} samples) "
                f"at {at}, above {self.clock_alert_ms:.0f} ms."
            )
            transaction.on_commit(
                lambda: current_app.send_task(
                    ALERT_RAISE_TASK,
                    kwargs={
                        "kind": "clock_drift",
                        "severity": "warning",
                        "subject": f"Clock drift on {stream}",
                        "message": message,
                        "dedup_key": f"clock_drift:{stream}",
                    },
                )
            )
        elif not state.drift_alert:
            self._drift_alerted.discard(stream)

    def _publish(self, batch: _Batch) -> Any:
        """The Redis writes of step 5 queued on a pipeline, for the caller to execute (None when nothing to publish)."""
        latest = batch.latest
        if not latest and not batch.books:
            return None
        pipe = redis_client().pipeline(transaction=False)
        for sym, quote in latest.items():
            pipe.set(
                redis_keys.quote(sym),
                json.dumps(
                    {
                        "symbol": sym,
                        "source_ts_ns": quote.source_ts_ns,
                        "recv_ts_ns": quote.recv_ts_ns,
                        "bid": str(quote.bid),
                        "bid_size": str(quote.bid_size),
                        "ask": str(quote.ask),
                        "ask_size": str(quote.ask_size),
                    }
                ),
            )
            state = self.liquidity_states.get(sym)
            if state is not None:
                pipe.set(liquidity_store.key(sym), liquidity_store.dumps(state))
        for sym in batch.books:
            keeper = self.books[sym]
            snap = keeper.book.snapshot(BOOK_LEVELS_PUBLISHED)
            pipe.set(
                redis_keys.book(sym),
                json.dumps(
                    {
                        "symbol": sym,
                        "ts_ns": snap.ts_ns,
                        "bids": [[str(p), str(s)] for p, s in snap.bids],
                        "asks": [[str(p), str(s)] for p, s in snap.asks],
                    }
                ),
            )
        return pipe


def _quarantine_row(stream: str, seq: int, symbol: str, reason: str, payload: bytes) -> QuarantinedMessage:
    return QuarantinedMessage(
        raw_stream=stream,
        raw_seq=seq,
        symbol=_text(symbol)[:SYMBOL_MAX],
        code=reason_code(reason)[:48],
        reason=_text(reason),
        payload_excerpt=_text(payload[:EXCERPT_BYTES].decode("utf-8", errors="backslashreplace")),
    )


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; a hostile payload must not make the
    # quarantine itself fail, so NUL is shown escaped.
    return value.replace("\x00", "\\x00")


_QUOTE_COLUMNS = "raw_stream, raw_seq, symbol, source_ts, recv_ts, bid, bid_size, ask, ask_size"
_TRADE_COLUMNS = "raw_stream, raw_seq, symbol, source_ts, recv_ts, price, size, aggressor, trade_id"
_ROW_PLACEHOLDERS = "(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
# The clock row of a source, inserted or updated in one statement (``source`` is unique).
_CLOCK_UPSERT = (
    "INSERT INTO ingestion_clocksource (source, updated_at, baseline_ms, offset_ms, jitter_ms, samples, drift_alert) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (source) DO UPDATE SET updated_at = EXCLUDED.updated_at, "
    "baseline_ms = EXCLUDED.baseline_ms, offset_ms = EXCLUDED.offset_ms, jitter_ms = EXCLUDED.jitter_ms, "
    "samples = EXCLUDED.samples, drift_alert = EXCLUDED.drift_alert"
)


def _clock_params(stream: str, state: ClockState) -> list[Any]:
    return [
        stream,
        timezone.now(),
        state.baseline_ms,
        state.offset_ms,
        state.jitter_ms,
        state.total_samples,
        state.drift_alert,
    ]


_COPY_ESCAPES = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
_COPY_ESCAPE_RE = re.compile(r"\\[\\tnr]")


def _copy_fields(row: str) -> list[str]:
    """The values of one COPY text row (the inverse of ``_copy_escape`` on each field)."""
    fields = row.split("\t")
    if "\\" in row:
        fields = [_COPY_ESCAPE_RE.sub(lambda m: _COPY_ESCAPES[m.group()], f) if "\\" in f else f for f in fields]
    return fields


# Batches of at most this many records are parsed outside a transaction and stored by one
# statement when they can be (``IngestPipeline._store_small``); the live feed sends ticks alone.
SMALL_BATCH = 64
SMALL_ROWS = 256


# Rows per overlapped COPY: each chunk costs a COPY statement and its bookkeeping, and the first chunk's parse
# and the last chunk's COPY overlap nothing. Measured on the 5,000-record feed batch: 1,700 (three chunks) beat
# 1,000 and 2,500, and small end chunks (600) cost more per chunk than they saved.
STREAM_CHUNK = int(os.environ.get("FP_INGEST_CHUNK", "1700"))
# Rows of a batch's first streamed chunk (0: ``STREAM_CHUNK``). PostgreSQL idles while it is parsed, so
# a smaller one could start it sooner now that the COPY, not the parse, is the longer step; not measured
# on a quiet machine yet, hence off.
FIRST_CHUNK = int(os.environ.get("FP_INGEST_FIRST_CHUNK", "0"))
COPY_SWITCH_INTERVAL_S = 0.0002  # GIL switch interval while the copy thread streams (see _executor).
_COLUMNAR = frozenset({"tardis-quotes", "tardis-trades"})


def _chunk_bounds(n: int) -> list[tuple[int, int]]:
    """(start, end) of each streamed chunk of an n-record batch: a first chunk of ``FIRST_CHUNK``, then ``STREAM_CHUNK``s."""
    first = min(FIRST_CHUNK or STREAM_CHUNK, n)
    return [(0, first)] + [(start, min(start + STREAM_CHUNK, n)) for start in range(first, n, STREAM_CHUNK)]


def _clock_update(clock: ClockEstimator, samples: list[Any]) -> ClockState | None:
    """Feed the batch's samples to the clock in order; the state after the last.

    Consecutive array parts (the columnar path's chunks) are joined first: one
    ``update_arrays`` call then rebuilds the window once per batch, not once per chunk.
    """
    if len(samples) > 1 and all(isinstance(part, tuple) for part in samples):
        samples = [(np.concatenate([part[0] for part in samples]), np.concatenate([part[1] for part in samples]))]
    state = None
    for part in samples:
        got = clock.update_many(part) if isinstance(part, list) else clock.update_arrays(*part)
        state = got or state
    return state


def _copy_chunk(raw: Any, pieces: list[_Piece]) -> None:
    """Runs in the helper thread, on the raw psycopg connection of the ingest transaction.

    Each piece goes straight into its day's partition (which ``_Partitions``
    just ensured): PostgreSQL then skips routing every row through the parent.
    """
    with raw.cursor() as cursor:
        for piece in pieces:
            columns = _QUOTE_COLUMNS if piece.table == "ingestion_quote" else _TRADE_COLUMNS
            if piece.binary is not None:
                columns = piece.binary_columns
                with cursor.copy(f"COPY {partition_name(piece.table, piece.day)} ({columns}) FROM STDIN (FORMAT binary)") as copy:
                    copy.write(_BINARY_HEADER)
                    copy.write(piece.binary)
                    copy.write(_BINARY_TRAILER)
            else:
                _copy_text(cursor, partition_name(piece.table, piece.day), columns, piece.text)


def _copy_failed(future: Future[None]) -> bool:
    """Wait for a chunk's COPY; True if it clashed, held an unstorable value or lost its partition.

    Other errors propagate.
    """
    try:
        future.result()
    except (psycopg.errors.UniqueViolation, psycopg.errors.DataError, psycopg.errors.UndefinedTable):
        return True
    return False


def _rows_of_day(by_day: dict[int, list[str]], day: int) -> list[str]:
    rows = by_day.get(day)
    if rows is None:
        rows = by_day[day] = []
    return rows


def _picker(rows: np.ndarray | None) -> Any:
    """Selects the given rows of a list column (all of it when ``rows`` is None)."""
    if rows is None:
        return lambda column: column
    indices = rows.tolist()
    return lambda column: list(map(column.__getitem__, indices))


_TS_TEMPLATE = np.frombuffer("0000-00-00 00:00:00.000000+00".encode("utf-32-le"), dtype=np.uint32)
# (position of the last digit, number of digits) of year, month, day, hour, minute, second, microsecond.
_TS_FIELDS = ((3, 4), (6, 2), (9, 2), (12, 2), (15, 2), (18, 2), (25, 6))


def _ts_texts(us: np.ndarray) -> list[str]:
    """Microseconds since the epoch (years 1970-9999) as timestamptz text, ``2020-02-22 00:00:01.096000+00``.

    The same text ``_TsText`` gives tick by tick, built for the whole column
    at once: the digits are computed with integer array arithmetic into a
    grid of code points, which numpy hands back as one ``str`` per row.
    """
    days, in_day = np.divmod(us, 86_400_000_000)
    date_days = days.astype("datetime64[D]")
    months = date_days.astype("datetime64[M]")
    parts = (
        months.astype("datetime64[Y]").astype(np.int64) + 1970,
        months.astype(np.int64) % 12 + 1,
        (date_days - months).astype(np.int64) + 1,
        in_day // 3_600_000_000,
        in_day // 60_000_000 % 60,
        in_day // 1_000_000 % 60,
        in_day % 1_000_000,
    )
    grid = np.tile(_TS_TEMPLATE, (len(us), 1))
    for value, (end, width) in zip(parts, _TS_FIELDS, strict=True):
        rest = value
        for k in range(width):
            rest, digit = np.divmod(rest, 10)
            grid[:, end - k] += digit.astype(np.uint32)
    return grid.view(f"<U{len(_TS_TEMPLATE)}").ravel().tolist()


def _text_maker(stream_text: str, text_columns: Any, rows: list[int] | None) -> Any:
    """Builds the COPY text of (some of) the rows later, only if it is asked for."""
    if rows is None:
        return lambda: _rows_text(stream_text, text_columns())
    return lambda: _rows_text(stream_text, [list(map(column.__getitem__, rows)) for column in text_columns()])


# PostgreSQL's binary COPY: a signature, flags and header-extension length; -1 fields ends the data.
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_BINARY_TRAILER = b"\xff\xff"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 00:00 UTC, PostgreSQL's timestamp zero, in Unix microseconds
_NUMERIC_GROUPS = 5  # base-10000 digits sent per numeric: 20 decimal digits, enough for 15 plus a scale pad
_NUMERIC_FIELD = np.dtype(
    [("len", ">i4"), ("ndigits", ">i2"), ("weight", ">i2"), ("sign", ">u2"), ("dscale", ">u2"),
     ("digits", ">i2", (_NUMERIC_GROUPS,))]
)  # fmt: skip
_INT_POWERS_OF_TEN = np.array([1, 10, 100, 1000], dtype=np.int64)
BINARY_COPY = os.environ.get("FP_INGEST_BINARY_COPY", "1") != "0"


# Binary trade rows carry the (variable-length) aggressor last.
_TRADE_COLUMNS_BINARY = "raw_stream, raw_seq, symbol, source_ts, recv_ts, price, size, trade_id, aggressor"
_AGGRESSOR_FIELDS = {text: len(text).to_bytes(4, "big") + text.encode() for text in ("buy", "sell", "")}


def _trade_rows_binary(
    stream: str,
    symbol: str,
    seqs: np.ndarray,
    source_us: np.ndarray,
    recv_us: np.ndarray,
    exact: list[tuple[np.ndarray, np.ndarray]],
    trade_ids: list[str],
) -> np.ndarray | None:
    """Trade rows of one symbol in binary COPY format but for the aggressor field (``_with_aggressors``).

    Fixed-size records need trade ids of one length, as a venue's consecutive ids nearly
    always are; None otherwise (the chunk then goes as COPY text).
    """
    lengths = set(map(len, trade_ids))
    if len(lengths) != 1:
        return None
    width = lengths.pop()
    rows = _quote_rows_binary(stream, symbol, seqs, source_us, recv_us, exact, extra=[("id_len", ">i4"), ("id", f"S{width}")])
    rows["fields"] += 2
    rows["id_len"] = width
    rows["id"] = trade_ids
    return rows


def _with_aggressors(rows: np.ndarray, aggressors: list[str], picked: list[int] | None) -> bytes:
    """The binary trade rows with each one's aggressor field appended."""
    width = rows.dtype.itemsize
    blob = rows.tobytes()
    fields = map(_AGGRESSOR_FIELDS.__getitem__, aggressors if picked is None else map(aggressors.__getitem__, picked))
    return b"".join(chain.from_iterable(zip([blob[i : i + width] for i in range(0, len(blob), width)], fields, strict=True)))


def _quote_rows_binary(
    stream: str,
    symbol: str,
    seqs: np.ndarray,
    source_us: np.ndarray,
    recv_us: np.ndarray,
    exact: list[tuple[np.ndarray, np.ndarray]],
    extra: Sequence[tuple[str, str]] = (),
) -> np.ndarray:
    """Quote rows of one symbol in PostgreSQL's binary COPY format, one fixed-size record per row.

    PostgreSQL then reads two 8-byte integers instead of parsing two timestamp texts per row
    (most of what the text COPY cost it beyond the heap and the index). Each price and size
    is the venue's decimal exactly: the integer mantissa M and decimal places k of its text
    (``parsers._plain_decimal_parts``), sent as numeric's base-10000 digits: M * 10**(4g - k)
    (g = ceil(k / 4) groups after the point) split into five digits, weight 4 - g, display
    scale k. numeric_recv then strips the zero digits and rounds to the column's scale like
    numeric_in does, so the stored values are the same as from the text
    (``tests/ingestion/test_binary_copy.py``). ``extra``: more fixed-size fields after those.
    """
    stream_bytes = stream.encode()
    symbol_bytes = symbol.encode()
    dtype = np.dtype(
        [("fields", ">i2"),
         ("stream_len", ">i4"), ("stream", f"S{len(stream_bytes)}"),
         ("seq_len", ">i4"), ("seq", ">i8"),
         ("symbol_len", ">i4"), ("symbol", f"S{len(symbol_bytes)}"),
         ("source_len", ">i4"), ("source", ">i8"),
         ("recv_len", ">i4"), ("recv", ">i8"),
         *[(f"n{j}", _NUMERIC_FIELD) for j in range(len(exact))],
         *extra]
    )  # fmt: skip
    rows = np.empty(len(seqs), dtype)
    rows["fields"] = 5 + len(exact)
    rows["stream_len"] = len(stream_bytes)
    rows["stream"] = stream_bytes
    rows["seq_len"] = 8
    rows["seq"] = seqs
    rows["symbol_len"] = len(symbol_bytes)
    rows["symbol"] = symbol_bytes
    rows["source_len"] = 8
    rows["source"] = source_us - _PG_EPOCH_US
    rows["recv_len"] = 8
    rows["recv"] = recv_us - _PG_EPOCH_US
    for j, (mantissas, decimals) in enumerate(exact):
        field = rows[f"n{j}"]
        field["len"] = _NUMERIC_FIELD.itemsize - 4
        field["ndigits"] = _NUMERIC_GROUPS
        field["sign"] = 0
        groups = (decimals + 3) // 4
        field["weight"] = _NUMERIC_GROUPS - 1 - groups
        field["dscale"] = decimals
        scaled = mantissas * _INT_POWERS_OF_TEN[groups * 4 - decimals]
        digits = field["digits"]
        for g in range(_NUMERIC_GROUPS - 1, -1, -1):
            scaled, digits[:, g] = np.divmod(scaled, 10_000)
    return rows


def _rows_text(stream_text: str, columns: list[list[str]]) -> str:
    """COPY text of rows given column by column (every value already COPY-safe, so free of tabs and newlines).

    One join does it: each row's slots end with a bare newline, and the tabs
    the join puts around it are then removed in one pass.
    """
    count = len(columns[0])
    width = len(columns) + 2
    slots: list[str] = [""] * (width * count)
    slots[0::width] = [stream_text] * count
    for k, column in enumerate(columns, 1):
        slots[k::width] = column
    slots[width - 1 :: width] = ["\n"] * count
    return "\t".join(slots).replace("\t\n\t", "\n")[:-2] + "\n"


def _copy_text(cursor: Any, table: str, columns: str, data: str) -> None:
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        copy.write(data)


def _copy_new_only(cursor: Any, table: str, columns: str, data: str) -> int:
    """COPY into a temporary table, then insert what is new: COPY itself has no ON CONFLICT."""
    staging = f"_stage_{table}"
    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    _copy_text(cursor, staging, columns, data)
    cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ON CONFLICT DO NOTHING")  # noqa: S608
    inserted = cursor.rowcount
    cursor.execute(f"TRUNCATE {staging}")
    return inserted


def request_detection(symbols: Iterable[str], *, pipe: Any = None) -> list[str]:
    """Ask for detection passes over the symbols that have none waiting (coalescing); the symbols asked for.

    One Redis round trip sets each symbol's pending flag (SET NX); the symbols
    whose flag this call set go in ``settings.DETECT_TASK_GROUPS`` tasks at
    most (``detect_symbols_task``; a symbol always in the same group, by a
    stable hash), so that each detect worker runs one pass over its share,
    the pass sharing its round trips and its signal transaction across its
    symbols. A task clears its flags when it starts, so data arriving while
    it runs asks for exactly one more pass. ``pipe``: a (non-transactional)
    pipeline holding other commands already, sent in the same round trip
    before the flags.
    """
    symbols = list(dict.fromkeys(symbols))
    if not symbols:
        if pipe is not None:
            pipe.execute()
        return []
    if pipe is None:
        pipe = redis_client().pipeline(transaction=False)
    for sym in symbols:
        pipe.set(redis_keys.detect_pending(sym), "1", nx=True, ex=30)
    flags = pipe.execute()[-len(symbols) :]
    sent = [sym for sym, flagged in zip(symbols, flags, strict=True) if flagged]
    groups: dict[int, list[str]] = {}
    for sym in sent:
        groups.setdefault(zlib.crc32(sym.encode()) % settings.DETECT_TASK_GROUPS, []).append(sym)
    for group in sorted(groups):
        current_app.send_task(DETECT_SYMBOLS_TASK, args=[groups[group]])
    return sent


def raw_stream_register(*, name: str, fmt: str, symbol: str = "", check_symbols: bool = True) -> RawStream:
    """Record (once) which format a raw stream holds, so ``replay_raw`` can read it back.

    A stream's format never changes: registering it again with another format
    raises ``ValueError`` rather than letting one stream mix two formats.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    row, _created = RawStream.objects.get_or_create(
        name=name, defaults={"fmt": fmt, "symbol": symbol, "check_symbols": check_symbols}
    )
    if row.fmt != fmt or (row.symbol or "") != (symbol or ""):
        raise ValueError(
            f"raw stream {name!r} holds format {row.fmt!r} (symbol {row.symbol!r}); "
            f"refusing to add {fmt!r} (symbol {symbol!r}) to it"
        )
    return row


# ----------------------------------------------------------------------------- files and replay

INGEST_BATCH = 5000
# Streams the platform writes itself, readable by ``replay_raw`` even before
# their writer registered them in ``RawStream``.
DEFAULT_STREAM_FORMATS = {"sim": "sim"}
_STREAM_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class FileAlreadyIngestedError(Exception):
    """The same file (by SHA-256) was already loaded into the same raw stream."""


def file_stream_name(fmt: str, path: Path) -> str:
    """``file-<format>-<basename>``, made a valid raw-store stream name (max 128)."""
    name = _STREAM_CHARS.sub("-", f"file-{fmt}-{path.name}")
    return name[:128]


def file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def open_raw_writer(store: RawStore, stream: str) -> RawWriter:
    """Open the stream's writer, cutting off a frame half-written by a crash."""
    try:
        return store.writer(stream)
    except CorruptTailError:
        removed = store.repair_tail(stream)
        logger.warning("raw stream %s: removed an incomplete final frame (%s bytes) left by a crash", stream, removed)
        return store.writer(stream)


def file_ingest(
    *,
    path: Path,
    fmt: str,
    store: RawStore,
    stream: str | None = None,
    symbol: str | None = None,
    queue: bool = False,
    batch: int = INGEST_BATCH,
    publish: bool = True,
    pipeline: IngestPipeline | None = None,
    send: Any = None,
) -> dict[str, Any]:
    """Load a recorded file: raw store first, then ingest (inline or through the ingest queue).

    Steps:
    1. Hash the file. The same bytes already loaded into the same stream are
       refused (``FileAlreadyIngestedError``): appending them again would give
       every tick a second raw reference, hence a second row.
    2. Register the stream's format (``RawStream``) so ``replay_raw`` can read it.
    3. Record the load (``IngestedFile``, status ``appending``, first seq)
       before the first append, so a crash can be resumed: a rerun finds the
       records already in the raw store, ingests those again (idempotent) and
       appends only the rest.
    4. Per batch: append to the raw store, then ingest inline or send the
       batch to the ingest queue (by task name).
    5. Mark the load ``ingested`` or ``queued``.

    Receive time: the file's own where the format records one (``binance-ws``
    lines start with it), else now. Tardis rows carry the recorder's receive
    time inside the row, which is what their parser uses anyway.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    sha, size = file_sha256(path)
    stream = stream or file_stream_name(fmt, path)
    raw_stream_register(name=stream, fmt=fmt, symbol=symbol or "", check_symbols=False)
    row = IngestedFile.objects.filter(stream=stream, sha256=sha).first()
    if row is not None and row.status in (IngestedFile.Status.INGESTED, IngestedFile.Status.QUEUED):
        raise FileAlreadyIngestedError(
            f"{path} (sha256 {sha}) was already loaded into stream {stream!r} on {row.finished_at or row.created_at:%Y-%m-%d %H:%M:%S}; "
            f"replay_raw --stream {stream} rebuilds its ticks from the raw store"
        )
    pipeline = pipeline or IngestPipeline()
    send = send or current_app.send_task
    total = IngestResult()
    queued = 0

    def hand_over(records: list[Record]) -> None:
        nonlocal queued
        if queue:
            send(INGEST_BATCH_TASK, args=[stream, fmt, encode_records(records), symbol])
            queued += 1
        else:
            total.add(pipeline.ingest(stream=stream, fmt=fmt, records=records, symbol=symbol, publish=publish, detect=False))

    writer = open_raw_writer(store, stream)
    try:
        if row is None:
            row = IngestedFile.objects.create(
                stream=stream, sha256=sha, fmt=fmt, path=str(path), size_bytes=size, first_seq=writer.last_seq + 1
            )
        already = writer.last_seq - row.first_seq + 1
        resumed = already
        if already > 0:
            # A previous run stopped part-way: what it appended is the truth,
            # so ingest it again from the raw store before going on.
            prefix: list[Record] = []
            for rec in store.read(stream, from_seq=row.first_seq):
                prefix.append((rec.seq, rec.recv_ns, rec.payload))
                if len(prefix) >= batch:
                    hand_over(prefix)
                    prefix = []
            if prefix:
                hand_over(prefix)
        appended = 0
        skipped = 0
        payloads: list[bytes] = []
        stamps: list[int | None] = []

        def flush() -> None:
            nonlocal appended
            now = time.time_ns()
            recvs = [now if s is None else s for s in stamps]
            refs = writer.append_many(payloads, recv_ns=recvs)
            writer.flush()
            appended += len(refs)
            hand_over([(ref.seq, recv, payload) for ref, recv, payload in zip(refs, recvs, payloads, strict=True)])
            payloads.clear()
            stamps.clear()

        for payload, recv in iter_file_records(fmt, path):
            if skipped < already:
                skipped += 1
                continue
            payloads.append(payload)
            stamps.append(recv)
            if len(payloads) >= batch:
                flush()
        if payloads:
            flush()
        last_seq = writer.last_seq
    finally:
        writer.close()
    row.last_seq = last_seq
    row.records = last_seq - row.first_seq + 1
    row.status = IngestedFile.Status.QUEUED if queue else IngestedFile.Status.INGESTED
    row.finished_at = timezone.now()
    row.save(update_fields=["last_seq", "records", "status", "finished_at"])
    out: dict[str, Any] = {
        "path": str(path),
        "format": fmt,
        "stream": stream,
        "sha256": sha,
        "records": row.records,
        "first_seq": row.first_seq,
        "last_seq": last_seq,
        "appended": appended,
        "resumed_records": max(resumed, 0),
        "status": row.status,
    }
    if queue:
        out["batches_queued"] = queued
    else:
        out.update(total.as_dict())
    return out


def stream_format(stream: str) -> tuple[str, str | None] | None:
    """(format, parser symbol) of a raw stream, or None when nobody recorded it."""
    row = RawStream.objects.filter(name=stream).first()
    if row is not None:
        return row.fmt, row.symbol or None
    fmt = DEFAULT_STREAM_FORMATS.get(stream)
    return (fmt, None) if fmt else None


def raw_replay(
    *,
    store: RawStore,
    day: date | None = None,
    streams: Iterable[str] | None = None,
    batch: int = INGEST_BATCH,
    publish: bool = False,
    pipeline: IngestPipeline | None = None,
) -> dict[str, Any]:
    """Rebuild the tick tables from the raw store through the same ``IngestPipeline`` path.

    Idempotent: every row's key is its raw reference, so replaying twice adds
    nothing, and quarantine rows are unique per reference and reason. Streams
    whose format is unknown are reported, not guessed.
    """
    pipeline = pipeline or IngestPipeline()
    names = list(streams) if streams is not None else store.streams(day)
    report: dict[str, Any] = {"day": day.isoformat() if day else None, "streams": {}, "skipped": {}}
    for name in names:
        known = stream_format(name)
        if known is None:
            report["skipped"][name] = "format unknown: no RawStream row; register it (ingest_file/feed do) and replay again"
            continue
        fmt, symbol = known
        total = IngestResult()
        chunk: list[Record] = []
        for rec in store.read(name, day=day):
            chunk.append((rec.seq, rec.recv_ns, rec.payload))
            if len(chunk) >= batch:
                total.add(pipeline.ingest(stream=name, fmt=fmt, records=chunk, symbol=symbol, publish=publish, detect=False))
                chunk = []
        if chunk:
            total.add(pipeline.ingest(stream=name, fmt=fmt, records=chunk, symbol=symbol, publish=publish, detect=False))
        report["streams"][name] = {"format": fmt, **total.as_dict()}
    return report


_pipeline_lock = threading.Lock()
_pipeline: IngestPipeline | None = None


def worker_pipeline() -> IngestPipeline:
    """The ingest worker's long-lived pipeline (books and clocks persist across batches)."""
    global _pipeline
    with _pipeline_lock:
        if _pipeline is None:
            _pipeline = IngestPipeline()
        return _pipeline

"""Reads of market data for the detect workers and the UI.

Window cache
------------
``quotes_window`` and ``trades_window`` return exactly the frames that
``quotes_frame`` and ``trades_frame`` return, but keep the last window per
symbol in the process and, on the next call, fetch only the rows newer than
the cached tail by ``(source_ts, raw_seq)``. The detect worker calls them once
per symbol per ingested batch, so a call moves a dozen rows instead of
hundreds, and no frame is rebuilt from Python rows.

Rows can still land *behind* the tail: two ingest transactions commit out of
order, or retention deletes old rows. The same statement that fetches the new
rows therefore counts the rows from the cached head onwards; when that count
is not the cached rows plus the new ones, or when the new rows fill a whole
window, or when the entry is older than ``WINDOW_CACHE_MAX_AGE_S`` (less a
random share of up to half, so windows loaded together are not all reloaded on
the same later pass), the window is loaded in full again. The count and the new
rows come from one statement, so they see one snapshot of the table.

One round trip
--------------
``windows_read`` plans the quote and the trade window reads, adds the
caller's own reads (the detect worker's automations fingerprint), and sends
them all at once in psycopg's pipeline mode: one network wait for the three,
each statement still prepared server-side.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from django.db import connection

from ingestion.types import BookSnapshot, QuoteTick
from trading import redis_keys
from trading.db import prepared_rows
from trading.redis_client import redis_client

_QUOTE_COLUMNS = ["ts_ns", "bid", "ask", "bid_size", "ask_size"]
_TRADE_COLUMNS = ["ts_ns", "price", "size", "side"]
# A cached window is reloaded in full at least this often, whatever the checks say.
WINDOW_CACHE_MAX_AGE_S = 30.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Lower bound of every key when the cache holds a symbol's whole history.
_MIN_TS = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_SEQ = -(2**63)


def quote_from_json(raw: bytes | str | None) -> QuoteTick | None:
    """Parse the latest-quote JSON the ingest worker publishes (``fp:quote:<symbol>``)."""
    if raw is None:
        return None
    data = json.loads(raw)
    return QuoteTick(
        symbol=data["symbol"],
        source_ts_ns=int(data["source_ts_ns"]),
        recv_ts_ns=int(data["recv_ts_ns"]),
        bid=Decimal(data["bid"]),
        bid_size=Decimal(data["bid_size"]),
        ask=Decimal(data["ask"]),
        ask_size=Decimal(data["ask_size"]),
    )


def book_from_json(raw: bytes | str | None, n: int = 20) -> BookSnapshot | None:
    """Parse the top ``n`` levels of the book JSON the ingest worker publishes (``fp:book:<symbol>``)."""
    if raw is None:
        return None
    data = json.loads(raw)
    return BookSnapshot(
        symbol=data["symbol"],
        ts_ns=int(data["ts_ns"]),
        bids=tuple((Decimal(p), Decimal(s)) for p, s in data["bids"][:n]),
        asks=tuple((Decimal(p), Decimal(s)) for p, s in data["asks"][:n]),
    )


def latest_quote(symbol: str) -> QuoteTick | None:
    return quote_from_json(redis_client().get(redis_keys.quote(symbol)))


def book_snapshot(symbol: str, n: int = 20) -> BookSnapshot | None:
    return book_from_json(redis_client().get(redis_keys.book(symbol)), n)


@dataclass(frozen=True)
class _Table:
    name: str
    columns: list[str]
    # SQL of the value columns after ts_ns and raw_seq, and their dtypes.
    select: str
    dtypes: tuple[Any, ...]

    @cached_property
    def index(self) -> pd.Index:
        # Built once per table (cached_property writes the instance's __dict__, past the frozen __setattr__).
        return pd.Index(self.columns)


_QUOTES = _Table(
    "ingestion_quote",
    _QUOTE_COLUMNS,
    "bid::float8 AS bid, ask::float8 AS ask, bid_size::float8 AS bid_size, ask_size::float8 AS ask_size",
    (np.float64, np.float64, np.float64, np.float64),
)
_TRADES = _Table(
    "ingestion_trade",
    _TRADE_COLUMNS,
    "price::float8 AS price, size::float8 AS size, aggressor AS side",
    (np.float64, np.float64, object),
)
_TS_NS = "(extract(epoch FROM source_ts) * 1e9)::bigint AS ts_ns"


def _columns(rows: list[tuple[Any, ...]], table: _Table) -> list[np.ndarray]:
    """Rows (ts_ns, raw_seq, values...) as one numpy array per column, without a pandas round trip."""
    if not rows:
        return [np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)] + [np.empty(0, dtype=d) for d in table.dtypes]
    cols = list(zip(*rows, strict=True))
    out = [np.array(cols[0], dtype=np.int64), np.array(cols[1], dtype=np.int64)]
    for values, dtype in zip(cols[2:], table.dtypes, strict=True):
        if dtype is object:
            array = np.empty(len(values), dtype=object)
            array[:] = values
            out.append(array)
        else:
            out.append(np.array(values, dtype=dtype))
    return out


# ``DataFrame._from_arrays`` builds a frame from column arrays without the
# per-column checks and type inference of ``DataFrame(dict)``: a third of the
# cost, on a path that builds two frames per symbol per detection pass. It is
# pandas-internal, so the public constructor stays the fallback, and a test
# checks both give equal frames. A text column gets the dtype the public
# constructor infers for text (pandas' string dtype), converted explicitly,
# which is much cheaper than inferring it.
_FROM_ARRAYS = getattr(pd.DataFrame, "_from_arrays", None)
_TEXT_DTYPE = pd.DataFrame({"side": np.array(["buy"], dtype=object)}, copy=False)["side"].dtype
# Without pandas' string inference, text stays a numpy object column as it is.
_CONVERT_TEXT = not isinstance(_TEXT_DTYPE, np.dtype)


def _frame(arrays: list[np.ndarray], table: _Table) -> pd.DataFrame:
    # arrays[1] is raw_seq: an ordering key, not part of the frame's contract.
    values: list[Any] = [arrays[0], *arrays[2:]]
    if _FROM_ARRAYS is not None and len(values[0]):
        if _CONVERT_TEXT:
            values[1:] = [
                pd.array(v, dtype=_TEXT_DTYPE) if d is object else v for v, d in zip(values[1:], table.dtypes, strict=True)
            ]
        try:
            return _FROM_ARRAYS(values, columns=table.index, index=pd.RangeIndex(len(values[0])), verify_integrity=False)
        except TypeError:
            values = [arrays[0], *arrays[2:]]  # Another pandas signature: the public constructor below.
    return _frame_public(values, table)


def _frame_public(values: list[np.ndarray], table: _Table) -> pd.DataFrame:
    return pd.DataFrame(dict(zip(table.columns, values, strict=True)), copy=False)


def _prepared(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Run a read with server-side binding and a prepared plan.

    Django's psycopg cursors bind on the client, so PostgreSQL plans the
    statement on every call; on these per-pass reads the planning cost as
    much as the execution. A plain psycopg cursor on the same connection
    (same transaction) prepares the statement once per connection.
    """
    return _prepared_many([(sql, params)])[0]


def _prepared_many(statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
    """Run several prepared reads in ONE round trip (psycopg pipeline mode); their rows in order.

    Each statement still runs on its own (its own snapshot under autocommit,
    in the caller's transaction otherwise); only the network waits are shared.
    """
    if len(statements) == 1:
        return [prepared_rows(*statements[0])]
    connection.ensure_connection()
    conn = connection.connection
    cursors = [psycopg.Cursor(conn) for _ in statements]
    try:
        # Leaving the pipeline block sends one Sync and reads every result.
        with conn.pipeline():
            for cursor, (sql, params) in zip(cursors, statements, strict=True):
                cursor.execute(sql, params, prepare=True)
        return [cursor.fetchall() for cursor in cursors]
    finally:
        for cursor in cursors:
            cursor.close()


def _load_last_sql(table: _Table, symbol: str, n: int) -> tuple[str, list[Any]]:
    return (
        f"SELECT {_TS_NS}, raw_seq, {table.select} FROM {table.name}"  # noqa: S608 - fixed table and columns.
        " WHERE symbol = %s ORDER BY source_ts DESC, raw_seq DESC LIMIT %s",
        [symbol, n],
    )


def _last_rows_columns(rows: list[tuple[Any, ...]], table: _Table) -> list[np.ndarray]:
    rows.reverse()
    return _columns(rows, table)


def _load_last(table: _Table, symbol: str, n: int) -> list[np.ndarray]:
    return _last_rows_columns(_prepared(*_load_last_sql(table, symbol, n)), table)


def quotes_frame(symbol: str, n: int) -> pd.DataFrame:
    """The last ``n`` quotes of a symbol, oldest first, as floats for the features."""
    return _frame(_load_last(_QUOTES, symbol, n), _QUOTES)


def trades_frame(symbol: str, n: int) -> pd.DataFrame:
    """The last ``n`` trades of a symbol, oldest first (ts_ns, price, size, side)."""
    return _frame(_load_last(_TRADES, symbol, n), _TRADES)


def _ns_to_datetime(ts_ns: int) -> datetime:
    # ts_ns is a whole number of microseconds (PostgreSQL's precision), so this is exact.
    return _EPOCH + timedelta(microseconds=int(ts_ns) // 1000)


@dataclass
class _Window:
    capacity: int
    arrays: list[np.ndarray]
    loaded_at: float

    def __len__(self) -> int:
        return len(self.arrays[0])


@dataclass
class _Read:
    """One planned window read: the statement to run and what its rows mean."""

    symbol: str
    n: int
    capacity: int
    # The cached window being extended, or None for a full load.
    window: _Window | None
    sql: str
    params: list[Any]
    # An extension's (head_ts, head_seq, tail_ts, tail_seq), for the statement that reads several symbols at once.
    bounds: tuple[datetime, int, datetime, int] | None = None
    # When > 0, the frame keeps only the rows within this many ns of the window's newest row.
    span_ns: int = 0


class WindowCache:
    """The last ``n`` rows per symbol of one tick table, refreshed incrementally (see the module docstring).

    A read is split in two so that several reads (and the caller's own) can
    share one round trip: ``plan`` says which statement to run, ``apply``
    turns its rows into the frame, or returns None when the window must be
    loaded in full again (``plan_full``).
    """

    def __init__(self, table: _Table, max_age_s: float = WINDOW_CACHE_MAX_AGE_S) -> None:
        self.table = table
        self.max_age_s = max_age_s
        self.windows: dict[str, _Window] = {}
        self.full_loads = 0
        self.incremental_loads = 0

    def clear(self) -> None:
        self.windows.clear()
        self.full_loads = 0
        self.incremental_loads = 0

    def frame(self, symbol: str, n: int) -> pd.DataFrame:
        read = self.plan(symbol, n)
        frame = self.apply(read, _prepared(read.sql, read.params))
        if frame is None:
            read = self.plan_full(symbol, n)
            frame = self.apply(read, _prepared(read.sql, read.params))
        assert frame is not None  # A full load always yields a frame.
        return frame

    def plan(self, symbol: str, n: int, span_ns: int = 0) -> _Read:
        window = self.windows.get(symbol)
        if window is not None and window.capacity >= n and time.monotonic() - window.loaded_at < self.max_age_s:
            sql, params = self._extend_sql(symbol, window)
            return _Read(
                symbol=symbol,
                n=n,
                capacity=window.capacity,
                window=window,
                sql=sql,
                params=params,
                bounds=self._bounds(window),
                span_ns=span_ns,
            )
        return self.plan_full(symbol, n, span_ns)

    def plan_full(self, symbol: str, n: int, span_ns: int = 0) -> _Read:
        window = self.windows.get(symbol)
        capacity = max(n, window.capacity if window is not None else 0)
        sql, params = _load_last_sql(self.table, symbol, capacity)
        return _Read(symbol=symbol, n=n, capacity=capacity, window=None, sql=sql, params=params, span_ns=span_ns)

    def apply(self, read: _Read, rows: list[tuple[Any, ...]]) -> pd.DataFrame | None:
        if read.window is not None:
            arrays = self._extend(read.window, rows)
            if arrays is None:
                return None
        else:
            arrays = _last_rows_columns(rows, self.table)
            self.full_loads += 1
            if len(self.windows) > 10_000:
                self.windows.clear()
            # Backdated by a random share of up to half the maximum age: windows
            # loaded together (a worker's first pass) are not all reloaded on
            # the same later pass, which would make that pass slow.
            backdate = random.random() * self.max_age_s / 2
            self.windows[read.symbol] = _Window(capacity=read.capacity, arrays=arrays, loaded_at=time.monotonic() - backdate)
        if len(arrays[0]) > read.n:
            arrays = [a[-read.n :] for a in arrays]
        if read.span_ns > 0 and len(arrays[0]):
            # Rows sorted by (ts, seq): the span is a suffix.
            cut = int(arrays[0].searchsorted(arrays[0][-1] - read.span_ns, side="right"))
            if cut:
                arrays = [a[cut:] for a in arrays]
        return _frame(arrays, self.table)

    @staticmethod
    def _bounds(window: _Window) -> tuple[datetime, int, datetime, int]:
        """(head_ts, head_seq, tail_ts, tail_seq): where the recount starts and the fetch of new rows starts after."""
        cached = len(window)
        if cached:
            tail_ts, tail_seq = _ns_to_datetime(window.arrays[0][-1]), int(window.arrays[1][-1])
        else:
            tail_ts, tail_seq = _MIN_TS, _MIN_SEQ
        # A window not yet full holds the symbol's whole history: count from the beginning.
        if cached and cached >= window.capacity:
            head_ts, head_seq = _ns_to_datetime(window.arrays[0][0]), int(window.arrays[1][0])
        else:
            head_ts, head_seq = _MIN_TS, _MIN_SEQ
        return head_ts, head_seq, tail_ts, tail_seq

    def extend_many_sql(self, reads: Sequence[_Read]) -> tuple[str, list[Any]]:
        """``_extend_sql`` for several symbols in ONE statement: rows (read index, count, new row...) by index.

        The per-symbol bounds travel as arrays; each symbol's count and new
        rows come from the same lateral subqueries as ``_extend_sql``'s, so
        one statement (one snapshot) serves every symbol.
        """
        name = self.table.name
        bounds = [r.bounds for r in reads]
        assert all(b is not None for b in bounds)
        return (
            "SELECT k.i, c.n, r.* FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[], %s::timestamptz[],"  # noqa: S608 - fixed table and columns.
            " %s::bigint[], %s::int[]) WITH ORDINALITY AS k(symbol, head_ts, head_seq, tail_ts, tail_seq, cap, i)"
            f" CROSS JOIN LATERAL (SELECT count(*) AS n FROM {name} q WHERE q.symbol = k.symbol"
            " AND q.source_ts >= k.head_ts AND (q.source_ts, q.raw_seq) >= (k.head_ts, k.head_seq)) c"
            f" LEFT JOIN LATERAL (SELECT {_TS_NS}, raw_seq, {self.table.select} FROM {name} q"
            " WHERE q.symbol = k.symbol AND q.source_ts >= k.tail_ts AND (q.source_ts, q.raw_seq) > (k.tail_ts, k.tail_seq)"
            " ORDER BY q.source_ts, q.raw_seq LIMIT k.cap) r ON true ORDER BY k.i, r.ts_ns, r.raw_seq",
            [
                [r.symbol for r in reads],
                [b[0] for b in bounds],
                [b[1] for b in bounds],  # type: ignore[index]
                [b[2] for b in bounds],
                [b[3] for b in bounds],
                [r.capacity for r in reads],  # type: ignore[index]
            ],
        )

    def full_many_sql(self, reads: Sequence[_Read]) -> tuple[str, list[Any]]:
        """``_load_last_sql`` for several symbols in ONE statement: rows (read index, row...), newest first per index."""
        name = self.table.name
        return (
            "SELECT k.i, r.* FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS k(symbol, cap, i)"  # noqa: S608 - fixed table and columns.
            f" CROSS JOIN LATERAL (SELECT {_TS_NS}, raw_seq, {self.table.select} FROM {name} q WHERE q.symbol = k.symbol"
            " ORDER BY q.source_ts DESC, q.raw_seq DESC LIMIT k.cap) r ORDER BY k.i, r.ts_ns DESC, r.raw_seq DESC",
            [[r.symbol for r in reads], [r.capacity for r in reads]],
        )

    def _extend_sql(self, symbol: str, window: _Window) -> tuple[str, list[Any]]:
        """The statement that counts the cached rows again and fetches the rows newer than the tail."""
        head_ts, head_seq, tail_ts, tail_seq = self._bounds(window)
        name = self.table.name
        return (
            f"SELECT c.n, r.* FROM (SELECT count(*) AS n FROM {name}"  # noqa: S608 - fixed table and columns.
            " WHERE symbol = %s AND source_ts >= %s AND (source_ts, raw_seq) >= (%s, %s)) c"
            f" LEFT JOIN LATERAL (SELECT {_TS_NS}, raw_seq, {self.table.select} FROM {name}"
            " WHERE symbol = %s AND source_ts >= %s AND (source_ts, raw_seq) > (%s, %s)"
            " ORDER BY source_ts, raw_seq LIMIT %s) r ON true",
            [symbol, head_ts, head_ts, head_seq, symbol, tail_ts, tail_ts, tail_seq, window.capacity],
        )

    def _extend(self, window: _Window, rows: list[tuple[Any, ...]]) -> list[np.ndarray] | None:
        """Append the rows newer than the cached tail; None when a full load is needed."""
        counted = rows[0][0]
        fresh = [row[1:] for row in rows if row[1] is not None]
        # Rows landed behind the tail or were deleted, or the gap is wider than a window.
        if counted != len(window) + len(fresh) or len(fresh) >= window.capacity:
            return None
        self.incremental_loads += 1
        if fresh:
            new = _columns(fresh, self.table)
            window.arrays = [np.concatenate((old, add))[-window.capacity :] for old, add in zip(window.arrays, new, strict=True)]
        return window.arrays


QUOTE_WINDOWS = WindowCache(_QUOTES)
TRADE_WINDOWS = WindowCache(_TRADES)


def quotes_window(symbol: str, n: int) -> pd.DataFrame:
    """Same frame as ``quotes_frame(symbol, n)``, served from this process's incremental window cache."""
    return QUOTE_WINDOWS.frame(symbol, n)


def trades_window(symbol: str, n: int) -> pd.DataFrame:
    """Same frame as ``trades_frame(symbol, n)``, served from this process's incremental window cache."""
    return TRADE_WINDOWS.frame(symbol, n)


def window_cache_clear() -> None:
    """Forget every cached window (tests; a worker never needs to)."""
    QUOTE_WINDOWS.clear()
    TRADE_WINDOWS.clear()


@dataclass
class Windows:
    """What ``windows_read`` returns: the frames asked for (None when not asked) and the extra reads' rows."""

    quotes: pd.DataFrame | None
    trades: pd.DataFrame | None
    extra: list[list[tuple[Any, ...]]]


@dataclass(frozen=True)
class WindowRequest:
    """One symbol's part of ``windows_read_many``: window sizes (0 skips a table) and the caller's own reads."""

    symbol: str
    quotes: int = 0
    trades: int = 0
    extra: Sequence[tuple[str, Sequence[Any]]] = ()
    # When > 0, the trades frame holds only the last ``trades`` trades within
    # this many ns of the newest one (a caller that looks back in time needs
    # no more, and a short frame is cheaper to build and to compute on).
    trades_span_ns: int = 0


def windows_read(symbol: str, *, quotes: int = 0, trades: int = 0, extra: Sequence[tuple[str, Sequence[Any]]] = ()) -> Windows:
    """``quotes_window(symbol, quotes)`` and ``trades_window(symbol, trades)`` (each skipped when 0), in one round trip.

    ``extra`` statements (SQL with ``%s`` placeholders, and parameters) are the
    caller's own reads; they ride in the same round trip, prepared like the
    window reads, and come back as lists of rows in order. A window that has
    to be loaded in full again (see the module docstring) costs a second
    round trip, shared by both tables.
    """
    return windows_read_many([WindowRequest(symbol=symbol, quotes=quotes, trades=trades, extra=tuple(extra))])[0]


def windows_read_many(requests: Sequence[WindowRequest]) -> list[Windows]:
    """``windows_read`` for several symbols at once: every read in one round trip, full reloads in one more.

    The result has one ``Windows`` per request, in order. A symbol may appear
    only once (its cached window is extended once per read); a repeated
    symbol raises ``ValueError``.
    """
    symbols = [r.symbol for r in requests]
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"windows_read_many: a symbol may be asked for once per call, got {symbols}")
    # (request index, cache, planned read) per window read.
    reads: list[tuple[int, WindowCache, _Read]] = []
    for index, request in enumerate(requests):
        if request.quotes > 0:
            reads.append((index, QUOTE_WINDOWS, QUOTE_WINDOWS.plan(request.symbol, request.quotes)))
        if request.trades > 0:
            reads.append((index, TRADE_WINDOWS, TRADE_WINDOWS.plan(request.symbol, request.trades, request.trades_span_ns)))
    extras: list[tuple[str, Sequence[Any]]] = [statement for request in requests for statement in request.extra]
    frames: list[dict[str, pd.DataFrame | None]] = [{} for _ in requests]
    again: list[tuple[int, WindowCache, _Read]] = []
    extra_results = _run_reads(reads, extras, frames, again)
    if again:
        _run_reads(again, [], frames, [])
    out = []
    position = 0
    for index, request in enumerate(requests):
        extra_rows = extra_results[position : position + len(request.extra)]
        position += len(request.extra)
        out.append(Windows(quotes=frames[index].get(_QUOTES.name), trades=frames[index].get(_TRADES.name), extra=extra_rows))
    return out


def _run_reads(
    reads: list[tuple[int, WindowCache, _Read]],
    extras: list[tuple[str, Sequence[Any]]],
    frames: list[dict[str, pd.DataFrame | None]],
    again: list[tuple[int, WindowCache, _Read]],
) -> list[list[tuple[Any, ...]]]:
    """Run planned window reads and extra statements in one round trip; fill ``frames``; return the extras' rows.

    A read alone of its kind (table, extension or full load) runs its own
    statement; several of a kind run as ONE statement (``extend_many_sql``,
    ``full_many_sql``) whose rows are split back by read. Extensions that
    need a full load are appended to ``again`` as planned full loads.
    """
    groups: dict[tuple[str, bool], list[tuple[int, WindowCache, _Read]]] = {}
    for item in reads:
        groups.setdefault((item[1].table.name, item[2].window is not None), []).append(item)
    statements: list[tuple[str, Sequence[Any]]] = []
    for (_name, extension), group in groups.items():
        if len(group) == 1:
            statements.append((group[0][2].sql, group[0][2].params))
        else:
            cache = group[0][1]
            statements.append(
                cache.extend_many_sql([r for _, _, r in group]) if extension else cache.full_many_sql([r for _, _, r in group])
            )
    results = _prepared_many([*statements, *extras]) if statements or extras else []
    for rows, group in zip(results, groups.values(), strict=False):
        if len(group) == 1:
            per_read = [rows]
        else:
            # The combined statements put the read's 1-based ordinal first.
            per_read = [[] for _ in group]
            for row in rows:
                per_read[row[0] - 1].append(row[1:])
        for (index, cache, read), read_rows in zip(group, per_read, strict=True):
            frame = cache.apply(read, read_rows)
            frames[index][cache.table.name] = frame
            if frame is None:
                again.append((index, cache, cache.plan_full(read.symbol, read.n, read.span_ns)))
    return results[len(statements) :]

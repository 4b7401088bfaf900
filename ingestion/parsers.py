"""Turn one raw market-data message into typed ticks.

A parser takes ONE raw record, byte-exact as the raw store keeps it, plus the
time we received it, and returns a list of ``QuoteTick`` / ``TradeTick`` /
``BookUpdate``, or raises ``ParseError`` with a reason whose first word is a
stable code (``field_count: expected 8 fields, got 3``). Nothing else may
escape: a malformed message is quarantined with its reason, it must never
crash the ingest worker. This module is pure: no Django, no ORM.

Prices and sizes are built with ``Decimal(original_string)`` and never pass
through ``float``, so ``"9681.92"`` stays exactly ``Decimal("9681.92")``.
Non-finite or non-positive values (``"NaN"``, ``"-1"``) are *not* rejected
here: they parse, and ``ingestion.validation.Validator`` quarantines them with
their own reason codes, so that "unreadable" and "readable but wrong" stay
distinct in the quarantine.

Formats (the keys of ``FORMATS``)
---------------------------------
``tardis-quotes``
    One CSV data row, no header:
    ``exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount``
    with both timestamps in microseconds since the epoch (UTC).
    ``source_ts_ns = timestamp * 1000`` and ``recv_ts_ns = local_timestamp * 1000``.
    The ``recv_ns`` argument is ignored for recorded files on purpose: the
    receive time of a recorded tick is when the *recorder* got it, which the
    file keeps in ``local_timestamp``. The ``recv_ns`` we would pass is when
    our replay read the file (months or years later); using it would make
    every replayed tick look enormously late and would destroy exactly the
    receive lag that clock normalization has to measure.
``tardis-trades``
    ``exchange,symbol,timestamp,local_timestamp,id,side,price,amount``;
    ``side`` is the aggressor (``buy``/``sell``; anything else such as
    ``unknown`` gives ``aggressor=None``). Same clock rule as the quotes.
``bybit-ob``
    Bybit v5 ``orderbook.N.SYMBOL`` websocket JSON:
    ``{"topic","type":"snapshot"|"delta","ts":ms,"data":{"s","b","a","u","seq"},"cts":ms}``.
    ``source_ts_ns = ts`` (when Bybit's market-data service generated the
    message; ``cts`` is the matching engine's time and is not kept). A size
    of ``"0"`` removes a level. ``u`` increases by one per message, so a delta
    carries ``prev_last_update_id = u - 1``; Bybit sends a message with
    ``u == 1`` after a service restart and that message is a fresh full book,
    so it is returned as a snapshot whatever its ``type`` says.
``binance-ws``
    Binance USD-M futures combined-stream JSON ``{"stream": ..., "data": {...}}``
    (a bare event without the envelope is accepted too):

    * ``bookTicker`` (``u, s, b, B, a, A, T, E``) -> ``QuoteTick``;
    * ``trade`` (``t, p, q, m, T``) and ``aggTrade`` (``a, p, q, m, T``) ->
      ``TradeTick``; ``m`` true means the buyer was the maker, so the
      aggressor was the seller. Subscribe to one of the two, not both, or
      volume is counted twice (their id spaces differ);
    * ``depthUpdate`` (``U, u, pu, b, a, E, T``) -> ``BookUpdate`` delta with
      ``first/last/prev_last_update_id = U/u/pu``;
    * the REST depth snapshot ``{"lastUpdateId","E","T","bids","asks"}`` ->
      ``BookUpdate`` snapshot for the ``symbol`` argument (the REST answer
      carries no symbol, so the argument is required);
    * a subscription acknowledgement ``{"result": ..., "id": ...}`` carries
      no market data and gives ``[]``.

    The venue's time is the transaction time ``T`` where the event has one
    (falling back to the event time ``E``); ``recv_ts_ns`` is ``recv_ns``.
``sim``
    The platform's own simulator format, one JSON object per message. Prices
    and sizes are decimal *strings* (JSON integers are accepted; JSON
    fractions are read exactly as Decimal too, but emitters should use
    strings). ``ts_ns`` is the simulator's clock in ns since the epoch (UTC);
    ``recv_ts_ns`` is ``recv_ns``::

        {"type": "quote", "symbol": "SIM-A", "ts_ns": 1700000000000000000,
         "bid": "99.5", "bid_size": "3", "ask": "100.5", "ask_size": "2"}
        {"type": "trade", "symbol": "SIM-A", "ts_ns": 1700000000000000000,
         "price": "100.5", "size": "1", "side": "buy" | "sell" | null, "id": "T1"}
        {"type": "book", "symbol": "SIM-A", "ts_ns": 1700000000000000000,
         "snapshot": true, "bids": [["99.5", "3"], ...], "asks": [["100.5", "2"], ...],
         "seq": 17}

    ``side`` is the aggressor; ``id`` is a string unique per symbol. Book
    ``bids`` are best (highest) first and ``asks`` best (lowest) first; a
    size of ``"0"`` in a delta removes the level. ``seq`` increases by one
    per book message per symbol, so a delta has ``prev_last_update_id = seq - 1``.

Files
-----
``iter_file_records(fmt, path)`` splits a recorded file into the raw records
the raw store keeps: CSV data rows without the header (the header is checked
so a file with other columns cannot be read in the wrong order), JSON lines,
and for ``binance-ws`` lines of the form ``<receive_time_ns> <json>``. The line
terminator (``\\n`` or ``\\r\\n``) is file framing, not part of the record.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from ingestion.types import BookUpdate, QuoteTick, RawRef, Side, TradeTick

Tick = QuoteTick | TradeTick | BookUpdate
Parser = Callable[..., list[Tick]]


class ParseError(ValueError):
    """A raw message that cannot be read; ``reason`` starts with a stable code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# A malformed message can trip many built-in exceptions deep inside a parser
# (a missing key, a list where a dict was expected, a 5000-digit integer).
# ``parse`` turns exactly these into ``ParseError`` so arbitrary bytes can
# never take the worker down; anything else (a bug such as NameError) still
# surfaces.
_MALFORMED = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    ArithmeticError,
    RecursionError,
)

_MAX_REASON_DETAIL = 80


def _show(value: object) -> str:
    """Render a bad value for a reason string, bounded so reasons stay short."""
    text = repr(value)
    if len(text) > _MAX_REASON_DETAIL:
        text = text[:_MAX_REASON_DETAIL] + "..."
    return text


# --------------------------------------------------------------------------
# Scalars
# --------------------------------------------------------------------------


def _uint(text: str, name: str) -> int:
    """A non-negative decimal integer from ASCII digits only.

    ``int()`` alone would also accept ``" 12"``, ``"1_000"`` and ``"+5"``;
    a timestamp or id spelt that way is a corrupted record, not a number.
    """
    if not (text.isascii() and text.isdigit()):
        raise ParseError(f"bad_{name}: expected a non-negative integer, got {_show(text)}")
    return int(text)


# Market data repeats the same few hundred price and size strings endlessly,
# and a dict hit is several times cheaper than building a Decimal. Decimals are
# immutable, so sharing one instance between ticks is safe; the key is the
# exact original text, so "9682" and "9682.0" stay distinct values. The cache
# is simply emptied when full, which keeps it bounded without LRU bookkeeping.
_DEC_CACHE: dict[str, Decimal] = {}
_DEC_CACHE_MAX = 1 << 16


def _dec_text(text: str, name: str) -> Decimal:
    value = _DEC_CACHE.get(text)
    if value is not None:
        return value
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        raise ParseError(f"bad_{name}: not a decimal number: {_show(text)}") from None
    if len(text) <= 32:
        if len(_DEC_CACHE) >= _DEC_CACHE_MAX:
            _DEC_CACHE.clear()
        _DEC_CACHE[text] = value
    return value


def _dec_json(value: Any, name: str) -> Decimal:
    """A Decimal from a JSON value that is exact: a string, an integer or a parsed fraction."""
    kind = type(value)
    if kind is str:
        return _dec_text(value, name)
    if kind is Decimal:
        return value
    if kind is int:
        return Decimal(value)
    raise ParseError(f"bad_{name}: expected a decimal string, got {_show(value)}")


def _int_json(value: Any, name: str) -> int:
    # ``bool`` is a subclass of ``int``; ``true`` is never a valid timestamp or id.
    if type(value) is int and value >= 0:
        return value
    if type(value) is str:
        return _uint(value, name)
    raise ParseError(f"bad_{name}: expected a non-negative integer, got {_show(value)}")


def _str_json(value: Any, name: str) -> str:
    if type(value) is str and value:
        return value
    raise ParseError(f"bad_{name}: expected a non-empty string, got {_show(value)}")


def _levels(value: Any, name: str) -> tuple[tuple[Decimal, Decimal], ...]:
    if type(value) is not list:
        raise ParseError(f"bad_{name}: expected a list of [price, size], got {_show(value)}")
    out = []
    for level in value:
        if type(level) is not list or len(level) < 2:
            raise ParseError(f"bad_{name}: expected [price, size], got {_show(level)}")
        out.append((_dec_json(level[0], name + "_price"), _dec_json(level[1], name + "_size")))
    return tuple(out)


def _check_symbol(found: str, expected: str | None) -> str:
    if not found:
        raise ParseError("missing_symbol: the message names no symbol")
    if expected is not None and found != expected:
        raise ParseError(f"symbol_mismatch: message is for {_show(found)}, stream is {_show(expected)}")
    return found


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"bad_encoding: not UTF-8 at byte {exc.start}") from None


def _reject_constant(name: str) -> Any:
    raise ParseError(f"bad_number: JSON {name} is not a number")


# Fractions become Decimal from their original text (exact); NaN/Infinity
# literals, which JSON does not allow anyway, are refused.
_JSON = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def _json_object(payload: bytes) -> dict[str, Any]:
    text = _decode(payload)
    try:
        obj = _JSON.decode(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"bad_json: {exc.msg} at char {exc.pos}") from None
    if type(obj) is not dict:
        raise ParseError(f"bad_json: expected an object, got {type(obj).__name__}")
    return obj


# --------------------------------------------------------------------------
# Fast tick construction
# --------------------------------------------------------------------------


def _fast_builder(cls: type, expected: tuple[str, ...]) -> Callable[..., Any]:
    """A positional constructor for a frozen slots dataclass that skips ``__init__``.

    A frozen dataclass's ``__init__`` sets every field through
    ``object.__setattr__``, which costs about half of a whole quote parse.
    Writing the slots through their descriptors gives the identical object in
    half the time. This is only safe while the class has exactly the fields
    we expect and no ``__post_init__``; if ``ingestion/types.py`` changes
    either, we fall back to the real constructor (slower, always correct).
    """
    names = tuple(f.name for f in dataclasses.fields(cls))
    if names != expected or tuple(getattr(cls, "__slots__", ())) != expected or hasattr(cls, "__post_init__"):
        return cls
    s0, s1, s2, s3, s4, s5, s6, s7 = (cls.__dict__[name].__set__ for name in expected)
    new = object.__new__

    def build(a: Any, b: Any, c: Any, d: Any, e: Any, f: Any, g: Any, h: Any) -> Any:
        obj: Any = new(cls)
        s0(obj, a)
        s1(obj, b)
        s2(obj, c)
        s3(obj, d)
        s4(obj, e)
        s5(obj, f)
        s6(obj, g)
        s7(obj, h)
        return obj

    return build


# Positional order: symbol, source_ts_ns, recv_ts_ns, bid, bid_size, ask, ask_size, raw.
_quote = _fast_builder(QuoteTick, ("symbol", "source_ts_ns", "recv_ts_ns", "bid", "bid_size", "ask", "ask_size", "raw"))
# Positional order: symbol, source_ts_ns, recv_ts_ns, price, size, aggressor, trade_id, raw.
_trade = _fast_builder(TradeTick, ("symbol", "source_ts_ns", "recv_ts_ns", "price", "size", "aggressor", "trade_id", "raw"))


# --------------------------------------------------------------------------
# Tardis CSV rows
# --------------------------------------------------------------------------

TARDIS_QUOTES_HEADER = "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount"
TARDIS_TRADES_HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"


def _csv_fields(payload: bytes, expected: int) -> list[str]:
    """Split one CSV record; the result is ASCII-only or the record is refused."""
    line = _decode(payload)
    # ``str.split`` is several times faster than building a csv reader per
    # row; Tardis rows never quote, so the csv module is only needed when a
    # quote character actually appears. Tardis rows are pure ASCII, and
    # insisting on it lets the callers check digits with a bare ``isdigit``.
    if not line.isascii():
        raise ParseError("bad_encoding: a CSV record must be ASCII")
    if '"' in line:
        try:
            rows = list(csv.reader([line], strict=True))
        except csv.Error as exc:
            raise ParseError(f"bad_csv: {exc}") from None
        if len(rows) != 1:
            raise ParseError(f"bad_csv: expected one row, got {len(rows)}")
        fields = rows[0]
    else:
        if "\n" in line or "\r" in line:
            raise ParseError("bad_csv: a record must be exactly one line")
        fields = line.split(",")
    if len(fields) != expected:
        raise ParseError(f"field_count: expected {expected} fields, got {len(fields)}")
    return fields


def parse_tardis_quotes(payload: bytes, *, recv_ns: int, symbol: str | None = None, raw: RawRef | None = None) -> list[Tick]:
    _exchange, sym, ts, local_ts, ask_amount, ask_price, bid_price, bid_amount = _csv_fields(payload, 8)
    # ``_csv_fields`` already refused non-ASCII lines on this path, so a plain
    # ``isdigit`` is enough to refuse signs, spaces and underscores cheaply.
    if not (ts.isdigit() and local_ts.isdigit()):
        _uint(ts, "timestamp")
        _uint(local_ts, "local_timestamp")
    if not sym or (symbol is not None and sym != symbol):
        _check_symbol(sym, symbol)
    dec = _DEC_CACHE.get
    return [
        _quote(
            sym,
            int(ts) * 1000,
            int(local_ts) * 1000,
            dec(bid_price) or _dec_text(bid_price, "bid_price"),
            dec(bid_amount) or _dec_text(bid_amount, "bid_amount"),
            dec(ask_price) or _dec_text(ask_price, "ask_price"),
            dec(ask_amount) or _dec_text(ask_amount, "ask_amount"),
            raw,
        )
    ]


_SIDES = {"buy": Side.BUY, "sell": Side.SELL}


def parse_tardis_trades(payload: bytes, *, recv_ns: int, symbol: str | None = None, raw: RawRef | None = None) -> list[Tick]:
    _exchange, sym, ts, local_ts, trade_id, side, price, amount = _csv_fields(payload, 8)
    if not trade_id:
        raise ParseError("bad_id: empty trade id")
    return [
        _trade(
            _check_symbol(sym, symbol),
            _uint(ts, "timestamp") * 1000,
            _uint(local_ts, "local_timestamp") * 1000,
            _dec_text(price, "price"),
            _dec_text(amount, "amount"),
            _SIDES.get(side),
            trade_id,
            raw,
        )
    ]


# --------------------------------------------------------------------------
# Tardis CSV batches, as columns
# --------------------------------------------------------------------------

# Venue times up to here (microseconds) still fit int64 nanoseconds.
_BATCH_MAX_US = 9_000_000_000_000_000
_SIDE_TEXT = {"buy": "buy", "sell": "sell"}
_NOT_PLAIN = (b'"', b"\t", b"\\", b"\r", b"\x00")
SYMBOL_MAX = 32
TRADE_ID_MAX = 64


@dataclasses.dataclass(slots=True)
class TardisColumns:
    """A batch of Tardis rows as columns, in record order.

    ``texts`` are the venue's decimal strings, exactly as received: bid,
    bid_size, ask, ask_size for quotes; price, size for trades. ``values`` are
    the same numbers as float arrays, for vectorised checks only (never
    stored). ``source_ns``/``recv_ns`` are int64 arrays; ``source_us``/
    ``recv_us`` the file's microseconds. ``aggressor`` is ``buy``, ``sell``
    or empty; ``trade_ids`` the ids as text.
    """

    symbols: list[str]
    source_us: np.ndarray
    recv_us: np.ndarray
    source_ns: np.ndarray
    recv_ns: np.ndarray
    texts: list[list[str]]
    values: list[np.ndarray]
    aggressor: list[str] | None = None
    trade_ids: list[str] | None = None
    # (integer mantissas, decimal places) per ``texts`` column when every field is a short plain
    # decimal: the exact numbers, for PostgreSQL's binary COPY. None otherwise.
    decimals: list[tuple[np.ndarray, np.ndarray]] | None = None


_POWERS_OF_TEN = 10.0 ** np.arange(23)  # all exact in float64


def _plain_ints(column: list[str]) -> np.ndarray | None:
    """int64 of each field when every one is plain digits, else None.

    One C pass (``np.fromstring``) instead of ``int`` per field. A value past int64 comes out as
    its maximum, which the caller's range check refuses.
    """
    try:
        raw = ",".join(column).encode("ascii")
    except UnicodeEncodeError:
        return None
    if not raw or raw.translate(None, b"0123456789,") or b",," in raw or raw[0] == 44 or raw[-1] == 44:
        return None
    values = np.fromstring(raw, dtype=np.int64, sep=",")
    return values if len(values) == len(column) else None


def _plain_floats(column: list[str]) -> np.ndarray | None:
    """float64 of each field, the same as ``float(field)``, when all are short plain decimals; else None."""
    parts = _plain_decimal_parts(column)
    return None if parts is None else _decimal_floats(parts)


def _decimal_floats(parts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """float64 of each (mantissa, decimals) pair of ``_plain_decimal_parts``: M / 10**k, exactly ``float`` of the text."""
    return parts[0] / _POWERS_OF_TEN[parts[1]]


def _plain_decimal_parts(column: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(mantissas, decimals) of each field (``"96.125"`` -> 96125, 3) when all are short plain decimals; else None.

    Fields of digits with at most one point and at most 15 digits: each is an integer
    mantissa M < 2**53 over 10**k (k <= 22), both exact in float64, so the one IEEE division
    M / 10**k is the correctly rounded value of the decimal, which is what ``float`` gives
    (Clinger's fast path); the pair is also the exact number, for PostgreSQL's binary numeric.
    The mantissas are read in one C pass (``np.fromstring``) instead of one ``float`` call per
    field. Anything else (a longer number, an empty field, a second point) returns None and
    the caller converts field by field.
    """
    n = len(column)
    try:
        raw = ",".join(column).encode("ascii")
    except UnicodeEncodeError:
        return None
    if raw.translate(None, b"0123456789,."):
        return None
    buf = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(buf == 44)
    if len(ends) != n - 1:
        return None
    ends = np.append(ends, len(buf))
    digits = np.diff(ends, prepend=-1) - 1
    decimals = np.zeros(n, dtype=np.int64)
    dots = np.flatnonzero(buf == 46)
    if len(dots):
        owner = np.searchsorted(ends, dots)
        if len(dots) > 1 and (owner[1:] == owner[:-1]).any():
            return None
        decimals[owner] = ends[owner] - dots - 1
        digits[owner] -= 1
        raw = raw.translate(None, b".")
    if digits.min() < 1 or digits.max() > 15 or decimals.max() > 22:
        return None
    mantissas = np.fromstring(raw, dtype=np.int64, sep=",")
    if len(mantissas) != n:
        return None
    return mantissas, decimals


def tardis_columns(fmt: str, payloads: Sequence[bytes], symbol: str | None = None) -> TardisColumns | None:
    """Read a batch of ``tardis-quotes``/``tardis-trades`` records at once, or None.

    The fast path of ``parse`` for the shape recorded files always have:
    ASCII, eight unquoted fields, timestamps of plain digits, prices and sizes
    of digits with at most one point, a symbol (and trade id) the tables can
    hold without escaping. For such rows it gives the same ticks as ``parse``
    row by row (``tests/ingestion`` checks it), from a handful of C-level
    passes over the whole batch instead of Python per record. Plain decimal
    text means the same number to ``Decimal``, to ``float`` and to
    PostgreSQL's ``numeric``, so the text itself can be stored.

    If any record of the batch has another shape (a quote character, a
    sign, an exponent, a missing field, a symbol the stream does not hold...)
    it returns None and the caller parses the batch record by record, so
    every error keeps the reason ``parse`` gives it.
    """
    if fmt not in _CSV_HEADERS or not payloads:
        return None
    n = len(payloads)
    data = b"\n".join(payloads)
    if not data.isascii() or data.count(b"\n") != n - 1 or any(ch in data for ch in _NOT_PLAIN):
        return None
    # Exactly seven commas per record: seven in all per record, and seven
    # more before each record separator than before the one preceding it.
    buf = np.frombuffer(data, dtype=np.uint8)
    commas = np.flatnonzero(buf == 44)
    if len(commas) != 7 * n:
        return None
    if n > 1 and np.any(np.searchsorted(commas, np.flatnonzero(buf == 10)) != np.arange(7, 7 * n, 7)):
        return None
    fields = data.decode("ascii").replace("\n", ",").split(",")
    symbols = fields[1::8]
    names = set(symbols)
    if "" in names or (symbol is not None and names != {symbol}) or max(map(len, names)) > SYMBOL_MAX:
        return None
    try:
        stamps = []
        for column in (fields[2::8], fields[3::8]):
            # The payloads are ASCII (checked above), so a column ``_plain_ints`` declines is no plain integers.
            us = _plain_ints(column)
            if us is None or us.max() >= _BATCH_MAX_US:
                return None
            stamps.append(us)
        # Column order in the file: ask_amount, ask_price, bid_price, bid_amount / id, side, price, amount.
        if fmt == "tardis-quotes":
            texts = [fields[6::8], fields[7::8], fields[5::8], fields[4::8]]
        else:
            texts = [fields[6::8], fields[7::8]]
        values = []
        exact: list[tuple[np.ndarray, np.ndarray]] | None = []
        for column in texts:
            parts = _plain_decimal_parts(column)
            if parts is not None:
                floats = _decimal_floats(parts)
                if exact is not None:
                    exact.append(parts)
            else:
                exact = None
                if not "".join(column).replace(".", "").isdigit():
                    return None
                # ``float`` refuses "", "." and "1.2.3", which Decimal refuses too.
                floats = np.fromiter(map(float, column), dtype=np.float64, count=n)
            values.append(floats)
    except (ValueError, OverflowError):
        return None
    out = TardisColumns(symbols, stamps[0], stamps[1], stamps[0] * 1000, stamps[1] * 1000, texts, values, decimals=exact)
    if fmt == "tardis-trades":
        trade_ids = fields[4::8]
        lengths = set(map(len, trade_ids))
        if 0 in lengths or max(lengths) > TRADE_ID_MAX:
            return None
        out.trade_ids = trade_ids
        out.aggressor = list(map(_SIDE_TEXT.get, fields[5::8], repeat("")))
    return out


# --------------------------------------------------------------------------
# Bybit v5 order book
# --------------------------------------------------------------------------


def parse_bybit_ob(payload: bytes, *, recv_ns: int, symbol: str | None = None, raw: RawRef | None = None) -> list[Tick]:
    msg = _json_object(payload)
    kind = msg.get("type")
    if kind not in ("snapshot", "delta"):
        raise ParseError(f"unsupported_type: expected snapshot or delta, got {_show(kind)}")
    data = msg.get("data")
    if type(data) is not dict:
        raise ParseError("bad_data: 'data' must be an object")
    update_id = _int_json(data.get("u"), "u")
    # ``u == 1`` marks a full book resent after a Bybit service restart.
    is_snapshot = kind == "snapshot" or update_id == 1
    return [
        BookUpdate(
            symbol=_check_symbol(_str_json(data.get("s"), "s"), symbol),
            source_ts_ns=_int_json(msg.get("ts"), "ts") * 1_000_000,
            recv_ts_ns=recv_ns,
            is_snapshot=is_snapshot,
            bids=_levels(data.get("b"), "b"),
            asks=_levels(data.get("a"), "a"),
            first_update_id=update_id,
            last_update_id=update_id,
            prev_last_update_id=None if is_snapshot else update_id - 1,
            raw=raw,
        )
    ]


# --------------------------------------------------------------------------
# Binance USD-M futures
# --------------------------------------------------------------------------


def _binance_ts_ns(event: dict[str, Any]) -> int:
    value = event.get("T")
    if value is None:
        value = event.get("E")
    return _int_json(value, "T") * 1_000_000


def parse_binance_ws(payload: bytes, *, recv_ns: int, symbol: str | None = None, raw: RawRef | None = None) -> list[Tick]:
    msg = _json_object(payload)
    if "lastUpdateId" in msg:
        if symbol is None:
            raise ParseError("missing_symbol: a REST depth snapshot needs the symbol argument")
        # The REST answer of USD-M futures carries E/T; a spot-style answer
        # has neither, and then the only clock we have is our own.
        has_clock = msg.get("T") is not None or msg.get("E") is not None
        last_id = _int_json(msg["lastUpdateId"], "lastUpdateId")
        return [
            BookUpdate(
                symbol=symbol,
                source_ts_ns=_binance_ts_ns(msg) if has_clock else recv_ns,
                recv_ts_ns=recv_ns,
                is_snapshot=True,
                bids=_levels(msg.get("bids"), "bids"),
                asks=_levels(msg.get("asks"), "asks"),
                first_update_id=None,
                last_update_id=last_id,
                prev_last_update_id=None,
                raw=raw,
            )
        ]
    if "result" in msg and "id" in msg and "e" not in msg:
        return []
    event = msg["data"] if "data" in msg and "stream" in msg else msg
    if type(event) is not dict:
        raise ParseError("bad_data: 'data' must be an object")
    kind = event.get("e")
    if kind == "bookTicker":
        return [
            _quote(
                _check_symbol(_str_json(event.get("s"), "s"), symbol),
                _binance_ts_ns(event),
                recv_ns,
                _dec_json(event.get("b"), "b"),
                _dec_json(event.get("B"), "B"),
                _dec_json(event.get("a"), "a"),
                _dec_json(event.get("A"), "A"),
                raw,
            )
        ]
    if kind == "trade" or kind == "aggTrade":
        maker = event.get("m")
        if type(maker) is not bool:
            raise ParseError(f"bad_m: expected true/false, got {_show(maker)}")
        trade_id = _int_json(event.get("t" if kind == "trade" else "a"), "trade_id")
        return [
            _trade(
                _check_symbol(_str_json(event.get("s"), "s"), symbol),
                _binance_ts_ns(event),
                recv_ns,
                _dec_json(event.get("p"), "p"),
                _dec_json(event.get("q"), "q"),
                Side.SELL if maker else Side.BUY,
                str(trade_id),
                raw,
            )
        ]
    if kind == "depthUpdate":
        prev = event.get("pu")
        return [
            BookUpdate(
                symbol=_check_symbol(_str_json(event.get("s"), "s"), symbol),
                source_ts_ns=_binance_ts_ns(event),
                recv_ts_ns=recv_ns,
                is_snapshot=False,
                bids=_levels(event.get("b"), "b"),
                asks=_levels(event.get("a"), "a"),
                first_update_id=_int_json(event.get("U"), "U"),
                last_update_id=_int_json(event.get("u"), "u"),
                # ``pu`` is -1 on the first event after some reconnects and is
                # absent on spot streams; both mean "no continuity link".
                prev_last_update_id=prev if type(prev) is int and prev >= 0 else None,
                raw=raw,
            )
        ]
    raise ParseError(f"unsupported_event: {_show(kind)}")


# --------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------


def parse_sim(payload: bytes, *, recv_ns: int, symbol: str | None = None, raw: RawRef | None = None) -> list[Tick]:
    msg = _json_object(payload)
    kind = msg.get("type")
    if kind not in ("quote", "trade", "book"):
        raise ParseError(f"unsupported_type: expected quote, trade or book, got {_show(kind)}")
    sym = _check_symbol(_str_json(msg.get("symbol"), "symbol"), symbol)
    ts_ns = _int_json(msg.get("ts_ns"), "ts_ns")
    if kind == "quote":
        return [
            _quote(
                sym,
                ts_ns,
                recv_ns,
                _dec_json(msg.get("bid"), "bid"),
                _dec_json(msg.get("bid_size"), "bid_size"),
                _dec_json(msg.get("ask"), "ask"),
                _dec_json(msg.get("ask_size"), "ask_size"),
                raw,
            )
        ]
    if kind == "trade":
        side = msg.get("side")
        if side is not None and side not in _SIDES:
            raise ParseError(f"bad_side: expected buy, sell or null, got {_show(side)}")
        return [
            _trade(
                sym,
                ts_ns,
                recv_ns,
                _dec_json(msg.get("price"), "price"),
                _dec_json(msg.get("size"), "size"),
                None if side is None else _SIDES[side],
                _str_json(msg.get("id"), "id"),
                raw,
            )
        ]
    snapshot = msg.get("snapshot")
    if type(snapshot) is not bool:
        raise ParseError(f"bad_snapshot: expected true/false, got {_show(snapshot)}")
    seq = _int_json(msg.get("seq"), "seq")
    return [
        BookUpdate(
            symbol=sym,
            source_ts_ns=ts_ns,
            recv_ts_ns=recv_ns,
            is_snapshot=snapshot,
            bids=_levels(msg.get("bids"), "bids"),
            asks=_levels(msg.get("asks"), "asks"),
            first_update_id=seq,
            last_update_id=seq,
            prev_last_update_id=None if snapshot or seq == 0 else seq - 1,
            raw=raw,
        )
    ]


# --------------------------------------------------------------------------
# Registry and entry points
# --------------------------------------------------------------------------

FORMATS: dict[str, Parser] = {
    "tardis-quotes": parse_tardis_quotes,
    "tardis-trades": parse_tardis_trades,
    "bybit-ob": parse_bybit_ob,
    "binance-ws": parse_binance_ws,
    "sim": parse_sim,
}


def parse(
    fmt: str,
    payload: bytes,
    *,
    recv_ns: int,
    symbol: str | None = None,
    raw: RawRef | None = None,
) -> list[Tick]:
    """Parse one raw record of format ``fmt``; raise ``ParseError`` and nothing else on bad input."""
    parser = FORMATS.get(fmt)
    if parser is None:
        raise ParseError(f"unknown_format: {_show(fmt)}")
    if type(payload) is not bytes:
        raise ParseError(f"bad_payload: expected bytes, got {type(payload).__name__}")
    try:
        return parser(payload, recv_ns=recv_ns, symbol=symbol, raw=raw)
    except ParseError:
        raise
    except _MALFORMED as exc:
        raise ParseError(f"malformed: {type(exc).__name__}: {_show(str(exc))}") from None


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


_CSV_HEADERS = {"tardis-quotes": TARDIS_QUOTES_HEADER, "tardis-trades": TARDIS_TRADES_HEADER}


def iter_file_records(fmt: str, path: Path) -> Iterator[tuple[bytes, int | None]]:
    """Yield ``(record_bytes, receive_time_ns or None)`` for each record of a recorded file.

    Empty lines are framing, not records, and are skipped. A CSV file whose
    header is not the format's expected header raises ``ParseError``
    (``bad_header``) before any row is yielded, because reading columns in the
    wrong order would silently swap bid and ask.
    """
    if fmt not in FORMATS:
        raise ParseError(f"unknown_format: {_show(fmt)}")
    with Path(path).open("rb") as handle:
        if fmt in _CSV_HEADERS:
            header = _strip_eol(handle.readline())
            if header.decode("utf-8", "replace") != _CSV_HEADERS[fmt]:
                raise ParseError(f"bad_header: expected {_CSV_HEADERS[fmt]!r}, got {_show(header)}")
        for line in handle:
            record = _strip_eol(line)
            if not record:
                continue
            if fmt == "binance-ws":
                stamp, sep, body = record.partition(b" ")
                if not sep or not (stamp.isascii() and stamp.isdigit()):
                    raise ParseError(f"bad_record: expected '<receive_time_ns> <json>', got {_show(record[:40])}")
                yield body, int(stamp)
            else:
                yield record, None

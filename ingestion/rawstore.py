"""Tamper-evident, append-only store for raw market messages (fatal mistake 2).

Every message a feed receives is appended here, byte-exact, before anything
parses it, so ingest can always be rebuilt from what was really received and
any later edit of that record is detectable.

Layout::

    <root>/.locks/<stream>.lock          one exclusive writer per stream (flock)
    <root>/YYYY/MM/DD/<stream>.seg       one segment per stream and UTC day of receive time
    <root>/YYYY/MM/DD/.day.lock          writers hold it shared, sealing takes it exclusive
    <root>/YYYY/MM/DD/MANIFEST.json      written by ``seal_day``; the day is then read-only

Segment format (all integers big-endian)::

    segment header  ">8sHHQ32s"  magic b"FPRAWSEG", version 1, flags 0,
                                 first seq of the segment, chain head before it
    frame header    ">HIQQ32s32s" frame magic 0xF5A1, payload length, seq,
                                 recv_ns, sha256(payload), chain
    payload         payload length bytes, exactly as received

The chain links every record to the previous one of its stream, across days::

    chain_0 = sha256(b"first-principle/raw/genesis\\x00" + stream)
    chain_n = sha256(chain_{n-1} || seq_n (u64) || recv_ns_n (u64) || sha256(payload_n))

A reader detects a truncated tail because a frame's fixed header announces the
payload length; an edit, deletion, reordering or insertion shows up as a hash,
chain or sequence mismatch. The chain is not keyed: someone who can rewrite a
whole unsealed segment can rebuild a consistent one. What anchors it is the
sealed manifest (chain head at start and end, file hash, Merkle root) and its
copy in an Object Lock bucket (``ingestion.s3archive``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import mmap
import os
import re
import struct
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from ingestion.merkle import merkle_root
from ingestion.types import RawRef

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"FPRAWSEG"
SEGMENT_VERSION = 1
FRAME_MAGIC = 0xF5A1
MANIFEST_NAME = "MANIFEST.json"
SEGMENT_SUFFIX = ".seg"
DAY_LOCK_NAME = ".day.lock"
NS_PER_DAY = 86_400 * 1_000_000_000

_SEG_HDR = struct.Struct(">8sHHQ32s")
_FRAME = struct.Struct(">HIQQ32s32s")
_LINK = struct.Struct(">32sQQ32s")
_LEAF = struct.Struct(">QQ32s")
SEGMENT_HEADER_SIZE = _SEG_HDR.size
FRAME_HEADER_SIZE = _FRAME.size


def _fast_sha256() -> Any:
    """Pick CPython's built-in SHA-256 over OpenSSL's for short messages.

    Both give identical digests. OpenSSL 3 spends about as long setting up a
    digest context as hashing a 100-byte message, so for the two small hashes
    per record the built-in one was measured almost twice as fast on the hot
    path here. Python 3.12 renamed the module to ``_sha2``.
    """
    for module in ("_sha256", "_sha2"):
        with contextlib.suppress(ImportError):
            return __import__(module).sha256
    return hashlib.sha256


_sha256 = _fast_sha256()
_sha256_long = hashlib.sha256
# Above about two blocks OpenSSL's SHA-NI code wins over the built-in one
# despite its setup cost, so long payloads (L2 snapshots) go to OpenSSL.
_LONG_PAYLOAD = 128


# Building RawRefs slot by slot is only right while it has exactly these
# fields; if the shared type grows, fall back to its constructor.
_REFS_BY_SLOT = [f.name for f in fields(RawRef)] == ["stream", "seq"] and RawRef.__slots__ == ("stream", "seq")


def _refs(stream: str, first: int, last: int) -> list[RawRef]:
    """Build RawRefs for ``first..last`` without the frozen dataclass ``__init__``.

    A frozen dataclass assigns through ``object.__setattr__``, which made
    building the reference list cost as much as framing the batch. Setting
    the two slots through their descriptors builds the same objects (equal,
    hashable, still frozen to callers) about three times faster.
    """
    if not _REFS_BY_SLOT:
        return [RawRef(stream, s) for s in range(first, last + 1)]
    if _c_refs is not None:
        # The same construction in C, where it costs a quarter as much; with
        # the C framer this list was half of append_many's CPU time.
        return _c_refs(RawRef, RawRef.__dict__["stream"], RawRef.__dict__["seq"], stream, first, last)
    new = object.__new__
    set_stream = RawRef.__dict__["stream"].__set__
    set_seq = RawRef.__dict__["seq"].__set__
    out: list[RawRef] = []
    put = out.append
    for s in range(first, last + 1):
        ref = new(RawRef)
        set_stream(ref, stream)
        set_seq(ref, s)
        put(ref)
    return out


_STREAM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_EPOCH = date(1970, 1, 1)
_GENESIS_PREFIX = b"first-principle/raw/genesis\x00"


class RawStoreError(Exception):
    """Base class of every raw store failure."""


class StreamLockedError(RawStoreError):
    """Another writer already holds the stream."""


class SealedDayError(RawStoreError):
    """The day is sealed: nothing may be appended to it, and it cannot be sealed twice."""


class DayBusyError(RawStoreError):
    """A writer still has the day open (sealing) or a seal is in progress (writing)."""


class CorruptTailError(RawStoreError):
    """The stream's last segment does not end with an intact record."""


class SealError(RawStoreError):
    """The day failed verification, so it was not sealed."""

    def __init__(self, message: str, problems: list[Problem]) -> None:
        super().__init__(message)
        self.problems = problems


def genesis_chain(stream: str) -> bytes:
    """Chain head before the first record of a stream; binding the name stops cross-stream splicing."""
    return hashlib.sha256(_GENESIS_PREFIX + stream.encode()).digest()


def link_chain(prev: bytes, seq: int, recv_ns: int, payload_sha: bytes) -> bytes:
    return hashlib.sha256(_LINK.pack(prev, seq, recv_ns, payload_sha)).digest()


def day_of_ns(ns: int) -> date:
    return _EPOCH + timedelta(days=ns // NS_PER_DAY)


def day_start_ns(day: date) -> int:
    return (day - _EPOCH).days * NS_PER_DAY


def _check_stream(stream: str) -> None:
    if not _STREAM_RE.match(stream):
        raise ValueError(f"invalid stream name {stream!r}: use letters, digits, '.', '_' or '-' (max 128)")


def _day_rel(day: date) -> str:
    return f"{day.year:04d}/{day.month:02d}/{day.day:02d}"


# --------------------------------------------------------------------------- records and reports


@dataclass(frozen=True, slots=True)
class RawRecord:
    stream: str
    seq: int
    recv_ns: int
    sha256: bytes
    chain: bytes
    payload: bytes
    segment: str


class ProblemKind(StrEnum):
    PAYLOAD_EDITED = "payload_edited"
    CHAIN_BROKEN = "chain_broken"
    RECORD_DELETED = "record_deleted"
    RECORDS_REORDERED = "records_reordered"
    RECORD_INSERTED = "record_inserted"
    TRUNCATED_TAIL = "truncated_tail"
    CORRUPT_FRAME = "corrupt_frame"
    BAD_HEADER = "bad_header"
    MANIFEST_MISMATCH = "manifest_mismatch"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    segment: str
    stream: str
    seq: int | None
    detail: str

    def __str__(self) -> str:
        seq = "-" if self.seq is None else str(self.seq)
        return f"{self.kind.value}: segment={self.segment} stream={self.stream} seq={seq}: {self.detail}"


@dataclass(slots=True)
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    segments: int = 0
    records: int = 0
    days: list[date] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class StreamManifest:
    segment: str
    first_seq: int
    last_seq: int
    count: int
    bytes: int
    file_sha256: str
    chain_start: str
    chain_end: str
    merkle_root: str

    def to_json(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "count": self.count,
            "bytes": self.bytes,
            "file_sha256": self.file_sha256,
            "chain_start": self.chain_start,
            "chain_end": self.chain_end,
            "merkle_root": self.merkle_root,
        }


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a sealed day contains. Merkle leaves are ``seq || recv_ns || sha256(payload)`` in file order."""

    day: date
    sealed_at: datetime
    streams: dict[str, StreamManifest]
    version: int = 1

    def to_json(self) -> str:
        doc = {
            "version": self.version,
            "day": self.day.isoformat(),
            "sealed_at": self.sealed_at.isoformat(),
            "merkle_leaf": "u64be(seq) || u64be(recv_ns) || sha256(payload); RFC 6962 tree",
            "streams": {name: sm.to_json() for name, sm in sorted(self.streams.items())},
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        doc = json.loads(text)
        streams = {
            name: StreamManifest(
                segment=str(s["segment"]),
                first_seq=int(s["first_seq"]),
                last_seq=int(s["last_seq"]),
                count=int(s["count"]),
                bytes=int(s["bytes"]),
                file_sha256=str(s["file_sha256"]),
                chain_start=str(s["chain_start"]),
                chain_end=str(s["chain_end"]),
                merkle_root=str(s["merkle_root"]),
            )
            for name, s in doc["streams"].items()
        }
        return cls(
            day=date.fromisoformat(doc["day"]),
            sealed_at=datetime.fromisoformat(doc["sealed_at"]),
            streams=streams,
            version=int(doc["version"]),
        )


# --------------------------------------------------------------------------- low-level segment parsing


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[bytes | mmap.mmap]:
    """Map a segment read-only; an empty file maps to ``b""`` because mmap refuses size 0."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            yield b""
            return
        mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
        try:
            yield mm
        finally:
            mm.close()


# A frame as parsed: (offset, seq, recv_ns, sha256, chain, payload_length).
_FrameT = tuple[int, int, int, bytes, bytes, int]


@dataclass(slots=True)
class _Tail:
    kind: str  # "partial_header", "partial_payload" or "bad_magic"
    offset: int
    seq: int | None


def _parse_frames(buf: bytes | mmap.mmap, start: int = SEGMENT_HEADER_SIZE) -> tuple[list[_FrameT], _Tail | None]:
    frames: list[_FrameT] = []
    unpack = _FRAME.unpack_from
    hsize = FRAME_HEADER_SIZE
    n = len(buf)
    off = start
    while off < n:
        if n - off < hsize:
            return frames, _Tail("partial_header", off, None)
        magic, plen, seq, recv, sha, chain = unpack(buf, off)
        if magic != FRAME_MAGIC:
            return frames, _Tail("bad_magic", off, None)
        end = off + hsize + plen
        if end > n:
            return frames, _Tail("partial_payload", off, seq)
        frames.append((off, seq, recv, sha, chain, plen))
        off = end
    return frames, None


def _read_header(buf: bytes | mmap.mmap) -> tuple[int, bytes] | None:
    if len(buf) < SEGMENT_HEADER_SIZE:
        return None
    magic, version, _flags, first_seq, start_chain = _SEG_HDR.unpack_from(buf, 0)
    if magic != SEGMENT_MAGIC or version != SEGMENT_VERSION:
        return None
    return first_seq, start_chain


@dataclass(slots=True)
class _SegSummary:
    stream: str
    day: date
    rel: str
    first_seq: int
    last_seq: int
    count: int
    size: int
    file_sha256: bytes
    chain_start: bytes
    chain_end: bytes
    merkle_root: bytes


def _analyse_segment(
    path: Path, rel: str, stream: str, day: date, *, deep: bool = True
) -> tuple[list[Problem], _SegSummary | None]:
    """Check one segment on its own and summarise it.

    Steps:
    1. Parse the header and every frame; a frame cut short is a truncated tail.
    2. Hash every payload against its stored SHA-256 (an edited payload).
    3. Rebuild the chain in sequence order, independent of file order, so a
       duplicated sequence number can be told apart from the original: the
       frame that chains from its predecessor (and that its successor chains
       from) is the original, any other is an insertion.
    4. Sequence numbers missing between the first and the last are deletions;
       a frame stored after a higher sequence number is a reordering.

    With ``deep=False`` only the structure is read (no hashing), which is what
    a writer needs to find the chain head it continues from.
    """
    problems: list[Problem] = []

    def add(kind: ProblemKind, seq: int | None, detail: str) -> None:
        problems.append(Problem(kind, rel, stream, seq, detail))

    with _mapped(path) as buf:
        size = len(buf)
        header = _read_header(buf)
        if header is None:
            add(ProblemKind.BAD_HEADER, None, f"segment header missing or invalid ({size} bytes)")
            return problems, None
        first_seq, start_chain = header
        frames, tail = _parse_frames(buf)
        sha = _sha256
        hsize = FRAME_HEADER_SIZE
        file_sha = hashlib.sha256(buf).digest() if deep else b""
        if deep:
            for off, seq, _recv, digest, _chain, plen in frames:
                start = off + hsize
                if (sha if plen < _LONG_PAYLOAD else _sha256_long)(buf[start : start + plen]).digest() != digest:
                    add(ProblemKind.PAYLOAD_EDITED, seq, f"payload SHA-256 mismatch at offset {off}")

    def links(prev: bytes, fr: _FrameT) -> bool:
        return link_chain(prev, fr[1], fr[2], fr[3]) == fr[4]

    by_seq: dict[int, list[_FrameT]] = defaultdict(list)
    for fr in frames:
        by_seq[fr[1]].append(fr)
    inserted: set[int] = set()  # offsets of frames judged inserted
    authentic: dict[int, _FrameT] = {}
    for s in sorted(by_seq):
        cands = by_seq[s]
        if s < first_seq:
            for fr in cands:
                inserted.add(fr[0])
                add(ProblemKind.RECORD_INSERTED, s, f"seq below the segment's first seq {first_seq} at offset {fr[0]}")
            continue
        if s == first_seq:
            prev: bytes | None = start_chain
        else:
            prev = authentic[s - 1][4] if (s - 1) in authentic else None
        if len(cands) == 1:
            authentic[s] = cands[0]
            if deep and prev is not None and not links(prev, cands[0]):
                add(ProblemKind.CHAIN_BROKEN, s, "chain hash does not follow from the previous record")
            continue
        successors = by_seq.get(s + 1, [])
        verifying = [fr for fr in cands if prev is not None and links(prev, fr)]
        linked = [fr for fr in cands if any(links(fr[4], nx) for nx in successors)]
        both = [fr for fr in verifying if fr in linked]
        pick = (both or verifying or linked or cands)[0]
        authentic[s] = pick
        for fr in cands:
            if fr is not pick:
                inserted.add(fr[0])
                add(ProblemKind.RECORD_INSERTED, s, f"extra record with duplicate seq at offset {fr[0]}")
        if pick not in verifying and prev is not None:
            add(ProblemKind.CHAIN_BROKEN, s, "no record with this seq follows from the previous record")

    last_seq = max(authentic) if authentic else first_seq - 1
    missing_start: int | None = None
    for s in range(first_seq, last_seq + 2):
        if s <= last_seq and s not in authentic:
            if missing_start is None:
                missing_start = s
        elif missing_start is not None:
            n = s - missing_start
            add(
                ProblemKind.RECORD_DELETED,
                missing_start,
                f"{n} record(s) missing (seq {missing_start}..{s - 1})" if n > 1 else "record missing",
            )
            missing_start = None

    highest = -1
    for fr in frames:
        if fr[0] in inserted:
            continue
        if fr[1] < highest:
            add(ProblemKind.RECORDS_REORDERED, fr[1], f"stored after seq {highest} (offset {fr[0]})")
        highest = max(highest, fr[1])

    if tail is not None:
        if tail.kind == "bad_magic":
            add(ProblemKind.CORRUPT_FRAME, last_seq + 1, f"no frame marker at offset {tail.offset}; rest unreadable")
        else:
            seq = tail.seq if tail.seq is not None else last_seq + 1
            add(ProblemKind.TRUNCATED_TAIL, seq, f"incomplete final frame at offset {tail.offset} ({tail.kind})")

    chain_end = authentic[last_seq][4] if authentic else start_chain
    root = b""
    if deep:
        leaves = [_LEAF.pack(fr[1], fr[2], fr[3]) for fr in frames]
        root = merkle_root(leaves)
    summary = _SegSummary(
        stream=stream,
        day=day,
        rel=rel,
        first_seq=first_seq,
        last_seq=last_seq,
        count=len(frames),
        size=size,
        file_sha256=file_sha,
        chain_start=start_chain,
        chain_end=chain_end,
        merkle_root=root,
    )
    return problems, summary


# --------------------------------------------------------------------------- writer


class RawWriter:
    """The single writer of one stream. Use ``RawStore.writer(stream)``.

    Records go to the segment of their receive day. Receive time may step
    back (a host clock correction); such a record stays in the current
    segment, because an earlier day may already be sealed and the stream's
    order is its receive order.
    """

    def __init__(self, store: RawStore, stream: str) -> None:
        _check_stream(stream)
        self.stream = stream
        self._store = store
        self._fsync = store.fsync
        self._fd: int | None = None
        self._day: date | None = None
        self._day_end = -1
        self._day_lock: int | None = None
        self._broken = False
        self._lock_fd = store._lock_stream(stream)
        try:
            self._seq, self._chain, self._last_day = store._recover(stream)
        except BaseException:
            os.close(self._lock_fd)
            raise

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def chain_head(self) -> bytes:
        return self._chain

    # -- segment management ------------------------------------------------

    def _roll(self, ts: int) -> None:
        if self._lock_fd < 0:
            raise RawStoreError(f"writer of stream {self.stream!r} is closed")
        if self._broken:
            raise RawStoreError(
                f"writer of stream {self.stream!r} failed mid-write; reopen it (the store checks and repairs the tail)"
            )
        day = day_of_ns(ts)
        floor = self._day or self._last_day
        if floor is not None and day < floor:
            day = floor
        if self._fd is not None and day == self._day:
            return
        self._close_segment()
        store = self._store
        day_dir = store.root / _day_rel(day)
        day_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(day_dir / DAY_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise DayBusyError(f"day {day} is being sealed; cannot write stream {self.stream!r} into it") from None
        try:
            if (day_dir / MANIFEST_NAME).exists():
                raise SealedDayError(f"day {day} is sealed; refusing to append stream {self.stream!r} to it")
            path = day_dir / f"{self.stream}{SEGMENT_SUFFIX}"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size == 0:
                    _write_all(fd, _SEG_HDR.pack(SEGMENT_MAGIC, SEGMENT_VERSION, 0, self._seq + 1, self._chain))
                    if self._fsync:
                        os.fsync(fd)
                        _fsync_dir(day_dir)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        self._fd = fd
        self._day = day
        self._day_end = day_start_ns(day) + NS_PER_DAY
        self._day_lock = lock_fd
        self._last_day = day

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._day_lock is not None:
            os.close(self._day_lock)  # Closing the descriptor drops the shared day lock.
            self._day_lock = None
        self._day = None
        self._day_end = -1

    def _write(self, buf: bytes | bytearray) -> None:
        assert self._fd is not None
        try:
            _write_all(self._fd, buf)
            if self._fsync:
                os.fsync(self._fd)
        except BaseException:
            # Part of the buffer may be on disk: the chain state in memory no
            # longer matches the file, so no further append may extend it.
            self._broken = True
            raise

    # -- appends -----------------------------------------------------------

    def append(self, payload: bytes, *, recv_ns: int | None = None) -> RawRef:
        ts = time.time_ns() if recv_ns is None else recv_ns
        if ts >= self._day_end or self._fd is None:
            self._roll(ts)
        try:
            # A batch of one through the same framer as append_many.
            buf, seq, chain = _frame_const((payload,), ts, self._seq, self._chain)
        except struct.error as exc:
            raise ValueError(f"recv_ns must be a non-negative 64-bit int, got {ts!r}") from exc
        self._write(buf)
        self._seq = seq
        self._chain = chain
        return RawRef(self.stream, seq)

    def append_many(self, payloads: Sequence[bytes], *, recv_ns: Sequence[int] | int | None = None) -> list[RawRef]:
        """Append a batch with one write per segment touched (normally one).

        With ``recv_ns=None`` the whole batch gets one receive time, now: the
        batch was received together. Nothing is committed to the writer's
        state unless the whole batch framed without error.
        """
        n = len(payloads)
        if n == 0:
            return []
        first = self._seq + 1
        if recv_ns is None or isinstance(recv_ns, int):
            ts = time.time_ns() if recv_ns is None else recv_ns
            if ts >= self._day_end or self._fd is None:
                self._roll(ts)
            try:
                buf, self_seq, chain = _frame_const(payloads, ts, self._seq, self._chain)
            except struct.error as exc:
                raise ValueError(f"recv_ns must be a non-negative 64-bit int, got {ts!r}") from exc
            self._write(buf)
            self._seq, self._chain = self_seq, chain
        else:
            if len(recv_ns) != n:
                raise ValueError(f"{n} payloads but {len(recv_ns)} receive times")
            start = 0
            while start < n:
                ts0 = recv_ns[start]
                if ts0 >= self._day_end or self._fd is None:
                    self._roll(ts0)
                try:
                    buf, stop, self_seq, chain = _frame_var(payloads, recv_ns, start, self._day_end, self._seq, self._chain)
                except struct.error as exc:
                    raise ValueError(f"recv_ns must be non-negative 64-bit ints: {exc}") from exc
                self._write(buf)
                self._seq, self._chain = self_seq, chain
                start = stop
        return _refs(self.stream, first, self._seq)

    def flush(self) -> None:
        """Make sure appended records are as durable as the store promises.

        Every append is one ``write`` to the kernel before it returns, so a
        crash of this process loses nothing already appended and there is no
        user-space buffer to flush. Surviving power loss is the store's
        ``fsync`` option (each append then fsyncs); ``sync()`` forces it once.
        """
        if self._fd is not None and self._fsync:
            os.fsync(self._fd)

    def sync(self) -> None:
        """fsync the open segment now, whatever the store's ``fsync`` option."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        self._close_segment()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # Closing releases the stream's exclusive lock.
            self._lock_fd = -1

    def __enter__(self) -> RawWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _py_frame_const(payloads: Sequence[bytes], ts: int, seq: int, chain: bytes) -> tuple[bytearray, int, bytes]:
    """Frame a batch sharing one receive time: the hot path (pure-Python reference and fallback).

    Per record: two hashes, two packs and two in-place extends of one
    bytearray (measured a few per cent cheaper in CPU time than collecting
    parts for ``b"".join``), then one write for the whole batch.
    """
    sha = _sha256
    long_sha = _sha256_long
    link = _LINK.pack
    frame = _FRAME.pack
    magic = FRAME_MAGIC
    buf = bytearray()
    for p in payloads:
        seq += 1
        n = len(p)
        d = (sha if n < _LONG_PAYLOAD else long_sha)(p).digest()
        chain = sha(link(chain, seq, ts, d)).digest()
        buf += frame(magic, n, seq, ts, d, chain)
        buf += p
    return buf, seq, chain


def _py_frame_var(
    payloads: Sequence[bytes], stamps: Sequence[int], start: int, day_end: int, seq: int, chain: bytes
) -> tuple[bytearray, int, int, bytes]:
    """Frame from ``start`` until the first record that belongs to a later day; return where it stopped."""
    sha = _sha256
    long_sha = _sha256_long
    link = _LINK.pack
    frame = _FRAME.pack
    magic = FRAME_MAGIC
    buf = bytearray()
    i = start
    n = len(payloads)
    while i < n:
        ts = stamps[i]
        if ts >= day_end:
            break
        p = payloads[i]
        seq += 1
        plen = len(p)
        d = (sha if plen < _LONG_PAYLOAD else long_sha)(p).digest()
        chain = sha(link(chain, seq, ts, d)).digest()
        buf += frame(magic, plen, seq, ts, d, chain)
        buf += p
        i += 1
    return buf, i, seq, chain


# The C framer (ingestion/_rawframe.c, built by scripts/build_ext.py) does the
# same as the two functions above in one loop: same bytes, same exception types
# (tests/ingestion/test_rawframe.py checks both). It more than triples the
# append rate, because the Python loop is bound by per-call overhead, not by
# SHA-256. The module also builds append_many's RawRef list.
# FP_RAWSTORE_FRAMER=python forces the fallback; =c refuses to start without C.
#
# Verification (_analyse_segment) stays pure Python on hashlib on purpose: it
# then checks what the C writer wrote with independent code, and moving its
# payload and chain hashing into C measured only about 1.25x faster there,
# because its per-frame bookkeeping in Python dominates, not the hashing.
_RAWFRAME_ABI = 2
_frame_const = _py_frame_const
_frame_var = _py_frame_var
_c_refs: Any = None
FRAMER = "python"


def _select_framer(choice: str = "auto") -> str:
    """Bind the framer ("auto", "c" or "python") used by appends; return the one chosen.

    The benchmark and the tests call it to compare both; otherwise it runs
    once at import from ``FP_RAWSTORE_FRAMER``.
    """
    global _frame_const, _frame_var, _c_refs, FRAMER
    if choice not in ("auto", "c", "python"):
        raise ValueError(f"FP_RAWSTORE_FRAMER must be auto, c or python, got {choice!r}")
    _frame_const, _frame_var, FRAMER = _py_frame_const, _py_frame_var, "python"
    _c_refs = None
    if choice == "python":
        return FRAMER
    try:
        from ingestion import _rawframe  # type: ignore[attr-defined]

        if _rawframe.ABI_VERSION != _RAWFRAME_ABI:
            raise ImportError(f"ingestion._rawframe is ABI {_rawframe.ABI_VERSION}, expected {_RAWFRAME_ABI}; rebuild it")
    except ImportError as exc:
        if choice == "c":
            raise ImportError(f"FP_RAWSTORE_FRAMER=c but the C framer is unavailable: {exc}") from exc
        log.warning(
            "raw store: C framer unavailable (%s); using the pure-Python framer at under a third of the append rate. "
            "Build it with scripts/build_ext.py (make venv does).",
            exc,
        )
        return FRAMER
    _frame_const, _frame_var, FRAMER = _rawframe.frame_const, _rawframe.frame_var, "c"
    _c_refs = _rawframe.make_refs
    return FRAMER


_select_framer(os.environ.get("FP_RAWSTORE_FRAMER", "auto"))


def _write_all(fd: int, buf: bytes | bytearray) -> None:
    written = os.write(fd, buf)
    if written == len(buf):
        return
    view = memoryview(buf)
    while written < len(view):
        written += os.write(fd, view[written:])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- store


class RawStore:
    def __init__(self, root: Path | str, *, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    # -- discovery ---------------------------------------------------------

    def days(self) -> list[date]:
        out: list[date] = []
        for d in self.root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]"):
            if not d.is_dir():
                continue
            try:
                day = date(int(d.parent.parent.name), int(d.parent.name), int(d.name))
            except ValueError:
                continue
            if (d / MANIFEST_NAME).exists() or any(d.glob(f"*{SEGMENT_SUFFIX}")):
                out.append(day)
        return sorted(out)

    def streams(self, day: date | None = None) -> list[str]:
        days = [day] if day is not None else self.days()
        names: set[str] = set()
        for d in days:
            for p in (self.root / _day_rel(d)).glob(f"*{SEGMENT_SUFFIX}"):
                names.add(p.name[: -len(SEGMENT_SUFFIX)])
        return sorted(names)

    def segment_path(self, stream: str, day: date) -> Path:
        _check_stream(stream)
        return self.root / _day_rel(day) / f"{stream}{SEGMENT_SUFFIX}"

    def manifest_path(self, day: date) -> Path:
        return self.root / _day_rel(day) / MANIFEST_NAME

    def is_sealed(self, day: date) -> bool:
        return self.manifest_path(day).exists()

    def _segments_of(self, stream: str) -> list[tuple[date, Path]]:
        return [(d, p) for d in self.days() if (p := self.segment_path(stream, d)).exists()]

    # -- writing -----------------------------------------------------------

    def writer(self, stream: str) -> RawWriter:
        return RawWriter(self, stream)

    def _lock_stream(self, stream: str) -> int:
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(exist_ok=True)
        path = lock_dir / f"{stream}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StreamLockedError(
                f"stream {stream!r} already has a writer (exclusive lock on {path} is held); "
                "each stream takes exactly one writer at a time"
            ) from None
        # The pid in the lock file is only a hint for an operator; the flock is the lock.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _recover(self, stream: str) -> tuple[int, bytes, date | None]:
        """Find the last seq and chain head of a stream from its latest segment, refusing a broken tail."""
        segments = self._segments_of(stream)
        if not segments:
            return 0, genesis_chain(stream), None
        day, path = segments[-1]
        rel = f"{_day_rel(day)}/{path.name}"
        with _mapped(path) as buf:
            header = _read_header(buf)
            if header is None:
                raise CorruptTailError(
                    f"segment {rel} has no valid header ({len(buf)} bytes); run repair_tail({stream!r}) if it is a crash leftover"
                )
            first_seq, start_chain = header
            frames, tail = _parse_frames(buf)
            if tail is not None:
                raise CorruptTailError(
                    f"segment {rel} ends with an incomplete or corrupt frame at offset {tail.offset} "
                    f"({tail.kind}); refusing to extend a broken chain. repair_tail({stream!r}) "
                    "truncates an incomplete final frame"
                )
            if not frames:
                return first_seq - 1, start_chain, day
            off, seq, recv, digest, chain, plen = frames[-1]
            prev = frames[-2][4] if len(frames) > 1 else start_chain
            expected_seq = frames[-2][1] + 1 if len(frames) > 1 else first_seq
            payload_ok = _sha256(buf[off + FRAME_HEADER_SIZE : off + FRAME_HEADER_SIZE + plen]).digest()
            if payload_ok != digest or link_chain(prev, seq, recv, digest) != chain or seq != expected_seq:
                raise CorruptTailError(
                    f"segment {rel}: last record seq {seq} does not verify (hash, chain or seq); "
                    "refusing to extend a broken chain; run verify"
                )
            return seq, chain, day

    def repair_tail(self, stream: str) -> int:
        """Truncate an incomplete final frame left by a crash; return the bytes removed.

        Only a frame cut short (its header or payload runs past the end of the
        file) is removed, or a segment too short to hold its header. Anything
        else (a bad frame marker, a complete record that fails its hash) is
        tampering or corruption, not a crash, and is left for ``verify``.
        """
        lock_fd = self._lock_stream(stream)
        try:
            segments = self._segments_of(stream)
            if not segments:
                return 0
            day, path = segments[-1]
            if self.is_sealed(day):
                raise SealedDayError(f"day {day} is sealed; its segment {path} is not repaired")
            rel = f"{_day_rel(day)}/{path.name}"
            with _mapped(path) as buf:
                size = len(buf)
                if size < SEGMENT_HEADER_SIZE:
                    cut, good = size, 0
                else:
                    if _read_header(buf) is None:
                        raise CorruptTailError(f"segment {rel} has an invalid header; not a crash leftover")
                    _frames, tail = _parse_frames(buf)
                    if tail is None:
                        return 0
                    if tail.kind == "bad_magic":
                        raise CorruptTailError(
                            f"segment {rel} has a corrupt frame at offset {tail.offset}; not a crash leftover, left untouched"
                        )
                    cut, good = size - tail.offset, tail.offset
            if good == 0:
                path.unlink()
                log.warning("raw store: removed segment %s of %d bytes without a complete header", rel, cut)
            else:
                os.truncate(path, good)
                log.warning("raw store: truncated incomplete final frame of %s: %d bytes at offset %d", rel, cut, good)
            return cut
        finally:
            os.close(lock_fd)

    # -- reading -----------------------------------------------------------

    def read(self, stream: str, *, day: date | None = None, from_seq: int | None = None) -> Iterator[RawRecord]:
        """Yield stored records in file order. A partial final frame (a write in flight) ends the stream."""
        _check_stream(stream)
        segments = self._segments_of(stream)
        if day is not None:
            segments = [(d, p) for d, p in segments if d == day]
        lo = from_seq or 0
        for idx, (d, path) in enumerate(segments):
            if lo and idx + 1 < len(segments):
                # Skip whole segments that end before from_seq: the next header says where this one ends.
                with _mapped(segments[idx + 1][1]) as nb:
                    nh = _read_header(nb)
                if nh is not None and nh[0] <= lo:
                    continue
            yield from self._read_segment(stream, d, path, lo)

    def _read_segment(self, stream: str, day: date, path: Path, lo: int) -> Iterator[RawRecord]:
        rel = f"{_day_rel(day)}/{path.name}"
        with _mapped(path) as buf:
            if _read_header(buf) is None:
                raise RawStoreError(f"segment {rel} has an invalid header")
            frames, tail = _parse_frames(buf)
            if tail is not None and tail.kind == "bad_magic":
                raise RawStoreError(f"segment {rel}: corrupt frame at offset {tail.offset}")
            h = FRAME_HEADER_SIZE
            for off, seq, recv, digest, chain, plen in frames:
                if seq < lo:
                    continue
                yield RawRecord(stream, seq, recv, digest, chain, bytes(buf[off + h : off + h + plen]), rel)

    # -- sealing -----------------------------------------------------------

    def seal_day(self, day: date) -> Manifest:
        """Verify a day, write its manifest, and make its files read-only.

        Steps:
        1. Take the day's lock exclusively; a writer still on that day holds it
           shared, so sealing waits for no one and fails instead (DayBusyError).
        2. Verify every segment of the day; a day with problems is not sealed.
        3. Write MANIFEST.json atomically (temp file, fsync, rename, fsync dir).
        4. chmod the segments and the manifest to 0o444.
        """
        day_dir = self.root / _day_rel(day)
        day_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(day_dir / DAY_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DayBusyError(
                    f"day {day} still has an open writer; a writer leaves a day on its first record of a later day or on close"
                ) from None
            if self.is_sealed(day):
                raise SealedDayError(f"day {day} is already sealed")
            streams: dict[str, StreamManifest] = {}
            problems: list[Problem] = []
            for stream in self.streams(day):
                path = self.segment_path(stream, day)
                rel = f"{_day_rel(day)}/{path.name}"
                seg_problems, summary = _analyse_segment(path, rel, stream, day)
                problems.extend(seg_problems)
                if summary is not None:
                    streams[stream] = StreamManifest(
                        segment=rel,
                        first_seq=summary.first_seq,
                        last_seq=summary.last_seq,
                        count=summary.count,
                        bytes=summary.size,
                        file_sha256=summary.file_sha256.hex(),
                        chain_start=summary.chain_start.hex(),
                        chain_end=summary.chain_end.hex(),
                        merkle_root=summary.merkle_root.hex(),
                    )
            if problems:
                lines = "\n".join(str(p) for p in problems)
                raise SealError(f"day {day} has {len(problems)} problem(s); not sealed:\n{lines}", problems)
            manifest = Manifest(day=day, sealed_at=datetime.now(UTC), streams=streams)
            tmp = day_dir / f".{MANIFEST_NAME}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(manifest.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, day_dir / MANIFEST_NAME)
            _fsync_dir(day_dir)
            for stream in streams:
                os.chmod(self.segment_path(stream, day), 0o444)
            os.chmod(day_dir / MANIFEST_NAME, 0o444)
            return manifest
        finally:
            os.close(lock_fd)

    def load_manifest(self, day: date) -> Manifest:
        return Manifest.from_json(self.manifest_path(day).read_text(encoding="utf-8"))

    # -- verification ------------------------------------------------------

    def verify(self, day: date | None = None) -> VerifyReport:
        """Check segments, sealed manifests, and chain continuity across days.

        ``day=None`` checks every day. With a day, its segments are also
        checked to continue the chain of the stream's previous segment.
        """
        report = VerifyReport()
        all_days = self.days()
        days = all_days if day is None else [d for d in all_days if d == day]
        report.days = days
        summaries: dict[str, list[_SegSummary]] = defaultdict(list)
        for d in days:
            day_summaries: dict[str, _SegSummary] = {}
            for stream in self.streams(d):
                path = self.segment_path(stream, d)
                rel = f"{_day_rel(d)}/{path.name}"
                problems, summary = _analyse_segment(path, rel, stream, d)
                report.problems.extend(problems)
                report.segments += 1
                if summary is not None:
                    report.records += summary.count
                    day_summaries[stream] = summary
                    summaries[stream].append(summary)
            if self.is_sealed(d):
                report.problems.extend(self._check_manifest(d, day_summaries))
        for stream, segs in summaries.items():
            chain = segs
            if day is not None:
                prev = self._previous_summary(stream, day)
                chain = [prev, *segs] if prev is not None else segs
            elif segs[0].first_seq == 1 and segs[0].chain_start != genesis_chain(stream):
                report.problems.append(
                    Problem(
                        ProblemKind.CHAIN_BROKEN,
                        segs[0].rel,
                        stream,
                        1,
                        "first segment of the stream does not start from the stream's genesis chain",
                    )
                )
            for a, b in itertools.pairwise(chain):
                report.problems.extend(_check_continuity(a, b))
        return report

    def _previous_summary(self, stream: str, day: date) -> _SegSummary | None:
        earlier = [(d, p) for d, p in self._segments_of(stream) if d < day]
        if not earlier:
            return None
        d, path = earlier[-1]
        _problems, summary = _analyse_segment(path, f"{_day_rel(d)}/{path.name}", stream, d, deep=False)
        return summary

    def _check_manifest(self, day: date, actual: dict[str, _SegSummary]) -> list[Problem]:
        rel_manifest = f"{_day_rel(day)}/{MANIFEST_NAME}"
        try:
            manifest = self.load_manifest(day)
        except (ValueError, KeyError, TypeError) as exc:
            return [Problem(ProblemKind.MANIFEST_MISMATCH, rel_manifest, "-", None, f"unreadable manifest: {exc}")]
        problems: list[Problem] = []
        if manifest.day != day:
            problems.append(
                Problem(ProblemKind.MANIFEST_MISMATCH, rel_manifest, "-", None, f"manifest is for day {manifest.day}")
            )
        for stream in sorted(set(actual) - set(manifest.streams)):
            extra = actual[stream]
            problems.append(
                Problem(
                    ProblemKind.RECORD_INSERTED,
                    extra.rel,
                    stream,
                    extra.first_seq,
                    "segment appeared after the day was sealed (not in the manifest)",
                )
            )
        for stream, sm in sorted(manifest.streams.items()):
            found_seg = actual.get(stream)
            if found_seg is None:
                problems.append(
                    Problem(
                        ProblemKind.RECORD_DELETED,
                        sm.segment,
                        stream,
                        sm.first_seq,
                        f"sealed segment is missing (seq {sm.first_seq}..{sm.last_seq})",
                    )
                )
                continue
            seg = found_seg

            def mismatch(
                what: str, sealed: object, found: object, seq: int | None = None, seg: _SegSummary = seg, stream: str = stream
            ) -> None:
                problems.append(
                    Problem(
                        ProblemKind.MANIFEST_MISMATCH,
                        seg.rel,
                        stream,
                        seq,
                        f"{what}: manifest says {sealed}, segment has {found}",
                    )
                )

            if seg.file_sha256.hex() == sm.file_sha256:
                # The segment is byte-for-byte what was sealed, so any other
                # difference is an edit of the manifest itself.
                for what, sealed, found in (
                    ("first_seq", sm.first_seq, seg.first_seq),
                    ("last_seq", sm.last_seq, seg.last_seq),
                    ("count", sm.count, seg.count),
                    ("bytes", sm.bytes, seg.size),
                    ("chain_start", sm.chain_start, seg.chain_start.hex()),
                    ("chain_end", sm.chain_end, seg.chain_end.hex()),
                    ("merkle_root", sm.merkle_root, seg.merkle_root.hex()),
                    ("segment", sm.segment, seg.rel),
                ):
                    if sealed != found:
                        seq = found if isinstance(found, int) and what in ("first_seq", "last_seq") else None
                        mismatch(f"manifest edited ({what}; the segment still matches its sealed file hash)",
                                 sealed, found, seq)  # fmt: skip
                continue
            if seg.last_seq < sm.last_seq:
                problems.append(
                    Problem(
                        ProblemKind.RECORD_DELETED,
                        seg.rel,
                        stream,
                        seg.last_seq + 1,
                        f"sealed records seq {seg.last_seq + 1}..{sm.last_seq} are gone from the tail",
                    )
                )
            elif seg.last_seq > sm.last_seq:
                problems.append(
                    Problem(
                        ProblemKind.RECORD_INSERTED,
                        seg.rel,
                        stream,
                        sm.last_seq + 1,
                        f"records seq {sm.last_seq + 1}..{seg.last_seq} appended after sealing",
                    )
                )
            if seg.first_seq != sm.first_seq:
                mismatch("first_seq", sm.first_seq, seg.first_seq, min(seg.first_seq, sm.first_seq))
            if seg.last_seq != sm.last_seq:
                mismatch("last_seq", sm.last_seq, seg.last_seq, min(seg.last_seq, sm.last_seq) + 1)
            if seg.count != sm.count:
                mismatch("count", sm.count, seg.count)
            if seg.size != sm.bytes:
                mismatch("bytes", sm.bytes, seg.size)
            if seg.file_sha256.hex() != sm.file_sha256:
                mismatch("file_sha256", sm.file_sha256, seg.file_sha256.hex())
            if seg.chain_start.hex() != sm.chain_start:
                mismatch("chain_start", sm.chain_start, seg.chain_start.hex(), seg.first_seq)
            if seg.chain_end.hex() != sm.chain_end:
                mismatch("chain_end", sm.chain_end, seg.chain_end.hex(), seg.last_seq)
            if seg.merkle_root.hex() != sm.merkle_root:
                mismatch("merkle_root", sm.merkle_root, seg.merkle_root.hex())
            if sm.segment != seg.rel:
                mismatch("segment", sm.segment, seg.rel)
        return problems


def _check_continuity(prev: _SegSummary, cur: _SegSummary) -> list[Problem]:
    """The first record of a segment must continue the previous segment of its stream."""
    if cur.first_seq > prev.last_seq + 1:
        n = cur.first_seq - prev.last_seq - 1
        return [
            Problem(
                ProblemKind.RECORD_DELETED,
                prev.rel,
                prev.stream,
                prev.last_seq + 1,
                f"{n} record(s) missing between {prev.rel} and {cur.rel} (seq {prev.last_seq + 1}..{cur.first_seq - 1})",
            )
        ]
    if cur.first_seq <= prev.last_seq:
        return [
            Problem(
                ProblemKind.RECORD_INSERTED,
                cur.rel,
                cur.stream,
                cur.first_seq,
                f"segment starts at seq {cur.first_seq} but {prev.rel} already ends at seq {prev.last_seq}",
            )
        ]
    if cur.chain_start != prev.chain_end:
        return [
            Problem(
                ProblemKind.CHAIN_BROKEN,
                cur.rel,
                cur.stream,
                cur.first_seq,
                f"chain does not continue from {prev.rel} (seq {prev.last_seq})",
            )
        ]
    return []


# --------------------------------------------------------------------------- command entry points


def verify_raw_main(root: Path | str, day: date | None, all_days: bool, *, out: Any = None) -> int:
    """What ``manage.py verify_raw`` runs: one line per problem, exit status 1 when any."""
    import sys

    out = out or sys.stdout
    store = RawStore(root)
    report = store.verify(None if all_days else day)
    for problem in report.problems:
        print(str(problem), file=out)
    scope = "all days" if all_days or day is None else day.isoformat()
    if report.ok:
        print(f"OK: {scope}: {report.segments} segment(s), {report.records} record(s) intact", file=out)
        return 0
    print(
        f"FAILED: {scope}: {len(report.problems)} problem(s) in {report.segments} segment(s), {report.records} record(s)",
        file=out,
    )
    return 1


def seal_raw_main(root: Path | str, day: date, *, out: Any = None) -> int:
    """What ``manage.py seal_raw`` runs: seal one day, print its manifest summary."""
    import sys

    out = out or sys.stdout
    store = RawStore(root)
    try:
        manifest = store.seal_day(day)
    except SealError as exc:
        for problem in exc.problems:
            print(str(problem), file=out)
        print(f"FAILED: day {day} not sealed: {len(exc.problems)} problem(s)", file=out)
        return 1
    except RawStoreError as exc:
        print(f"FAILED: {exc}", file=out)
        return 1
    for name, sm in sorted(manifest.streams.items()):
        print(
            f"sealed {sm.segment}: stream={name} seq {sm.first_seq}..{sm.last_seq} count={sm.count} "
            f"bytes={sm.bytes} merkle_root={sm.merkle_root}",
            file=out,
        )
    print(f"OK: day {day} sealed with {len(manifest.streams)} stream(s)", file=out)
    return 0

"""Raw first, then the ingest queue: the hand-over every feed process uses.

Each payload is appended to the raw store the moment it is received; new
records are handed to the ingest queue by task name in batches, and the last
sequence number handed over is kept in Redis. After a crash or a broker outage
everything after that mark is re-sent from the raw store, so a record can be
late but never lost (ingest is idempotent, so a re-send adds nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ingestion.rawstore import RawStore
from ingestion.services import Record, encode_records, open_raw_writer
from trading import redis_keys
from trading.queues import INGEST_BATCH_TASK
from trading.redis_client import redis_client

RESEND_CHUNK = 2000


class RawHandOver:
    """One raw stream: append each payload at once, hand the new records to ingest in batches."""

    def __init__(self, *, stream: str, fmt: str, store: RawStore, send: Callable[..., Any], symbol: str | None = None) -> None:
        self.stream = stream
        self.fmt = fmt
        self.symbol = symbol
        self.store = store
        self.send = send
        self.writer = open_raw_writer(store, stream)
        self.pending: list[Record] = []
        self.redis = redis_client()
        self.appended = 0
        self.batches_sent = 0

    def on_raw(self, payload: bytes, recv_ns: int, kind: str = "") -> None:
        ref = self.writer.append(payload, recv_ns=recv_ns)
        self.pending.append((ref.seq, recv_ns, payload))
        self.appended += 1

    def append_many(self, payloads: list[bytes], recv_ns: int) -> None:
        """A batch received at one moment (the simulator's tick): one framed write."""
        refs = self.writer.append_many(payloads, recv_ns=recv_ns)
        self.pending.extend((ref.seq, recv_ns, payload) for ref, payload in zip(refs, payloads, strict=True))
        self.appended += len(payloads)

    @property
    def sent_seq(self) -> int:
        raw = self.redis.get(redis_keys.feed_sent_seq(self.stream))
        return int(raw) if raw is not None else 0

    def _send(self, records: list[Record]) -> None:
        self.send(INGEST_BATCH_TASK, args=[self.stream, self.fmt, encode_records(records), self.symbol])
        self.redis.set(redis_keys.feed_sent_seq(self.stream), records[-1][0])
        self.batches_sent += 1

    def catch_up(self) -> int:
        """Re-send everything in the raw store after the last mark. Returns how many records."""
        self.pending.clear()
        sent = self.sent_seq
        if self.writer.last_seq <= sent:
            return 0
        chunk: list[Record] = []
        total = 0
        for record in self.store.read(self.stream, from_seq=sent + 1):
            chunk.append((record.seq, record.recv_ns, record.payload))
            if len(chunk) >= RESEND_CHUNK:
                self._send(chunk)
                total += len(chunk)
                chunk = []
        if chunk:
            self._send(chunk)
            total += len(chunk)
        return total

    def hand_over(self) -> int:
        """Send what arrived since the last call (or catch up after a failed hand-over)."""
        if not self.pending:
            return 0
        records, self.pending = self.pending, []
        if self.sent_seq < records[0][0] - 1:
            return self.catch_up()
        self._send(records)
        return len(records)

    def close(self) -> None:
        self.writer.close()

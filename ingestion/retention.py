"""Hot retention of the tick tables: drop old day partitions, but only when the raw store can restore them.

Quotes and trades live in day partitions (``ingestion_quote_pYYYYMMDD``,
``ingestion_trade_pYYYYMMDD``). Past the hot retention (default 90 days) a
partition is dropped, which is instant and leaves no bloat, unlike a DELETE.
A partition is dropped only when every raw record its rows came from lies in
a *sealed* raw-store day (a manifest with counts, chain ends and a Merkle
root): then ``replay_raw`` can always rebuild it, and nothing is ever lost.
The check is per stream: the rows' raw sequence range must be covered by the
sealed manifests' ranges. Partition days are the venue's clock and raw days
our receive clock, so a partition's rows may come from later raw days (a file
recorded in 2020 and loaded today lives in today's raw segment), which is
exactly why the check goes by raw reference and not by date.

L2 books are never written to PostgreSQL: they live in the raw store (the
messages) and in Redis (the current top of book), so there is nothing to
prune for them here. The default partitions are never dropped.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from ingestion.rawstore import RawStore

logger = logging.getLogger(__name__)

TICK_TABLES = ("ingestion_quote", "ingestion_trade")
DEFAULT_RETENTION_DAYS = 90
_PARTITION = re.compile(r"^(ingestion_(?:quote|trade))_p(\d{8})$")


@dataclass(frozen=True)
class PartitionDecision:
    table: str
    partition: str
    day: str
    action: str  # "dropped", "would_drop" or "kept"
    reason: str = ""
    rows: int = 0


def tick_partitions() -> list[tuple[str, str, date]]:
    """(parent table, partition name, day) of every day partition of the tick tables, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT parent.relname, child.relname FROM pg_inherits i"
            " JOIN pg_class child ON child.oid = i.inhrelid JOIN pg_class parent ON parent.oid = i.inhparent"
            " WHERE parent.relname = ANY(%s)",
            [list(TICK_TABLES)],
        )
        found = []
        for parent, child in cursor.fetchall():
            match = _PARTITION.match(child)
            if match and match.group(1) == parent:
                found.append((parent, child, datetime.strptime(match.group(2), "%Y%m%d").date()))  # noqa: DTZ007 - a date, no time
    return sorted(found, key=lambda item: (item[2], item[0]))


def sealed_ranges(store: RawStore) -> dict[str, list[tuple[int, int, date]]]:
    """Per stream, the (first_seq, last_seq, day) ranges held by sealed raw-store days, ascending."""
    ranges: dict[str, list[tuple[int, int, date]]] = defaultdict(list)
    for day in store.days():
        if not store.is_sealed(day):
            continue
        for stream, sm in store.load_manifest(day).streams.items():
            if sm.count:
                ranges[stream].append((sm.first_seq, sm.last_seq, day))
    for spans in ranges.values():
        spans.sort()
    return ranges


def _uncovered(lo: int, hi: int, spans: list[tuple[int, int, date]]) -> int | None:
    """The first sequence number in ``lo..hi`` that no sealed span holds, or None."""
    need = lo
    for first, last, _day in spans:
        if first > need:
            break
        if last >= need:
            need = last + 1
        if need > hi:
            return None
    return need


def _raw_problem(
    partition: str, ranges: dict[str, list[tuple[int, int, date]]], store: RawStore, verify: bool, verified: dict[date, bool]
) -> tuple[str | None, int]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT raw_stream, min(raw_seq), max(raw_seq), count(*) FROM {partition} GROUP BY raw_stream")  # noqa: S608 - name from pg_class, matched above
        per_stream = cursor.fetchall()
    rows = sum(r[3] for r in per_stream)
    for stream, lo, hi, _count in per_stream:
        spans = ranges.get(stream, [])
        missing = _uncovered(lo, hi, spans)
        if missing is not None:
            return f"raw stream {stream} seq {missing} (of {lo}..{hi}) is not in a sealed raw-store day", rows
        if verify:
            for first, last, day in spans:
                if last < lo or first > hi:
                    continue
                if day not in verified:
                    verified[day] = store.verify(day).ok
                if not verified[day]:
                    return f"sealed raw day {day} fails verification (run verify_raw --date {day})", rows
    return None, rows


def ticks_prune(
    *,
    store: RawStore,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    today: date | None = None,
    dry_run: bool = False,
    verify: bool = False,
) -> list[PartitionDecision]:
    """Drop tick partitions older than ``retention_days`` whose raw records are all sealed.

    Steps:
    1. List the day partitions of the quote and trade tables older than the cutoff.
    2. Read the sealed manifests once: per stream, which sequence ranges are sealed.
    3. Per partition, check each raw stream's sequence range in it is sealed
       (and, with ``verify``, that those sealed days still verify).
    4. Drop the partition, or keep it and say why.
    """
    if retention_days < 1:
        raise ValueError("retention_days must be at least 1")
    today = today or timezone.now().date()
    cutoff = today - timedelta(days=retention_days)
    candidates = [p for p in tick_partitions() if p[2] < cutoff]
    if not candidates:
        return []
    ranges = sealed_ranges(store)
    verified: dict[date, bool] = {}
    decisions = []
    for table, partition, day in candidates:
        problem, rows = _raw_problem(partition, ranges, store, verify, verified)
        if problem is not None:
            decisions.append(PartitionDecision(table, partition, day.isoformat(), "kept", problem, rows))
            continue
        if dry_run:
            decisions.append(PartitionDecision(table, partition, day.isoformat(), "would_drop", "", rows))
            continue
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {partition}")
            cursor.execute(f"DROP TABLE {partition}")
        logger.info("retention: dropped %s (%s rows, older than %s days; raw sealed)", partition, rows, retention_days)
        decisions.append(PartitionDecision(table, partition, day.isoformat(), "dropped", "", rows))
    return decisions


def decisions_as_dicts(decisions: list[PartitionDecision]) -> list[dict[str, object]]:
    return [asdict(d) for d in decisions]

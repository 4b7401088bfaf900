"""L2 snapshots behind each signal (fatal mistake 11): store, read back, archive.

Encoding
--------
A snapshot is the canonical JSON of the book's top levels, with every price
and size as the decimal string it had in the book (``str(Decimal)``, so
``"1.10"`` stays ``"1.10"``)::

    {"asks":[["p","s"],...],"bids":[["p","s"],...],"symbol":"...","ts_ns":123}

(keys sorted, no whitespace). ``sha256`` is the hash of that canonical JSON,
not of the compressed bytes, so the hash names the content whatever the
compression. ``data`` holds ``zlib.compress(canonical, 6)``.

Retention
---------
Hot rows keep ``data``. ``snapshots_archive`` moves rows older than the hot
period (90 days) into JSONL files under ``settings.SNAPSHOT_ARCHIVE_DIR``,
one file per UTC day of snapshot time and archive run
(``YYYY/MM/DD/l2-<run>.jsonl``; a line per snapshot with id, symbol, ts,
levels, sha256 and the compressed bytes in base64), plus a manifest with the
SHA-256 of each file. Files are written and read back before any row
changes; then, in one transaction per file, the rows switch to
``storage=archive`` with ``archive_ref = "<relative path>#<id>"``, their
``data`` is cleared and an audit event records what moved. A crash between
the file and the transaction leaves an unreferenced file, never a row
pointing at nothing. ``snapshot_load`` reads both kinds and checks the hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import audit_event_record
from automations.models import L2Snapshot
from ingestion.types import BookSnapshot

HOT_RETENTION_DAYS = 90
ARCHIVE_CHUNK = 5000


class SnapshotIntegrityError(Exception):
    """A stored snapshot does not match its SHA-256, or its archive entry is gone."""


def snapshot_encode(book: BookSnapshot, levels: int) -> tuple[bytes, str]:
    """Canonical JSON of the top ``levels`` of ``book``: (zlib bytes, sha256 hex of the JSON)."""
    doc = {
        "symbol": book.symbol,
        "ts_ns": int(book.ts_ns),
        "bids": [[str(p), str(s)] for p, s in book.bids[:levels]],
        "asks": [[str(p), str(s)] for p, s in book.asks[:levels]],
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return zlib.compress(canonical, 6), hashlib.sha256(canonical).hexdigest()


def snapshot_decode(data: bytes, sha256: str) -> BookSnapshot:
    """Decompress, verify the hash, rebuild the BookSnapshot exactly."""
    try:
        canonical = zlib.decompress(data)
    except zlib.error as exc:
        raise SnapshotIntegrityError(f"snapshot bytes are not valid zlib: {exc}") from exc
    actual = hashlib.sha256(canonical).hexdigest()
    if actual != sha256:
        raise SnapshotIntegrityError(f"snapshot hash mismatch: stored {sha256}, content {actual}")
    doc = json.loads(canonical)
    return BookSnapshot(
        symbol=doc["symbol"],
        ts_ns=int(doc["ts_ns"]),
        bids=tuple((Decimal(p), Decimal(s)) for p, s in doc["bids"]),
        asks=tuple((Decimal(p), Decimal(s)) for p, s in doc["asks"]),
    )


def snapshot_build(*, book: BookSnapshot, levels: int) -> L2Snapshot:
    """The hot, compressed and hashed snapshot of the top ``levels`` of ``book``, not yet saved.

    ``snapshot_create`` saves it; ``automations.services.signals_create_routed``
    inserts it in the statement that inserts its signals.
    """
    data, digest = snapshot_encode(book, levels)
    return L2Snapshot(
        symbol=book.symbol,
        ts=datetime.fromtimestamp(book.ts_ns / 1e9, tz=UTC),
        levels=min(levels, max(len(book.bids), len(book.asks))),
        data=data,
        sha256=digest,
        storage=L2Snapshot.Storage.HOT,
    )


def snapshot_create(*, book: BookSnapshot, levels: int) -> L2Snapshot:
    """Store the top ``levels`` of ``book`` hot, compressed and hashed."""
    snapshot = snapshot_build(book=book, levels=levels)
    snapshot.save(force_insert=True)
    return snapshot


def _archive_root() -> Path:
    return Path(settings.SNAPSHOT_ARCHIVE_DIR)


def _read_archived(ref: str) -> bytes:
    path_part, _, id_part = ref.rpartition("#")
    path = (_archive_root() / path_part).resolve()
    root = _archive_root().resolve()
    # An archive reference names a file under the archive root, never elsewhere.
    if root not in path.parents:
        raise SnapshotIntegrityError(f"archive reference {ref!r} points outside the archive")
    try:
        with path.open("rb") as handle:
            for line in handle:
                record = json.loads(line)
                if str(record["id"]) == id_part:
                    return base64.b64decode(record["data"])
    except FileNotFoundError as exc:
        raise SnapshotIntegrityError(f"archive file {path_part} is missing") from exc
    raise SnapshotIntegrityError(f"snapshot {id_part} is not in archive file {path_part}")


def snapshot_load(snapshot: L2Snapshot) -> BookSnapshot:
    """Read a snapshot back, hot or archived, verifying its SHA-256."""
    if snapshot.storage == L2Snapshot.Storage.HOT:
        if snapshot.data is None:
            raise SnapshotIntegrityError(f"hot snapshot {snapshot.pk} has no data")
        return snapshot_decode(bytes(snapshot.data), snapshot.sha256)
    return snapshot_decode(_read_archived(snapshot.archive_ref), snapshot.sha256)


@dataclass(frozen=True)
class ArchiveResult:
    moved: int
    files: list[dict[str, Any]]


def _write_file(path: Path, lines: list[bytes]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        for line in lines:
            handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    # Read the file back and hash what is on disk, not what we meant to write.
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshots_archive(
    *, older_than_days: int = HOT_RETENTION_DAYS, now: datetime | None = None, actor_label: str = "snapshot-retention"
) -> ArchiveResult:
    """Move hot snapshots older than ``older_than_days`` to archive files.

    1. Select hot rows with ``ts`` before the cutoff, in chunks, grouped by UTC day.
    2. Write each group to a new JSONL file (never appended to), fsync, hash it.
    3. Check every line decodes to its stored hash.
    4. In one transaction per file: switch the rows to archive (only rows still
       hot, so a concurrent run cannot double-move), clear ``data``, and
       record an audit event with the file, its hash and the ids moved.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(days=older_than_days)
    run = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    root = _archive_root()
    moved = 0
    files: list[dict[str, Any]] = []
    last_id = 0
    while True:
        chunk = list(
            L2Snapshot.objects.filter(storage=L2Snapshot.Storage.HOT, ts__lt=cutoff, id__gt=last_id)
            .order_by("id")
            .values("id", "symbol", "ts", "levels", "sha256", "data")[:ARCHIVE_CHUNK]
        )
        if not chunk:
            break
        last_id = chunk[-1]["id"]
        by_day: dict[str, list[dict[str, Any]]] = {}
        for row in chunk:
            by_day.setdefault(row["ts"].astimezone(UTC).strftime("%Y/%m/%d"), []).append(row)
        for day, rows in sorted(by_day.items()):
            for row in rows:
                snapshot_decode(bytes(row["data"]), row["sha256"])
            rel = f"{day}/l2-{run}-{rows[0]['id']}.jsonl"
            lines = [
                (
                    json.dumps(
                        {
                            "id": row["id"],
                            "symbol": row["symbol"],
                            "ts": row["ts"].isoformat(),
                            "levels": row["levels"],
                            "sha256": row["sha256"],
                            "data": base64.b64encode(bytes(row["data"])).decode(),
                        },
                        sort_keys=True,
                        separators=(",", ":"),
                    )
                    + "\n"
                ).encode()
                for row in rows
            ]
            file_hash = _write_file(root / rel, lines)
            ids = [row["id"] for row in rows]
            with transaction.atomic():
                count = L2Snapshot.objects.filter(id__in=ids, storage=L2Snapshot.Storage.HOT).update(
                    storage=L2Snapshot.Storage.ARCHIVE,
                    archive_ref=Concat(models.Value(f"{rel}#"), Cast("id", models.CharField())),
                    archived_at=now,
                    data=None,
                )
                audit_event_record(
                    kind=AuditEvent.Kind.SYSTEM,
                    actor_label=actor_label,
                    subject_type="automations.l2snapshot",
                    subject_id=f"{ids[0]}-{ids[-1]}",
                    reason=f"L2 snapshots older than {older_than_days} days archived",
                    data={
                        "action": "snapshots_archive",
                        "file": rel,
                        "file_sha256": file_hash,
                        "count": count,
                        "ids": ids,
                        "cutoff": cutoff.isoformat(),
                    },
                )
            moved += count
            files.append({"file": rel, "sha256": file_hash, "count": count})
    if files:
        manifest = root / f"manifest-{run}.json"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({"run": run, "cutoff": cutoff.isoformat(), "files": files}, indent=1))
    return ArchiveResult(moved=moved, files=files)

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from automations.models import L2Snapshot
from automations.services import signal_create, snapshot_coverage_check, snapshot_missing_ratio
from automations.snapshots import SnapshotIntegrityError, snapshot_create, snapshot_load, snapshots_archive
from risk.models import Alert
from tests.automations.conftest import make_automation, make_book

pytestmark = pytest.mark.django_db


@pytest.fixture
def archive_dir(settings, tmp_path):
    settings.SNAPSHOT_ARCHIVE_DIR = tmp_path / "archive"
    return settings.SNAPSHOT_ARCHIVE_DIR


def test_it_reads_a_snapshot_back_level_by_level_with_the_original_decimal_strings():
    book = make_book(levels=30)
    stored = snapshot_create(book=book, levels=20)
    loaded = snapshot_load(L2Snapshot.objects.get(pk=stored.pk))

    assert loaded.symbol == book.symbol and loaded.ts_ns == book.ts_ns
    assert len(loaded.bids) == len(loaded.asks) == 20
    for level in range(20):
        assert loaded.bids[level] == book.bids[level]
        assert loaded.asks[level] == book.asks[level]
        # Exactly the same text, not just the same number: "100.10" stays "100.10".
        assert str(loaded.asks[level][0]) == str(book.asks[level][0])
    assert str(loaded.bids[0][0]) == "100.00"


def test_it_refuses_a_tampered_snapshot():
    stored = snapshot_create(book=make_book(), levels=5)
    import zlib

    canonical = json.loads(zlib.decompress(bytes(stored.data)))
    canonical["bids"][0][1] = "999"
    stored.data = zlib.compress(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(SnapshotIntegrityError, match="hash mismatch"):
        snapshot_load(stored)


def test_it_archives_old_snapshots_and_still_reads_them_back(archive_dir):
    now = timezone.now()
    old_book, new_book = make_book(levels=20), make_book(levels=20, ts_ns=make_book().ts_ns + 1)
    old = snapshot_create(book=old_book, levels=20)
    recent = snapshot_create(book=new_book, levels=20)
    L2Snapshot.objects.filter(pk=old.pk).update(ts=now - timedelta(days=91))
    L2Snapshot.objects.filter(pk=recent.pk).update(ts=now - timedelta(days=10))

    result = snapshots_archive(older_than_days=90, now=now)

    assert result.moved == 1
    old.refresh_from_db()
    recent.refresh_from_db()
    assert old.storage == L2Snapshot.Storage.ARCHIVE and old.data is None and old.archive_ref
    assert recent.storage == L2Snapshot.Storage.HOT
    assert (Path(archive_dir) / result.files[0]["file"]).exists()
    loaded = snapshot_load(old)
    assert loaded.bids == old_book.bids[:20] and loaded.asks == old_book.asks[:20]
    event = AuditEvent.objects.filter(kind=AuditEvent.Kind.SYSTEM, data__action="snapshots_archive").get()
    assert event.data["count"] == 1 and event.data["ids"] == [old.pk]
    # A second run finds nothing left to move.
    assert snapshots_archive(older_than_days=90, now=now).moved == 0


def _signals(automation, count, *, with_snapshot):
    snapshot = snapshot_create(book=make_book(), levels=5) if with_snapshot else None
    for _ in range(count):
        signal_create(
            automation=automation, side="buy", quantity=Decimal("1"), limit_price=Decimal("100"), reason="t", snapshot=snapshot
        )


def test_it_computes_the_share_of_signals_without_a_snapshot():
    automation = make_automation()
    _signals(automation, 97, with_snapshot=True)
    _signals(automation, 3, with_snapshot=False)

    coverage = snapshot_missing_ratio(window=timedelta(hours=1))

    assert (coverage.total, coverage.missing) == (100, 3)
    assert coverage.ratio == pytest.approx(0.03)


def test_it_raises_the_missing_snapshot_alert_when_snapshots_are_withheld():
    automation = make_automation()
    _signals(automation, 98, with_snapshot=True)
    _signals(automation, 2, with_snapshot=False)  # 2 % > 1 %

    snapshot_coverage_check()

    alerts = Alert.objects.filter(kind="l2_snapshot_missing")
    assert alerts.exists()
    assert "2 of 100" in alerts.first().message


def test_it_stays_quiet_at_one_percent_or_less():
    automation = make_automation()
    _signals(automation, 100, with_snapshot=True)
    _signals(automation, 1, with_snapshot=False)  # 1/101 < 1 %

    snapshot_coverage_check()

    assert not Alert.objects.filter(kind="l2_snapshot_missing").exists()

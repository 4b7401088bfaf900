from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta

import pytest
from celery import current_app
from django.core.management import call_command
from django.db import connection

from ingestion.models import Quote
from ingestion.rawstore import RawStore, day_start_ns
from ingestion.retention import ticks_prune
from ingestion.services import IngestPipeline, raw_stream_register

TODAY = date(2026, 6, 30)


def quote(ts_ns: int, i: int) -> bytes:
    return json.dumps(
        {"type": "quote", "symbol": "SIM-R", "ts_ns": ts_ns, "bid": f"100.{i}", "bid_size": "1", "ask": "101", "ask_size": "2"}
    ).encode()


def load(store: RawStore, stream: str, day: date, n: int = 5) -> None:
    """Raw first, then ingest: ``n`` quotes received (and stamped) on ``day``."""
    raw_stream_register(name=stream, fmt="sim")
    base = day_start_ns(day) + 3_600 * 10**9
    payloads = [quote(base + i * 10**6, i) for i in range(n)]
    with store.writer(stream) as writer:
        refs = [writer.append(p, recv_ns=base + i * 10**6 + 5 * 10**6) for i, p in enumerate(payloads)]
    records = [(ref.seq, base + i * 10**6 + 5 * 10**6, p) for i, (ref, p) in enumerate(zip(refs, payloads))]
    IngestPipeline().ingest(stream=stream, fmt="sim", records=records, detect=False, publish=False)


def partition_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


@pytest.fixture
def store(settings, tmp_path, monkeypatch):
    monkeypatch.setattr(current_app, "send_task", lambda *a, **k: None)
    settings.RAW_STORE_DIR = tmp_path / "raw"
    return RawStore(settings.RAW_STORE_DIR)


@pytest.mark.django_db
def test_it_drops_only_old_partitions_whose_raw_days_are_sealed_and_replay_restores_them(store):
    sealed_day = TODAY - timedelta(days=200)
    unsealed_day = TODAY - timedelta(days=150)
    recent_day = TODAY - timedelta(days=10)
    load(store, "old", sealed_day)
    load(store, "open", unsealed_day)
    load(store, "recent", recent_day)
    store.seal_day(sealed_day)
    store.seal_day(recent_day)

    decisions = {d.partition: d for d in ticks_prune(store=store, retention_days=90, today=TODAY)}
    old_name = f"ingestion_quote_p{sealed_day:%Y%m%d}"
    open_name = f"ingestion_quote_p{unsealed_day:%Y%m%d}"
    assert {old_name, open_name} <= set(decisions)
    assert f"ingestion_quote_p{recent_day:%Y%m%d}" not in decisions  # inside retention
    assert decisions[old_name].action == "dropped" and decisions[old_name].rows == 5
    assert decisions[open_name].action == "kept" and "raw stream open seq 1" in decisions[open_name].reason
    assert not partition_exists(old_name)
    assert partition_exists(open_name) and partition_exists(f"ingestion_quote_p{recent_day:%Y%m%d}")
    assert Quote.objects.filter(raw_stream="old").count() == 0
    assert Quote.objects.filter(raw_stream="open").count() == 5
    assert Quote.objects.filter(raw_stream="recent").count() == 5

    # What was dropped is restorable from the sealed raw store.
    out = io.StringIO()
    call_command("replay_raw", "--stream", "old", stdout=out)
    assert json.loads(out.getvalue())["streams"]["old"]["quotes"] == 5
    assert Quote.objects.filter(raw_stream="old").count() == 5
    assert partition_exists(old_name)


@pytest.mark.django_db
def test_a_dry_run_drops_nothing_and_a_tampered_sealed_day_is_kept_when_verifying(store):
    day = TODAY - timedelta(days=120)
    load(store, "old", day)
    store.seal_day(day)
    name = f"ingestion_quote_p{day:%Y%m%d}"
    [dry] = [d for d in ticks_prune(store=store, retention_days=90, today=TODAY, dry_run=True) if d.partition == name]
    assert dry.action == "would_drop" and partition_exists(name)
    # Flip one byte of the sealed segment: with verification the partition stays.
    segment = store.segment_path("old", day)
    segment.chmod(0o644)
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0x01
    segment.write_bytes(bytes(data))
    [kept] = [d for d in ticks_prune(store=store, retention_days=90, today=TODAY, verify=True) if d.partition == name]
    assert kept.action == "kept" and "fails verification" in kept.reason
    assert partition_exists(name)


@pytest.mark.django_db
def test_the_command_reports_its_decisions_as_json(store, settings):
    day = datetime.now(UTC).date() - timedelta(days=100)
    load(store, "old", day)
    store.seal_day(day)
    out = io.StringIO()
    call_command("prune_ticks", "--days", "30", stdout=out)
    report = json.loads(out.getvalue())
    assert report["retention_days"] == 30
    name = f"ingestion_quote_p{day:%Y%m%d}"
    assert [p["action"] for p in report["partitions"] if p["partition"] == name] == ["dropped"]
    assert not partition_exists(name)

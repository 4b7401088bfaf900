from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from celery import current_app
from django.core.management import call_command
from django.db import connection

from ingestion.models import Quote, Trade
from ingestion.rawstore import RawStore
from trading.embedded import database_url

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
QUOTES = DATA / "tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv"
TRADES = DATA / "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv"


def run(command: str, *args: str) -> dict:
    out = io.StringIO()
    call_command(command, *args, stdout=out)
    return json.loads(out.getvalue())


@pytest.fixture
def raw_dir(settings, tmp_path):
    settings.RAW_STORE_DIR = tmp_path / "raw"
    return settings.RAW_STORE_DIR


@pytest.fixture
def no_broker(monkeypatch):
    monkeypatch.setattr(current_app, "send_task", lambda *a, **k: None)


@pytest.mark.django_db
def test_replay_rebuilds_lost_ticks_from_the_raw_store_and_twice_adds_nothing(raw_dir, redis_clean, no_broker):
    quotes = run("ingest_file", "--format", "tardis-quotes", str(QUOTES), "--stream", "q")
    trades = run("ingest_file", "--format", "tardis-trades", str(TRADES), "--stream", "t")
    expected = {("q", r) for r in range(1, 10000)} | {("t", r) for r in range(1, 10000)}
    stored_before = sorted(Quote.objects.values_list("raw_seq", "bid", "ask", "source_ts", "recv_ts"))
    # A crash loses part of the database: drop half the quotes and every trade.
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_quote WHERE raw_seq % 2 = 0")
        cursor.execute("DELETE FROM ingestion_trade")
    report = run("replay_raw")
    assert report["streams"]["q"]["quotes"] == 4999 and report["streams"]["t"]["trades"] == 9999
    assert quotes["quotes"] == trades["trades"] == 9999
    got = set(Quote.objects.values_list("raw_stream", "raw_seq")) | set(Trade.objects.values_list("raw_stream", "raw_seq"))
    assert got == expected
    # The rebuilt rows are the same values, not just the same keys.
    assert sorted(Quote.objects.values_list("raw_seq", "bid", "ask", "source_ts", "recv_ts")) == stored_before
    again = run("replay_raw")
    assert again["streams"]["q"]["quotes"] == 0 and again["streams"]["t"]["trades"] == 0
    assert Quote.objects.count() + Trade.objects.count() == len(expected)


@pytest.mark.django_db
def test_replay_limits_itself_to_a_stream_and_reports_streams_of_unknown_format(raw_dir, redis_clean, no_broker):
    run("ingest_file", "--format", "tardis-trades", str(TRADES), "--stream", "t")
    with RawStore(raw_dir).writer("mystery") as writer:
        writer.append(b"who knows")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_trade")
    report = run("replay_raw")
    assert "mystery" in report["skipped"]
    assert report["streams"]["t"]["trades"] == 9999
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_trade")
    day = RawStore(raw_dir).days()[0]
    only = run("replay_raw", "--stream", "t", "--date", day.isoformat())
    assert list(only["streams"]) == ["t"] and only["skipped"] == {}
    assert only["streams"]["t"]["trades"] == 9999


def write_big_quotes(path: Path, rows: int) -> None:
    """A Tardis quote file of ``rows`` distinct, in-order quotes (one every 2 ms)."""
    t0 = 1_582_329_601_000_000
    lines = ["exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount"]
    for i in range(rows):
        ts = t0 + i * 2000
        bid = 9600 + (i % 50) / 100
        lines.append(f"binance-futures,BTCUSDT,{ts},{ts + 120_000},{1 + i % 7}.5,{bid + 0.5:.2f},{bid:.2f},{2 + i % 5}.25")
    path.write_text("\n".join(lines) + "\n")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "celery"),
            "-A",
            "trading",
            "worker",
            "-Q",
            "ingest",
            "--pool",
            "solo",
            "-l",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def quote_count(stream: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ingestion_quote WHERE raw_stream = %s", [stream])
        return cursor.fetchone()[0]


def wait_for(predicate, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_killing_the_ingest_worker_mid_file_then_replay_leaves_every_raw_record_stored_once(raw_dir, tmp_path, redis_clean):
    rows = 120_000
    stream = f"kill-{os.getpid()}"
    path = tmp_path / "big_quotes.csv"
    write_big_quotes(path, rows)
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": database_url(db),
        "REDIS_URL": os.environ["REDIS_URL"],
        "CELERY_VISIBILITY_TIMEOUT": "5",
        "RAW_STORE_DIR": str(raw_dir),
        "DJANGO_SETTINGS_MODULE": "trading.settings",
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        out = run("ingest_file", "--format", "tardis-quotes", str(path), "--stream", stream, "--queue", "--batch", "4000")
        assert out["batches_queued"] == 30 and out["records"] == rows
        # Kill the worker while it is part-way through the file.
        assert wait_for(lambda: quote_count(stream) >= 8000, 150), log.read_text()[-2000:]
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        killed_at = quote_count(stream)
        assert killed_at < rows, "the worker finished before it could be killed"
        worker = start_worker(env, log)
        redis = current_app.connection_for_write().channel().client

        def drained() -> bool:
            before = quote_count(stream)
            time.sleep(0.5)
            return redis.llen("ingest") == 0 and quote_count(stream) == before

        assert wait_for(drained, 150), log.read_text()[-2000:]
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(10)
    report = run("replay_raw", "--stream", stream)
    raw_seqs = [r.seq for r in RawStore(raw_dir).read(stream)]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT raw_seq), min(raw_seq), max(raw_seq) FROM ingestion_quote WHERE raw_stream = %s",
            [stream],
        )
        count, distinct, lo, hi = cursor.fetchone()
        cursor.execute("DELETE FROM ingestion_quote WHERE raw_stream = %s", [stream])
    print(
        json.dumps(
            {"stored_when_killed": killed_at, "added_by_replay": report["streams"][stream]["quotes"], "raw": len(raw_seqs)}
        )
    )
    assert raw_seqs == list(range(1, rows + 1))
    assert (count, distinct, lo, hi) == (rows, rows, 1, rows)

"""End-to-end ingest throughput of one worker into PostgreSQL, next to the parse-only rate.

Realistic ticks: the recorded Tardis BTCUSDT quotes and trades, repeated with
their timestamps shifted forward so every copy is new data (9,999 distinct
rows per pass, same prices, sizes and receive lags). Each figure is the median
of a few runs over ``BATCH``-record batches, the batch size the feed uses.

- ``parse_only``: ``ingestion.parsers.parse`` per record (nothing else).
- ``parse_validate_clock``: the pipeline's hot loop without the database
  (parse, validate, COPY text, clock estimator, liquidity monitor); for
  Tardis batches that is the columnar path (``tardis_columns``, the
  validator's batch checks, column-wise COPY text, array updates).
- ``end_to_end``: ``IngestPipeline.ingest`` (the above plus COPY into the
  day partitions, quarantine, clock row), what the ingest worker does per batch.
- ``end_to_end_redelivered``: the same batches again (all duplicates), which
  takes the staging-table ``ON CONFLICT`` path.

Besides wall-clock rates (which depend on whatever else the two cores are
doing), CPU cost per tick is reported for the worker process
(``time.process_time``) and for its PostgreSQL backend (``/proc/<pid>/stat``
of ``pg_backend_pid()``, when the server runs on this machine): on an idle
2-core machine the worker's ceiling is about ``1e6 / max(worker, backend)``
ticks/s when the COPY overlaps parsing, ``1e6 / (worker + backend)`` when not.

Figures (10 passes x 3 runs, 2-core machine shared with other work, load
average 3.4, so the wall-clock rates are low and not comparable; the CPU
costs per tick are what count):

=================  ===========  ============  ===========================
format             worker µs    postgres µs   earlier (worker / postgres)
=================  ===========  ============  ===========================
tardis-quotes      3.1          3.0           4.6-4.9 / 3.7-3.8
tardis-trades      3.7          3.0           4.9 / 4.0
=================  ===========  ============  ===========================

What changed: the columnar parser reads timestamps and prices with one C pass
per column (``parsers._plain_ints``/``_plain_decimal_parts``) instead of one
``int``/``float`` call per field, and the streamed chunks go to PostgreSQL as
binary COPY (``services._quote_rows_binary``/``_trade_rows_binary``): the
backend reads 8-byte timestamps instead of parsing two timestamptz texts per
row (~0.8 µs of its former ~3.7 µs; the primary key costs ~1.2 µs, the heap
row with its four numerics ~1.8 µs), and the worker builds fixed-size numpy
records instead of timestamp texts. The hot loop alone (``parse_validate_clock``,
which still builds COPY text) is ~2.2 µs per quote, ~2.8 µs per trade.

Wall clock: per 5,000-record batch the worker parses chunk k+1 while the
backend COPies chunk k; the first chunk's parse and the last chunk's COPY
(and the commit) overlap nothing, so the rate lies between
``1e6 / (worker + backend)`` (no overlap) and ``1e6 / max(worker, backend)``
(perfect overlap): ~150-165k and ~270-320k ticks/s from the figures above.
With the backend now the slightly longer step, a smaller first chunk
(``FP_INGEST_FIRST_CHUNK``) might help; it is not measured on a quiet machine.

Quiet machine (nothing else running, load average 0.7), 2026-11-24:
``end_to_end`` 176k and 199k quotes/s, 189k and 207k trades/s (two
invocations, the second with ``BENCH_RUNS=5``); worker 2.3-2.8 µs and
PostgreSQL 2.8-3.2 µs of CPU per tick, so the backend bounds it. The target
(150,000 ticks/s per worker) is met on both Tardis formats. Redelivered
batches (all duplicates, the staging-table path) run at ~105k/s.

Each run starts from vacuumed tables (the runs insert the same keys again;
without a vacuum every unique check would also visit the deleted rows).

Needs ``DATABASE_URL`` (a migrated database) and ``REDIS_URL``; rows are
written under a stream ``bench-<pid>`` and deleted afterwards.
Run: ``.venv/bin/python benchmarks/ingest_throughput.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")

import django

django.setup()

from django.db import connection  # noqa: E402

from benchmarks import _common  # noqa: E402
from ingestion.clock import ClockEstimator  # noqa: E402
from ingestion.parsers import iter_file_records, parse  # noqa: E402
from ingestion.services import IngestPipeline, IngestResult, _clock_update  # noqa: E402
from ingestion.validation import Validator  # noqa: E402

DATA = Path(os.environ.get("FP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BATCH = 5000
PASSES = int(os.environ.get("BENCH_PASSES", "10"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def shifted(fmt: str, name: str, passes: int, start_seq: int = 1) -> list[tuple[int, int, bytes]]:
    """The file's rows ``passes`` times, timestamps moved three hours per pass (new, in-order data)."""
    rows = [payload for payload, _recv in iter_file_records(fmt, DATA / name)]
    out: list[tuple[int, int, bytes]] = []
    seq = start_seq
    for p in range(passes):
        shift = p * 10_800_000_000  # three hours in microseconds
        for row in rows:
            f = row.split(b",")
            f[2] = str(int(f[2]) + shift).encode()
            f[3] = str(int(f[3]) + shift).encode()
            if fmt == "tardis-trades":
                f[4] = f"{f[4].decode()}-{p}".encode()
            out.append((seq, 0, b",".join(f)))
            seq += 1
    return out


def batches(records: list, size: int = BATCH) -> list[list]:
    return [records[i : i + size] for i in range(0, len(records), size)]


def rate(n: int, seconds: float) -> float:
    return round(n / seconds)


def backend_cpu_s() -> float | None:
    """CPU seconds used so far by this connection's PostgreSQL backend, if it runs on this host."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    return _common.local_cpu_s(pid)


def cleanup(stream: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_quote WHERE raw_stream = %s", [stream])
        cursor.execute("DELETE FROM ingestion_trade WHERE raw_stream = %s", [stream])
        cursor.execute("DELETE FROM ingestion_quarantinedmessage WHERE raw_stream = %s", [stream])
        cursor.execute("DELETE FROM ingestion_clocksource WHERE source = %s", [stream])
        # The next run inserts the same keys again: without a vacuum every
        # unique check would also visit the deleted rows' heap tuples, a cost
        # a real worker (new keys only) never pays.
        cursor.execute("VACUUM ingestion_quote, ingestion_trade")


def main() -> None:
    stream = f"bench-{os.getpid()}"
    try:
        run(stream)
    finally:
        cleanup(stream)


def run(stream: str) -> None:
    out: dict[str, object] = {"batch": BATCH, "cpus": os.cpu_count()}
    for fmt, name in (
        ("tardis-quotes", "tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv"),
        ("tardis-trades", "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv"),
    ):
        records = shifted(fmt, name, PASSES)
        n = len(records)
        parse_runs, hot_runs, e2e_runs, dup_runs, cpu_runs, pg_runs = [], [], [], [], [], []
        for _ in range(RUNS):
            started = time.perf_counter()
            for _seq, recv, payload in records:
                parse(fmt, payload, recv_ns=recv)
            parse_runs.append(time.perf_counter() - started)

            pipeline = IngestPipeline(known_symbols={"BTCUSDT"})
            validator = Validator(known_symbols={"BTCUSDT"})
            started = time.perf_counter()
            for chunk in batches(records):
                result = IngestResult()
                batch = pipeline._parse_batch(stream, fmt, chunk, None, validator, result)
                _clock_update(pipeline.clocks.setdefault(stream, ClockEstimator()), batch.samples)
                pipeline._update_liquidity(batch)
            hot_runs.append(time.perf_counter() - started)

            cleanup(stream)
            pipeline = IngestPipeline(known_symbols={"BTCUSDT"})
            stored = 0
            pg_before = backend_cpu_s()
            cpu_before = time.process_time()
            started = time.perf_counter()
            for chunk in batches(records):
                r = pipeline.ingest(stream=stream, fmt=fmt, records=chunk, publish=True, detect=False)
                stored += r.quotes + r.trades
            e2e_runs.append(time.perf_counter() - started)
            cpu_runs.append(time.process_time() - cpu_before)
            pg_after = backend_cpu_s()
            if pg_before is not None and pg_after is not None:
                pg_runs.append(pg_after - pg_before)
            assert stored == n, (stored, n)

            pipeline = IngestPipeline(known_symbols={"BTCUSDT"})
            started = time.perf_counter()
            for chunk in batches(records):
                pipeline.ingest(stream=stream, fmt=fmt, records=chunk, publish=True, detect=False)
            dup_runs.append(time.perf_counter() - started)
        cleanup(stream)
        out[fmt] = {
            "ticks": n,
            "parse_only_ticks_per_s": rate(n, statistics.median(parse_runs)),
            "parse_validate_clock_ticks_per_s": rate(n, statistics.median(hot_runs)),
            "end_to_end_ticks_per_s": rate(n, statistics.median(e2e_runs)),
            "end_to_end_redelivered_ticks_per_s": rate(n, statistics.median(dup_runs)),
            "worker_cpu_us_per_tick": round(statistics.median(cpu_runs) / n * 1e6, 2),
            "postgres_cpu_us_per_tick": round(statistics.median(pg_runs) / n * 1e6, 2) if pg_runs else None,
        }
        worker_us = statistics.median(cpu_runs) / n * 1e6
        pg_us = statistics.median(pg_runs) / n * 1e6 if pg_runs else None
        if pg_us:
            # What the two cores could do when nothing else runs on them.
            out[fmt]["ceiling_overlapped_ticks_per_s"] = round(1e6 / max(worker_us, pg_us))
            out[fmt]["ceiling_serial_ticks_per_s"] = round(1e6 / (worker_us + pg_us))
            out[fmt]["bound_by"] = "postgres backend" if pg_us > worker_us else "worker"
    out["target_ticks_per_s"] = 150_000
    out["load_average_1m"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()

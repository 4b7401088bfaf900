"""Raw store append throughput against the bare cost of hashing the same records.

Each rate is given twice: by wall time and by this process's CPU time. The
machine's two cores are shared with other work, so wall-time rates swing with
the load; the CPU-time rate is what the code costs.

Payloads are Binance ``bookTicker``-shaped JSON quotes (~120 bytes) built from
the recorded Tardis BTCUSDT quotes in shared/data, cycled with a fresh update
id so every payload differs. Prints one JSON object; rates are medians of
``--repeat`` runs, each into a fresh store in a temporary directory.

    .venv/bin/python benchmarks/raw_store_append.py [--records 1000000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingestion import rawstore  # noqa: E402
from ingestion.rawstore import RawStore  # noqa: E402

QUOTES = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared")) / "data/tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv"


def payloads(n: int) -> list[bytes]:
    rows: list[dict[str, str]] = []
    if QUOTES.exists():
        with open(QUOTES, newline="") as fh:
            rows = list(csv.DictReader(fh))
    if not rows:
        rows = [{"bid_price": "9735.60", "bid_amount": "1.234", "ask_price": "9735.70", "ask_amount": "0.5",
                 "timestamp": "1582329600123000"}]  # fmt: skip
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        out.append(
            (
                f'{{"e":"bookTicker","u":{400900000000 + i},"s":"BTCUSDT","b":"{r["bid_price"]}",'
                f'"B":"{r["bid_amount"]}","a":"{r["ask_price"]}","A":"{r["ask_amount"]}",'
                f'"T":{int(r["timestamp"]) // 1000}}}'
            ).encode()
        )
    return out


def rate(n: int, seconds: float) -> int:
    return round(n / seconds)


class Clock:
    """Wall and CPU time of one measured section."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def bench_append_many(data: list[bytes], batch: int, fsync: bool) -> Clock:
    tmp = tempfile.mkdtemp(prefix="rawbench-")
    try:
        with RawStore(tmp, fsync=fsync).writer("bench") as w, Clock() as c:
            for i in range(0, len(data), batch):
                w.append_many(data[i : i + batch])
        return c
    finally:
        shutil.rmtree(tmp)


def bench_append(data: list[bytes]) -> Clock:
    tmp = tempfile.mkdtemp(prefix="rawbench-")
    try:
        with RawStore(tmp).writer("bench") as w:
            append = w.append
            with Clock() as c:
                for p in data:
                    append(p)
            return c
    finally:
        shutil.rmtree(tmp)


def bench_hash(data: list[bytes], ctor: object) -> Clock:
    with Clock() as c:
        for p in data:
            ctor(p).digest()  # type: ignore[operator]
    return c


def bench_two_hashes(data: list[bytes]) -> Clock:
    """The floor the design imposes: the payload hash plus the chain hash, nothing else."""
    sha = rawstore._sha256
    long_sha = rawstore._sha256_long
    cut = rawstore._LONG_PAYLOAD
    link = rawstore._LINK.pack
    chain = b"\0" * 32
    with Clock() as c:
        for seq, p in enumerate(data):
            d = (sha if len(p) < cut else long_sha)(p).digest()
            chain = sha(link(chain, seq, 1, d)).digest()
    return c


def bench_frame_only(data: list[bytes], batch: int) -> Clock:
    with Clock() as c:
        for i in range(0, len(data), batch):
            rawstore._frame_const(data[i : i + batch], 1, i, b"\0" * 32)
    return c


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--single", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = payloads(args.records)
    n = len(data)

    def med(fn: object, *a: object) -> dict[str, float]:
        runs = [fn(*a) for _ in range(args.repeat)]  # type: ignore[operator]
        return {"wall": statistics.median(r.wall for r in runs), "cpu": statistics.median(r.cpu for r in runs)}

    def rates(n_: int, t: dict[str, float]) -> dict[str, int]:
        return {"wall_per_s": rate(n_, t["wall"]), "cpu_per_s": rate(n_, t["cpu"])}

    load_before = os.getloadavg()[0]
    many = med(bench_append_many, data, args.batch, False)
    many_10k = med(bench_append_many, data, 10_000, False)
    frame = med(bench_frame_only, data, args.batch)
    two = med(bench_two_hashes, data)
    sha_openssl = med(bench_hash, data, hashlib.sha256)
    sha_fast = med(bench_hash, data, rawstore._sha256)
    single_data = data[: args.single]
    single = med(bench_append, single_data)
    fsync_batches = data[: 200 * args.batch]
    many_fsync = bench_append_many(fsync_batches, args.batch, True)

    result = {
        "records": n,
        "payload_bytes_mean": round(sum(map(len, data)) / n, 1),
        "frame_header_bytes": rawstore.FRAME_HEADER_SIZE,
        "batch": args.batch,
        "append_many": rates(n, many),
        "append_many_batch_10000": rates(n, many_10k),
        "append_many_fsync_each_batch": {"wall_per_s": rate(len(fsync_batches), many_fsync.wall)},
        "append_single": rates(len(single_data), single),
        "frame_only_no_refs_no_write": rates(n, frame),
        "two_sha256_per_record_floor": rates(n, two),
        "sha256_only_hashlib": rates(n, sha_openssl),
        "sha256_only_builtin": rates(n, sha_fast),
        "sha256_impl_for_short": f"{rawstore._sha256.__module__}.{rawstore._sha256.__name__}",
        "ratio_append_many_to_sha256_only_cpu": round(sha_fast["cpu"] / many["cpu"], 3),
        "ratio_append_many_to_two_sha256_floor_cpu": round(two["cpu"] / many["cpu"], 3),
        "target_per_s": 500_000,
        "target_met_cpu": n / many["cpu"] >= 500_000,
        "cpus": os.cpu_count(),
        "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "python": sys.version.split()[0],
        "median_of": args.repeat,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Parse-only rate per market-data format on the recorded files (no validation, no database).

For each file in the shared data directory (and a generated ``sim`` and
``binance-ws`` sample) the records are parsed with ``ingestion.parsers.parse``
``RUNS`` times; the median rate in records/s and ticks/s is printed as JSON.
Run: ``.venv/bin/python benchmarks/ingest_parse.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingestion.parsers import iter_file_records, parse

DATA = Path(os.environ.get("FP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
T = 1_733_011_200_000


def samples() -> dict[str, tuple[list[bytes], str | None]]:
    out: dict[str, tuple[list[bytes], str | None]] = {}
    for fmt, name in (
        ("tardis-quotes", "tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv"),
        ("tardis-trades", "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv"),
        ("bybit-ob", "bybit_XRPUSDT_ob500_2024-12-01.data"),
    ):
        out[fmt] = ([payload for payload, _ in iter_file_records(fmt, DATA / name)], None)
    binance = []
    for i in range(10_000):
        if i % 2:
            data = {
                "e": "bookTicker",
                "u": i,
                "s": "BTCUSDT",
                "b": f"96000.{i % 90 + 10}",
                "B": "1.500",
                "a": f"96001.{i % 90 + 10}",
                "A": "0.700",
                "T": T + i,
                "E": T + i,
            }
            binance.append(json.dumps({"stream": "btcusdt@bookTicker", "data": data}).encode())
        else:
            data = {
                "e": "trade",
                "E": T + i,
                "T": T + i,
                "s": "BTCUSDT",
                "t": i,
                "p": f"96000.{i % 90 + 10}",
                "q": "0.010",
                "X": "MARKET",
                "m": bool(i % 4),
            }
            binance.append(json.dumps({"stream": "btcusdt@trade", "data": data}).encode())
    out["binance-ws"] = (binance, "BTCUSDT")
    sim = [
        json.dumps(
            {
                "type": "quote",
                "symbol": "SIM-A",
                "ts_ns": T * 10**6 + i,
                "bid": f"99.{i % 90 + 10}",
                "bid_size": "2",
                "ask": f"100.{i % 90 + 10}",
                "ask_size": "3",
            }
        ).encode()
        for i in range(10_000)
    ]
    out["sim"] = (sim, None)
    return out


def main() -> None:
    result: dict[str, object] = {}
    for fmt, (payloads, symbol) in samples().items():
        times = []
        ticks = 0
        for _ in range(RUNS):
            ticks = 0
            started = time.perf_counter()
            for payload in payloads:
                ticks += len(parse(fmt, payload, recv_ns=0, symbol=symbol))
            times.append(time.perf_counter() - started)
        best = statistics.median(times)
        result[fmt] = {"records": len(payloads), "records_per_s": round(len(payloads) / best), "ticks_per_s": round(ticks / best)}
    result["load_average_1m"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()

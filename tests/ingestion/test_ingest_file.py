from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from celery import current_app
from django.core.management import CommandError, call_command

from ingestion.models import ClockSource, IngestedFile, QuarantinedMessage, Quote, RawStream, Trade
from ingestion.rawstore import RawStore
from ingestion.selectors import book_snapshot, latest_quote
from ingestion.services import file_ingest
from trading.queues import ALERT_RAISE_TASK

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
QUOTES = DATA / "tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv"
TRADES = DATA / "tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv"
BYBIT = DATA / "bybit_XRPUSDT_ob500_2024-12-01.data"


@pytest.fixture
def raw_dir(settings, tmp_path):
    settings.RAW_STORE_DIR = tmp_path / "raw"
    return settings.RAW_STORE_DIR


@pytest.fixture
def sent(monkeypatch):
    """Every task sent by name (alerts, detection), captured instead of reaching a broker."""
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        current_app, "send_task", lambda name, args=None, kwargs=None, **_: calls.append((name, kwargs or {"args": args}))
    )
    return calls


def ingest(*args: str) -> dict:
    out = io.StringIO()
    call_command("ingest_file", *args, stdout=out)
    return json.loads(out.getvalue())


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def us_to_ns(text: str) -> int:
    return int(text) * 1000


@pytest.mark.django_db
def test_it_loads_every_tardis_quote_exactly_and_raises_the_drift_alert(
    raw_dir, redis_clean, sent, django_capture_on_commit_callbacks
):
    rows = csv_rows(QUOTES)
    with django_capture_on_commit_callbacks(execute=True):
        out = ingest("--format", "tardis-quotes", str(QUOTES))
    stream = out["stream"]
    assert out["records"] == out["quotes"] == len(rows) == 9999
    assert out["quarantined"] == 0
    assert Quote.objects.filter(raw_stream=stream).count() == 9999
    # The raw store holds every row byte-exact, in file order.
    raw = list(RawStore(raw_dir).read(stream))
    assert len(raw) == 9999
    assert raw[0].payload.decode() == QUOTES.read_text().splitlines()[1]
    first = Quote.objects.get(raw_stream=stream, raw_seq=1)
    last = Quote.objects.get(raw_stream=stream, raw_seq=9999)
    for stored, row in ((first, rows[0]), (last, rows[-1])):
        assert (stored.bid, stored.bid_size, stored.ask, stored.ask_size) == (
            Decimal(row["bid_price"]),
            Decimal(row["bid_amount"]),
            Decimal(row["ask_price"]),
            Decimal(row["ask_amount"]),
        )
        assert int(stored.source_ts.timestamp() * 1_000_000) == int(row["timestamp"])
        assert int(stored.recv_ts.timestamp() * 1_000_000) == int(row["local_timestamp"])
    # The drift estimate: the baseline is the minimum lag of the last window
    # (1000 samples), so it lies within the file's lag range, above 100 ms.
    lags_ms = [(int(r["local_timestamp"]) - int(r["timestamp"])) / 1000 for r in rows]
    window_min = min(lags_ms[-1000:])
    clock = ClockSource.objects.get(source=stream)
    assert clock.baseline_ms == pytest.approx(window_min)
    assert clock.drift_alert is True and clock.samples == 9999
    alerts = [kwargs for name, kwargs in sent if name == ALERT_RAISE_TASK]
    assert len(alerts) == 1
    assert alerts[0]["kind"] == "clock_drift" and alerts[0]["dedup_key"] == f"clock_drift:{stream}"
    assert stream in alerts[0]["message"] and "ms" in alerts[0]["message"]
    print(
        json.dumps(
            {
                "tardis_quote_lag_ms": {"min": min(lags_ms), "max": max(lags_ms), "median": sorted(lags_ms)[len(lags_ms) // 2]},
                "estimate": {"baseline_ms": clock.baseline_ms, "offset_ms": clock.offset_ms, "jitter_ms": clock.jitter_ms},
            }
        )
    )
    latest = latest_quote("BTCUSDT")
    assert latest is not None and latest.bid == Decimal(rows[-1]["bid_price"])


@pytest.mark.django_db
def test_it_loads_every_tardis_trade_exactly(raw_dir, redis_clean, sent):
    rows = csv_rows(TRADES)
    out = ingest("--format", "tardis-trades", str(TRADES), "--stream", "tardis-trades-test")
    assert out["records"] == out["trades"] == len(rows) == 9999
    assert Trade.objects.filter(raw_stream="tardis-trades-test").count() == 9999
    first = Trade.objects.get(raw_stream="tardis-trades-test", raw_seq=1)
    last = Trade.objects.get(raw_stream="tardis-trades-test", raw_seq=9999)
    for stored, row in ((first, rows[0]), (last, rows[-1])):
        assert (stored.price, stored.size, stored.trade_id, stored.aggressor) == (
            Decimal(row["price"]),
            Decimal(row["amount"]),
            row["id"],
            row["side"],
        )
        assert int(stored.source_ts.timestamp() * 1_000_000) == int(row["timestamp"])
    assert RawStream.objects.get(name="tardis-trades-test").fmt == "tardis-trades"


@pytest.mark.django_db
def test_it_keeps_the_bybit_book_from_the_file(raw_dir, redis_clean, sent):
    out = ingest("--format", "bybit-ob", str(BYBIT))
    lines = BYBIT.read_text().splitlines()
    assert out["records"] == out["book_updates"] == len(lines) == 50
    assert out["quotes"] == out["trades"] == 0
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    for line in lines:
        msg = json.loads(line)
        if msg["type"] == "snapshot":
            bids.clear()
            asks.clear()
        for side, levels in ((bids, msg["data"]["b"]), (asks, msg["data"]["a"])):
            for price, size in levels:
                side.pop(Decimal(price), None) if Decimal(size) == 0 else side.__setitem__(Decimal(price), Decimal(size))
    snap = book_snapshot("XRPUSDT", 50)
    assert snap is not None
    assert list(snap.bids) == sorted(bids.items(), reverse=True)[:50]
    assert list(snap.asks) == sorted(asks.items())[:50]


def binance_lines() -> tuple[list[str], dict]:
    """A short realistic USD-M capture: ack, depth before and after the REST snapshot, quotes, trades."""
    t = 1_733_011_200_000  # 2024-12-01T00:00:00Z in ms
    lag = 7_000_000  # 7 ms from venue to us

    def ws(stream: str, data: dict, ms: int, extra_ns: int = 0) -> str:
        return f"{ms * 1_000_000 + lag + extra_ns} " + json.dumps({"stream": stream, "data": data})

    depth = [
        {
            "e": "depthUpdate",
            "E": t + 1,
            "T": t + 1,
            "s": "BTCUSDT",
            "U": 100,
            "u": 105,
            "pu": 99,
            "b": [["96000.10", "1.500"]],
            "a": [["96000.20", "0.700"]],
        },
        {
            "e": "depthUpdate",
            "E": t + 2,
            "T": t + 2,
            "s": "BTCUSDT",
            "U": 106,
            "u": 110,
            "pu": 105,
            "b": [["96000.00", "0"], ["95999.90", "2.250"]],
            "a": [["96000.30", "1.100"]],
        },
        {
            "e": "depthUpdate",
            "E": t + 5,
            "T": t + 5,
            "s": "BTCUSDT",
            "U": 111,
            "u": 115,
            "pu": 110,
            "b": [["96000.10", "0.900"]],
            "a": [["96000.20", "0"], ["96000.40", "3.000"]],
        },
        {
            "e": "depthUpdate",
            "E": t + 6,
            "T": t + 6,
            "s": "BTCUSDT",
            "U": 116,
            "u": 120,
            "pu": 115,
            "b": [["95999.80", "4.000"]],
            "a": [["96000.30", "0.400"]],
        },
    ]
    snapshot = {
        "lastUpdateId": 108,
        "E": t + 3,
        "T": t + 3,
        "bids": [["96000.10", "1.200"], ["96000.00", "0.500"], ["95999.50", "8.000"]],
        "asks": [["96000.20", "0.600"], ["96000.50", "2.000"], ["96001.00", "5.000"]],
    }
    quotes = [
        {
            "e": "bookTicker",
            "u": 104,
            "s": "BTCUSDT",
            "b": "96000.10",
            "B": "1.500",
            "a": "96000.20",
            "A": "0.700",
            "T": t + 1,
            "E": t + 1,
        },
        {
            "e": "bookTicker",
            "u": 119,
            "s": "BTCUSDT",
            "b": "96000.10",
            "B": "0.900",
            "a": "96000.30",
            "A": "0.400",
            "T": t + 6,
            "E": t + 6,
        },
    ]
    trades = [
        {
            "e": "trade",
            "E": t + 4,
            "T": t + 4,
            "s": "BTCUSDT",
            "t": 5001,
            "p": "96000.20",
            "q": "0.010",
            "X": "MARKET",
            "m": False,
        },
        {
            "e": "trade",
            "E": t + 6,
            "T": t + 6,
            "s": "BTCUSDT",
            "t": 5002,
            "p": "96000.10",
            "q": "0.250",
            "X": "MARKET",
            "m": True,
        },
    ]
    lines = [
        f"{t * 1_000_000} " + json.dumps({"result": None, "id": 1}),
        ws("btcusdt@depth@100ms", depth[0], t + 1),
        ws("btcusdt@bookTicker", quotes[0], t + 1, 1000),
        ws("btcusdt@depth@100ms", depth[1], t + 2),
        f"{(t + 3) * 1_000_000 + 40_000_000} " + json.dumps(snapshot),  # the REST answer, 40 ms later
        ws("btcusdt@trade", trades[0], t + 4),
        ws("btcusdt@depth@100ms", depth[2], t + 5),
        ws("btcusdt@depth@100ms", depth[3], t + 6),
        ws("btcusdt@bookTicker", quotes[1], t + 6, 1000),
        ws("btcusdt@trade", trades[1], t + 6, 2000),
    ]
    return lines, {"depth": depth, "snapshot": snapshot, "quotes": quotes, "trades": trades, "lag": lag}


@pytest.mark.django_db
def test_it_loads_a_binance_capture_with_quotes_trades_and_a_joined_book(raw_dir, tmp_path, redis_clean, sent):
    lines, parts = binance_lines()
    path = tmp_path / "binance.ws"
    path.write_text("\n".join(lines) + "\n")
    out = ingest("--format", "binance-ws", str(path), "--symbol", "BTCUSDT")
    assert out["records"] == 10
    assert out["quotes"] == 2 and out["trades"] == 2
    assert out["quarantined"] == 0
    stream = out["stream"]
    # Receive time is the file's, kept apart from the venue's.
    raw = list(RawStore(raw_dir).read(stream))
    assert [r.recv_ns for r in raw] == [int(line.split(" ", 1)[0]) for line in lines]
    stored_quotes = list(Quote.objects.filter(raw_stream=stream).order_by("raw_seq"))
    assert [(q.bid, q.bid_size, q.ask, q.ask_size) for q in stored_quotes] == [
        (Decimal(q["b"]), Decimal(q["B"]), Decimal(q["a"]), Decimal(q["A"])) for q in parts["quotes"]
    ]
    assert [int(q.source_ts.timestamp() * 1000) for q in stored_quotes] == [q["T"] for q in parts["quotes"]]
    assert [int(round(q.recv_ts.timestamp() * 1_000_000)) for q in stored_quotes] == [
        (q["T"] * 1_000_000 + parts["lag"] + 1000) // 1000 for q in parts["quotes"]
    ]
    stored_trades = list(Trade.objects.filter(raw_stream=stream).order_by("raw_seq"))
    assert [(t.trade_id, t.price, t.size, t.aggressor) for t in stored_trades] == [
        ("5001", Decimal("96000.20"), Decimal("0.010"), "buy"),
        ("5002", Decimal("96000.10"), Decimal("0.250"), "sell"),
    ]
    # The book by Binance's rules, rebuilt by hand: the snapshot (id 108),
    # the first event spanning it (106..110), then the rest; the event
    # ending at 105 predates the snapshot and is dropped.
    bids = {Decimal(p): Decimal(s) for p, s in parts["snapshot"]["bids"]}
    asks = {Decimal(p): Decimal(s) for p, s in parts["snapshot"]["asks"]}
    for event in parts["depth"][1:]:
        for side, levels in ((bids, event["b"]), (asks, event["a"])):
            for p, s in levels:
                if Decimal(s) == 0:
                    side.pop(Decimal(p), None)
                else:
                    side[Decimal(p)] = Decimal(s)
    snap = book_snapshot("BTCUSDT", 20)
    assert snap is not None
    assert list(snap.bids) == sorted(bids.items(), reverse=True)
    assert list(snap.asks) == sorted(asks.items())
    assert snap.bids[0] == (Decimal("96000.10"), Decimal("0.900"))
    clock = ClockSource.objects.get(source=stream)
    assert clock.baseline_ms == pytest.approx(7.0)
    assert clock.drift_alert is False


@pytest.mark.django_db
def test_loading_the_same_file_twice_is_refused_and_adds_nothing(raw_dir, redis_clean, sent):
    ingest("--format", "tardis-trades", str(TRADES), "--stream", "twice")
    with pytest.raises(CommandError, match="already loaded"):
        ingest("--format", "tardis-trades", str(TRADES), "--stream", "twice")
    assert Trade.objects.filter(raw_stream="twice").count() == 9999
    assert len(list(RawStore(raw_dir).read("twice"))) == 9999
    assert IngestedFile.objects.get(stream="twice").status == "ingested"


@pytest.mark.django_db
def test_a_load_that_crashed_part_way_resumes_without_duplicates(raw_dir, redis_clean, sent):
    calls = []

    def flaky_send(name, args=None, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise ConnectionError("broker went away")

    store = RawStore(raw_dir)
    with pytest.raises(ConnectionError):
        file_ingest(path=TRADES, fmt="tardis-trades", store=store, stream="crashy", queue=True, batch=2000, send=flaky_send)
    # Three batches reached the raw store before the crash, none was ingested.
    assert IngestedFile.objects.get(stream="crashy").status == "appending"
    assert len(list(store.read("crashy"))) == 6000
    assert Trade.objects.filter(raw_stream="crashy").count() == 0
    out = file_ingest(path=TRADES, fmt="tardis-trades", store=store, stream="crashy", batch=2000)
    assert out["resumed_records"] == 6000 and out["appended"] == 3999
    assert out["trades"] == 9999
    raw = list(store.read("crashy"))
    assert [r.seq for r in raw] == list(range(1, 10000))
    assert [r.payload.decode() for r in raw] == TRADES.read_text().splitlines()[1:]
    assert Trade.objects.filter(raw_stream="crashy").count() == 9999
    assert QuarantinedMessage.objects.filter(raw_stream="crashy").count() == 0

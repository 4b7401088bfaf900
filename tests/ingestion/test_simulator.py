from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from decimal import Decimal, InvalidOperation

import pytest

from ingestion.simulator import (
    DEFAULT_SYMBOLS,
    NS,
    Activity,
    FaultConfig,
    MarketSimulator,
    Regime,
    SymbolSpec,
)

T0 = 1_733_011_200 * NS
D = Decimal


def _run(sim: MarketSimulator, seconds: int, step_s: float = 1.0, max_messages: int = 1_000_000) -> list[bytes]:
    out: list[bytes] = []
    steps = int(seconds / step_s)
    for k in range(steps + 1):
        out += sim.next_batch(T0 + int(k * step_s * NS), max_messages)
    return out


def _decode(raw: bytes) -> dict | None:
    """Decode and validate one wire message the way a strict reader would; None means malformed."""
    try:
        msg = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    required = {
        "quote": ("symbol", "ts_ns", "bid", "bid_size", "ask", "ask_size"),
        "trade": ("symbol", "ts_ns", "price", "size", "side", "id"),
        "book": ("symbol", "ts_ns", "snapshot", "seq", "bids", "asks"),
    }.get(msg.get("type"))
    if required is None or any(k not in msg for k in required):
        return None
    try:
        if msg["type"] == "quote":
            prices = [D(msg["bid"]), D(msg["ask"])]
        elif msg["type"] == "trade":
            prices = [D(msg["price"])]
        else:
            prices = [D(p) for p, _ in msg["bids"] + msg["asks"]]
    except InvalidOperation:
        return None
    if any(p <= 0 for p in prices):
        return None
    return msg


def _replay_books(messages: list[dict]) -> dict[str, tuple[dict[D, D], dict[D, D]]]:
    books: dict[str, tuple[dict[D, D], dict[D, D]]] = {}
    for msg in messages:
        if msg["type"] != "book":
            continue
        if msg["snapshot"] or msg["symbol"] not in books:
            books[msg["symbol"]] = ({}, {})
        bids, asks = books[msg["symbol"]]
        for side, rows in ((bids, msg["bids"]), (asks, msg["asks"])):
            for p, s in rows:
                if D(s) == 0:
                    side.pop(D(p), None)
                else:
                    side[D(p)] = D(s)
    return books


def test_it_is_deterministic_under_a_seed_and_independent_of_batch_chunking() -> None:
    first = _run(MarketSimulator(DEFAULT_SYMBOLS, seed=42), 30)
    second = _run(MarketSimulator(DEFAULT_SYMBOLS, seed=42), 30)
    other_seed = _run(MarketSimulator(DEFAULT_SYMBOLS, seed=43), 30)
    chunked_sim = MarketSimulator(DEFAULT_SYMBOLS, seed=42)
    chunked: list[bytes] = []
    # Small batches and a finer clock must give the very same byte stream.
    for k in range(0, 301):
        now = T0 + k * NS // 10
        while batch := chunked_sim.next_batch(now, 7):
            chunked += batch

    assert len(first) > 1000
    assert first == second
    assert chunked == first
    assert other_seed != first


def test_it_emits_positive_on_tick_prices_and_on_lot_sizes_in_time_order() -> None:
    raw = _run(MarketSimulator(DEFAULT_SYMBOLS, seed=1), 60)
    messages = [_decode(r) for r in raw]
    assert all(m is not None for m in messages)
    last_ts = 0
    for msg in messages:
        assert msg is not None
        spec = DEFAULT_SYMBOLS[msg["symbol"]]
        assert msg["ts_ns"] >= last_ts
        last_ts = msg["ts_ns"]
        if msg["type"] == "quote":
            pairs = [(msg["bid"], msg["bid_size"]), (msg["ask"], msg["ask_size"])]
        elif msg["type"] == "trade":
            pairs = [(msg["price"], msg["size"])]
            assert msg["side"] in ("buy", "sell")
        else:
            pairs = [tuple(level) for level in msg["bids"] + msg["asks"]]
        for price, size in pairs:
            assert D(price) > 0
            assert D(price) % spec.tick_size == 0, (msg["symbol"], price)
            assert D(size) >= 0
            assert D(size) % spec.lot_size == 0, (msg["symbol"], size)
    kinds = {m["type"] for m in messages if m}
    assert kinds == {"quote", "trade", "book"}


def test_it_never_crosses_the_book_and_keeps_the_ladder_consistent_with_l1() -> None:
    raw = _run(MarketSimulator(DEFAULT_SYMBOLS, seed=2), 60)
    messages = [json.loads(r) for r in raw]
    books: dict[str, tuple[dict[D, D], dict[D, D]]] = {}
    last_quote: dict[str, dict] = {}
    last_seq: dict[str, int] = {}
    checked = 0
    for msg in messages:
        sym = msg["symbol"]
        spec = DEFAULT_SYMBOLS[sym]
        if msg["type"] == "quote":
            assert D(msg["bid"]) < D(msg["ask"])
            last_quote[sym] = msg
            continue
        if msg["type"] == "trade":
            quote = last_quote[sym]
            # A trade prints at the touch: buys lift the ask, sells hit the bid.
            expected = quote["ask"] if msg["side"] == "buy" else quote["bid"]
            assert msg["price"] == expected
            continue
        if sym in last_seq:
            assert msg["seq"] == last_seq[sym] + 1
        last_seq[sym] = msg["seq"]
        books.update(_replay_books([msg]) if msg["snapshot"] else {})
        if not msg["snapshot"]:
            bids, asks = books[sym]
            for side, rows in ((bids, msg["bids"]), (asks, msg["asks"])):
                for p, s in rows:
                    if D(s) == 0:
                        side.pop(D(p), None)
                    else:
                        side[D(p)] = D(s)
        bids, asks = books[sym]
        best_bid, best_ask = max(bids), min(asks)
        assert best_bid < best_ask
        # The book message follows its quote at the same timestamp; its touch is the quote.
        quote = last_quote[sym]
        assert quote["ts_ns"] == msg["ts_ns"]
        assert (best_bid, bids[best_bid]) == (D(quote["bid"]), D(quote["bid_size"]))
        assert (best_ask, asks[best_ask]) == (D(quote["ask"]), D(quote["ask_size"]))
        # The ladder is spec.levels contiguous ticks per side.
        assert sorted(bids, reverse=True) == [best_bid - i * spec.tick_size for i in range(spec.levels)]
        assert sorted(asks) == [best_ask + i * spec.tick_size for i in range(spec.levels)]
        checked += 1
    assert checked > 500


def test_it_makes_resting_size_grow_with_depth() -> None:
    raw = _run(MarketSimulator({"SIM-ETHUSD": DEFAULT_SYMBOLS["SIM-ETHUSD"]}, seed=3), 120)
    by_depth: dict[int, list[D]] = defaultdict(list)
    for msg in map(json.loads, raw):
        if msg["type"] == "book" and msg["snapshot"]:
            for depth, (_, size) in enumerate(msg["bids"]):
                by_depth[depth].append(D(size))
    books = _replay_books([json.loads(r) for r in raw])
    bids, _ = books["SIM-ETHUSD"]
    ordered = [bids[p] for p in sorted(bids, reverse=True)]
    by_depth_final = statistics.mean(ordered[15:]) > statistics.mean(ordered[1:5])
    assert by_depth_final
    assert statistics.mean(by_depth[19]) > statistics.mean(by_depth[1])


def test_it_switches_volatility_regimes_with_observably_different_realized_vol() -> None:
    spec = SymbolSpec("SIM-T", D("1000.00"), D("0.01"), D("1"), base_vol=0.8, quote_rate=3.0, trade_rate=0.5, levels=3)
    # Short dwell times so a few simulated minutes see every regime several times.
    regimes = (
        Regime("calm", 0.5, 1.0, 40.0, (("normal", 1.0),)),
        Regime("normal", 1.0, 1.0, 40.0, (("calm", 0.5), ("stressed", 0.5))),
        Regime("stressed", 3.0, 1.0, 40.0, (("normal", 1.0),)),
    )
    activity = (Activity("normal", 1.0, 1e9, (("normal", 1.0),)),)
    sim = MarketSimulator({"SIM-T": spec}, seed=11, regimes=regimes, activity=activity)
    returns: dict[str, list[float]] = defaultdict(list)
    spreads: dict[str, list[D]] = defaultdict(list)
    prev_mid: float | None = None
    for k in range(1500):
        regime_before = sim.regime("SIM-T")
        quotes = [m for m in map(json.loads, sim.next_batch(T0 + k * NS, 10**6)) if m["type"] == "quote"]
        if not quotes:
            continue
        mid = (float(quotes[-1]["bid"]) + float(quotes[-1]["ask"])) / 2
        for q in quotes:
            spreads[sim.regime("SIM-T")].append(D(q["ask"]) - D(q["bid"]))
        # Only label a return when the regime did not change during the second.
        if prev_mid is not None and regime_before == sim.regime("SIM-T"):
            returns[regime_before].append(math.log(mid / prev_mid))
        prev_mid = mid
    assert set(returns) == {"calm", "normal", "stressed"}
    assert min(len(r) for r in returns.values()) > 30
    vol = {name: statistics.pstdev(r) for name, r in returns.items()}
    # The configured ratio stressed/calm is 6; sampling noise stays far below a factor 2.
    assert vol["stressed"] > 3 * vol["calm"]
    assert vol["calm"] < vol["normal"] < vol["stressed"]
    # Spreads widen with volatility.
    assert statistics.mean(spreads["stressed"]) > statistics.mean(spreads["calm"])


def test_it_has_bursts_and_quiet_spells_in_message_intensity() -> None:
    spec = SymbolSpec("SIM-E", D("3000.00"), D("0.01"), D("0.01"), base_vol=0.75, levels=3)
    sim = MarketSimulator({"SIM-E": spec}, seed=5)
    counts: dict[str, list[int]] = defaultdict(list)
    for k in range(600):
        state = sim.activity("SIM-E")
        batch = sim.next_batch(T0 + k * NS, 10**6)
        if state == sim.activity("SIM-E"):
            counts[state].append(len(batch))
    assert {"quiet", "burst", "normal"} <= set(counts)
    assert statistics.mean(counts["burst"]) > 2 * statistics.mean(counts["normal"])
    assert statistics.mean(counts["quiet"]) < 0.6 * statistics.mean(counts["normal"])


def test_it_injects_malformed_and_duplicate_messages_at_about_the_configured_rate() -> None:
    faults = FaultConfig(malformed_prob=0.05, duplicate_prob=0.03)
    busy = SymbolSpec("SIM-B", D("100.00"), D("0.01"), D("1"), base_vol=0.5, quote_rate=40.0, trade_rate=10.0, levels=3)
    sim = MarketSimulator({"SIM-B": busy}, seed=8, faults=faults)
    raw = _run(sim, 100)
    duplicates = sum(1 for a, b in zip(raw, raw[1:], strict=False) if a == b)
    originals = len(raw) - duplicates
    malformed_messages = [r for r in raw if _decode(r) is None]
    # Duplicated malformed payloads are counted once.
    malformed = len(malformed_messages) - sum(1 for a, b in zip(raw, raw[1:], strict=False) if a == b and _decode(a) is None)
    assert originals > 7_000
    # Binomial noise at this size is about 0.0025 on the malformed rate.
    assert 0.04 < malformed / originals < 0.06
    assert 0.02 < duplicates / originals < 0.04
    assert malformed == sim.fault_counts["malformed"]
    kinds = {k for k in sim.fault_counts if k.startswith("malformed_")}
    assert kinds == {"malformed_garbage", "malformed_missing_field", "malformed_negative_price"}
    assert any(not r.isascii() for r in malformed_messages)


def test_it_crosses_the_book_only_when_that_fault_is_on() -> None:
    sim = MarketSimulator(DEFAULT_SYMBOLS, seed=9, faults=FaultConfig(crossed_prob=0.02))
    messages = [json.loads(r) for r in _run(sim, 60)]
    quotes = [m for m in messages if m["type"] == "quote"]
    crossed_quotes = sum(1 for q in quotes if D(q["bid"]) >= D(q["ask"]))
    crossed_books = 0
    books: dict[str, tuple[dict[D, D], dict[D, D]]] = {}
    for msg in messages:
        if msg["type"] == "book":
            books.update(_replay_books([msg]) if msg["snapshot"] else {})
            bids, asks = books[msg["symbol"]]
            for side, rows in ((bids, msg["bids"]), (asks, msg["asks"])):
                for p, s in rows:
                    if D(s) == 0:
                        side.pop(D(p), None)
                    else:
                        side[D(p)] = D(s)
            crossed_books += max(bids) >= min(asks)
    assert crossed_quotes == sim.fault_counts["crossed"]
    # Quote events are a share of all quotes (trades also re-quote the touch).
    assert 0.005 < crossed_quotes / len(quotes) < 0.03
    # The crossing level is removed again by the next book message of the symbol.
    assert crossed_books == crossed_quotes


def test_it_offsets_and_skews_source_timestamps() -> None:
    clean = [json.loads(r) for r in _run(MarketSimulator(DEFAULT_SYMBOLS, seed=4), 30)]
    offset = [
        json.loads(r) for r in _run(MarketSimulator(DEFAULT_SYMBOLS, seed=4, faults=FaultConfig(clock_offset_ns=700_000_000)), 30)
    ]
    assert len(clean) == len(offset)
    assert all(b["ts_ns"] - a["ts_ns"] == 700_000_000 for a, b in zip(clean, offset, strict=True))

    sim = MarketSimulator(DEFAULT_SYMBOLS, seed=4, faults=FaultConfig(clock_skew_prob=0.1, clock_skew_ns=300_000_000))
    skewed = [json.loads(r) for r in _run(sim, 30)]
    backwards = sum(1 for a, b in zip(skewed, skewed[1:], strict=False) if b["ts_ns"] < a["ts_ns"])
    assert sim.fault_counts["clock_skew"] == pytest.approx(0.1 * len(skewed), rel=0.25)
    assert backwards > 0


def test_it_drops_whole_seconds_in_gaps_and_resends_a_snapshot_after_each() -> None:
    eth = {"SIM-ETHUSD": DEFAULT_SYMBOLS["SIM-ETHUSD"]}
    sim = MarketSimulator(eth, seed=6, faults=FaultConfig(gap_prob=0.05, gap_duration_s=2.0))
    messages = [json.loads(r) for r in _run(sim, 300)]
    gaps = sim.fault_counts["gap"]
    assert 5 <= gaps <= 30
    assert sim.fault_counts["dropped_in_gap"] > 0
    silences = sum(1 for a, b in zip(messages, messages[1:], strict=False) if b["ts_ns"] - a["ts_ns"] >= 1.9 * NS)
    assert silences >= gaps * 0.8
    last_seq: dict[str, int] = {}
    jumps = 0
    for msg in messages:
        if msg["type"] != "book":
            continue
        sym = msg["symbol"]
        if sym in last_seq and msg["seq"] != last_seq[sym] + 1:
            jumps += 1
            # The feed resends a full book right after a gap so readers can recover.
            assert msg["snapshot"] is True
        last_seq[sym] = msg["seq"]
    assert jumps >= gaps


def test_it_rejects_a_symbol_spec_with_a_non_positive_tick() -> None:
    with pytest.raises(ValueError):
        MarketSimulator({"X": SymbolSpec("X", D("1"), D("0"), D("1"), 0.5)}, seed=1)

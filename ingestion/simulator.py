"""A seeded market simulator that speaks the ``sim`` wire format.

It exists so that every process of the platform can run, and be tested,
without a venue: it emits raw bytes exactly like a venue feed would, and the
platform stores them raw and parses them like any other source.

The model, per symbol:

- The log mid follows a diffusion whose volatility depends on a market regime
  (calm / normal / stressed) that switches as a continuous-time Markov chain,
  plus a short-term drift (an Ornstein-Uhlenbeck process) that trades follow.
- Message intensity has its own Markov chain (quiet / normal / burst) on top
  of the regime's activity, so the feed has bursts and quiet spells.
- The spread widens with volatility, floored at one tick; the touch sizes are
  log-normal; the L2 ladder has ``levels`` levels per side at tick multiples
  from the touch, sizes growing with depth, and its best level always equals
  the quote.
- Trades arrive as a Poisson process, at the ask (buys) or the bid (sells),
  with the side biased by the short-term drift; a trade eats into the touch.

Prices and sizes are held as integer ticks and lots so every emitted price is
exactly on tick and every size on lot; floats only drive the randomness.

Wire messages (compact JSON, decimal strings)::

    {"type":"quote","symbol":S,"ts_ns":int,"bid":"p","bid_size":"s","ask":"p","ask_size":"s"}
    {"type":"trade","symbol":S,"ts_ns":int,"price":"p","size":"s","side":"buy|sell","id":"n"}
    {"type":"book","symbol":S,"ts_ns":int,"snapshot":bool,"seq":int,"bids":[["p","s"]],"asks":[...]}

Optional faults (``FaultConfig``) corrupt the feed on purpose so the
platform's quarantine and gap handling are exercised: clock skew, gaps,
crossed books, duplicates and malformed messages.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

SECONDS_PER_YEAR = 365.0 * 24 * 3600
NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One simulated instrument.

    ``base_vol`` is the annualized volatility of the log mid in the normal
    regime (0.6 means 60 % a year, a typical crypto figure). Rates are events
    per second in the normal regime and normal activity.
    """

    symbol: str
    start_price: Decimal
    tick_size: Decimal
    lot_size: Decimal
    base_vol: float
    quote_rate: float = 8.0
    trade_rate: float = 2.0
    levels: int = 20
    typical_size_lots: float = 40.0
    snapshot_interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Regime:
    """A volatility regime: how much the mid moves and how busy the market is."""

    name: str
    vol_mult: float
    activity_mult: float
    mean_dwell_s: float
    # Names of the regimes this one can switch to, with their weights.
    next_states: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Activity:
    """An intensity state layered on the regime: quiet spells and bursts."""

    name: str
    rate_mult: float
    mean_dwell_s: float
    next_states: tuple[tuple[str, float], ...]


DEFAULT_REGIMES: tuple[Regime, ...] = (
    Regime("calm", 0.5, 0.6, 900.0, (("normal", 1.0),)),
    Regime("normal", 1.0, 1.0, 1200.0, (("calm", 0.6), ("stressed", 0.4))),
    Regime("stressed", 3.0, 2.5, 180.0, (("normal", 1.0),)),
)

DEFAULT_ACTIVITY: tuple[Activity, ...] = (
    Activity("quiet", 0.25, 45.0, (("normal", 1.0),)),
    Activity("normal", 1.0, 120.0, (("quiet", 0.5), ("burst", 0.5))),
    Activity("burst", 4.0, 8.0, (("normal", 1.0),)),
)


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Probabilities of deliberate feed faults; all zero means a clean feed.

    - ``clock_offset_ns``: constant offset added to every source timestamp
      (a venue clock that runs ahead, or behind when negative).
    - ``clock_skew_prob`` / ``clock_skew_ns``: per message, the chance its
      timestamp is shifted by up to +/- ``clock_skew_ns`` (a clock jump).
    - ``gap_prob`` / ``gap_duration_s``: per simulated second, the chance a
      gap starts; every message inside it is dropped.
    - ``crossed_prob``: per quote event, the chance the quote and the book
      come out crossed (bid above ask).
    - ``duplicate_prob``: per message, the chance it is sent twice.
    - ``malformed_prob``: per message, the chance it is replaced by garbage
      bytes, JSON with a missing field, or a negative price.
    """

    clock_offset_ns: int = 0
    clock_skew_prob: float = 0.0
    clock_skew_ns: int = 250_000_000
    gap_prob: float = 0.0
    gap_duration_s: float = 1.0
    crossed_prob: float = 0.0
    duplicate_prob: float = 0.0
    malformed_prob: float = 0.0


DEFAULT_SYMBOLS: dict[str, SymbolSpec] = {
    "SIM-BTCUSD": SymbolSpec("SIM-BTCUSD", Decimal("50000.0"), Decimal("0.1"), Decimal("0.001"), 0.60),
    "SIM-ETHUSD": SymbolSpec("SIM-ETHUSD", Decimal("3000.00"), Decimal("0.01"), Decimal("0.01"), 0.75),
    "SIM-XRPUSD": SymbolSpec("SIM-XRPUSD", Decimal("0.5000"), Decimal("0.0001"), Decimal("1"), 0.90, typical_size_lots=5000.0),
}

# The spread in price units is this fraction of the one-second price move
# (sigma_1s * price), floored at one tick; it makes spreads widen with
# volatility while leaving a liquid symbol at one tick in calm markets.
_SPREAD_VOL_FACTOR = 0.02
# Time constant of the short-term drift, and its size relative to sigma.
_DRIFT_TAU_S = 30.0
_DRIFT_SCALE = 0.5


def _multiple_formatter(unit: Decimal) -> Callable[[int], str]:
    """Return n -> the decimal string of ``n * unit``, exactly as ``format(Decimal(n) * unit, "f")``.

    Formatting through integers is several times faster than Decimal
    arithmetic, and the simulator formats a price for every level it sends.
    """
    sign, digits, exponent = unit.as_tuple()
    if sign or not isinstance(exponent, int):
        raise ValueError(f"unit must be a positive finite decimal, got {unit}")
    mantissa = int("".join(map(str, digits)))
    if exponent >= 0:
        scale = mantissa * 10**exponent
        return lambda n: str(n * scale)
    places = -exponent
    base = 10**places

    def fmt(n: int) -> str:
        value = n * mantissa
        sign_str = "-" if value < 0 else ""
        whole, frac = divmod(abs(value), base)
        return f"{sign_str}{whole}.{frac:0{places}d}"

    return fmt


class _SymbolState:
    __slots__ = (
        "activity",
        "ask_lots",
        "ask_ticks",
        "asks",
        "bid_lots",
        "bid_ticks",
        "bids",
        "depth_logm",
        "drift",
        "injected",
        "last_snapshot_ns",
        "last_t_ns",
        "log_mid",
        "needs_snapshot",
        "px_cache",
        "px_fmt",
        "qty_fmt",
        "regime",
        "seq",
        "spec",
        "tick_f",
        "trade_id",
    )

    def __init__(self, spec: SymbolSpec, regime: Regime, activity: Activity) -> None:
        self.spec = spec
        self.tick_f = float(spec.tick_size)
        self.px_fmt = _multiple_formatter(spec.tick_size)
        self.px_cache: dict[int, str] = {}
        # Log of the median resting size at each depth: it grows linearly with depth.
        self.depth_logm = [math.log(max(1.0, spec.typical_size_lots * (1.0 + 0.35 * i))) for i in range(spec.levels)]
        self.qty_fmt = _multiple_formatter(spec.lot_size)
        self.log_mid = math.log(float(spec.start_price))
        self.drift = 0.0
        self.regime = regime
        self.activity = activity
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.bid_ticks = 0
        self.ask_ticks = 0
        self.bid_lots = 0
        self.ask_lots = 0
        self.seq = 0
        self.trade_id = 0
        self.last_t_ns = 0
        self.last_snapshot_ns = 0
        self.needs_snapshot = True
        # Bid levels placed by a crossed-book fault, removed on the next book message.
        self.injected: list[int] = []


class MarketSimulator:
    """Deterministic (under ``seed``) multi-symbol market feed in the ``sim`` wire format.

    Call ``next_batch(now_ns, max_messages)`` repeatedly with a non-decreasing
    ``now_ns``; it returns the messages whose time has come, in time order.
    The first call starts the simulated clock at ``now_ns``. The concatenated
    output does not depend on how calls are chunked.
    """

    def __init__(
        self,
        symbols: dict[str, SymbolSpec],
        seed: int,
        faults: FaultConfig | None = None,
        *,
        regimes: tuple[Regime, ...] = DEFAULT_REGIMES,
        activity: tuple[Activity, ...] = DEFAULT_ACTIVITY,
    ) -> None:
        if not symbols:
            raise ValueError("the simulator needs at least one symbol")
        for spec in symbols.values():
            if spec.start_price <= 0 or spec.tick_size <= 0 or spec.lot_size <= 0:
                raise ValueError(f"{spec.symbol}: start price, tick and lot must be positive")
        self.faults = faults or FaultConfig()
        self._rng = random.Random(seed)
        self._regimes = {r.name: r for r in regimes}
        self._activity = {a.name: a for a in activity}
        start_regime = self._regimes.get("normal", regimes[0])
        start_activity = self._activity.get("normal", activity[0])
        self._states = {name: _SymbolState(spec, start_regime, start_activity) for name, spec in symbols.items()}
        self._heap: list[tuple[int, int, str]] = []
        self._counter = 0
        self._pending: deque[bytes] = deque()
        self._started = False
        self._now_ns = 0
        self._gap_until_ns = -1
        self._next_gap_check_ns = 0
        self.fault_counts: Counter[str] = Counter()
        self.messages_emitted = 0

    # --------------------------------------------------------------- queries

    @property
    def symbols(self) -> list[str]:
        return list(self._states)

    def regime(self, symbol: str) -> str:
        return self._states[symbol].regime.name

    def activity(self, symbol: str) -> str:
        return self._states[symbol].activity.name

    def top_of_book(self, symbol: str) -> tuple[Decimal, Decimal]:
        """The simulator's own (fault-free) best bid and ask."""
        st = self._states[symbol]
        return self._px(st, st.bid_ticks), self._px(st, st.ask_ticks)

    # ------------------------------------------------------------------ feed

    def next_batch(self, now_ns: int, max_messages: int) -> list[bytes]:
        """Messages with time up to ``now_ns``, at most ``max_messages``, in time order."""
        if not self._started:
            self._start(now_ns)
        out: list[bytes] = []
        while len(out) < max_messages:
            if self._pending:
                out.append(self._pending.popleft())
                continue
            if not self._heap or self._heap[0][0] > now_ns:
                break
            t_ns, _, symbol = heapq.heappop(self._heap)
            self._step(self._states[symbol], t_ns)
        self.messages_emitted += len(out)
        return out

    def _start(self, now_ns: int) -> None:
        self._started = True
        self._now_ns = now_ns
        self._next_gap_check_ns = now_ns + NS
        for st in self._states.values():
            st.last_t_ns = now_ns
            self._reprice(st)
            self._update_book(st, now_ns)
            self._schedule(st, now_ns)

    def _schedule(self, st: _SymbolState, t_ns: int) -> None:
        rate = (st.spec.quote_rate + st.spec.trade_rate) * st.regime.activity_mult * st.activity.rate_mult
        dt_s = self._rng.expovariate(rate)
        self._counter += 1
        heapq.heappush(self._heap, (t_ns + max(1, int(dt_s * NS)), self._counter, st.spec.symbol))

    def _step(self, st: _SymbolState, t_ns: int) -> None:
        rng = self._rng
        self._now_ns = t_ns
        self._check_gap(t_ns)
        dt = (t_ns - st.last_t_ns) / NS
        st.last_t_ns = t_ns
        # 1. Regime and activity switch with probability 1 - exp(-dt / dwell).
        if rng.random() < 1.0 - math.exp(-dt / st.regime.mean_dwell_s):
            st.regime = self._regimes[self._pick(st.regime.next_states)]
        if rng.random() < 1.0 - math.exp(-dt / st.activity.mean_dwell_s):
            st.activity = self._activity[self._pick(st.activity.next_states)]
        # 2. The short-term drift mean-reverts; the mid diffuses with the regime's sigma.
        sigma = self._sigma(st)
        decay = math.exp(-dt / _DRIFT_TAU_S)
        drift_sd = _DRIFT_SCALE * sigma
        st.drift = st.drift * decay + drift_sd * math.sqrt(max(0.0, 1.0 - decay * decay)) * rng.gauss(0.0, 1.0)
        st.log_mid += (st.drift - 0.5 * sigma * sigma) * dt + sigma * math.sqrt(dt) * rng.gauss(0.0, 1.0)
        # 3. Pick the event kind in proportion to the base rates.
        quote_share = st.spec.quote_rate / (st.spec.quote_rate + st.spec.trade_rate)
        if rng.random() < quote_share:
            self._quote_event(st, t_ns)
        else:
            self._trade_event(st, t_ns)
        self._schedule(st, t_ns)

    def _pick(self, choices: tuple[tuple[str, float], ...]) -> str:
        total = sum(w for _, w in choices)
        x = self._rng.random() * total
        for name, weight in choices:
            x -= weight
            if x <= 0:
                return name
        return choices[-1][0]

    def _sigma(self, st: _SymbolState) -> float:
        """Volatility of the log mid per square-root second in the current regime."""
        return st.spec.base_vol * st.regime.vol_mult / math.sqrt(SECONDS_PER_YEAR)

    def _check_gap(self, t_ns: int) -> None:
        # One draw per elapsed simulated second keeps the gap rate per second
        # independent of how busy the feed is.
        if self.faults.gap_prob <= 0:
            return
        while self._next_gap_check_ns <= t_ns:
            start = self._next_gap_check_ns
            self._next_gap_check_ns += NS
            if start >= self._gap_until_ns and self._rng.random() < self.faults.gap_prob:
                self._gap_until_ns = start + int(self.faults.gap_duration_s * NS)
                self.fault_counts["gap"] += 1
                for st in self._states.values():
                    st.needs_snapshot = True

    # ---------------------------------------------------------------- events

    def _lots(self, median: float, sigma: float) -> int:
        # exp(gauss) is the log-normal draw; random.gauss is cheaper than lognormvariate.
        return max(1, round(math.exp(math.log(max(median, 1.0)) + sigma * self._rng.gauss(0.0, 1.0))))

    def _reprice(self, st: _SymbolState) -> None:
        """Set a new touch from the mid, with a volatility-driven spread and fresh sizes."""
        mid = math.exp(st.log_mid)
        sigma = self._sigma(st)
        spread_px = _SPREAD_VOL_FACTOR * sigma * mid * self._rng.lognormvariate(0.0, 0.3)
        spread_ticks = max(1, round(spread_px / st.tick_f))
        mid_ticks = mid / st.tick_f
        bid_ticks = max(1, math.floor(mid_ticks - spread_ticks / 2.0))
        st.bid_ticks = bid_ticks
        st.ask_ticks = bid_ticks + spread_ticks
        st.bid_lots = self._lots(st.spec.typical_size_lots, 0.8)
        st.ask_lots = self._lots(st.spec.typical_size_lots, 0.8)

    def _ladder(self, st: _SymbolState, best: int, step: int, best_lots: int, old: dict[int, int]) -> dict[int, int]:
        """Levels at tick multiples from the touch; sizes grow with depth and persist between updates."""
        ladder: dict[int, int] = {}
        depth_logm = st.depth_logm
        gauss = self._rng.gauss
        exp = math.exp
        for i in range(st.spec.levels):
            price = best + step * i
            if price <= 0:
                break
            size = old.get(price)
            if size is None:
                size = max(1, round(exp(depth_logm[i] + 0.6 * gauss(0.0, 1.0))))
            ladder[price] = size
        ladder[best] = best_lots
        # A couple of resting levels change per update, as orders come and go.
        n = len(ladder)
        if n > 1:
            for _ in range(2):
                i = self._rng.randrange(1, n)
                ladder[best + step * i] = max(1, round(exp(depth_logm[i] + 0.6 * gauss(0.0, 1.0))))
        return ladder

    def _quote_event(self, st: _SymbolState, t_ns: int) -> None:
        self._reprice(st)
        crossed = self.faults.crossed_prob > 0 and self._rng.random() < self.faults.crossed_prob
        self._update_book(st, t_ns, crossed=crossed)

    def _update_book(self, st: _SymbolState, t_ns: int, *, crossed: bool = False, touch_only: bool = False) -> None:
        old_bids, old_asks = st.bids, st.asks
        if touch_only:
            st.bids = {**old_bids, st.bid_ticks: st.bid_lots}
            st.asks = {**old_asks, st.ask_ticks: st.ask_lots}
        else:
            st.bids = self._ladder(st, st.bid_ticks, -1, st.bid_lots, old_bids)
            st.asks = self._ladder(st, st.ask_ticks, 1, st.ask_lots, old_asks)
        extra_bids: dict[int, int] = {}
        if crossed:
            # The fault: a bid level above the best ask, seen both in L1 and L2.
            self.fault_counts["crossed"] += 1
            cross_at = st.ask_ticks + 1
            extra_bids[cross_at] = st.bid_lots
            self._emit_quote(st, t_ns, bid_ticks=cross_at)
        else:
            self._emit_quote(st, t_ns)
        self._emit_book(st, t_ns, old_bids, old_asks, extra_bids)

    def _trade_event(self, st: _SymbolState, t_ns: int) -> None:
        rng = self._rng
        if not st.bids or not st.asks:
            return
        sigma = self._sigma(st)
        # Buyers dominate when the short-term drift is up, sellers when it is down.
        bias = math.tanh(st.drift / (_DRIFT_SCALE * sigma)) if sigma > 0 else 0.0
        is_buy = rng.random() < 0.5 + 0.35 * bias
        lots = self._lots(st.spec.typical_size_lots * 0.3, 1.0)
        price_ticks = st.ask_ticks if is_buy else st.bid_ticks
        st.trade_id += 1
        self._emit(
            {
                "type": "trade",
                "symbol": st.spec.symbol,
                "ts_ns": t_ns,
                "price": self._px_str(st, price_ticks),
                "size": self._qty_str(st, lots),
                "side": "buy" if is_buy else "sell",
                "id": str(st.trade_id),
            },
            t_ns,
        )
        # The trade eats into the touch it hit; the level never empties here
        # because the next quote event re-prices the whole touch anyway.
        if is_buy:
            st.ask_lots = max(1, st.ask_lots - lots)
        else:
            st.bid_lots = max(1, st.bid_lots - lots)
        self._update_book(st, t_ns, touch_only=True)

    # --------------------------------------------------------------- emitting

    @staticmethod
    def _px(st: _SymbolState, ticks: int) -> Decimal:
        return Decimal(ticks) * st.spec.tick_size

    @staticmethod
    def _px_str(st: _SymbolState, ticks: int) -> str:
        # A random walk revisits the same prices constantly, so their strings are cached.
        text = st.px_cache.get(ticks)
        if text is None:
            if len(st.px_cache) > 50_000:
                st.px_cache.clear()
            text = st.px_cache[ticks] = st.px_fmt(ticks)
        return text

    @staticmethod
    def _qty_str(st: _SymbolState, lots: int) -> str:
        return st.qty_fmt(lots)

    def _emit_quote(self, st: _SymbolState, t_ns: int, *, bid_ticks: int | None = None) -> None:
        self._emit(
            {
                "type": "quote",
                "symbol": st.spec.symbol,
                "ts_ns": t_ns,
                "bid": self._px_str(st, st.bid_ticks if bid_ticks is None else bid_ticks),
                "bid_size": self._qty_str(st, st.bid_lots),
                "ask": self._px_str(st, st.ask_ticks),
                "ask_size": self._qty_str(st, st.ask_lots),
            },
            t_ns,
        )

    def _emit_book(
        self,
        st: _SymbolState,
        t_ns: int,
        old_bids: dict[int, int],
        old_asks: dict[int, int],
        extra_bids: dict[int, int] | None = None,
    ) -> None:
        st.seq += 1
        extra_bids = extra_bids or {}
        snapshot = st.needs_snapshot or (t_ns - st.last_snapshot_ns) >= st.spec.snapshot_interval_s * NS
        if snapshot:
            bids = sorted({**st.bids, **extra_bids}.items(), reverse=True)
            asks = sorted(st.asks.items())
        else:
            # Removals first, so a price that is removed and re-added in the
            # same message ends with its new size whatever the reader's order.
            removed_bids = [(p, 0) for p in old_bids if p not in st.bids]
            removed_bids += [(p, 0) for p in st.injected if p not in st.bids and p not in old_bids]
            changed_bids = [(p, s) for p, s in st.bids.items() if old_bids.get(p) != s]
            bids = removed_bids + sorted(changed_bids, reverse=True) + sorted(extra_bids.items(), reverse=True)
            removed_asks = [(p, 0) for p in old_asks if p not in st.asks]
            changed_asks = [(p, s) for p, s in st.asks.items() if old_asks.get(p) != s]
            asks = removed_asks + sorted(changed_asks)
        st.injected = list(extra_bids)
        msg = {
            "type": "book",
            "symbol": st.spec.symbol,
            "ts_ns": t_ns,
            "snapshot": snapshot,
            "seq": st.seq,
            "bids": [[self._px_str(st, p), self._qty_str(st, s) if s else "0"] for p, s in bids],
            "asks": [[self._px_str(st, p), self._qty_str(st, s) if s else "0"] for p, s in asks],
        }
        if self._emit(msg, t_ns) and snapshot:
            st.needs_snapshot = False
            st.last_snapshot_ns = t_ns

    def _emit(self, msg: dict[str, Any], t_ns: int) -> bool:
        """Apply faults and queue the message; return False when it was dropped."""
        faults = self.faults
        rng = self._rng
        if self._gap_until_ns > t_ns:
            self.fault_counts["dropped_in_gap"] += 1
            return False
        msg["ts_ns"] = t_ns + faults.clock_offset_ns
        if faults.clock_skew_prob > 0 and rng.random() < faults.clock_skew_prob:
            self.fault_counts["clock_skew"] += 1
            msg["ts_ns"] += rng.randint(-faults.clock_skew_ns, faults.clock_skew_ns)
        if faults.malformed_prob > 0 and rng.random() < faults.malformed_prob:
            payload = self._malformed(msg)
            delivered = False
        else:
            payload = json.dumps(msg, separators=(",", ":")).encode()
            delivered = True
        self._pending.append(payload)
        if faults.duplicate_prob > 0 and rng.random() < faults.duplicate_prob:
            self.fault_counts["duplicate"] += 1
            self._pending.append(payload)
        return delivered

    def _malformed(self, msg: dict[str, Any]) -> bytes:
        rng = self._rng
        kind = rng.choice(("garbage", "missing_field", "negative_price"))
        self.fault_counts["malformed"] += 1
        self.fault_counts[f"malformed_{kind}"] += 1
        if kind == "garbage":
            # Truncated JSON followed by bytes that are not even UTF-8.
            text = json.dumps(msg, separators=(",", ":")).encode()
            return text[: rng.randint(1, max(1, len(text) - 1))] + bytes([0xFF, 0xFE, rng.randint(0, 255)])
        bad = dict(msg)
        if kind == "negative_price" and bad["type"] == "book" and not (bad["bids"] or bad["asks"]):
            # An empty delta has no price to negate; break it another way.
            kind = "missing_field"
        if kind == "missing_field":
            required = {"quote": "bid", "trade": "price", "book": "seq"}[bad["type"]]
            del bad[required]
        elif bad["type"] == "quote":
            bad["bid"] = "-" + bad["bid"]
        elif bad["type"] == "trade":
            bad["price"] = "-" + bad["price"]
        else:
            levels = bad["bids"] or bad["asks"]
            side = "bids" if bad["bids"] else "asks"
            bad[side] = [["-" + levels[0][0], levels[0][1]], *levels[1:]]
        return json.dumps(bad, separators=(",", ":")).encode()

"""The signal engine as a strategy host: closed bars only, positions, guarded calls."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from services.common.events import MarketData, OrderResult, derive_id
from services.signal_engine.config import INTERVAL_MS, SignalConfig
from services.signal_engine.engine import SignalEngine, StrategyTimeout
from services.strategies import Bar, Buy, Context, Intents, NoParams, Sell, Strategy

MIN = 60_000
T0 = 1_700_000_040_000  # a minute boundary
A, B = "AAAUSDT", "BBBUSDT"


def md(symbol: str, ts: int, price: float, volume: float = 10.0) -> MarketData:
    return MarketData(event_id=derive_id("md", symbol, ts), timestamp=ts, symbol=symbol,
                      price=price, volume=volume, pct_change=0.0, source="replay")


def fill(symbol: str, side: str, qty: float, price: float, ts: int,
         status: str = "filled") -> OrderResult:
    return OrderResult(
        order_id=derive_id("order", symbol, side, ts), timestamp=ts, status=status,  # type: ignore[arg-type]
        fill_price=price if status != "rejected" else 0.0, fees=0.0, symbol=symbol,
        side=side, filled_qty=qty if status != "rejected" else 0.0,  # type: ignore[arg-type]
        filled_notional=qty * price if status != "rejected" else 0.0, slippage_pct=0.0)


def engine_for(strategy: Strategy[Any], **overrides: Any) -> SignalEngine:
    cfg: dict[str, Any] = {"whitelist": (A, B), "strategy_max_failures": 2}
    cfg.update(overrides)
    return SignalEngine(SignalConfig(**cfg), strategy)


def minute(engine: SignalEngine, i: int, prices: dict[str, float]) -> list[Any]:
    out: list[Any] = []
    for symbol in sorted(prices):
        out += engine.on_market_data(md(symbol, T0 + i * MIN, prices[symbol]))
    return out


class Recorder(Strategy[NoParams]):
    """Records what each hook saw; returns what `plan` says for the interval."""

    def setup(self) -> None:
        self.history = 3
        self.seen_bars: list[Bar] = []
        self.seen_views: list[tuple[int, str, list[Bar]]] = []
        self.intervals: list[tuple[int, tuple[str, ...]]] = []
        self.plan: dict[int, Intents] = {}

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        self.seen_bars.append(bar)
        self.seen_views.append((ctx.now, bar.symbol, ctx.bars(bar.symbol)))
        return None

    def on_interval(self, ctx: Context) -> Intents:
        self.intervals.append((ctx.now, tuple(ctx.closed)))
        return self.plan.get(ctx.now)


# ------------------------------------------------------------------ closed bars, no look-ahead


class Peeker(Strategy[NoParams]):
    """Tries to read the open bar: the newest prices it can find anywhere in its context."""

    def setup(self) -> None:
        self.history = 10
        self.newest: list[tuple[int, float, int]] = []

    def on_interval(self, ctx: Context) -> Intents:
        for symbol in ctx.symbols:
            for view in (ctx.bars(symbol), [Bar(*raw) for raw in ctx.series[symbol]]):
                for bar in view:
                    self.newest.append((ctx.now, bar.close, bar.last_ts))
        return None


def test_a_strategy_that_tries_to_read_the_open_bar_sees_only_closed_bars() -> None:
    peeker = Peeker(NoParams())
    engine = SignalEngine(SignalConfig(), peeker)  # no whitelist: closes on the next interval
    engine.on_market_data(md(A, T0 + 1, 100.0))
    engine.on_market_data(md(A, T0 + 30_000, 101.0))
    assert peeker.newest == []  # nothing is handed over while the interval is open
    engine.on_market_data(md(A, T0 + MIN + 1, 999.0))  # the next interval's first tick closes
    engine.on_market_data(md(A, T0 + MIN + 2, 998.0))
    assert peeker.newest == [(T0 + MIN, 101.0, T0 + 30_000)] * 2
    assert all(last_ts <= now for now, _, last_ts in peeker.newest)
    assert 999.0 not in [close for _, close, _ in peeker.newest]
    assert [b.close for b in engine.bars(A)] == [101.0]  # the open bar is not a closed bar


def test_bars_aggregate_the_interval_ohlcv_and_go_to_on_bar_then_on_interval() -> None:
    rec = Recorder(NoParams())
    engine = engine_for(rec, interval_ms=INTERVAL_MS["5m"])
    base = 1_700_000_100_000  # divisible by 300 000
    for k, price in enumerate([10.0, 12.0, 9.0, 11.0, 10.5], start=1):
        engine.on_market_data(md(A, base + k * MIN, price, volume=2.0))
    engine.on_market_data(md(B, base + 5 * MIN, 50.0))
    (a_bar, b_bar) = rec.seen_bars
    assert a_bar == Bar(A, base + 5 * MIN, 10.0, 12.0, 9.0, 10.5, 10.0, base + MIN,
                        base + 5 * MIN, 5)
    assert b_bar.symbol == B and b_bar.samples == 1
    assert rec.intervals == [(base + 5 * MIN, (A, B))]


def test_history_is_bounded_by_what_the_strategy_declares() -> None:
    rec = Recorder(NoParams())
    engine = engine_for(rec)
    for i in range(6):
        minute(engine, i, {A: 100.0 + i, B: 50.0})
    *_, (now, _, view) = [v for v in rec.seen_views if v[1] == A]
    assert now == T0 + 5 * MIN and [b.close for b in view] == [103.0, 104.0, 105.0]


# ------------------------------------------------------------------ intents to signals


def test_intents_become_signals_stamped_at_the_interval_end_with_deterministic_ids() -> None:
    rec = Recorder(NoParams())
    rec.plan[T0 + MIN] = [Buy(A, 0.7, notional=250.0, reason="why not"), Sell(B, reason="out")]
    engine = engine_for(rec)
    minute(engine, 0, {A: 1.0, B: 1.0})
    buy, sell = minute(engine, 1, {A: 1.0, B: 1.0})
    assert (buy.symbol, buy.direction, buy.size, buy.signal_strength, buy.reason) == (
        A, "buy", 250.0, 0.7, "why not")
    assert buy.timestamp == T0 + MIN
    assert buy.signal_id == derive_id("signal", A, T0 + MIN, "buy")
    assert buy.market_event_id == derive_id("md", B, T0 + MIN)  # the event that closed it
    assert (sell.direction, sell.size, sell.fraction) == ("sell", 1000.0, None)


def test_a_partial_sell_carries_its_fraction_and_a_repeat_in_the_interval_is_dropped() -> None:
    rec = Recorder(NoParams())
    rec.plan[T0] = [Sell(A, fraction=0.25, reason="trim"), Sell(A), Buy(A), Buy(A)]
    engine = engine_for(rec)
    sell, buy = minute(engine, 0, {A: 1.0, B: 1.0})
    assert (sell.direction, sell.fraction, sell.reason) == ("sell", 0.25, "trim")
    assert buy.direction == "buy" and buy.reason == "Recorder buy"


class Eager(Strategy[NoParams]):
    def setup(self) -> None:
        self.warmup = 3

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        return Buy(bar.symbol)


def test_intents_before_the_warm_up_are_ignored() -> None:
    engine = engine_for(Eager(NoParams()), whitelist=(A,))
    got = [len(minute(engine, i, {A: 1.0})) for i in range(5)]
    assert got == [0, 0, 1, 1, 1]


# ------------------------------------------------------------------ positions


class Watcher(Strategy[NoParams]):
    def setup(self) -> None:
        self.positions: list[tuple[int, dict[str, tuple[float, float, int]]]] = []

    def on_interval(self, ctx: Context) -> Intents:
        self.positions.append((ctx.now, {s: (p.quantity, p.avg_entry, p.entry_time)
                                         for s, p in ctx.positions.items()}))
        return None


def test_positions_come_from_fills_and_count_from_the_interval_after_their_time() -> None:
    watcher = Watcher(NoParams())
    engine = engine_for(watcher, whitelist=(A,))
    minute(engine, 0, {A: 10.0})
    engine.on_order_result(fill(A, "buy", 2.0, 10.0, T0))          # the bar's own order
    engine.on_order_result(fill(A, "buy", 1.0, 40.0, T0 + MIN))    # an exit-time result
    engine.on_order_result(fill(A, "buy", 5.0, 1.0, T0, "rejected"))
    minute(engine, 1, {A: 10.0})
    minute(engine, 2, {A: 10.0})
    engine.on_order_result(fill(A, "sell", 1.5, 12.0, T0 + 2 * MIN))
    minute(engine, 3, {A: 10.0})
    engine.on_order_result(fill(A, "sell", 1.5, 12.0, T0 + 3 * MIN))
    minute(engine, 4, {A: 10.0})
    assert watcher.positions == [
        (T0, {}),
        (T0 + MIN, {A: (2.0, 10.0, T0)}),                 # stamped T0 < T0 + 1m
        (T0 + 2 * MIN, {A: (3.0, 20.0, T0)}),             # the T0 + 1m fill from here on
        (T0 + 3 * MIN, {A: (1.5, 20.0, T0)}),             # half sold: entry unchanged
        (T0 + 4 * MIN, {}),                               # the rest sold: flat
    ]


def test_positions_and_pending_results_survive_a_snapshot_round_trip() -> None:
    engine = engine_for(Watcher(NoParams()), whitelist=(A,))
    minute(engine, 0, {A: 10.0})
    engine.on_order_result(fill(A, "buy", 2.0, 10.0, T0))
    minute(engine, 1, {A: 10.0})
    engine.on_order_result(fill(A, "buy", 2.0, 30.0, T0 + MIN))
    restored = engine_for(Watcher(NoParams()), whitelist=(A,))
    restored.restore(engine.snapshot())
    assert dict(restored.positions) == dict(engine.positions)
    minute(restored, 2, {A: 10.0})
    assert restored.positions[A].avg_entry == 20.0


# ------------------------------------------------------------------ a strategy cannot hurt


class Bad(Strategy[NoParams]):
    """Misbehaves on A as `mode` says, behaves on B; always offers to sell B too."""

    mode = "raise"

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        if bar.symbol == B:
            return [Buy(B, 0.5, reason="fine"), Sell(B, reason="exit")]
        mode = self.mode
        if mode == "raise":
            raise ZeroDivisionError("division by zero")
        if mode == "nan":
            return Buy(A, math.nan)
        if mode == "object":
            return {"buy": A}
        if mode == "untracked":
            return Buy("ZZZUSDT")
        if mode == "notional":
            return Buy(A, 1.0, notional=math.inf)
        if mode == "fraction":
            return Sell(A, fraction=1.5)
        if mode == "exit":
            raise SystemExit(3)
        return None


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("raise", "ZeroDivisionError: division by zero"),
        ("nan", "Buy strength nan is not in 0..1"),
        ("object", "returned dict, not an intent"),
        ("untracked", "Buy for an untracked symbol 'ZZZUSDT'"),
        ("notional", "Buy notional inf is not a positive number"),
        ("fraction", "Sell fraction 1.5 is not in (0, 1]"),
        ("exit", "SystemExit: 3"),
    ],
)
def test_a_failing_call_is_dropped_alerted_and_counted_and_the_others_still_pass(
    mode: str, error: str,
) -> None:
    bad = Bad(NoParams())
    bad.mode = mode
    engine = engine_for(bad)
    signals = minute(engine, 0, {A: 1.0, B: 1.0})
    assert [(s.symbol, s.direction) for s in signals] == [(B, "buy"), (B, "sell")]
    (alert,) = engine.take_alerts()
    assert (alert.code, alert.level, alert.source) == ("STRATEGY_ERROR", "WARNING", "signal_engine")
    assert alert.context == {"strategy": "Bad", "hook": "on_bar", "symbol": A, "error": error,
                             "interval_end": T0}
    assert "strategy Bad failed in on_bar of AAAUSDT" in alert.message
    assert engine.errors == 1


def test_repeated_failures_suspend_buys_but_not_sells_until_an_interval_succeeds() -> None:
    bad = Bad(NoParams())
    engine = engine_for(bad)  # suspended after 2 failing intervals
    first = minute(engine, 0, {A: 1.0, B: 1.0})
    assert [s.direction for s in first] == ["buy", "sell"]
    second = minute(engine, 1, {A: 1.0, B: 1.0})
    assert [s.direction for s in second] == ["sell"]  # the buy of B is suspended
    assert engine.suspended and engine.dropped_buys == 1
    codes = [a.code for a in engine.take_alerts()]
    assert codes == ["STRATEGY_ERROR", "STRATEGY_ERROR", "STRATEGY_SUSPENDED"]
    bad.mode = "none"
    third = minute(engine, 2, {A: 1.0, B: 1.0})
    assert [s.direction for s in third] == ["buy", "sell"]
    assert not engine.suspended
    assert [a.code for a in engine.take_alerts()] == ["STRATEGY_RESUMED"]


def test_a_call_over_its_time_budget_is_dropped_as_a_timeout() -> None:
    def runner(call: Any) -> Any:
        result = call()
        if isinstance(result, Iterable) and not isinstance(result, Sequence | str):
            raise AssertionError("unexpected")
        if result is not None and not isinstance(result, list):
            raise StrategyTimeout("took longer than 100 ms")
        return result

    bad = Bad(NoParams())
    bad.mode = "nan"  # A's call returns a single intent: the runner above calls that slow
    engine = SignalEngine(SignalConfig(whitelist=(A, B)), bad, runner)
    signals = minute(engine, 0, {A: 1.0, B: 1.0})
    assert [s.symbol for s in signals] == [B, B]
    (alert,) = engine.take_alerts()
    assert alert.context["error"] == "timeout: took longer than 100 ms"


def test_alerts_per_interval_are_capped_but_every_failure_is_counted() -> None:
    symbols = tuple(f"S{i:02d}USDT" for i in range(30))

    class Raiser(Strategy[NoParams]):
        def on_bar(self, bar: Bar, ctx: Context) -> Intents:
            raise ValueError("no")

    engine = SignalEngine(SignalConfig(whitelist=symbols), Raiser(NoParams()))
    minute(engine, 0, dict.fromkeys(symbols, 1.0))
    assert len(engine.take_alerts()) == 20 and engine.errors == 30


# ------------------------------------------------------------------ unstorable reasons


class Nul(Strategy[NoParams]):
    """Buys A with a reason PostgreSQL could not store, B with a clean one."""

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        return Buy(bar.symbol, reason="bad\x00reason" if bar.symbol == A else "fine")


@pytest.mark.parametrize("lean", [False, True])
def test_a_reason_with_a_nul_character_is_dropped_with_an_alert_and_the_engine_goes_on(
    lean: bool,
) -> None:
    engine = SignalEngine(SignalConfig(whitelist=(A, B), strategy_max_failures=2),
                          Nul(NoParams()), lean=lean)
    signals = minute(engine, 0, {A: 1.0, B: 2.0})  # one interval, closed by its last candle
    assert [s.symbol for s in signals] == [B]
    alerts = engine.take_alerts()
    assert [a.code for a in alerts] == ["STRATEGY_ERROR"]
    assert "NUL" in alerts[0].context["error"] and alerts[0].context["symbol"] == A


# ------------------------------------------------------------------ lean signals


class Churn(Strategy[NoParams]):
    """A buy and a partial sell of every symbol each interval (lean and full compared)."""

    def on_interval(self, ctx: Context) -> Intents:
        return [Buy(s, 0.5, None, f"up {ctx.now}") for s in ctx.symbols] + [
            Sell(s, 0.25, 1.0, "") for s in ctx.symbols]


def test_a_lean_engine_hands_out_the_values_and_ids_of_the_validated_signals() -> None:
    full = engine_for(Churn(NoParams()))
    lean = SignalEngine(SignalConfig(whitelist=(A, B), strategy_max_failures=2),
                        Churn(NoParams()), lean=True)
    got_full: list[Any] = []
    got_lean: list[Any] = []
    for i in range(4):
        got_full += minute(full, i, {A: 1.0 + i, B: 2.0})
        got_lean += minute(lean, i, {A: 1.0 + i, B: 2.0})
    assert len(got_full) == 16 and len(got_lean) == 16
    assert [s.signal for s in got_lean] == got_full
    assert [s.signal_id for s in got_lean] == [s.signal_id for s in got_full]
    assert [s.event_id for s in got_lean] == [s.event_id for s in got_full]

"""Signal engine: momentum top-N ranking with injected timestamps."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence

import pytest

from services.common.events import MarketData, Signal, derive_id, fast_derive_id
from services.common.settings import SettingsError, load_settings
from services.signal_engine.config import (
    INTERVAL_MS,
    SignalConfig,
    SignalSettings,
    parse_whitelist,
)
from services.signal_engine.engine import SignalEngine

MIN = 60_000
T0 = 1_700_000_040_000  # a minute boundary (divisible by 60 000)


def md(symbol: str, ts: int, price: float, volume: float = 1_000.0) -> MarketData:
    return MarketData(
        event_id=derive_id("md", symbol, ts),
        timestamp=ts,
        symbol=symbol,
        price=price,
        volume=volume,
        pct_change=0.0,
        source="replay",
    )


def feed(engine: SignalEngine, events: Iterable[MarketData]) -> list[Signal]:
    out: list[Signal] = []
    for event in events:
        out.extend(engine.on_market_data(event))
    return out


def minute_bars(paths: Mapping[str, Sequence[float]], start: int = T0) -> list[MarketData]:
    """One event per symbol per minute (close-time stamps), symbols in sorted order."""
    length = len(next(iter(paths.values())))
    return [
        md(symbol, start + i * MIN, paths[symbol][i])
        for i in range(length)
        for symbol in sorted(paths)
    ]


def linear(start: float, step_pct: float, n: int) -> list[float]:
    return [start * (1 + step_pct / 100 * i) for i in range(n)]


def config(**overrides: object) -> SignalConfig:
    base: dict[str, object] = {"lookback_minutes": 5, "min_momentum_pct": 0.5}
    base.update(overrides)
    return SignalConfig(**base)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- intervals


def test_interval_end_when_stamped_with_close_time_then_belongs_to_that_interval() -> None:
    engine = SignalEngine(config())
    engine.on_market_data(md("AAAUSDT", T0, 1.0))
    assert engine.open_interval_end == T0
    engine.on_market_data(md("AAAUSDT", T0 + 1, 1.0))
    assert engine.open_interval_end == T0 + MIN


def test_five_minute_interval_groups_five_one_minute_candles() -> None:
    engine = SignalEngine(config(interval_ms=INTERVAL_MS["5m"]))
    base = 1_700_000_100_000  # divisible by 300 000
    engine.on_market_data(md("AAAUSDT", base + MIN, 1.0))
    assert engine.open_interval_end == base + 5 * MIN
    for k in range(2, 6):
        engine.on_market_data(md("AAAUSDT", base + k * MIN, 1.0))
    assert engine.open_interval_end == base + 5 * MIN
    assert engine.rankings == 0
    engine.on_market_data(md("AAAUSDT", base + 6 * MIN, 1.0))
    assert engine.rankings == 1 and engine.last_ranking_ms == base + 5 * MIN


# ----------------------------------------------------------------------------- triggers


def test_without_whitelist_ranks_before_applying_first_event_of_next_interval() -> None:
    engine = SignalEngine(config(top_n=1))
    events = minute_bars({"AAAUSDT": [100.0, 101.0, 150.0]})
    assert engine.on_market_data(events[0]) == []
    assert engine.on_market_data(events[1]) == []  # ranks minute 0: one sample, no momentum
    assert engine.last_ranking_ms == T0
    out = engine.on_market_data(events[2])  # ranks minute 1 before applying minute 2
    assert len(out) == 1
    (buy,) = out
    assert (buy.symbol, buy.direction, buy.timestamp) == ("AAAUSDT", "buy", T0 + MIN)
    assert buy.reason.startswith("momentum 1.00% rank 1/1")  # the +48 % of minute 2 not yet in
    assert buy.market_event_id == events[2].event_id
    assert buy.signal_id == derive_id("signal", "AAAUSDT", T0 + MIN, "buy")
    assert buy.event_id == derive_id("signal-event", buy.signal_id)
    assert buy.size == 1000.0
    assert engine.open_interval_end == T0 + 2 * MIN


def test_gap_of_several_intervals_ranks_only_the_open_one() -> None:
    engine = SignalEngine(config(top_n=1))
    feed(engine, minute_bars({"AAAUSDT": [100.0, 101.0]}))
    out = engine.on_market_data(md("AAAUSDT", T0 + 4 * MIN, 101.0))
    assert [s.timestamp for s in out] == [T0 + MIN]
    assert engine.rankings == 2


def test_whitelist_ranks_as_soon_as_every_whitelisted_symbol_reported() -> None:
    engine = SignalEngine(config(whitelist=("BBBUSDT", "AAAUSDT"), top_n=2))
    feed(engine, minute_bars({"AAAUSDT": [100.0, 100.0], "BBBUSDT": [50.0, 50.0]}))
    assert engine.last_ranking_ms == T0 + MIN  # ranked by trigger (b), no later event needed
    assert engine.on_market_data(md("AAAUSDT", T0 + 2 * MIN, 103.0)) == []
    assert engine.last_ranking_ms == T0 + MIN  # BBB still missing for this interval
    out = engine.on_market_data(md("BBBUSDT", T0 + 2 * MIN, 50.5))
    assert engine.last_ranking_ms == T0 + 2 * MIN
    assert [(s.symbol, s.direction) for s in out] == [("AAAUSDT", "buy"), ("BBBUSDT", "buy")]
    # the triggering event is the last whitelisted report
    assert all(s.market_event_id == derive_id("md", "BBBUSDT", T0 + 2 * MIN) for s in out)
    # the next interval's first event does not rank the interval again
    assert engine.on_market_data(md("AAAUSDT", T0 + 3 * MIN, 103.0)) == []
    assert engine.rankings == 3  # T0, T0 + 1m, T0 + 2m, all by trigger (b)


def test_late_event_of_a_closed_interval_is_counted_and_left_out_of_the_bars() -> None:
    engine = SignalEngine(
        config(
            whitelist=("AAAUSDT", "BBBUSDT"),
            interval_ms=INTERVAL_MS["5m"],
            lookback_minutes=10,
            top_n=2,
            symbol_stale_timeout_sec=600,  # sparse samples here are not silent symbols
        )
    )
    base = 1_700_000_100_000  # divisible by 300 000
    feed(engine, [md("BBBUSDT", base + MIN, 100.0), md("AAAUSDT", base + 6 * MIN, 100.0)])
    assert engine.open_interval_end == base + 10 * MIN
    assert engine.last_ranking_ms == base + 5 * MIN  # closed by trigger (a)
    assert engine.on_market_data(md("BBBUSDT", base + 2 * MIN, 150.0)) == []  # late
    assert engine.late_events == 1
    assert engine.last_ranking_ms == base + 5 * MIN
    feed(engine, [md("AAAUSDT", base + 10 * MIN, 100.0), md("BBBUSDT", base + 7 * MIN, 102.0)])
    assert engine.last_ranking_ms == base + 5 * MIN  # BBB has not reached the interval's end
    out = engine.on_market_data(md("BBBUSDT", base + 10 * MIN, 102.0))
    assert engine.last_ranking_ms == base + 10 * MIN  # trigger (b): both at the end
    assert [(s.symbol, s.reason.split(" rank")[0]) for s in out] == [
        ("BBBUSDT", "momentum 2.00%")  # 100 -> 102: the late 150 never entered a bar
    ]
    bars = [(b.time, b.open, b.high, b.close, b.samples) for b in engine.bars("BBBUSDT")]
    assert bars == [(base + 5 * MIN, 100.0, 100.0, 100.0, 1),
                    (base + 10 * MIN, 102.0, 102.0, 102.0, 2)]


def test_whitelist_with_longer_bars_closes_only_when_every_symbol_reached_the_end() -> None:
    engine = SignalEngine(config(whitelist=("AAAUSDT", "BBBUSDT"), interval_ms=INTERVAL_MS["5m"],
                                 lookback_minutes=10, top_n=2))
    base = 1_700_000_100_000  # divisible by 300 000
    paths = {"AAAUSDT": [100.0, 101.0, 102.0, 103.0, 104.0],
             "BBBUSDT": [50.0, 50.0, 50.0, 50.0, 50.0]}
    events = minute_bars(paths, start=base + MIN)  # minutes 1..5 of the interval ending at 5
    assert feed(engine, events[:-1]) == []
    assert engine.rankings == 0  # every symbol reported, but not the interval's last minute
    feed(engine, events[-1:])
    assert engine.rankings == 1 and engine.last_ranking_ms == base + 5 * MIN
    (bar,) = engine.bars("AAAUSDT")
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.samples) == (
        100.0, 104.0, 100.0, 104.0, 5_000.0, 5)


def test_whitelist_with_missing_symbol_falls_back_to_next_interval_trigger() -> None:
    engine = SignalEngine(config(whitelist=("AAAUSDT", "BBBUSDT"), top_n=1))
    feed(engine, [md("AAAUSDT", T0, 100.0), md("AAAUSDT", T0 + MIN, 102.0)])
    assert engine.last_ranking_ms == T0
    out = engine.on_market_data(md("AAAUSDT", T0 + 2 * MIN, 102.0))
    assert [(s.symbol, s.timestamp) for s in out] == [("AAAUSDT", T0 + MIN)]


def test_flush_ranks_open_interval_once() -> None:
    engine = SignalEngine(config(top_n=1))
    feed(engine, minute_bars({"AAAUSDT": [100.0, 101.0]}))
    out = engine.flush(T0 + 5 * MIN)
    assert [(s.symbol, s.direction, s.timestamp) for s in out] == [("AAAUSDT", "buy", T0 + MIN)]
    assert out[0].market_event_id == derive_id("md", "AAAUSDT", T0 + MIN)
    assert engine.flush(T0 + 5 * MIN) == []
    assert SignalEngine(config()).flush(T0) == []


def test_rank_if_due_waits_for_interval_end() -> None:
    engine = SignalEngine(config(top_n=1))
    feed(engine, minute_bars({"AAAUSDT": [100.0, 101.0]}))
    assert engine.rank_if_due(T0 + MIN - 1) == []
    assert [s.symbol for s in engine.rank_if_due(T0 + MIN)] == ["AAAUSDT"]
    assert engine.rank_if_due(T0 + 2 * MIN) == []


# ----------------------------------------------------------------------------- ranking


def test_top_n_buys_in_rank_order_with_symbol_tiebreak() -> None:
    engine = SignalEngine(config(top_n=3))
    paths = {
        "AAAUSDT": [100.0, 101.0],  # +1 %
        "BBBUSDT": [100.0, 103.0],  # +3 %
        "CCCUSDT": [100.0, 102.0],  # +2 % (tie with DDD, C before D)
        "DDDUSDT": [100.0, 102.0],
        "EEEUSDT": [100.0, 100.6],  # +0.6 %
    }
    feed(engine, minute_bars(paths))
    out = engine.flush(T0 + MIN)
    assert [s.symbol for s in out] == ["BBBUSDT", "CCCUSDT", "DDDUSDT"]
    assert engine.top_set == ("BBBUSDT", "CCCUSDT", "DDDUSDT")
    assert [s.reason.split(" rank ")[1] for s in out] == ["1/5", "2/5", "3/5"]


def test_whitelist_ignores_other_symbols() -> None:
    engine = SignalEngine(config(whitelist=("aaausdt",), top_n=5))
    paths = {"AAAUSDT": [100.0, 101.0], "ZZZUSDT": [100.0, 110.0]}
    out = feed(engine, minute_bars(paths))
    assert [s.symbol for s in out] == ["AAAUSDT"]
    assert engine.symbols_tracked == 1


def test_min_momentum_filter_keeps_weak_movers_out() -> None:
    engine = SignalEngine(config(min_momentum_pct=1.0))
    feed(engine, minute_bars({"AAAUSDT": [100.0, 100.9], "BBBUSDT": [100.0, 101.0]}))
    assert [s.symbol for s in engine.flush(T0 + MIN)] == ["BBBUSDT"]


def test_min_quote_volume_filter_counts_only_the_lookback_minutes() -> None:
    # lookback 2 minutes: the window holds 3 samples (T0, T0+1m, T0+2m); the volume of the one
    # at the window start (T0) belongs to the minute before the window and is not counted
    events = [
        md("AAAUSDT", T0, 100.0, volume=1_000_000.0),
        md("AAAUSDT", T0 + MIN, 101.0, volume=400.0),
        md("AAAUSDT", T0 + 2 * MIN, 102.0, volume=500.0),
        md("BBBUSDT", T0, 100.0, volume=1.0),
        md("BBBUSDT", T0 + MIN, 101.0, volume=600.0),
        md("BBBUSDT", T0 + 2 * MIN, 102.0, volume=500.0),
    ]
    engine = SignalEngine(config(lookback_minutes=2, min_quote_volume=1_000.0))
    feed(engine, sorted(events, key=lambda e: (e.timestamp, e.symbol)))
    out = engine.flush(T0 + 2 * MIN)
    assert [s.symbol for s in out] == ["BBBUSDT"]


def test_window_needs_two_samples_within_lookback() -> None:
    engine = SignalEngine(config(lookback_minutes=2))
    # the old sample falls out of the window: only one sample left, no momentum
    feed(engine, [md("AAAUSDT", T0, 50.0), md("AAAUSDT", T0 + 3 * MIN, 100.0)])
    assert engine.flush(T0 + 3 * MIN) == []


def test_momentum_uses_oldest_sample_within_lookback() -> None:
    engine = SignalEngine(config(lookback_minutes=2, top_n=1))
    prices = [200.0, 100.0, 100.5, 102.0]  # window at T0+3m: 100 -> 102 = +2 %
    feed(engine, minute_bars({"AAAUSDT": prices}))
    (buy,) = engine.flush(T0 + 3 * MIN)
    assert buy.reason.startswith("momentum 2.00%")


def test_buy_only_when_entering_top_set() -> None:
    engine = SignalEngine(config(lookback_minutes=3, top_n=1))
    a = [100.0, 101.0, 102.0, 103.0, 104.0, 104.0, 104.0, 104.0, 104.0, 105.0, 106.0]
    b = [100.0] * len(a)
    signals = feed(engine, minute_bars({"AAAUSDT": a, "BBBUSDT": b}))
    signals += engine.flush(T0 + len(a) * MIN)
    buys = [(s.symbol, s.timestamp) for s in signals if s.direction == "buy"]
    # enters at minute 1, stays while rising, leaves when flat for the lookback (minute 7),
    # enters again at minute 9
    assert buys == [("AAAUSDT", T0 + MIN), ("AAAUSDT", T0 + 9 * MIN)]


def test_displaced_symbol_leaves_top_set_and_newcomer_gets_buy() -> None:
    engine = SignalEngine(config(lookback_minutes=3, top_n=1))
    paths = {
        "AAAUSDT": [100.0, 101.0, 102.0, 103.0],
        "BBBUSDT": [100.0, 100.0, 103.0, 106.0],
    }
    signals = feed(engine, minute_bars(paths)) + engine.flush(T0 + 4 * MIN)
    assert [(s.symbol, s.timestamp) for s in signals if s.direction == "buy"] == [
        ("AAAUSDT", T0 + MIN),
        ("BBBUSDT", T0 + 2 * MIN),
    ]
    assert engine.top_set == ("BBBUSDT",)


def test_sell_when_momentum_crosses_below_threshold_once() -> None:
    engine = SignalEngine(config(lookback_minutes=2, top_n=1, sell_momentum_pct=-1.0))
    prices = [100.0, 100.0, 98.0, 97.0, 97.0, 97.0, 97.0, 95.0]
    signals = feed(engine, minute_bars({"AAAUSDT": prices})) + engine.flush(T0 + 8 * MIN)
    sells = [s for s in signals if s.direction == "sell"]
    # below at minute 2 (-2 %), stays below at 3, back at 0 by minute 5, below again at 7
    assert [s.timestamp for s in sells] == [T0 + 2 * MIN, T0 + 7 * MIN]
    first = sells[0]
    assert first.signal_id == derive_id("signal", "AAAUSDT", T0 + 2 * MIN, "sell")
    assert first.reason == "momentum -2.00% below -1.00%"
    assert not [s for s in signals if s.direction == "buy"]


def test_sell_ignores_volume_filter_and_sorts_by_symbol() -> None:
    engine = SignalEngine(config(min_quote_volume=1e12))
    paths = {"BBBUSDT": [100.0, 90.0], "AAAUSDT": [100.0, 95.0], "CCCUSDT": [100.0, 120.0]}
    out = feed(engine, minute_bars(paths)) + engine.flush(T0 + MIN)
    assert [(s.symbol, s.direction) for s in out] == [("AAAUSDT", "sell"), ("BBBUSDT", "sell")]


def test_buys_come_before_sells_in_one_ranking() -> None:
    engine = SignalEngine(config())
    paths = {"AAAUSDT": [100.0, 90.0], "ZZZUSDT": [100.0, 110.0]}
    out = feed(engine, minute_bars(paths)) + engine.flush(T0 + MIN)
    assert [(s.symbol, s.direction) for s in out] == [("ZZZUSDT", "buy"), ("AAAUSDT", "sell")]


# ----------------------------------------------------------------------------- silent symbols


def silent_after(paths: Mapping[str, Sequence[float]], silent: str, last_minute: int,
                 resume_minute: int | None = None) -> list[MarketData]:
    """Minute bars of `paths` where `silent` reports nothing after `last_minute` (until resume)."""
    return [
        e for e in minute_bars(paths)
        if e.symbol != silent
        or (e.timestamp - T0) // MIN <= last_minute
        or (resume_minute is not None and (e.timestamp - T0) // MIN >= resume_minute)
    ]


def test_silent_symbol_when_its_data_stops_then_it_leaves_the_ranking_on_its_frozen_momentum(
) -> None:
    # AAA rises 2 %/min, then goes silent at minute 3: its last price stays the best momentum
    engine = SignalEngine(config(lookback_minutes=10, top_n=1, symbol_stale_timeout_sec=90))
    paths = {"AAAUSDT": linear(100.0, 2.0, 12), "BBBUSDT": linear(100.0, 0.6, 12)}
    signals = feed(engine, silent_after(paths, "AAAUSDT", 3)) + engine.flush(T0 + 11 * MIN)
    buys = [(s.symbol, (s.timestamp - T0) // MIN) for s in signals if s.direction == "buy"]
    # ranked while fresh and for one late bar (age 60 s < 90 s), out from age 120 s on;
    # BBB, the best symbol with live data, takes the top set
    assert buys == [("AAAUSDT", 1), ("BBBUSDT", 5)]
    assert engine.top_set == ("BBBUSDT",)
    assert engine.stale_symbols == ("AAAUSDT",)


def test_silent_symbol_when_its_data_resumes_then_it_is_ranked_again() -> None:
    engine = SignalEngine(config(lookback_minutes=10, top_n=1, symbol_stale_timeout_sec=90))
    paths = {"AAAUSDT": linear(100.0, 2.0, 14), "BBBUSDT": linear(100.0, 0.6, 14)}
    events = silent_after(paths, "AAAUSDT", 3, resume_minute=9)
    signals = feed(engine, events) + engine.flush(T0 + 13 * MIN)
    buys = [(s.symbol, (s.timestamp - T0) // MIN) for s in signals if s.direction == "buy"]
    assert buys == [("AAAUSDT", 1), ("BBBUSDT", 5), ("AAAUSDT", 9)]
    assert engine.top_set == ("AAAUSDT",) and engine.stale_symbols == ()


def test_silent_symbol_gets_no_sell_on_its_frozen_fall_and_no_second_one_when_it_returns(
) -> None:
    engine = SignalEngine(config(lookback_minutes=10, sell_momentum_pct=-1.0,
                                 symbol_stale_timeout_sec=90))
    falling = [100.0, 98.0, 97.0, 96.0] + [96.0] * 8
    paths = {"AAAUSDT": falling, "BBBUSDT": [100.0] * 12}
    signals = feed(engine, silent_after(paths, "AAAUSDT", 3, resume_minute=9))
    signals += engine.flush(T0 + 11 * MIN)
    sells = [(s.symbol, (s.timestamp - T0) // MIN) for s in signals if s.direction == "sell"]
    assert sells == [("AAAUSDT", 1)]  # one sell on live data; silence and return add none


def test_silent_symbol_on_a_quiet_market_timer_ranking_is_left_out() -> None:
    # no whitelist, live clock: the timer ranks the open interval; AAA stopped long before
    engine = SignalEngine(config(lookback_minutes=15, top_n=1, symbol_stale_timeout_sec=30))
    signals = feed(engine, [md("AAAUSDT", T0 + i * MIN, 100.0 * 1.02**i) for i in range(4)])
    signals += feed(engine, [md("BBBUSDT", T0 + i * MIN, 100.0 + i) for i in range(4, 10)])
    signals += engine.rank_if_due(T0 + 9 * MIN)
    assert engine.last_ranking_ms == T0 + 9 * MIN
    # AAA's frozen +6 % beats BBB's +5 %, but AAA has been silent for six minutes
    assert engine.top_set == ("BBBUSDT",) and engine.stale_symbols == ("AAAUSDT",)
    assert [s.symbol for s in signals if s.direction == "buy"] == ["AAAUSDT", "BBBUSDT"]


def test_silence_shorter_than_the_timeout_keeps_the_symbol_ranked() -> None:
    engine = SignalEngine(config(lookback_minutes=10, top_n=1, symbol_stale_timeout_sec=300))
    paths = {"AAAUSDT": linear(100.0, 2.0, 8), "BBBUSDT": linear(100.0, 0.6, 8)}
    feed(engine, silent_after(paths, "AAAUSDT", 3))
    engine.flush(T0 + 7 * MIN)  # AAA's last data is 4 minutes old: within 300 s
    assert engine.top_set == ("AAAUSDT",) and engine.stale_symbols == ()


def test_signal_strength_scales_with_momentum_and_stays_in_unit_interval() -> None:
    engine = SignalEngine(config(min_momentum_pct=0.5, top_n=5))
    paths = {
        "AAAUSDT": [100.0, 101.0],  # 1 % / (4 * 0.5 %) = 0.5
        "BBBUSDT": [100.0, 150.0],  # capped at 1
        "CCCUSDT": [100.0, 60.0],  # sell, capped at 1
    }
    out = {s.symbol: s for s in feed(engine, minute_bars(paths)) + engine.flush(T0 + MIN)}
    assert out["AAAUSDT"].signal_strength == pytest.approx(0.5)
    assert out["BBBUSDT"].signal_strength == 1.0
    assert out["CCCUSDT"].signal_strength == 1.0


def test_zero_thresholds_still_give_strength_in_range() -> None:
    engine = SignalEngine(config(min_momentum_pct=0.0, sell_momentum_pct=0.0))
    out = feed(engine, minute_bars({"AAAUSDT": [100.0, 100.5], "BBBUSDT": [100.0, 99.9]}))
    out += engine.flush(T0 + MIN)
    assert {s.symbol: s.direction for s in out} == {"AAAUSDT": "buy", "BBBUSDT": "sell"}
    assert all(0.0 <= s.signal_strength <= 1.0 for s in out)


# ----------------------------------------------------------------------------- idempotence


def random_walk(seed: int, symbols: int = 6, minutes: int = 120) -> list[MarketData]:
    rng = random.Random(seed)
    paths: dict[str, list[float]] = {}
    for k in range(symbols):
        price = 10.0 + k
        path = []
        for _ in range(minutes):
            price *= 1 + rng.gauss(0, 0.006)
            path.append(price)
        paths[f"S{k:02d}USDT"] = path
    return minute_bars(paths)


def test_duplicates_and_out_of_order_events_are_ignored() -> None:
    events = random_walk(7)
    clean = SignalEngine(config(top_n=2))
    expected = feed(clean, events) + clean.flush(T0 + 10_000 * MIN)
    noisy_events: list[MarketData] = []
    for i, event in enumerate(events):
        noisy_events.append(event)
        noisy_events.append(event)  # redelivery
        if i >= 12:
            stale = events[i - 12]  # an older event of some symbol, delivered late
            noisy_events.append(stale.model_copy(update={"price": stale.price * 3}))
    noisy = SignalEngine(config(top_n=2))
    got = feed(noisy, noisy_events) + noisy.flush(T0 + 10_000 * MIN)
    assert got == expected
    assert len(expected) > 5
    assert noisy.late_market_data == len(events) - 12  # the late ones, not the repeats


def test_redelivered_event_returns_no_signals() -> None:
    engine = SignalEngine(config(top_n=1))
    events = minute_bars({"AAAUSDT": [100.0, 101.0, 102.0]})
    feed(engine, events)
    assert engine.on_market_data(events[-1]) == []
    assert engine.on_market_data(events[0]) == []


def test_same_input_gives_identical_output_including_ids() -> None:
    events = random_walk(11)
    runs = []
    for _ in range(2):
        engine = SignalEngine(config(top_n=3, whitelist=("S00USDT", "S01USDT", "S02USDT")))
        runs.append(feed(engine, events) + engine.flush(T0 + 10_000 * MIN))
    assert runs[0] == runs[1]
    assert [s.model_dump() for s in runs[0]] == [s.model_dump() for s in runs[1]]
    assert len({s.event_id for s in runs[0]}) == len(runs[0]) > 0


def test_emitted_signals_are_valid_events() -> None:
    engine = SignalEngine(config(top_n=3))
    out = feed(engine, random_walk(3)) + engine.flush(T0 + 10_000 * MIN)
    assert out
    for signal in out:
        assert Signal.model_validate(signal.model_dump()) == signal


def test_non_finite_price_is_ignored() -> None:
    # the contract refuses it; an event built without validation must not reach a window either
    broken = MarketData.model_construct(
        event_id=derive_id("md", "AAAUSDT", T0), timestamp=T0, symbol="AAAUSDT",
        price=float("inf"), volume=1.0, pct_change=0.0, source="replay",
    )
    engine = SignalEngine(config())
    assert engine.on_market_data(broken) == []
    assert engine.symbols_tracked == 0


def test_fast_derive_id_matches_derive_id() -> None:
    rng = random.Random(5)
    for _ in range(200):
        parts = [rng.choice(["signal", "x", ""]), f"S{rng.randrange(10**6)}", rng.randrange(10**13)]
        assert fast_derive_id("|".join(str(p) for p in parts)) == derive_id(*parts)


# ----------------------------------------------------------------------------- config


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SignalSettings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@localhost/db")
    return monkeypatch


def test_settings_defaults_map_to_config(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings(SignalSettings)
    assert settings.port == 8001 and SignalSettings.SERVICE_NAME == "signal_engine"
    assert SignalConfig.from_settings(settings) == SignalConfig()


def test_settings_parse_interval_and_whitelist(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("INTERVAL", "4h")
    clean_env.setenv("SYMBOL_WHITELIST", "ethusdt, BTCUSDT,,ETHUSDT")
    cfg = SignalConfig.from_settings(load_settings(SignalSettings))
    assert cfg.interval_ms == 4 * 3_600_000
    assert cfg.whitelist == ("BTCUSDT", "ETHUSDT")


def test_settings_out_of_range_falls_back_to_default(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setenv("TOP_N", "0")
    clean_env.setenv("SELL_MOMENTUM_PCT", "3")
    with caplog.at_level(logging.WARNING, logger="cdb.settings"):
        settings = load_settings(SignalSettings)
    assert settings.TOP_N == 5 and settings.SELL_MOMENTUM_PCT == -0.5


@pytest.mark.parametrize(("name", "value"), [("INTERVAL", "2m"), ("SYMBOL_WHITELIST", "A,BTC")])
def test_settings_invalid_values_stop_the_service(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings(SignalSettings)
    assert name in info.value.message


def test_settings_read_the_stale_symbol_timeout(clean_env: pytest.MonkeyPatch) -> None:
    assert SignalConfig().symbol_stale_timeout_sec == 90
    clean_env.setenv("SYMBOL_STALE_TIMEOUT_SEC", "45")
    assert SignalConfig.from_settings(load_settings(SignalSettings)).symbol_stale_timeout_sec == 45
    clean_env.setenv("SYMBOL_STALE_TIMEOUT_SEC", "5")  # below the range: warns, default
    assert load_settings(SignalSettings).SYMBOL_STALE_TIMEOUT_SEC == 90


def test_config_rejects_values_outside_engine_domain() -> None:
    with pytest.raises(ValueError, match="top_n"):
        SignalConfig(top_n=0)
    with pytest.raises(ValueError, match="symbol_stale_timeout_sec"):
        SignalConfig(symbol_stale_timeout_sec=0)
    with pytest.raises(ValueError, match="invalid symbol"):
        parse_whitelist("BTC-USDT")

"""Trade statistics against values worked out by hand on small runs."""

from __future__ import annotations

import math

import pytest

from services.replay.candles import read_candles
from services.replay.config import SAMPLE_DIR
from services.research.report import RunRecord, build_report
from services.research.statistics import (
    MINUTES_PER_YEAR,
    OBJECTIVES,
    FillRecord,
    Statistics,
    compute_statistics,
    max_drawdown,
    minute_equity,
    quote_of,
    slippage_cost,
    statistics_of,
)
from tests.support.btc_pipeline import btc_pipeline

M = 60_000
"""One minute in ms: the fixtures' bars close at whole minutes."""

# Five minutes on a 100 BTC account, two round trips:
#   minute 1: buy 1 ETHBTC @ 10 (fee 0.10)       cash  89.90, ETH 10 -> equity  99.90
#   minute 2: ETH closes at 12                                          equity 101.90
#   minute 3: sell 1 ETHBTC @ 12 (fee 0.12)      cash 101.78  (trade 1: 12 - 0.12 - 10.10 = +1.78)
#             buy 2 LTCBTC @ 5 (fee 0.10)        cash  91.68, LTC 5  -> equity 101.68
#   minute 4: LTC closes at 4                                           equity  99.68
#   minute 5: sell 2 LTCBTC @ 4 (fee 0.08)       cash  99.60  (trade 2: 8 - 0.08 - 10.10 = -2.18)
EQUITY = [(1 * M, 99.9), (2 * M, 101.9), (3 * M, 101.68), (4 * M, 99.68), (5 * M, 99.6)]
FILLS = [
    FillRecord(1 * M, "ETHBTC", "buy", 1.0, 10.0, 0.10, 0.05),
    FillRecord(3 * M, "ETHBTC", "sell", 1.0, 12.0, 0.12, 0.06),
    FillRecord(3 * M, "LTCBTC", "buy", 2.0, 5.0, 0.10, 0.02),
    FillRecord(5 * M, "LTCBTC", "sell", 2.0, 4.0, 0.08, 0.03),
]
PRICES = {"ETHBTC": (10.0, 11.0), "LTCBTC": (5.0, 4.0)}


def two_trades() -> Statistics:
    return compute_statistics(EQUITY, FILLS, PRICES, "BTC", 100.0)


def test_returns_and_drawdown_of_five_minutes_are_the_hand_computed_ones() -> None:
    s = two_trades()
    assert s.minutes == 5 and s.quote == "BTC"
    assert s.start_equity == 100.0 and s.final_equity == 99.6
    assert s.total_return == pytest.approx(-0.004)  # 99.6 / 100 - 1
    assert s.max_drawdown == pytest.approx(2.3 / 101.9)  # peak 101.9, trough 99.6
    assert s.annualized_return == pytest.approx(-0.004 * 525_600 / 5)  # -420.48
    assert s.calmar == pytest.approx(-420.48 / (2.3 / 101.9))  # -18 629.09


def test_sharpe_and_sortino_of_five_minutes_are_the_hand_computed_ones() -> None:
    # r = -0.001, 0.0200200, -0.0021590, -0.0196696, -0.0008026 (E_t / E_t-1 - 1)
    # mean -0.00072245, sample std 0.0140849 -> -0.051292 x sqrt(525 600) = -37.2245
    # downside deviation sqrt((0.001^2 + 0.002159^2 + 0.01967^2 + 0.0008026^2) / 5)
    #   = 0.0088679 -> -0.081468 x sqrt(525 600) = -59.0439
    s = two_trades()
    assert s.sharpe == pytest.approx(-37.2245497, rel=1e-8)
    assert s.sortino == pytest.approx(-59.0438710, rel=1e-8)


def test_round_trips_fees_slippage_and_exposure_are_the_hand_computed_ones() -> None:
    s = two_trades()
    assert (s.trades, s.wins, s.losses, s.open_trades, s.fills) == (2, 1, 1, 0, 4)
    assert s.win_rate == 0.5
    assert s.profit_factor == pytest.approx(1.78 / 2.18)
    assert s.avg_win == pytest.approx(1.78) and s.avg_loss == pytest.approx(-2.18)
    assert s.fees == pytest.approx(0.40) and s.slippage_cost == pytest.approx(0.16)
    # ETH held at the end of minutes 1-2, LTC at the end of minutes 3-4: 4 of 5 minutes.
    assert s.exposure_time == pytest.approx(0.8)
    assert s.buy_and_hold_return == pytest.approx((0.10 - 0.20) / 2)  # ETH +10 %, LTC -20 %


def test_per_symbol_figures_are_the_hand_computed_ones_and_add_up_to_the_run() -> None:
    s = two_trades()
    eth, ltc = s.per_symbol["ETHBTC"], s.per_symbol["LTCBTC"]
    assert (eth.trades, eth.wins, eth.losses, eth.fills) == (1, 1, 0, 2)
    assert eth.pnl == pytest.approx(1.78) and ltc.pnl == pytest.approx(-2.18)
    assert eth.profit_factor is None and ltc.profit_factor == 0.0
    assert eth.win_rate == 1.0 and ltc.win_rate == 0.0
    assert eth.fees == pytest.approx(0.22) and ltc.slippage_cost == pytest.approx(0.05)
    assert eth.exposure_time == pytest.approx(0.4) and ltc.exposure_time == pytest.approx(0.4)
    assert eth.buy_and_hold_return == pytest.approx(0.1)
    assert ltc.buy_and_hold_return == pytest.approx(-0.2)
    assert eth.pnl + ltc.pnl == pytest.approx(s.final_equity - s.start_equity)


def test_as_dict_is_json_ready_with_undefined_figures_as_null() -> None:
    d = two_trades().as_dict()
    assert d["per_symbol"]["ETHBTC"]["profit_factor"] is None
    assert d["sharpe"] == -37.22454972 and d["quote"] == "BTC"
    assert set(d) == set(Statistics.__dataclass_fields__)


def test_without_trades_and_flat_equity_the_ratios_are_undefined() -> None:
    flat = [(t * M, 100.0) for t in range(1, 5)]
    s = compute_statistics(flat, [], {"ETHBTC": (10.0, 10.0)}, "BTC", 100.0)
    assert s.minutes == 4 and s.total_return == 0.0 and s.max_drawdown == 0.0
    assert s.sharpe is None and s.sortino is None and s.calmar is None
    assert s.profit_factor is None and s.win_rate is None
    assert s.avg_win is None and s.avg_loss is None
    assert (s.trades, s.fills, s.fees, s.slippage_cost) == (0, 0, 0.0, 0.0)
    assert s.exposure_time == 0.0 and s.buy_and_hold_return == 0.0
    assert all(math.isnan(f(s)) for name, f in OBJECTIVES.items() if name != "return")


def test_a_single_minute_has_a_return_but_no_ratio() -> None:
    s = compute_statistics([(M, 101.0)], [], {}, "USDT", 100.0)
    assert s.minutes == 1 and s.total_return == pytest.approx(0.01)
    assert s.sharpe is None and s.sortino is None
    assert s.buy_and_hold_return is None and s.per_symbol == {}


def test_a_run_of_no_bars_has_no_minutes() -> None:
    s = compute_statistics([], [], {}, "", 1.0)
    assert s.minutes == 0 and s.total_return == 0.0 and s.final_equity == 1.0
    assert s.annualized_return is None and s.exposure_time is None


def test_only_gains_have_a_sharpe_but_no_sortino() -> None:
    s = compute_statistics([(M, 101.0), (2 * M, 103.02)], [], {}, "BTC", 100.0)
    # r = 0.01, 0.02: mean 0.015, std 0.0070711 -> 2.1213 x sqrt(525 600)
    assert s.sharpe == pytest.approx(0.015 / math.sqrt(0.00005) * math.sqrt(MINUTES_PER_YEAR))
    assert s.sortino is None


def test_minutes_without_a_point_carry_the_equity_and_a_minute_keeps_its_last_point() -> None:
    assert minute_equity([(M, 99.0), (4 * M, 102.0)], 100.0) == [100.0, 99.0, 99.0, 99.0, 102.0]
    # live data: points inside minutes; each belongs to the minute it ends in
    live = [(M + 5_000, 101.0), (M + 30_000, 100.5), (2 * M, 100.7), (2 * M + 1, 99.0)]
    assert minute_equity(live, 100.0) == [100.0, 100.7, 99.0]
    s = compute_statistics([(M, 99.0), (4 * M, 102.0)], [], {}, "BTC", 100.0)
    assert s.minutes == 4  # returns -0.01, 0, 0, +0.030303
    assert s.sharpe == pytest.approx(
        (-0.01 + 3 / 99) / 4 / _sample_std([-0.01, 0.0, 0.0, 3 / 99]) * math.sqrt(525_600))


def _sample_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_scaling_in_and_selling_in_parts_is_one_round_trip() -> None:
    fills = [
        FillRecord(M, "XLMBTC", "buy", 1.0, 10.0, 0.0, 0.0),
        FillRecord(2 * M, "XLMBTC", "buy", 1.0, 12.0, 0.0, 0.0),
        FillRecord(3 * M, "XLMBTC", "sell", 0.5, 13.0, 0.0, 0.0),
        FillRecord(4 * M, "XLMBTC", "sell", 1.5, 11.0, 0.0, 0.0),
    ]
    equity = [(t * M, 100.0) for t in range(1, 6)]
    s = compute_statistics(equity, fills, {"XLMBTC": (10.0, 11.0)}, "BTC", 100.0)
    assert s.trades == 1 and s.wins == 1
    assert s.avg_win == pytest.approx(6.5 + 16.5 - 22.0)  # sells 6.5 + 16.5, buys 22
    assert s.exposure_time == pytest.approx(3 / 5)  # held at the end of minutes 1, 2, 3


def test_a_position_open_at_the_end_is_no_trade_but_counts_in_pnl_and_exposure() -> None:
    fills = [FillRecord(2 * M, "ADABTC", "buy", 4.0, 2.5, 0.01, 0.02)]
    equity = [(M, 100.0), (2 * M, 99.99), (3 * M, 101.99)]
    s = compute_statistics(equity, fills, {"ADABTC": (2.5, 3.0)}, "BTC", 100.0)
    ada = s.per_symbol["ADABTC"]
    assert s.trades == 0 and s.open_trades == 1 and ada.open_trades == 1
    assert s.win_rate is None and s.profit_factor is None
    assert ada.pnl == pytest.approx(4 * 3.0 - 10.01)  # marked at the last close
    assert s.exposure_time == pytest.approx(2 / 3)  # the end of minutes 2 and 3


def test_slippage_cost_is_the_distance_to_the_engines_reference_price() -> None:
    # a buy fills at ref * (1 + s), a sell at ref * (1 - s); ref = 10 here
    assert slippage_cost("buy", 2.0, 10.1, 0.01) == pytest.approx(2 * 0.1)
    assert slippage_cost("sell", 3.0, 9.8, 0.02) == pytest.approx(3 * 0.2)
    assert slippage_cost("buy", 2.0, 10.0, 0.0) == 0.0


def test_max_drawdown_is_the_largest_fall_from_a_running_peak() -> None:
    assert max_drawdown([]) == 0.0
    assert max_drawdown([100.0, 110.0, 99.0, 120.0, 108.0]) == (110.0 - 99.0) / 110.0


def test_the_quote_currency_is_the_one_all_symbols_share() -> None:
    assert quote_of(["ETHBTC", "LTCBTC"]) == "BTC"
    assert quote_of(["BTCUSDT", "ETHUSDT"]) == "USDT"
    assert quote_of(["BTCUSDT", "ETHBTC"]) == ""
    assert quote_of(["WHATEVER"]) == ""


def test_objectives_read_the_statistics() -> None:
    s = two_trades()
    assert set(OBJECTIVES) == {"sharpe", "sortino", "calmar", "return",
                               "return_over_drawdown", "profit_factor"}
    assert OBJECTIVES["sharpe"](s) == s.sharpe and OBJECTIVES["return"](s) == pytest.approx(-0.004)
    assert OBJECTIVES["return_over_drawdown"](s) == pytest.approx(-0.004 / (2.3 / 101.9))
    assert OBJECTIVES["profit_factor"](s) == pytest.approx(1.78 / 2.18)


def test_a_hand_built_record_without_point_times_counts_a_minute_per_point() -> None:
    record = RunRecord(start_equity=100.0, equity_points=[100.0, 98.0], final_equity=101.8)
    s = statistics_of(record)
    assert s.minutes == 3 and s.total_return == pytest.approx(0.018)
    assert s.max_drawdown == pytest.approx(0.02)


def test_a_backtests_slippage_cost_is_measured_against_the_candle_closes() -> None:
    candles = read_candles(SAMPLE_DIR, None, 600)
    pipeline = btc_pipeline(candles.symbols)
    closes: dict[str, float] = {}
    expected = 0.0
    seen = 0
    for bar in candles:  # run_backtest's loop, bar by bar: a bar's fills meet its closes
        for md in bar.events:
            closes[md.symbol] = md.price
        pipeline.on_bar(bar.events, bar.timestamp)
        assert pipeline.trace is not None
        for f in pipeline.trace.fills[seen:]:
            expected += f.qty * abs(f.price - closes[f.symbol])
        seen = len(pipeline.trace.fills)
    record = pipeline.finish()
    assert seen > 10, "ten hours of the sample make enough fills"
    s = statistics_of(record)
    assert s.slippage_cost == pytest.approx(expected, rel=1e-9)
    assert s.fees == pytest.approx(record.total_fees, rel=1e-12)
    assert s.final_equity == record.final_equity and s.quote == "BTC"
    assert sum(p.pnl for p in s.per_symbol.values()) == pytest.approx(
        record.final_equity - record.start_equity, abs=1e-12)
    firsts = candles.first_and_last_closes()
    assert s.buy_and_hold_return == pytest.approx(
        sum(last / first - 1 for first, last in firsts.values()) / len(firsts))
    report = build_report(record, "backtest")
    assert report["statistics"] == s.as_dict()
    assert report["max_drawdown_pct"] == pytest.approx(s.max_drawdown * 100, abs=1e-6)

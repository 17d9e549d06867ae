"""Sweep specifications: parsing, range validation before running, the grid, the CSV."""

from __future__ import annotations

import pytest

from services.research.sweep import SweepError, grid, parameters, parse_sweep, to_csv


def test_parameters_when_read_then_carry_the_documented_ranges() -> None:
    known = parameters()
    assert known["MAX_POSITION_PCT"].range_text() == "0.01..0.25"
    assert known["DATA_STALE_TIMEOUT_SEC"].kind is int
    assert "REDIS_URL" not in known and "BUS_BATCH" not in known


def test_parse_sweep_when_valid_then_axes_in_order_without_duplicates() -> None:
    axes = parse_sweep(["max_position_pct=0.05, 0.1,0.05", "DATA_STALE_TIMEOUT_SEC=10,30.0"])
    assert axes == [("MAX_POSITION_PCT", ["0.05", "0.1"]), ("DATA_STALE_TIMEOUT_SEC", ["10", "30"])]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["MAX_POSITION_PCT=0.3"], "outside its range 0.01..0.25"),
        (["STOP_LOSS_PCT=0.001"], "outside its range 0.005..0.1"),
        (["MAX_POSITION_PCT=abc"], "not a number"),
        (["MAX_POSITION_PCT=nan"], "not finite"),
        (["DATA_STALE_TIMEOUT_SEC=12.5"], "must be an integer"),
        (["NOPE=1"], "not a sweepable parameter"),
        (["MAX_POSITION_PCT"], "not NAME=v1,v2"),
        (["MAX_POSITION_PCT="], "has no values"),
        (["TOP_N=1", "TOP_N=2"], "given twice"),
    ],
)
def test_parse_sweep_when_a_value_is_unusable_then_refused_naming_it(
    spec: list[str], message: str
) -> None:
    with pytest.raises(SweepError, match=message):
        parse_sweep(spec)


def test_parse_sweep_when_several_problems_then_all_are_named() -> None:
    with pytest.raises(SweepError) as caught:
        parse_sweep(["MAX_POSITION_PCT=0.5,0.1", "STOP_LOSS_PCT=x"])
    assert "MAX_POSITION_PCT=0.5" in str(caught.value) and "STOP_LOSS_PCT='x'" in str(
        caught.value)


def test_grid_when_two_axes_then_every_combination_first_axis_slowest() -> None:
    points = grid([("A", ["1", "2"]), ("B", ["x", "y", "z"])])
    assert len(points) == 6 and points[0] == {"A": "1", "B": "x"}
    assert points[3] == {"A": "2", "B": "x"}


def test_to_csv_when_rows_then_one_line_per_point_with_the_digest() -> None:
    row = {"params": {"A": "1"}, "return_pct": -1.5, "max_drawdown_pct": 2.0, "halts": 1,
           "pauses": {"circuit_breaker": 3, "stale_data": 1}, "trades": 7, "fees": 0.01,
           "sharpe": -2.5, "sortino": None, "calmar": -3.0, "profit_factor": 0.5,
           "win_rate": 0.25, "fills": 15, "exposure_time": 0.4, "slippage_cost": 0.05,
           "buy_and_hold_return": 0.02,
           "trading_state": "HALTED", "digest": {"orders": "ab", "fills": "cd"}}
    lines = to_csv([row], ["A"]).splitlines()
    assert lines[0].startswith("A,return_pct,max_drawdown_pct,halts,pauses,trades,fees,sharpe,"
                               "sortino,calmar,profit_factor,win_rate,fills,exposure_time,"
                               "slippage_cost,buy_and_hold_return,trading_state")
    assert lines[1] == ("1,-1.5,2.0,1,circuit_breaker:3 stale_data:1,7,0.01,-2.5,,-3.0,0.5,0.25,"
                        "15,0.4,0.05,0.02,HALTED,ab,cd")

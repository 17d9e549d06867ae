"""Tables, CSV and the environment block of a study's trials."""

from __future__ import annotations

import csv
import io
import math
import shlex

from services.research.optimize import TrialRow, best_rows, env_block, ranked
from services.research.optimize_report import number, table_header, table_row, to_csv


def row(number_: int, values: tuple[float, ...] | None, trades: int = 5,
        feasible: bool = True, **env: str) -> TrialRow:
    return TrialRow(number_, "COMPLETE" if values is not None else "FAIL",
                    {"TOP_N": number_ + 1}, values, trades, feasible and values is not None,
                    {"total_return": 0.01 * number_, "sharpe": 1.5, "trades": trades},
                    {"orders": f"o{number_}", "fills": f"f{number_}"}, dict(env),
                    "" if values is not None else "sharpe undefined for this run")


def test_best_and_ranked_when_some_are_infeasible_then_feasible_first_by_objective() -> None:
    rows = [row(0, (1.0,)), row(1, (3.0,), feasible=False), row(2, (2.0,)), row(3, None),
            row(4, (2.0,))]
    assert [r.number for r in best_rows(rows)] == [2]  # the earlier of two equal values
    assert [r.number for r in ranked(rows)] == [2, 4, 0, 1]


def test_best_rows_when_two_objectives_then_the_non_dominated_front() -> None:
    rows = [row(0, (1.0, 5.0)), row(1, (2.0, 4.0)), row(2, (1.5, 3.0)), row(3, (3.0, 1.0)),
            row(4, (0.5, 4.5))]
    assert [r.number for r in best_rows(rows)] == [3, 1, 0]


def test_env_block_when_a_value_needs_quoting_then_it_is_shell_ready() -> None:
    trial = row(0, (1.0,), STRATEGY_PARAMS='{"fast": 5}', TOP_N="3")
    block = env_block(trial)
    assert block.splitlines() == ["STRATEGY_PARAMS='{\"fast\": 5}'", "TOP_N=3"]
    assert shlex.split(block.splitlines()[0]) == ['STRATEGY_PARAMS={"fast": 5}']


def test_to_csv_when_written_then_one_line_per_trial_with_failures_and_digests() -> None:
    rows = [row(0, (1.0,)), row(1, None)]
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows, ("TOP_N",), ("sharpe",)))))
    assert [r["trial"] for r in parsed] == ["0", "1"]
    assert parsed[0]["sharpe"] == "1.0" and parsed[0]["digest_orders"] == "o0"
    assert parsed[1]["state"] == "FAIL" and parsed[1]["sharpe"] == ""
    assert parsed[1]["error"] == "sharpe undefined for this run"


def test_the_table_when_the_objective_is_a_statistic_then_it_is_not_shown_twice() -> None:
    header = table_header(("TOP_N",), ("sharpe", "return"))
    assert header.count("sharpe") == 1 and "total_return" not in header
    assert len(table_row(row(2, (1.0, 0.5)), ("TOP_N",), ("sharpe", "return"))) == len(header)
    assert number(None) == number(math.nan) == "n/a" and number(0.00012) == "1.200e-04"

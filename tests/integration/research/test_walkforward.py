"""Walk-forward over planted noise: in-sample fit exposed out of sample; stitching; windows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from services.research.backtest import Pipeline, run_backtest
from services.research.engines import engine_configs, patched_env
from services.research.optimize import DataSpec, StudySpec
from services.research.report import build_report
from services.research.space import parse_space
from services.research.walkforward import (
    WalkForwardError,
    check_windows,
    make_folds,
    run_fold,
    walk_forward_report,
)
from tests.support.random_candles import write_random_walks

DAY = 1440
# Everything a momentum strategy could tune: on a driftless random walk it can only fit noise.
NOISE_SPACE = parse_space(["LOOKBACK_MINUTES=2:120", "TOP_N=1:3", "MIN_MOMENTUM_PCT=0:2",
                           "SELL_MOMENTUM_PCT=-2:0", "STOP_LOSS_PCT=0.005:0.1"])


@pytest.fixture(scope="module")
def noise_walk(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudySpec, dict, list]:
    base = tmp_path_factory.mktemp("noise")
    data = DataSpec(write_random_walks(base / "candles", ["AAA", "BBB", "CCC", "DDD"],
                                       4 * DAY, seed=3))
    candles = data.read()
    folds = make_folds(candles.minutes, DAY, DAY // 2)
    spec = StudySpec(data, NOISE_SPACE, ("sharpe",), 3, str(base / "study.journal"), "noise",
                     seed=1)
    results = [run_fold(spec, f, 20, workers=1) for f in folds]
    assert all(r is not None for r in results)
    report = walk_forward_report(spec, [r for r in results if r is not None],
                                 candles.start_ms, {})
    return spec, report, results


def test_walk_forward_when_a_strategy_fits_noise_then_out_of_sample_exposes_it(
    noise_walk: tuple[StudySpec, dict, list],
) -> None:
    _, report, _ = noise_walk
    folds = report["folds"]
    assert len(folds) == 6
    # In sample, the best of 20 trials always looks good ...
    assert report["in_sample_mean"] > 5.0
    assert all(f["in_sample"] > 0.0 for f in folds)
    # ... out of sample the same parameters are worth nothing: the fit was noise.
    assert report["out_of_sample_mean"] < report["in_sample_mean"] - 10.0
    assert report["efficiency"] is not None and report["efficiency"] < 0.5
    # The deflated Sharpe ratio never certifies a fold's best trial as skill.
    assert all(f["deflated_sharpe"]["dsr"] < 0.95 for f in folds)
    assert all(f["deflated_sharpe"]["trials"] == f["trials"] == 20 for f in folds)


def test_walk_forward_when_folds_run_then_each_test_window_is_a_fresh_account_backtest(
    noise_walk: tuple[StudySpec, dict, list],
) -> None:
    spec, report, results = noise_walk
    candles = spec.data.read()
    for fold, result in zip(report["folds"], results, strict=True):
        window = candles.window(*result.fold.test)
        with patched_env(fold["env"]):
            configs = engine_configs(list(window.symbols))
        plain = build_report(run_backtest(window, Pipeline(*configs)), "backtest")
        assert fold["test_digest"] == plain["digest"]
        assert fold["test_return"] == pytest.approx(plain["statistics"]["total_return"],
                                                    rel=1e-9)
        assert fold["out_of_sample"] == pytest.approx(plain["statistics"]["sharpe"], rel=1e-9)
        assert fold["buy_and_hold_return"] == pytest.approx(
            plain["statistics"]["buy_and_hold_return"], rel=1e-9)
        assert result.curve[0][0] > result.fold.test[0] * 60_000 + candles.start_ms


def test_the_stitched_curve_when_chained_then_it_compounds_the_folds_returns(
    noise_walk: tuple[StudySpec, dict, list],
) -> None:
    _, report, _ = noise_walk
    stitched = report["stitched"]
    compounded = math.prod(1.0 + f["test_return"] for f in report["folds"]) - 1.0
    held = math.prod(1.0 + f["buy_and_hold_return"] for f in report["folds"]) - 1.0
    assert stitched["return"] == pytest.approx(compounded, rel=1e-9)
    assert stitched["buy_and_hold_return"] == pytest.approx(held, rel=1e-9)
    times = [t for t, _ in stitched["curve"]]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert len(stitched["curve"]) == len(stitched["buy_and_hold"])


def test_a_window_when_it_holds_no_candle_then_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    data = DataSpec(write_random_walks(tmp_path, ["AAA", "BBB"], 3 * DAY, seed=1,
                                       skip=(DAY, DAY // 2)))
    candles = data.read()
    folds = make_folds(candles.minutes, DAY, DAY // 2)
    with pytest.raises(WalkForwardError, match="fold 1: the test window is unusable: the "
                       "window of 720 minutes from 2024-01-02T00:00Z holds no candle"):
        check_windows(data, folds)

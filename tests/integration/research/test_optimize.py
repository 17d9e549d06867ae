"""Optuna studies over the engines: trials equal plain backtests, seeds, storage, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import asyncpg
import optuna
import pytest

from services.replay.config import SAMPLE_DIR
from services.research.backtest import Pipeline, run_backtest
from services.research.engines import engine_configs, patched_env
from services.research.optimize import (
    DataSpec,
    Evaluator,
    OptimizeError,
    StorageError,
    StudySpec,
    best_rows,
    load_or_create,
    open_storage,
    ranked,
    run_study,
    trial_rows,
)
from services.research.report import build_report
from services.research.space import parse_space

DATA = DataSpec(SAMPLE_DIR, minutes=720)
SPACE = parse_space(["STOP_LOSS_PCT=0.005:0.05", "TOP_N=1:5", "MAX_POSITION_PCT=0.02:0.2"])


def spec(storage: Path | str, name: str = "s", seed: int | None = 11,
         objectives: tuple[str, ...] = ("return",), min_trades: int = 0) -> StudySpec:
    return StudySpec(DATA, SPACE, objectives, min_trades, str(storage), name, seed)


def test_a_trial_when_run_again_as_a_plain_backtest_then_the_same_digest_and_statistics(
    tmp_path: Path,
) -> None:
    study_spec = spec(tmp_path / "s.journal")
    outcome = run_study(study_spec, 3, workers=1)
    assert outcome.finished == 3
    rows = trial_rows(load_or_create(study_spec))
    assert len({r.digest["orders"] for r in rows}) == 3  # three different runs
    candles = DATA.read()
    for row in rows:
        with patched_env(row.env):
            configs = engine_configs(list(candles.symbols))
        plain = build_report(run_backtest(candles, Pipeline(*configs)), "backtest")
        assert row.digest == plain["digest"]
        expected = {k: v for k, v in plain["statistics"].items() if k != "per_symbol"}
        assert row.statistics == expected
        assert row.values is not None  # as_dict keeps 10 significant digits
        assert row.values[0] == pytest.approx(plain["statistics"]["total_return"], rel=1e-9)


def test_the_compact_events_when_replayed_then_the_engines_decide_as_on_the_candle_set() -> None:
    evaluator = Evaluator(DATA, ("sharpe",))
    candles = DATA.read()
    for env in ({}, {"TOP_N": "1", "STOP_LOSS_PCT": "0.005"}):
        compact = build_report(evaluator.record(env), "backtest")
        with patched_env(env):
            configs = engine_configs(list(candles.symbols))
        plain = build_report(run_backtest(candles, Pipeline(*configs)), "backtest")
        assert compact["digest"] == plain["digest"]
        assert compact["statistics"] == plain["statistics"]
    first = next(iter(candles)).events[0]
    event = evaluator.bars[0].events[0]
    for name in type(first).model_fields:
        assert getattr(event, name) == getattr(first, name), name


def test_the_same_seed_when_one_worker_then_the_same_study(tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        study_spec = spec(tmp_path / f"{i}.journal", seed=5)
        run_study(study_spec, 4, workers=1)
        runs.append([(r.params, r.values) for r in trial_rows(load_or_create(study_spec))])
    assert runs[0] == runs[1]
    other = spec(tmp_path / "other.journal", seed=6)
    run_study(other, 4, workers=1)
    assert [r.params for r in trial_rows(load_or_create(other))] != [p for p, _ in runs[0]]


def test_a_study_when_the_same_command_runs_again_then_it_continues(tmp_path: Path) -> None:
    study_spec = spec(tmp_path / "s.journal")
    run_study(study_spec, 2, workers=1)
    again = run_study(study_spec, 2, workers=1)
    assert again.numbers == [2, 3]
    rows = trial_rows(load_or_create(study_spec))
    assert [r.number for r in rows] == [0, 1, 2, 3]
    assert len({tuple(sorted(r.params.items())) for r in rows}) == 4  # no trial repeated


def test_min_trades_when_no_trial_reaches_it_then_none_is_best_and_all_stay_kept(
    tmp_path: Path,
) -> None:
    study_spec = spec(tmp_path / "s.journal", min_trades=10_000)
    run_study(study_spec, 3, workers=1)
    rows = trial_rows(load_or_create(study_spec))
    assert len(rows) == 3 and all(r.state == "COMPLETE" and not r.feasible for r in rows)
    assert best_rows(rows) == []


def test_min_trades_when_some_trials_reach_it_then_only_those_can_be_best(tmp_path: Path) -> None:
    study_spec = spec(tmp_path / "s.journal", seed=2)
    run_study(study_spec, 6, workers=1)
    rows = trial_rows(load_or_create(study_spec))
    trades = sorted({r.trades or 0 for r in rows})
    threshold = trades[len(trades) // 2]
    strict = spec(tmp_path / "strict.journal", seed=2, min_trades=threshold)
    run_study(strict, 6, workers=1)
    strict_rows = trial_rows(load_or_create(strict))
    best = best_rows(strict_rows)
    assert best and (best[0].trades or 0) >= threshold
    feasible = [r for r in strict_rows if r.feasible]
    assert best[0].values == max(r.values for r in feasible if r.values is not None)
    assert ranked(strict_rows)[0] == best[0]


def test_two_objectives_when_optimised_then_nsga2_and_a_pareto_front(tmp_path: Path) -> None:
    study_spec = spec(tmp_path / "s.journal", objectives=("return", "profit_factor"))
    run_study(study_spec, 6, workers=1)
    study = load_or_create(study_spec)
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    rows = trial_rows(study)
    front = best_rows(rows)
    assert front
    done = [r for r in rows if r.values is not None]
    for member in front:
        assert member.values is not None
        assert not any(o.values is not None and all(a >= b for a, b in zip(
            o.values, member.values, strict=True)) and o.values != member.values
            for o in done)
    assert {r.number for r in front} == {t.number for t in study.best_trials}


def test_two_workers_when_processes_then_every_trial_once(tmp_path: Path) -> None:
    study_spec = spec(tmp_path / "s.journal", seed=None)
    outcome = run_study(study_spec, 6, workers=2)
    assert outcome.errors == [] and outcome.finished == 6
    rows = trial_rows(load_or_create(study_spec))
    assert sorted(outcome.numbers) == [r.number for r in rows] == list(range(6))
    assert all(r.state == "COMPLETE" and r.digest for r in rows)


def test_a_study_when_continued_for_another_objective_then_refused(tmp_path: Path) -> None:
    run_study(spec(tmp_path / "s.journal"), 1, workers=1)
    with pytest.raises(OptimizeError, match="exists for objectives \\['return'\\]"):
        load_or_create(spec(tmp_path / "s.journal", objectives=("sharpe",)))


def test_storage_when_unreachable_then_one_line_without_the_password(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        open_storage("postgresql://cdb:s3cret-pw@127.0.0.1:1/studies")
    message = str(caught.value)
    assert message.startswith("cannot reach the study storage postgresql://cdb:***@127.0.0.1:1")
    assert "s3cret-pw" not in message and "\n" not in message
    with pytest.raises(StorageError, match="unsupported study storage redis://"):
        open_storage("redis://127.0.0.1:6379/0")


def test_the_study_when_in_postgresql_then_the_trials_are_rows_there(own_database: str) -> None:
    study_spec = spec(own_database)
    run_study(study_spec, 2, workers=1)

    async def count() -> int:
        conn = await asyncpg.connect(own_database)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM trials"))
        finally:
            await conn.close()

    assert asyncio.run(count()) == 2
    assert len(trial_rows(load_or_create(study_spec))) == 2


def test_a_trial_of_strategy_parameters_when_rerun_then_equals_the_backtest_with_them(
    tmp_path: Path,
) -> None:
    space = parse_space(["lookback_minutes=3:30", "top_n=1:3"])
    study_spec = StudySpec(DATA, space, ("return",), 0, str(tmp_path / "s.journal"), "s", 3)
    run_study(study_spec, 2, workers=1)
    candles = DATA.read()
    for row in trial_rows(load_or_create(study_spec)):
        assert set(row.env) == {"STRATEGY", "STRATEGY_PARAMS"}
        with patched_env(row.env):
            configs = engine_configs(list(candles.symbols))
        plain = build_report(run_backtest(candles, Pipeline(*configs)), "backtest")
        assert row.digest == plain["digest"]


def test_ctrl_c_when_one_worker_runs_in_process_then_no_trial_is_left_running(
    tmp_path: Path,
) -> None:
    study_spec = spec(tmp_path / "s.journal")
    timer = threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        outcome = run_study(study_spec, 500, workers=1)
    finally:
        timer.cancel()
    assert outcome.interrupted and 0 < outcome.finished < 500
    rows = trial_rows(load_or_create(study_spec))
    states = [r.state for r in rows]
    assert "RUNNING" not in states
    assert states.count("COMPLETE") == outcome.finished
    assert [r.error for r in rows if r.state == "FAIL"] in ([], ["interrupted"])

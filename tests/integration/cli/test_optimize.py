"""`cdb optimize` as a real process: outputs, the best trial as a plain backtest, shared
studies in PostgreSQL, Ctrl-C, and bad input refused in one line with nothing written."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import orjson
import pytest

from tests.support.chromium import chromium_binary, open_page

ROOT = Path(__file__).resolve().parents[3]
SPACE = ["--space", "STOP_LOSS_PCT=0.005:0.05", "--space", "TOP_N=1:6"]
QUICK = ["--minutes", "1440", *SPACE]


def env_for(extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("REDIS_URL", "DATABASE_URL", "RISK_ADMIN_TOKEN", "TOP_N",
                         "STOP_LOSS_PCT")}
    return {**base, "PYTHONPATH": str(ROOT), **(extra or {})}


def cdb(cwd: Path, *args: str, timeout: float = 600,
        **env: str) -> subprocess.CompletedProcess[str]:
    """`cdb ARGS` as a real process in `cwd` (so the default study file would land there)."""
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=cwd,
                          env=env_for(env), capture_output=True, text=True, timeout=timeout,
                          check=False)


def load(storage: str, name: str) -> optuna.Study:
    if "://" in storage:
        return optuna.load_study(study_name=name, storage=storage)
    backend = optuna.storages.journal.JournalFileBackend(storage)
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(backend))


def test_optimize_when_run_then_the_best_trial_repeats_as_a_plain_backtest(
    tmp_path: Path,
) -> None:
    done = cdb(tmp_path, "optimize", *QUICK, "--trials", "6", "--workers", "2",
               "--report", "opt.json", "--csv", "opt.csv", "--html", "opt.html")
    assert done.returncode == 0, done.stderr
    assert "(0 trials so far); 6 more over 6,998 candles, 2 processes, TPE" in done.stderr
    assert (tmp_path / ".cdb" / "studies.journal").is_file()  # the default storage
    report = orjson.loads((tmp_path / "opt.json").read_bytes())
    assert len(report["trials"]) == 6 and len(report["best"]) == 1
    best = report["best"][0]
    block = "\n".join(f"{k}={v}" for k, v in sorted(best["env"].items()))
    assert block in done.stdout
    assert f"best trial: trial {best['trial']} (sharpe " in done.stdout
    single = cdb(tmp_path, "backtest", "--minutes", "1440", "--report", "plain.json",
                 **best["env"])
    assert single.returncode == 0, single.stderr
    plain = orjson.loads((tmp_path / "plain.json").read_bytes())
    assert best["digest"] == plain["digest"]
    assert best["statistics"] == {k: v for k, v in plain["statistics"].items()
                                  if k != "per_symbol"}
    assert best["values"] == [pytest.approx(plain["statistics"]["sharpe"], rel=1e-9)]
    lines = (tmp_path / "opt.csv").read_text().splitlines()
    assert len(lines) == 7 and lines[0].startswith("trial,state,STOP_LOSS_PCT,TOP_N,sharpe,")
    assert (tmp_path / "opt.html").stat().st_size > 100_000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_optimize_when_the_same_command_runs_again_then_the_study_continues(
    tmp_path: Path,
) -> None:
    args = ["optimize", *QUICK, "--trials", "2", "--workers", "1", "--seed", "4",
            "--min-trades", "0", "--objective", "return"]
    assert cdb(tmp_path, *args).returncode == 0
    again = cdb(tmp_path, *args, "--report", "again.json")
    assert again.returncode == 0, again.stderr
    assert "(2 trials so far); 2 more" in again.stderr
    numbers = [t["trial"] for t in orjson.loads((tmp_path / "again.json").read_bytes())["trials"]]
    assert numbers == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--space", "MAX_POSITION_PCT=0.05:0.5"],
         "cannot optimise: MAX_POSITION_PCT=0.5 is outside its range 0.01..0.25"),
        (["--space", "STOP_LOSS_PCT=0.05:0.01"],
         "cannot optimise: STOP_LOSS_PCT=0.05:0.01 has no valid point (LOW is above HIGH)"),
        (["--space", "lookback=5:60"],
         "cannot optimise: lookback is not a parameter of the strategy or the risk manager"),
        (["--space", "TOP_N=1:5", "--objective", "alpha"],
         "cannot optimise: unknown objective 'alpha'"),
        (["--space", "TOP_N=1:5", "--storage", "postgresql://cdb:hunter2@127.0.0.1:1/x"],
         "cannot optimise: cannot reach the study storage postgresql://cdb:***@127.0.0.1:1/x"),
        (["--space", "TOP_N=1:5", "--storage", "mongodb://127.0.0.1/x"],
         "cannot optimise: unsupported study storage mongodb://"),
        (["/nonexistent/candles", "--space", "TOP_N=1:5"], "cannot read candles: "),
    ],
)
def test_optimize_when_the_input_is_bad_then_one_line_exit_1_and_nothing_written(
    tmp_path: Path, args: list[str], message: str,
) -> None:
    done = cdb(tmp_path, "optimize", *args, "--trials", "2", "--csv", "t.csv",
               "--html", "t.html", "--report", "t.json")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert list(tmp_path.iterdir()) == []  # no study file, no output


def test_two_processes_when_they_share_a_study_in_postgresql_then_no_trial_is_lost_or_twice(
    tmp_path: Path, own_database: str,
) -> None:
    args = [sys.executable, "-m", "services.cli", "optimize", *QUICK, "--trials", "5",
            "--workers", "1", "--storage", own_database, "--study", "shared",
            "--min-trades", "0"]
    procs = [subprocess.Popen([*args, "--report", f"w{i}.json"], cwd=tmp_path, env=env_for(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    study = load(own_database, "shared")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(10))
    assert len({t._trial_id for t in trials}) == 10
    assert all(t.state.name == "COMPLETE" and t.user_attrs["digest"] for t in trials)
    # Each process saw the whole study at its end: the ten trials, once each.
    for i in range(2):
        seen = orjson.loads((tmp_path / f"w{i}.json").read_bytes())["trials"]
        numbers = [t["trial"] for t in seen]
        assert len(numbers) >= 5 and len(set(numbers)) == len(numbers)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_when_trials_are_running_then_the_finished_ones_are_kept(
    tmp_path: Path, how: str,
) -> None:
    storage = tmp_path / "study.journal"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "optimize", *SPACE, "--trials", "500",
         "--workers", "2", "--storage", str(storage), "--study", "stopped",
         "--min-trades", "0"],
        cwd=tmp_path, env=env_for(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with_done = [t for t in load(str(storage), "stopped").get_trials()
                             if t.state.is_finished()]
            except (KeyError, FileNotFoundError):  # the study is not created yet
                with_done = []
            if len(with_done) >= 3:
                break
            time.sleep(0.5)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        else:
            proc.send_signal(signal.SIGTERM)  # as Kubernetes stops a pod: its first process
        out, errors = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, errors
    assert "stopping: the running trials finish and are kept" in errors
    trials = load(str(storage), "stopped").get_trials()
    assert 3 <= len(trials) < 500
    assert all(t.state.name == "COMPLETE" for t in trials)  # none left running, none lost
    assert f"interrupted: {len(trials)} trials finished and kept in the study" in errors
    assert f"Top trials of stopped ({len(trials)} in the study" in out


@pytest.mark.skipif(chromium_binary() is None,
                    reason="chromium is not installed (Debian package chromium)")
def test_the_html_report_when_two_objectives_then_history_importances_and_pareto_front(
    tmp_path: Path,
) -> None:
    done = cdb(tmp_path, "optimize", *QUICK, "--trials", "8", "--workers", "2",
               "--objective", "return", "--objective", "profit_factor", "--min-trades", "0",
               "--html", "opt.html")
    assert done.returncode == 0, done.stderr
    assert "NSGA-II maximising return, profit_factor" in done.stderr
    assert "Pareto front" in done.stdout
    result = open_page(tmp_path / "opt.html", """(() => {
      if (document.readyState !== 'complete') return null;
      const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
      if (plots.length < 3 || plots.some(p => !p.querySelector('svg.main-svg'))) return null;
      return {ids: plots.map(p => p.id),
              points: document.querySelectorAll('#pareto .scatterlayer .point').length,
              front: document.querySelectorAll('#front tbody tr').length,
              env: document.querySelector('#best-env').textContent};
    })()""")
    assert result.errors == []
    assert all(u.startswith(("file:", "data:", "about:")) for u in result.requests)
    assert result.value["ids"] == ["history", "importances", "pareto"]
    assert result.value["points"] >= 1 and result.value["front"] >= 1
    assert "STOP_LOSS_PCT=" in result.value["env"] and "TOP_N=" in result.value["env"]


def test_strategy_parameters_when_optimised_then_the_printed_command_repeats_the_best_trial(
    tmp_path: Path,
) -> None:
    done = cdb(tmp_path, "optimize", "--minutes", "1440", "--strategy", "ema_cross",
               "--space", "fast=3:15", "--space", "slow=20:60", "--space",
               "STOP_LOSS_PCT=0.01:0.05", "--trials", "4", "--workers", "1", "--min-trades", "0",
               "--objective", "return", "--report", "opt.json")
    assert done.returncode == 0, done.stderr
    best = orjson.loads((tmp_path / "opt.json").read_bytes())["best"][0]
    assert best["env"]["STRATEGY"] == "ema_cross"
    line = next(x for x in done.stdout.splitlines() if x.startswith("repeat it: "))
    words = shlex.split(line.removeprefix("repeat it: "))
    cut = words.index("cdb")
    env = dict(w.split("=", 1) for w in words[:cut])
    assert words[cut + 1] == "backtest" and "--param" in words
    again = cdb(tmp_path, *words[cut + 1:], "--minutes", "1440", "--report", "plain.json",
                **env)
    assert again.returncode == 0, again.stderr
    assert orjson.loads((tmp_path / "plain.json").read_bytes())["digest"] == best["digest"]


def test_a_strategy_space_when_no_point_is_valid_then_one_line_and_nothing_written(
    tmp_path: Path,
) -> None:
    done = cdb(tmp_path, "optimize", "--strategy", "ema_cross", "--space", "fast=50:60",
               "--space", "slow=10:20", "--csv", "t.csv")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cannot optimise: the space has no valid point for strategy "
                               "'ema_cross'")
    assert list(tmp_path.iterdir()) == []

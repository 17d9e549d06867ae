"""`cdb walkforward` as a real process: folds, report, HTML, and bad input refused early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.chromium import chromium_binary, open_page
from tests.support.random_candles import write_random_walks

ROOT = Path(__file__).resolve().parents[3]
SPACE = ["--space", "STOP_LOSS_PCT=0.005:0.05", "--space", "TOP_N=1:4"]


def cdb(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "DATABASE_URL", "RISK_ADMIN_TOKEN", "OPTUNA_STORAGE")}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=cwd,
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=900, check=False)


def test_walkforward_when_run_then_folds_efficiency_and_a_chromium_ready_report(
    tmp_path: Path,
) -> None:
    done = cdb(tmp_path, "walkforward", *SPACE, "--minutes", "2160", "--train", "12h",
               "--test", "6h", "--trials", "3", "--workers", "2", "--min-trades", "0",
               "--objective", "return", "--report", "wf.json", "--html", "wf.html")
    assert done.returncode == 0, done.stderr
    assert "walkforward: 4 folds (train 12h, test 6h, step 6h), 3 trials each" in done.stderr
    report = orjson.loads((tmp_path / "wf.json").read_bytes())
    folds = report["folds"]
    assert [f["fold"] for f in folds] == [1, 2, 3, 4]
    assert all(f["trials"] == 3 and f["study"].endswith(f"-fold{f['fold']}") for f in folds)
    assert [f["test"]["from"] for f in folds[1:]] == [f["test"]["to"] for f in folds[:-1]]
    assert "walk-forward efficiency" in done.stdout and "buy-and-hold" in done.stdout
    again = cdb(tmp_path, "walkforward", *SPACE, "--minutes", "2160", "--train", "12h",
                "--test", "6h", "--trials", "3", "--workers", "2", "--min-trades", "0",
                "--objective", "return", "--report", "again.json")
    assert again.returncode == 0, again.stderr
    # Every fold's study already holds its trials: the same command reports the same folds.
    assert orjson.loads((tmp_path / "again.json").read_bytes())["folds"] == folds
    if chromium_binary() is None:
        pytest.skip("chromium is not installed (Debian package chromium)")
    result = open_page(tmp_path / "wf.html", """(() => {
      if (document.readyState !== 'complete') return null;
      const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
      if (plots.length < 2 || plots.some(p => !p.querySelector('svg.main-svg'))) return null;
      return {ids: plots.map(p => p.id),
              lines: document.querySelectorAll('#equity .scatterlayer .trace').length,
              folds: document.querySelectorAll('#folds-table tbody tr').length};
    })()""")
    assert result.errors == []
    assert result.value == {"ids": ["equity", "folds"], "lines": 2, "folds": 4}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "5d", "--test", "1d"],
         "cannot walk forward: the data covers 2d (2880 minutes); --train 5d plus --test 1d "
         "need 8640"),
        (["--train", "5x"], "cannot walk forward: --train '5x' is not a duration"),
        (["--space", "TOP_N=0:4"], "cannot walk forward: TOP_N=0 is outside its range 1..50"),
        (["--space", "nope=1:2"],
         "cannot walk forward: nope is not a parameter of the strategy"),
        (["--train", "12h", "--test", "6h", "--storage", "postgresql://u:secret@127.0.0.1:1/s"],
         "cannot walk forward: cannot reach the study storage postgresql://u:***@127.0.0.1:1/s"),
    ],
)
def test_walkforward_when_the_input_is_bad_then_one_line_exit_1_and_nothing_written(
    tmp_path: Path, args: list[str], message: str,
) -> None:
    given = args if any(a == "--space" for a in args) else [*SPACE, *args]
    done = cdb(tmp_path, "walkforward", *given, "--report", "wf.json", "--html", "wf.html")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert "secret" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_walkforward_when_a_window_has_no_candle_then_refused_naming_the_fold(
    tmp_path: Path,
) -> None:
    data = write_random_walks(tmp_path / "candles", ["AAA", "BBB"], 2880, seed=2,
                              skip=(1440, 720))
    work = tmp_path / "work"
    work.mkdir()
    done = cdb(work, "walkforward", str(data), *SPACE, "--train", "1d", "--test", "12h",
               "--report", "wf.json")
    assert done.returncode == 1
    assert done.stderr.strip() == ("cannot walk forward: fold 1: the test window is unusable: "
                                   "the window of 720 minutes from 2024-01-02T00:00Z holds "
                                   "no candle")
    assert list(work.iterdir()) == []

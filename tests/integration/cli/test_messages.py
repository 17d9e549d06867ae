"""The `cdb` command refuses lying candle files and prints every message verbatim.

Through the real CLI (a subprocess): square brackets in error messages, patterns, file names
and HTTP bodies survive (rich would otherwise take them for markup and swallow them).
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[3]
M = 60_000
T0 = 1_516_423_980_000  # 2018-01-20T04:53Z, a minute boundary


def cdb(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("REDIS_URL", "DATABASE_URL", "RISK_ADMIN_TOKEN", "RISK_URL")}
    return subprocess.run([sys.executable, "-m", "services.cli", *args],
                          env={**base, "COLUMNS": "300", **env}, capture_output=True,
                          text=True, timeout=120, check=False, cwd=ROOT)


def write(directory: Path, name: str, rows: list[Any]) -> Path:
    path = directory / name
    path.write_bytes(orjson.dumps(rows))
    return path


def good(minute: int, close: float = 1.0) -> list[Any]:
    return [T0 + minute * M, close, close * 1.01, close * 0.99, close, 2.0]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([T0 + M, 1.2, 1.1, 0.9, 1.0, 1.0],
         "row 1: open 1.2 is outside [low, high] = [0.9, 1.1]"),
        ([T0 + M, 1.0, 1.1, 0.9, 1.3, 1.0],
         "row 1: close 1.3 is outside [low, high] = [0.9, 1.1]"),
        ([T0 + M, 1.0, 0.9, 1.1, 1.0, 1.0], "row 1: high 0.9 is below low 1.1"),
        ([T0 + M, 1.0, 1.0, 1.0, 1.0], "row 1: expected [open_time_ms, open, high, low, close, "
                                       "base_volume], got [1516424040000, 1.0, 1.0, 1.0, 1.0]"),
        ([T0 + M, "NaN", 1.0, 1.0, 1.0, 1.0], "row 1: open is not finite: 'NaN'"),
        ([T0 + M, 1.0, 1.0, 1.0, 0.0, 1.0], "row 1: close price 0.0 is not positive"),
        ([T0 + M, 1.0, 1.0, 1.0, 1.0, -3.0], "row 1: base_volume -3.0 is negative"),
    ],
    ids=["open-outside", "close-outside", "high-below-low", "short-row", "nan", "zero-price",
         "negative-volume"],
)
def test_cdb_backtest_refuses_a_lying_row_naming_file_and_row_verbatim(
    tmp_path: Path, bad: list[Any], message: str,
) -> None:
    data = tmp_path / "[data]"
    data.mkdir()
    path = write(data, "ETH_BTC-1m.json", [good(0), bad, good(2)])
    result = cdb("backtest", str(data))
    assert result.returncode == 1
    assert f"cannot read candles: {path}: {message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_cdb_backtest_refuses_files_without_a_common_period(tmp_path: Path) -> None:
    early = write(tmp_path, "AAA_BTC-1m.json", [good(0), good(1)])
    late = write(tmp_path, "BBB_BTC-1m.json", [good(10), good(11)])
    result = cdb("backtest", str(tmp_path))
    assert result.returncode == 1
    assert f"{late}: row 0: the files' periods do not overlap" in result.stderr
    assert f"{early} (row 1, 2018-01-20T04:54Z)" in result.stderr
    assert "0 candles" not in result.stdout


def test_cdb_up_refuses_a_lying_candle_file_before_starting_anything(tmp_path: Path) -> None:
    path = write(tmp_path, "ETH_BTC-1m.json", [good(0), [T0 + M, 1.2, 1.1, 0.9, 1.0, 1.0]])
    result = cdb("up", "--data", str(tmp_path), "--data-dir", str(tmp_path / "cdb"))
    assert result.returncode == 1
    assert f"{path}: row 1: open 1.2 is outside [low, high] = [0.9, 1.1]" in result.stderr
    assert "starting Redis" not in result.stderr


def test_cdb_config_check_shows_a_refused_pattern_verbatim() -> None:
    result = cdb("config", "check", REDIS_URL="redis://127.0.0.1:1/0",
                 DATABASE_URL="postgresql://cdb@127.0.0.1:1/cdb", STREAM_PREFIX="Not A Prefix")
    assert result.returncode == 1
    assert "String should match pattern '^[a-z0-9_.:-]*$'" in result.stdout


def test_cdb_run_names_an_unknown_service_verbatim() -> None:
    result = cdb("run", "[bold]risk[/bold]")
    assert result.returncode == 2
    assert "unknown service '[bold]risk[/bold]'" in result.stderr


class _Refusing(http.server.BaseHTTPRequestHandler):
    body = b'{"detail": [{"loc": ["body", "reason"], "msg": "[denied] by policy"}]}'

    def do_POST(self) -> None:
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_cdb_risk_release_prints_the_refusal_body_verbatim(refusing_server: str) -> None:
    result = cdb("risk", "release", "--reason", "done", RISK_URL=refusing_server,
                 RISK_ADMIN_TOKEN="some-token")
    assert result.returncode == 1
    assert f"refused (403): {_Refusing.body.decode()}" in result.stderr


def test_cdb_config_check_marks_an_out_of_range_value_names_its_range_and_fails() -> None:
    result = cdb("config", "check", REDIS_URL="redis://127.0.0.1:1/0",
                 DATABASE_URL="postgresql://cdb@127.0.0.1:1/cdb", MAX_POSITION_PCT="0.9")
    assert result.returncode == 1
    [row] = [line for line in result.stdout.splitlines() if "MAX_POSITION_PCT" in line]
    assert "FELL BACK: 0.9 is outside 0.01..0.25" in row
    assert ("risk_manager: MAX_POSITION_PCT=0.9 is out of range (0.01..0.25); using the "
            "default 0.1") in result.stderr


def test_cdb_backtest_warns_on_the_console_when_a_value_falls_back(tmp_path: Path) -> None:
    result = cdb("backtest", "--minutes", "30", STOP_LOSS_PCT="0.5")
    assert result.returncode == 0, result.stderr
    assert ("warning: STOP_LOSS_PCT=0.5 is out of range (0.005..0.1); using the default 0.02"
            in result.stderr)


def test_cdb_backtest_names_a_misnamed_candle_file_instead_of_skipping_it(
    tmp_path: Path,
) -> None:
    write(tmp_path, "ETH_BTC-1m.json", [good(0), good(1), good(2)])
    misnamed = write(tmp_path, "LTCBTC-1m.json", [good(0), good(1), good(2)])
    write(tmp_path, "manifest.json", {})  # what `cdb data download` writes: not a candle file
    result = cdb("backtest", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"warning: {misnamed} is not read" in result.stderr
    assert "manifest.json" not in result.stderr
    alone = tmp_path / "only-misnamed"
    alone.mkdir()
    write(alone, "ETHBTC.json", [good(0)])
    refused = cdb("backtest", str(alone))
    assert refused.returncode == 1
    assert "ETHBTC.json: not named like ETH_BTC-1m.json, so not read" in refused.stderr


def test_cdb_up_names_a_candle_directory_that_does_not_exist(tmp_path: Path) -> None:
    result = cdb("up", "--data", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "c"))
    assert result.returncode == 1
    assert f"cannot read candles: {tmp_path / 'nowhere'}: does not exist" in result.stderr


def test_cdb_db_migrate_on_an_unreachable_database_prints_one_line() -> None:
    from services.common.infra import free_port

    port = free_port()
    result = cdb("db", "migrate", DATABASE_URL=f"postgresql://cdb:s3cret-pw@127.0.0.1:{port}/x")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"cannot migrate the database at 127.0.0.1:{port}/x (DATABASE_URL)" in lines[0]
    assert "connection refused" in lines[0] and "s3cret-pw" not in result.stderr


def test_cdb_risk_status_without_a_running_cdb_up_says_where_it_looked(tmp_path: Path) -> None:
    result = cdb("risk", "status", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    text = " ".join(result.stderr.split())
    assert "risk manager unreachable at http://127.0.0.1:8002" in text
    assert f"no cdb up runs with {tmp_path}" in text and "RISK_URL" in text


def test_cdb_up_on_an_unreachable_external_database_prints_one_line(tmp_path: Path) -> None:
    from services.common.infra import free_port

    port = free_port()
    result = cdb("up", "--minutes", "5", "--data-dir", str(tmp_path / "cdb"),
                 REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                 DATABASE_URL=f"postgresql://cdb:pg-s3cret@127.0.0.1:{port}/cdb")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "pg-s3cret" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("cannot start")]
    assert f"cannot create the run's database on 127.0.0.1:{port} (DATABASE_URL)" in line
    assert not (tmp_path / "cdb" / "run.json").exists()

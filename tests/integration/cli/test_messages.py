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

"""The `cdb up` status table: untrusted text verbatim, and the state on an 80x24 terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from services.cli.run import Proc, Status


def test_status_table_keeps_square_brackets_of_alerts_and_halt_reasons_on_any_console(
    tmp_path: Path,
) -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(10)
    proc = Proc("risk_manager", 8002, process, tmp_path / "risk.log", health="[ready]")
    status = Status("redis://127.0.0.1:1/0", "", [proc])  # no connection is made
    try:
        status.alerts = [("WARNING", "DEAD_LETTER", "market_data entry moved: expected [a, b]")]
        status.risk = {"state": "HALTED", "halt_reason": "[bold]drill[/bold] at [x]",
                       "equity": 1.0, "exposure": 0.0, "drawdown": 0.0}
        status.progress = {"done": "1", "total": "2", "state": "[running]"}
        screen = Console(record=True, width=200, markup=True)  # markup on: the worst case
        screen.print(status.render())
        text = screen.export_text()
    finally:
        status.close()
    for shown in ("expected [a, b]", "[bold]drill[/bold] at [x]", "[ready]", "([running])"):
        assert shown in text, shown


def test_status_table_on_an_80_by_24_terminal_shows_the_state_and_the_halt_reason_first(
    tmp_path: Path,
) -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(10)
    procs = [Proc(name, 40000 + i, process, tmp_path / f"{name}.log", health="ready")
             for i, name in enumerate(("signal_engine", "risk_manager", "execution", "replay"))]
    status = Status("redis://127.0.0.1:1/0", "", procs)  # no connection is made
    try:
        status.lengths = {s: 123_456 for s in ("market_data", "signals", "orders",
                                               "order_results", "alerts")}
        status.alerts = [("CRITICAL", "CIRCUIT_BREAKER",
                          "No evidence of normal fills on NXTBTC persists after 10 re-tests: "
                          "trading halted and this message goes on well past any terminal")] * 4
        status.risk = {"state": "HALTED", "halt_reason": "circuit_breaker_retries_exhausted",
                       "halted_since_ms": 1_516_459_380_000, "clock": "event",
                       "equity": 0.969128, "exposure": 0.0, "drawdown": 0.031}
        status.progress = {"done": "1200", "total": "2880", "state": "running"}
        screen = Console(record=True, width=80, height=24, color_system=None)
        screen.print(status.render())
        lines = screen.export_text().splitlines()
    finally:
        status.close()
    assert max(len(line) for line in lines) <= 80
    visible = "\n".join(lines[:24])  # a live display crops what does not fit at the bottom
    assert "HALTED" in visible
    assert "circuit_breaker_retries_exhausted" in visible
    assert "2018-01-20 14:43:00 UTC (replay time)" in visible
    assert "1200/2880 bars" in visible
    assert sum("No evidence" in line for line in lines) == 4  # one line per alert

"""The `cdb up` status table shows untrusted text (alerts, halt reasons) verbatim."""

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
        status.alerts = ["WARNING  DEAD_LETTER      market_data entry moved: expected [a, b]"]
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

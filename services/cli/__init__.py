"""The `cdb` command: run services, bring the system up, backtest, migrate, check, risk admin.

One module per command group; this package only assembles them. The commands parse their
arguments and print: what they run lives in the services and in `services.research`, which
never import the CLI.
"""

from __future__ import annotations

import typer

from services.cli import (
    alerting,
    backtest,
    config,
    data,
    db,
    optimize,
    report,
    risk,
    run,
    strategy,
    walkforward,
)

app = typer.Typer(
    help="Claire de Binaire: paper trading on crypto spot markets.",
    no_args_is_help=True,
    add_completion=False,
)
app.command()(run.run)
app.command()(backtest.backtest)
app.command()(optimize.optimize)
app.command()(walkforward.walkforward)
app.command()(run.up)
app.command("report")(report.report_command)
app.add_typer(db.app, name="db")
app.add_typer(alerting.app, name="alerting")
app.add_typer(config.app, name="config")
app.add_typer(risk.app, name="risk")
app.add_typer(data.app, name="data")
app.add_typer(strategy.app, name="strategy")


def main() -> None:
    """Run the `cdb` command line (the console script's entry point)."""
    app()


__all__ = ["app", "main"]

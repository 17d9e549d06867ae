"""`cdb alerting render`: Alertmanager's configuration from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli._common import err

app = typer.Typer(help="Notifications: Alertmanager's configuration.",
                  no_args_is_help=True)


@app.command("render")
def alerting_render(
    output: Annotated[Path, typer.Option(help="Directory for alertmanager.yml and cdb.tmpl")],
    template_dir: Annotated[
        str, typer.Option(help="Where Alertmanager reads cdb.tmpl (default: --output)")
    ] = "",
) -> None:
    """Write Alertmanager's configuration from the environment (receivers, routing, text).

    alertmanager.yml holds the receivers' credentials: it is written with mode 0600 and
    never printed.
    """
    from pydantic import ValidationError

    from services.common.alerting import AlertingSettings, write_config

    try:
        settings = AlertingSettings()
        written = write_config(settings, output, template_dir or None)
    except (ValidationError, ValueError) as exc:
        detail = (
            "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                      for e in exc.errors(include_input=False))
            if isinstance(exc, ValidationError) else str(exc)
        )
        err.print(f"alerting configuration invalid: {detail}", style="red")
        raise typer.Exit(1) from None
    receivers = ", ".join(settings.receivers()) or "none (alerts in Alertmanager's UI only)"
    err.print(f"wrote {', '.join(str(p) for p in written)}; receivers: {receivers}")


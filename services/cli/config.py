"""`cdb config check`: every service's environment validated, secrets masked."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from services.cli._common import console, err
from services.registry import SERVICES

app = typer.Typer(help="Configuration commands.", no_args_is_help=True)


@app.command("check")
def config_check() -> None:
    """Validate every service's environment; print the values (never a secret).

    Exits 1 when a variable is missing or invalid, and when an out-of-range value was
    replaced by its default (the row says so and names the range).
    """
    from pydantic import SecretStr, ValidationError

    from services.common.settings import collect_fallbacks

    table = Table(title="Configuration")
    for col in ("service", "variable", "value", "default"):
        table.add_column(col)
    failed = False
    fell_back: list[str] = []
    for name, spec in SERVICES.items():
        try:
            _, settings_cls = spec.load()
        except ImportError as exc:
            table.add_row(name, "-", Text(f"not available: {exc}", style="red"), "")
            continue
        try:
            with collect_fallbacks(quiet=True) as fallbacks:
                settings = settings_cls()
        except ValidationError as exc:
            failed = True
            for e in exc.errors():
                table.add_row(
                    name, ".".join(str(x) for x in e["loc"]), Text(e["msg"], style="red"), ""
                )
            continue
        replaced = {fb.variable: fb for fb in fallbacks}
        for var, info in settings_cls.model_fields.items():
            value = getattr(settings, var)
            secret = isinstance(value, SecretStr) or "Secret" in str(info.annotation)
            shown: str | Text = ("****" if value else "(unset)") if secret else str(value)
            default = "(required)" if info.is_required() else str(info.default)
            fb = replaced.get(var)
            if fb is not None:
                shown = Text(f"{value} (FELL BACK: {fb.value} is outside {fb.allowed})",
                             style="bold yellow")
                fell_back.append(f"{name}: {fb.message()}")
            table.add_row(name, var, shown, default)
    failed = _alerting_rows(table) or failed
    console.print(table)
    for line in fell_back:
        err.print(f"out of range: {line}", style="yellow")
    raise typer.Exit(1 if failed or fell_back else 0)


def _alerting_rows(table: Table) -> bool:
    """Add the notification settings to the table (secrets masked); True when invalid."""
    from pydantic import SecretStr, ValidationError

    from services.common.alerting import AlertingSettings

    try:
        settings = AlertingSettings()
    except ValidationError as exc:
        for e in exc.errors(include_input=False):
            table.add_row("alerting", ".".join(str(x) for x in e["loc"]),
                          Text(e["msg"], style="red"), "")
        return True
    for var, info in AlertingSettings.model_fields.items():
        value = getattr(settings, var)
        if isinstance(value, SecretStr) or "Secret" in str(info.annotation):
            shown = "****" if value else "(unset)"
        else:
            shown = str(value)
        table.add_row("alerting", var, shown, str(info.default))
    table.add_row("alerting", "(receivers)", ", ".join(settings.receivers()) or
                  "none: alerts in Alertmanager's UI only", "")
    return False


"""`cdb strategy`: list the strategies, start one of your own; the `--strategy/--param` options.

`--strategy NAME` and `--param NAME=VALUE` (on `cdb backtest`, `cdb up` and sweeps) become
the signal engine's STRATEGY and STRATEGY_PARAMS. The strategy is loaded once up front, so a
bad name, a bad parameter or an import error exits 1 with one line naming it and what exists,
before anything runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.cli._common import console, err

app = typer.Typer(help="Strategies: list them, start one of your own.", no_args_is_help=True)

StrategyOption = Annotated[
    str | None,
    typer.Option("--strategy", help="Strategy: a built-in (cdb strategy list), an installed "
                 "entry point, package.module:Class or path/to/file.py:Class "
                 "(default: STRATEGY, else momentum)"),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", help="NAME=VALUE: a strategy parameter (repeat per parameter; "
                 "over STRATEGY_PARAMS)"),
]


def _value(text: str) -> Any:
    """A parameter value: JSON when it parses (numbers, true, "text"), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def param_values(specs: list[str] | None) -> dict[str, Any]:
    """`--param NAME=VALUE` options as a dict (exit 1 on one that is not NAME=VALUE)."""
    values: dict[str, Any] = {}
    for spec in specs or []:
        name, sep, raw = spec.partition("=")
        if not sep or not name.strip():
            err.print(f"--param {spec!r} is not NAME=VALUE", style="red")
            raise typer.Exit(1)
        values[name.strip()] = _value(raw.strip())
    return values


def strategy_env(strategy: str | None, params: list[str] | None) -> dict[str, str]:
    """STRATEGY and STRATEGY_PARAMS for a run, the strategy loaded once to check them.

    Without `--strategy` the environment's STRATEGY (else momentum) runs; STRATEGY_PARAMS
    applies to that strategy, and `--param` values go over it.

    Args:
        strategy: `--strategy`, None when not given.
        params: `--param NAME=VALUE` options.

    Returns:
        The two variables to set.

    Raises:
        typer.Exit: Exit code 1 with one line when the strategy cannot be loaded or a
            parameter is refused.
    """
    from services.strategies.loader import (
        DEFAULT_STRATEGY,
        StrategyError,
        load_strategy,
        parse_params,
    )

    env_name = os.environ.get("STRATEGY", "").strip()
    name = (strategy or env_name or DEFAULT_STRATEGY).strip()
    try:
        base = parse_params(os.environ.get("STRATEGY_PARAMS")) if name == (
            env_name or DEFAULT_STRATEGY) else {}
        merged = {**base, **param_values(params)}
        load_strategy(name, merged)
    except StrategyError as exc:
        err.print(f"cannot use the strategy: {exc}", style="red")
        raise typer.Exit(1) from None
    return {"STRATEGY": name, "STRATEGY_PARAMS": json.dumps(merged, sort_keys=True)}


def _default_text(info: Any) -> str:
    from services.strategies.loader import setting_of

    default = "required" if info.is_required() else json.dumps(info.default)
    setting = setting_of(info)
    return f"{default} ({setting})" if setting else default


@app.command("list")
def strategy_list() -> None:
    """Print every strategy with its parameters, defaults and ranges."""
    from services.strategies.loader import StrategyError, describe_range, known_names, resolve_class

    table = Table(title="Strategies (--strategy NAME, --param NAME=VALUE)")
    for col in ("strategy", "parameter", "type, range", "default"):
        table.add_column(col, no_wrap=True)
    table.add_column("meaning")
    failed = False
    for name in known_names():
        try:
            cls = resolve_class(name)
        except StrategyError as exc:
            failed = True
            table.add_row(name, "", "", "", Text(str(exc), style="red"))
            continue
        table.add_row(Text(name, style="bold"), "", "", "", cls.describe(), end_section=False)
        for pname, info in cls.params_model.model_fields.items():
            table.add_row("", pname, describe_range(info), _default_text(info),
                          info.description or "")
        table.add_section()
    # Wide enough for the parameter names when the output is a pipe.
    (console if console.is_terminal else Console(width=160)).print(table)
    console.print("Your own: --strategy package.module:Class or path/to/file.py:Class "
                  "(cdb strategy new NAME writes one to start from)", soft_wrap=True)
    raise typer.Exit(1 if failed else 0)


@app.command("new")
def strategy_new(
    name: Annotated[str, typer.Argument(help="File name without .py, e.g. my_cross")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to write NAME.py and test_NAME.py")
    ] = Path(),
    force: Annotated[bool, typer.Option(help="Overwrite existing files")] = False,
) -> None:
    """Write NAME.py (an EMA crossover to start from) and test_NAME.py (backtests it)."""
    from services.strategies.template import class_name, render

    try:
        strategy_text, test_text = render(name)
    except ValueError as exc:
        err.print(str(exc), style="red")
        raise typer.Exit(1) from None
    targets = [(directory / f"{name}.py", strategy_text),
               (directory / f"test_{name}.py", test_text)]
    existing = [str(p) for p, _ in targets if p.exists()]
    if existing and not force:
        err.print(f"{', '.join(existing)} exists; nothing written (--force overwrites)",
                  style="red")
        raise typer.Exit(1)
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in targets:
        path.write_text(text)
        console.print(f"wrote {path}", soft_wrap=True)
    spec = f"{directory / name}.py:{class_name(name)}"
    console.print(f"next: cdb backtest --strategy {spec}   and   pytest "
                  f"{directory / ('test_' + name + '.py')}", soft_wrap=True)

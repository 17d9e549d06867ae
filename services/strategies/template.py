"""What `cdb strategy new NAME` writes: a strategy to start from and a test that backtests it.

The strategy is an EMA crossover in the API's shape (parameters with ranges, a warm-up, an
`on_bar` hook, incremental indicators, buy and sell intents with a reason); the README's "Write
your own strategy" shows exactly this file for NAME `my_cross`.
"""

from __future__ import annotations

import re

NAME = re.compile(r"^[a-z][a-z0-9_]{0,60}$")
"""A strategy file name: a lower-case Python identifier."""

STRATEGY = '''"""{title}: an EMA crossover, buying the cross up and selling the cross down.

Backtest: cdb backtest --strategy {name}.py:{cls} --param fast=8
Test:     pytest test_{name}.py
"""

from pydantic import BaseModel, Field
from talipp.indicators import EMA

from services.strategies import Bar, Buy, Context, Intents, Sell, Strategy


class Params(BaseModel):
    fast: int = Field(10, ge=2, le=100, description="Fast EMA length (bars)")
    slow: int = Field(30, ge=3, le=400, description="Slow EMA length (bars)")


class {cls}(Strategy[Params]):
    """Fast EMA crossing the slow EMA: buy on the cross up, sell on the cross down."""

    def setup(self) -> None:
        self.warmup = self.params.slow + 1  # bars before its intents count
        self.fast = self.indicator(EMA, self.params.fast)  # one EMA per symbol
        self.slow = self.indicator(EMA, self.params.slow)

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        fast = self.fast.add(bar.symbol, bar.close)  # one update per closed bar
        slow = self.slow.add(bar.symbol, bar.close)
        if len(slow) < 2 or slow[-2] is None:
            return None
        held = ctx.position(bar.symbol) is not None
        if fast[-2] <= slow[-2] and fast[-1] > slow[-1] and not held:
            return Buy(bar.symbol, strength=1.0, reason="fast EMA crossed above slow")
        if fast[-2] >= slow[-2] and fast[-1] < slow[-1] and held:
            return Sell(bar.symbol, reason="fast EMA crossed below slow")
        return None
'''

TEST = '''"""Backtests {cls} on the bundled sample (written by `cdb strategy new {name}`)."""

import json
from pathlib import Path

from typer.testing import CliRunner

from services.cli import app

STRATEGY = f"{{Path(__file__).with_name('{name}.py')}}:{cls}"


def backtest(folder: Path, *args: str) -> dict:
    report = folder / "report.json"
    result = CliRunner().invoke(
        app, ["backtest", "--strategy", STRATEGY, "--report", str(report), *args])
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


def test_{name}_backtests_the_sample_without_a_strategy_error(tmp_path: Path) -> None:
    report = backtest(tmp_path)
    assert report["strategy"]["name"] == STRATEGY
    assert report["candles"] > 0
    assert "STRATEGY_ERROR" not in report["alerts"]


def test_{name}_decides_the_same_on_the_same_data(tmp_path: Path) -> None:
    first = backtest(tmp_path / "first", "--param", "fast=8")
    second = backtest(tmp_path / "second", "--param", "fast=8")
    assert first["strategy"]["params"] == {{"fast": 8, "slow": 30}}
    assert first["digest"] == second["digest"]
'''


def class_name(name: str) -> str:
    """`my_cross` -> `MyCross`."""
    return "".join(part.capitalize() for part in name.split("_") if part) or "MyStrategy"


def render(name: str) -> tuple[str, str]:
    """The strategy file and its test for `name`.

    Args:
        name: The file name without `.py` (a lower-case identifier).

    Returns:
        (strategy file text, test file text).

    Raises:
        ValueError: `name` is not a lower-case Python identifier.
    """
    if not NAME.match(name):
        raise ValueError(f"strategy name {name!r} must be a lower-case Python identifier "
                         "(letters, digits, underscores; e.g. my_cross)")
    cls = class_name(name)
    title = name.replace("_", " ").capitalize()
    return (STRATEGY.format(name=name, cls=cls, title=title),
            TEST.format(name=name, cls=cls))

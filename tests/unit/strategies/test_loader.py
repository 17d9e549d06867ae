"""Loading a strategy by name: built-ins, entry points, modules, files; one-line errors."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.strategies import Strategy, StrategyError, load_strategy, resolve_class
from services.strategies.ema_cross import EmaCross
from services.strategies.loader import BUILTINS, parse_params
from services.strategies.momentum import Momentum

GOOD = '''
from pydantic import BaseModel, Field
from services.strategies import Bar, Buy, Context, Intents, Strategy

class Params(BaseModel):
    level: float = Field(1.0, gt=0, le=10, description="A level")

class Mine(Strategy[Params]):
    """Buys everything above a level."""

    def on_bar(self, bar: Bar, ctx: Context) -> Intents:
        return Buy(bar.symbol) if bar.close > self.params.level else None

class NotAStrategy:
    pass
'''


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def refused(name: str, params: object = None) -> str:
    with pytest.raises(StrategyError) as caught:
        load_strategy(name, params)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_default_name_loads_the_momentum_builtin_with_its_defaults() -> None:
    strategy = load_strategy("momentum", None)
    assert isinstance(strategy, Momentum)
    assert strategy.name == "momentum"
    assert strategy.params.model_dump() == {
        "lookback_minutes": 15, "top_n": 5, "min_momentum_pct": 0.5,
        "sell_momentum_pct": -0.5, "min_quote_volume": 0.0, "stale_timeout_sec": 90}


def test_every_builtin_resolves_to_a_strategy_class_with_a_description() -> None:
    for name in BUILTINS:
        cls = resolve_class(name)
        assert issubclass(cls, Strategy) and cls.describe(), name


def test_parameters_as_json_text_are_validated_into_the_model() -> None:
    strategy = load_strategy("ema_cross", '{"fast": 5, "slow": 20}')
    assert isinstance(strategy, EmaCross)
    assert (strategy.params.fast, strategy.params.slow) == (5, 20)


def test_momentum_parameters_default_to_the_signal_engine_settings_unless_given() -> None:
    settings = {"LOOKBACK_MINUTES": 30, "TOP_N": 2}
    strategy = load_strategy("momentum", {"top_n": 3}, settings=settings)
    assert strategy.params.lookback_minutes == 30
    assert strategy.params.top_n == 3  # STRATEGY_PARAMS wins over the setting


def test_module_and_class_name_loads_that_class() -> None:
    strategy = load_strategy("services.strategies.ema_cross:EmaCross", {"fast": 3, "slow": 9})
    assert isinstance(strategy, EmaCross)
    assert strategy.name == "services.strategies.ema_cross:EmaCross"


def test_file_and_class_name_loads_a_strategy_of_your_own(tmp_path: Path) -> None:
    path = write(tmp_path, "mine.py", GOOD)
    strategy = load_strategy(f"{path}:Mine", '{"level": 2.5}')
    assert type(strategy).__name__ == "Mine"
    assert strategy.params.level == 2.5  # type: ignore[attr-defined]
    assert type(strategy).describe() == "Buys everything above a level."


def test_unknown_name_is_refused_naming_it_and_the_builtins() -> None:
    message = refused("moonshot")
    assert "unknown strategy 'moonshot'" in message
    assert all(name in message for name in BUILTINS)
    assert "path/to/file.py:Class" in message


def test_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    message = refused(f"{tmp_path}/nope.py:Mine")
    assert "nope.py" in message and "not found" in message


def test_a_file_that_fails_to_import_is_refused_naming_the_error(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.py", "import not_a_module_anywhere\n")
    message = refused(f"{path}:Mine")
    assert "cannot import strategy file" in message
    assert "ModuleNotFoundError" in message and "not_a_module_anywhere" in message


def test_a_module_that_does_not_exist_is_refused_naming_it() -> None:
    message = refused("no_such_package.strategy:Mine")
    assert "cannot import strategy module 'no_such_package.strategy'" in message


def test_a_missing_class_is_refused_listing_the_strategies_the_file_has(tmp_path: Path) -> None:
    path = write(tmp_path, "mine.py", GOOD)
    message = refused(f"{path}:Other")
    assert "has no class 'Other'" in message and "its strategies: Mine" in message


def test_a_class_that_is_no_strategy_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "mine.py", GOOD)
    message = refused(f"{path}:NotAStrategy")
    assert "is not a strategy" in message and "subclass of services.strategies.Strategy" in message


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"fast": 500}, "fast: Input should be less than or equal to 100 (got 500)"),
        ({"fast": "ten"}, "fast: Input should be a valid integer"),
        ({"speed": 3}, "speed: Extra inputs are not permitted"),
        ({"fast": 30, "slow": 20}, "fast (30) must be below slow (20)"),
        ("[1, 2]", "must be a JSON object, got list"),
        ("{fast: 3", "strategy parameters are not JSON"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter_and_what_exists(
    params: object, expected: str,
) -> None:
    message = refused("ema_cross", params)
    assert expected in message
    if isinstance(params, dict):
        assert "its parameters: fast (int, 2..100), slow (int, 3..400)" in message


def test_a_setup_that_raises_is_refused_naming_the_strategy(tmp_path: Path) -> None:
    path = write(tmp_path, "boom.py", '''
        from services.strategies import NoParams, Strategy

        class Boom(Strategy[NoParams]):
            def setup(self) -> None:
                raise RuntimeError("no data source")
        ''')
    message = refused(f"{path}:Boom")
    assert "failed to start: RuntimeError: no data source" in message


def test_empty_or_missing_parameters_are_the_defaults() -> None:
    assert parse_params(None) == parse_params("") == parse_params("  ") == {}


@pytest.fixture
def installed_package(tmp_path: Path) -> Iterator[Path]:
    """A package declaring an entry point of `cdb.strategies`, found on sys.path."""
    pkg = tmp_path / "acme_strategies"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rules.py").write_text(textwrap.dedent(GOOD))
    dist = tmp_path / "acme_strategies-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-strategies\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cdb.strategies]\nacme = acme_strategies.rules:Mine\n")
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("acme_strategies")]:
        del sys.modules[name]


def test_an_installed_entry_point_of_cdb_strategies_loads_by_its_name(
    installed_package: Path,
) -> None:
    strategy = load_strategy("acme", None)
    assert type(strategy).__module__ == "acme_strategies.rules"
    assert "installed (cdb.strategies): acme" in refused("nothing-like-it")

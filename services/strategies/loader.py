"""Load a strategy by name: built-in, entry point, `package.module:Class` or `file.py:Class`.

`STRATEGY` (the signal engine's setting, `cdb ... --strategy`) names the strategy:

1. a built-in (`momentum`, the default, `ema_cross`, `donchian`, `rsi_reversion`,
   `bollinger`);
2. an entry point of the group `cdb.strategies` (an installed package declares
   `[project.entry-points."cdb.strategies"] mine = "my_pkg.strategy:Mine"`);
3. `package.module:Class` (an importable module);
4. `path/to/file.py:Class` (a file of your own, for local work).

`STRATEGY_PARAMS` is a JSON object validated against the strategy's parameters model. Every
problem raises one `StrategyError` whose message is one line naming the problem and what
exists, so the service stops at start (exit 1) and the CLI exits 1 with that line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from services.strategies.api import Strategy

ENTRY_POINT_GROUP = "cdb.strategies"
"""Entry point group of installed strategy packages."""

DEFAULT_STRATEGY = "momentum"
"""The strategy the signal engine runs when STRATEGY is not set."""

BUILTINS: dict[str, str] = {
    "momentum": "services.strategies.momentum:Momentum",
    "ema_cross": "services.strategies.ema_cross:EmaCross",
    "donchian": "services.strategies.donchian:Donchian",
    "rsi_reversion": "services.strategies.rsi_reversion:RsiReversion",
    "bollinger": "services.strategies.bollinger:Bollinger",
}
"""Built-in strategies by name (module:Class under `services/strategies/`)."""


class StrategyError(ValueError):
    """A strategy cannot be loaded or its parameters are unusable (one-line message)."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _installed() -> dict[str, str]:
    """Entry points of the group `cdb.strategies`: name -> `module:attr`."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_names() -> list[str]:
    """Built-in names, then installed entry point names (sorted, distinct)."""
    names = list(BUILTINS)
    names += sorted(n for n in _installed() if n not in BUILTINS)
    return names


def _exists_hint() -> str:
    installed = sorted(n for n in _installed() if n not in BUILTINS)
    hint = f"built-ins: {', '.join(BUILTINS)}"
    if installed:
        hint += f"; installed ({ENTRY_POINT_GROUP}): {', '.join(installed)}"
    return hint + "; or package.module:Class, or path/to/file.py:Class"


def _module_from_file(path_text: str) -> ModuleType:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise StrategyError(f"strategy file {path_text!r} not found (working directory "
                            f"{Path.cwd()})")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode(), usedforsecurity=False).hexdigest()[:10]
    module_name = f"cdb_user_strategy_{resolved.stem}_{digest}"
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise StrategyError(f"strategy file {path_text!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pydantic look the module up
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise StrategyError(
            f"cannot import strategy file {path_text!r}: {type(exc).__name__}: "
            f"{_one_line(str(exc))}"
        ) from exc
    return module


def _module(module_text: str) -> ModuleType:
    try:
        return importlib.import_module(module_text)
    except Exception as exc:
        raise StrategyError(
            f"cannot import strategy module {module_text!r}: {type(exc).__name__}: "
            f"{_one_line(str(exc))}"
        ) from exc


def _strategies_in(module: ModuleType) -> list[str]:
    return sorted(
        name for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, Strategy) and obj is not Strategy
        and obj.__module__ == module.__name__
    )


def _class_from(spec: str, where: str, attr: str) -> type[Strategy[Any]]:
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    module = _module_from_file(where) if is_file else _module(where)
    found = getattr(module, attr, None) if attr else None
    if found is None:
        present = _strategies_in(module)
        listing = ", ".join(present) if present else "none"
        raise StrategyError(f"{where!r} has no class {attr!r} (its strategies: {listing})")
    if not (inspect.isclass(found) and issubclass(found, Strategy)) or found is Strategy:
        raise StrategyError(
            f"{spec!r} is not a strategy: {attr} must be a subclass of "
            "services.strategies.Strategy"
        )
    return found


def resolve_class(name: str) -> type[Strategy[Any]]:
    """The strategy class a name refers to.

    Args:
        name: A built-in name, an entry point name of `cdb.strategies`,
            `package.module:Class` or `path/to/file.py:Class`.

    Returns:
        The class (not instantiated).

    Raises:
        StrategyError: Unknown name, import error, missing class or not a strategy.
    """
    spec = name.strip()
    if not spec:
        raise StrategyError(f"no strategy named; {_exists_hint()}")
    target = BUILTINS.get(spec)
    if target is None and ":" not in spec:
        target = _installed().get(spec)
        if target is None:
            raise StrategyError(f"unknown strategy {spec!r}; {_exists_hint()}")
    where, _, attr = (target or spec).rpartition(":")
    if not where:
        raise StrategyError(f"strategy {spec!r} has no module or file before ':'; "
                            f"{_exists_hint()}")
    return _class_from(spec, where, attr.strip())


def _params_hint(model: type[BaseModel]) -> str:
    if not model.model_fields:
        return "it takes no parameters"
    return "its parameters: " + ", ".join(
        f"{n} ({describe_range(info)})" for n, info in model.model_fields.items()
    )


def describe_range(info: Any) -> str:
    """`type, low..high` of a parameter field (`int, 2..100`)."""
    from annotated_types import Ge, Gt, Le, Lt

    kind = getattr(info.annotation, "__name__", str(info.annotation))
    low = high = ""
    for meta in info.metadata:
        if isinstance(meta, Ge):
            low = f"{meta.ge}"
        elif isinstance(meta, Gt):
            low = f">{meta.gt}"
        elif isinstance(meta, Le):
            high = f"{meta.le}"
        elif isinstance(meta, Lt):
            high = f"<{meta.lt}"
    return f"{kind}, {low}..{high}" if low or high else kind


def parse_params(params: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """STRATEGY_PARAMS as a dict: a JSON object (text) or a mapping; None and '' are {}.

    Raises:
        StrategyError: Not JSON, or not an object.
    """
    if params is None:
        return {}
    if isinstance(params, str):
        if not params.strip():
            return {}
        try:
            parsed = json.loads(params)
        except ValueError as exc:
            raise StrategyError(f"strategy parameters are not JSON: {_one_line(str(exc))} "
                                f"(give a JSON object, e.g. {{\"fast\": 10}})") from None
        if not isinstance(parsed, dict):
            raise StrategyError(
                f"strategy parameters must be a JSON object, got {type(parsed).__name__}"
            )
        return parsed
    return dict(params)


def setting_of(info: Any) -> str | None:
    """The signal engine setting a parameter takes its default from, if it declares one."""
    extra = info.json_schema_extra
    if isinstance(extra, dict):
        setting = extra.get("setting")
        if isinstance(setting, str):
            return setting
    return None


def validate_params(
    cls: type[Strategy[Any]], name: str, params: Mapping[str, Any] | str | None,
    settings: Mapping[str, Any] | None = None,
) -> BaseModel:
    """Validate parameters against the strategy's model.

    Args:
        cls: The strategy class.
        name: The name it was loaded by (for the message).
        params: JSON object text, a mapping, or None.
        settings: Values of the signal engine's settings by variable name: a parameter that
            declares one as its default (`json_schema_extra={"setting": "TOP_N"}`) and is not
            given takes it.

    Returns:
        The parameters model instance (defaults filled in).

    Raises:
        StrategyError: Not an object, an unknown parameter, a value of the wrong type or
            outside its range.
    """
    values = parse_params(params)
    model = cls.params_model
    if settings:
        for field_name, info in model.model_fields.items():
            setting = setting_of(info)
            if field_name not in values and setting is not None and setting in settings:
                values[field_name] = settings[setting]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for e in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in e["loc"]) or "<params>"
            got = f" (got {e['input']!r})" if e["type"] != "missing" and loc in values else ""
            problems.append(f"{loc}: {_one_line(e['msg'])}{got}")
        raise StrategyError(
            f"bad parameters for strategy {name!r}: {'; '.join(problems)}; "
            f"{_params_hint(model)}"
        ) from None


def load_strategy(
    name: str, params: Mapping[str, Any] | str | None,
    settings: Mapping[str, Any] | None = None,
) -> Strategy[Any]:
    """Resolve, validate and instantiate a strategy.

    Args:
        name: As `resolve_class` takes it.
        params: JSON object text, a mapping or None (the defaults).
        settings: Signal engine settings by variable name, for parameters that declare one
            as their default (see `validate_params`).

    Returns:
        The strategy, ready for the signal engine; its `name` is the name given.

    Raises:
        StrategyError: Anything `resolve_class` or `validate_params` refuses, or the
            strategy's own `setup` failing.
    """
    cls = resolve_class(name)
    validated = validate_params(cls, name.strip(), params, settings)
    try:
        strategy = cls(validated)
    except Exception as exc:
        raise StrategyError(
            f"strategy {name.strip()!r} failed to start: {type(exc).__name__}: "
            f"{_one_line(str(exc))}"
        ) from exc
    strategy.name = name.strip()
    return strategy

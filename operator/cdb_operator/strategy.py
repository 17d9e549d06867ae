"""What the operator knows of strategies: the built-ins only.

The built-in strategies are part of the product (`services.strategies`), so the operator may
read what they declare: their parameters model (a bad `spec.strategy.params` is refused before
anything is rolled out) and their default protective exits (rendered into the risk manager's
parameters, so that a change of strategy restarts the risk manager only when its exits
change). Any other name (an entry point, `module:Class`, `file.py:Class`) is user code: the
operator never imports it, since whoever may edit a TradingSystem must not run code with the
operator's rights. The signal engine checks such a strategy at its start, and the risk manager
reads its declared exits itself.
"""

from __future__ import annotations

from cdb_operator.model import SpecError, StrategySpec
from services.risk_manager.config import EXIT_VARIABLES

DeclaredExits = dict[str, float | int | None]
"""Exit variable (`TAKE_PROFIT_PCT`) -> a strategy's declared default (None: off)."""


def is_builtin(name: str) -> bool:
    """True when `name` is one of the product's built-in strategies."""
    from services.strategies.loader import BUILTINS

    return name in BUILTINS


def builtin_exits(name: str) -> DeclaredExits | None:
    """The protective exits a built-in strategy declares as its defaults.

    Args:
        name: `spec.strategy.name`.

    Returns:
        Exit variable -> declared value (None: off), or None when `name` is not a built-in
        (the operator does not know its exits).
    """
    if not is_builtin(name):
        return None
    from services.strategies.loader import resolve_class

    exits = resolve_class(name).exits
    return {env: getattr(exits, field) for env, field in EXIT_VARIABLES.items()}


def check_params(strategy: StrategySpec) -> None:
    """Validate the parameters of a built-in strategy against its parameters model.

    Args:
        strategy: `spec.strategy` (parameters as canonical JSON).

    Raises:
        SpecError: A parameter is unknown, of the wrong type or out of its range.
    """
    if not is_builtin(strategy.name):
        return
    from services.strategies.loader import StrategyError, resolve_class, validate_params

    try:
        validate_params(resolve_class(strategy.name), strategy.name, strategy.params)
    except StrategyError as exc:
        raise SpecError(f"strategy.params: {exc}") from None

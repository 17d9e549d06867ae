"""Strategies: the API a trader writes against, and the built-in strategies.

The signal engine hosts one strategy (STRATEGY, default `momentum`); see `api` for what a
strategy is and sees, and `loader` for how a name becomes a strategy.
"""

from services.strategies.api import (
    Bar,
    Buy,
    Context,
    ExitDefaults,
    Indicators,
    Intent,
    Intents,
    NoParams,
    Position,
    Sell,
    Strategy,
)
from services.strategies.loader import StrategyError, load_strategy, resolve_class

__all__ = [
    "Bar",
    "Buy",
    "Context",
    "ExitDefaults",
    "Indicators",
    "Intent",
    "Intents",
    "NoParams",
    "Position",
    "Sell",
    "Strategy",
    "StrategyError",
    "load_strategy",
    "resolve_class",
]

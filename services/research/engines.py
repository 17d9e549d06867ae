"""The engines' configuration for research runs: the environment plus the data's profile.

A backtest builds the signal, risk and execution configurations the services would build
from the same environment, with the account defaults that fit the data's quote currency
(`BTC_PROFILE` for BTC-quoted candles such as the bundled sample). Environment values always
take precedence over a profile.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.execution.config import ExecutionConfig
    from services.risk_manager.config import RiskConfig
    from services.signal_engine.config import SignalConfig

BTC_PROFILE = {
    "PAPER_START_EQUITY": "1.0",
    "SIGNAL_NOTIONAL": "0.02",
    "MIN_ORDER_NOTIONAL": "0.0001",
}
"""Defaults for BTC-quoted candle data (the bundled sample): an account of 1 BTC."""


def profile_for(symbols: list[str]) -> dict[str, str]:
    """Account defaults that fit the data's quote currency.

    Args:
        symbols: The data's symbols, e.g. `["ETHBTC", "LTCBTC"]`.

    Returns:
        `BTC_PROFILE` without the variables the environment already sets when every symbol
        is BTC-quoted, else an empty mapping.
    """
    if symbols and all(s.endswith("BTC") for s in symbols):
        return {k: v for k, v in BTC_PROFILE.items() if k not in os.environ}
    return {}


def start_equity(symbols: list[str]) -> float:
    """The paper account's start equity for a run over these symbols.

    Args:
        symbols: The data's symbols.

    Returns:
        PAPER_START_EQUITY from the environment, else the data's profile default, else 10000.
    """
    profile = profile_for(symbols)
    return float(os.environ.get("PAPER_START_EQUITY") or profile.get("PAPER_START_EQUITY")
                 or "10000")


def engine_configs(symbols: list[str]) -> tuple[SignalConfig, RiskConfig, ExecutionConfig]:
    """Engine configurations from the environment (plus the data's profile).

    Redis and PostgreSQL are not used in-process, so their URLs get placeholders; the
    symbol whitelist defaults to the data's symbols.

    Args:
        symbols: The data's symbols.

    Returns:
        The signal, risk and execution configurations, in pipeline order.
    """
    from services.common.settings import load_settings
    from services.execution.config import ExecutionConfig, ExecutionSettings
    from services.risk_manager.config import RiskConfig, RiskSettings
    from services.signal_engine.config import SignalConfig, SignalSettings

    overrides: dict[str, Any] = {
        "REDIS_URL": "redis://unused",
        "DATABASE_URL": "postgresql://unused",
    }
    env = {
        **profile_for(symbols),
        "SYMBOL_WHITELIST": os.environ.get("SYMBOL_WHITELIST") or ",".join(symbols),
    }
    with patched_env(env):
        sig = SignalConfig.from_settings(load_settings(SignalSettings, **overrides))
        risk = RiskConfig.from_settings(load_settings(RiskSettings, **overrides))
        ex = ExecutionConfig.from_settings(load_settings(ExecutionSettings, **overrides))
    return sig, risk, ex


@contextlib.contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a `with` block, then restore them.

    Args:
        values: The variables to set; each one's earlier value (or absence) comes back on
            exit, also when the block raises.

    Yields:
        Nothing; the environment holds `values` inside the block.
    """
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

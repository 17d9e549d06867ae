"""The in-process pipeline the tests run over BTC-quoted candles (the bundled sample's)."""

from __future__ import annotations

from services.execution.config import ExecutionConfig
from services.research.backtest import Pipeline
from services.risk_manager.config import RiskConfig
from services.signal_engine.config import SignalConfig

BTC_MIN_NOTIONAL = 0.0001
"""MIN_ORDER_NOTIONAL of the BTC profile (what a replay's report needs to name the dust)."""


def btc_pipeline(symbols: tuple[str, ...]) -> Pipeline:
    """A pipeline on a 1 BTC account: 0.02 BTC signals, orders from 0.0001 BTC.

    Args:
        symbols: The whitelist (the candles' symbols).
    """
    return Pipeline(
        SignalConfig(whitelist=symbols, signal_notional=0.02),
        RiskConfig(paper_start_equity=1.0, min_order_notional=BTC_MIN_NOTIONAL),
        ExecutionConfig(start_equity=1.0),
    )

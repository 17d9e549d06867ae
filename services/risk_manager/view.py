"""The risk engine's state and what it shows: trading state, account figures, snapshot.

`RiskView` holds the layers (`portfolio`, `drawdown`, `breaker`, `staleness`, `exits`) and the
trading state (halt, manual pause); `RiskEngine` adds the decisions on top of it.
"""

from __future__ import annotations

from services.risk_manager.breaker import CircuitBreaker
from services.risk_manager.config import RiskConfig
from services.risk_manager.drawdown import DailyDrawdown
from services.risk_manager.exits import Exits
from services.risk_manager.models import (
    OutstandingOrder,
    PauseReason,
    Position,
    RiskSnapshot,
    StateChange,
    TradingState,
)
from services.risk_manager.output import Out
from services.risk_manager.portfolio import Portfolio
from services.risk_manager.staleness import StaleData

_CB = PauseReason.CIRCUIT_BREAKER.value
_STALE = PauseReason.STALE_DATA.value


class RiskView:
    """The engine's state: the layers, the trading state and the orders awaiting results.

    Args:
        config: The risk parameters.
    """

    def __init__(self, config: RiskConfig) -> None:
        self._cfg = config
        self._halted = False
        self._halt_reason: str | None = None
        self._halted_since_ms: int | None = None
        self._manual_paused = False
        self._book = Portfolio(config.paper_start_equity)
        self._dd = DailyDrawdown(config.max_daily_drawdown_pct, config.paper_start_equity)
        self._cb = CircuitBreaker(config)
        self._stale = StaleData(config.data_stale_timeout_sec, config.data_interval_sec)
        self._exits = Exits(config)
        self._outstanding: dict[str, OutstandingOrder] = {}
        self._lost: dict[str, OutstandingOrder] = {}
        """Orders given up after the result timeout with no record at the execution, oldest
        first: a result that still comes is applied."""
        self._due = -1
        """Lower bound of the next timer's due time (checked by every call)."""
        self.late_market_data = 0
        """Market data ignored because it was older than its symbol's newest (a metric)."""

    @property
    def config(self) -> RiskConfig:
        """The risk parameters."""
        return self._cfg

    @property
    def state(self) -> TradingState:
        """HALTED while halted, else PAUSED while an automatic pause holds, else ACTIVE."""
        if self._halted:
            return TradingState.HALTED
        if self._cb.active or self._stale.paused:
            return TradingState.PAUSED
        return TradingState.ACTIVE

    @property
    def halt_reason(self) -> str | None:
        """Why trading is halted, None when not HALTED."""
        return self._halt_reason

    @property
    def halted_since_ms(self) -> int | None:
        """When the current halt began, None when not HALTED."""
        return self._halted_since_ms

    @property
    def manual_paused(self) -> bool:
        """The manual pause switch (rejects buys, exits still pass)."""
        return self._manual_paused

    @property
    def pause_reasons(self) -> tuple[str, ...]:
        """The automatic pause reasons holding (`PauseReason` values)."""
        reasons: tuple[str, ...] = (_CB,) if self._cb.active else ()
        return (*reasons, _STALE) if self._stale.paused else reasons

    @property
    def stale_symbols(self) -> tuple[str, ...]:
        """Symbols that cannot be bought because their market data stopped."""
        return tuple(self._stale.stale)

    @property
    def cash(self) -> float:
        """Cash in the quote currency."""
        return self._book.cash

    @property
    def equity(self) -> float:
        """Cash plus all positions at their last prices (average entry when no price known)."""
        return self._book.equity

    @property
    def baseline_equity(self) -> float:
        """Equity at the last 00:00 UTC (or at the last release)."""
        return self._dd.baseline

    @property
    def exposure(self) -> float:
        """Value of all positions as a fraction of equity (inf when equity is not positive)."""
        return self._book.exposure

    @property
    def drawdown(self) -> float:
        """Fall of equity below the day's baseline, as a fraction in [0, 1]."""
        return self._dd.drawdown(self._book.equity)

    @property
    def positions(self) -> dict[str, Position]:
        """Held positions by symbol (a copy)."""
        return self._book.positions()

    @property
    def dust(self) -> dict[str, Position]:
        """Held positions worth less than the minimum order notional (no exits for them)."""
        book = self._book
        dust = self._exits.dust
        return {
            s: Position(symbol=s, qty=h.qty, avg_price=h.avg, entry_value=h.cost)
            for s, h in book.holdings.items()
            if dust(h.qty, book.prices.get(s, h.avg))
        }

    @property
    def outstanding(self) -> dict[str, OutstandingOrder]:
        """Orders emitted by this engine that have no result yet, by order id (a copy)."""
        return dict(self._outstanding)

    @property
    def prices(self) -> dict[str, float]:
        """Last known price by symbol (a copy)."""
        return dict(self._book.prices)

    @property
    def last_data_ms(self) -> int | None:
        """Time of the last market data (or of the first tick before any data)."""
        return self._stale.last_ms

    def snapshot(self) -> RiskSnapshot:
        """Return everything the engine keeps across a restart."""
        return RiskSnapshot(
            state=self.state,
            halt_reason=self._halt_reason,
            halted_since_ms=self._halted_since_ms,
            manual_paused=self._manual_paused,
            pause_reasons=self.pause_reasons,
            outstanding=dict(self._outstanding),
            lost_orders=dict(self._lost),
            **self._cb.dump(),
            **self._dd.dump(),
            **self._book.dump(),
            **self._stale.dump(),
            **self._exits.dump(),
        )

    # ------------------------------------------------------------------ state changes

    def _changed(self, out: Out, reason: str, halt_began: bool = False) -> None:
        prev = out.state_change
        if prev is not None:
            reason = f"{prev.reason}; {reason}"
        out.state_change = StateChange(
            state=self.state,
            reason=reason,
            manual_paused=self._manual_paused,
            ts_ms=out.now,
            halted_since_ms=self._halted_since_ms,
            pause_reasons=self.pause_reasons,
            halt_began=halt_began or (prev is not None and prev.halt_began),
        )

    def _halt(self, out: Out, reason: str, detail: str | None = None) -> None:
        """Halt (once): the circuit breaker is disarmed until a release.

        A halted account takes no new risk, so a breaker pause on top of it has nothing left
        to protect; left armed, its re-tests would end in a second CRITICAL "trading halted"
        for the same halt (one halt, one page).
        """
        if self._halted:
            return
        self._halted = True
        self._halt_reason = reason
        self._halted_since_ms = out.now
        self._cb.clear()
        self._changed(out, detail or f"halt: {reason}", halt_began=True)

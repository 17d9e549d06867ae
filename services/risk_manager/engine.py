"""The pure risk engine: six protection layers between signals and orders.

No I/O and no clock: every method takes `now_ms` (Unix epoch milliseconds, UTC) and returns a
`RiskOutput` with the orders, alerts, decisions and state change for the service to record and
publish. The same inputs in the same order always give the same outputs, ids included (every
id is a UUIDv5 of the inputs that caused it).

Layers, in priority order (the first failing layer decides a buy):

1. drawdown: equity vs the baseline at 00:00 UTC; at MAX_DAILY_DRAWDOWN_PCT -> HALTED.
2. circuit breaker: spread above MAX_SPREAD_MULTIPLIER x rolling median, or a fill's slippage
   above MAX_SLIPPAGE_PCT -> PAUSED; re-tested every CIRCUIT_BREAKER_RETRY_SEC, HALTED after
   CIRCUIT_BREAKER_MAX_RETRIES failed re-tests.
3. stale data: no market data for DATA_STALE_TIMEOUT_SEC -> PAUSED until the next market data.
   The manual pause switch rejects buys at this layer too.
4. exposure: all positions plus the buy above MAX_EXPOSURE_PCT of equity -> rejected; exposure
   already above 80 % -> HALTED.
5. single position: a position above MAX_POSITION_PCT of equity -> the buy is trimmed.
6. stop-loss: a price STOP_LOSS_PCT below the average entry -> an exit order (market data path).

Exits (sell signals, stop-losses) only reduce risk and pass in every state. While any order of
this engine awaits its result, `on_signal` defers (returns None) so that every decision sees a
portfolio view that includes all earlier orders.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

from services.common.events import (
    Alert,
    AlertLevel,
    MarketData,
    Order,
    OrderResult,
    Signal,
    derive_id,
)
from services.risk_manager.config import RiskConfig
from services.risk_manager.models import (
    EMPTY_OUTPUT,
    LAYERS,
    Check,
    Decision,
    Outcome,
    OutstandingOrder,
    PauseReason,
    Position,
    RiskOutput,
    RiskSnapshot,
    Side,
    StateChange,
    TradingState,
)

SOURCE = "risk_manager"
DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
_DUST = 1e-9
"""A remainder below this fraction of the position is treated as closed."""

CODE_RISK_LIMIT = "RISK_LIMIT"
CODE_CIRCUIT_BREAKER = "CIRCUIT_BREAKER"
CODE_DATA_STALE = "DATA_STALE"
CODE_MANUAL_HALT = "MANUAL_HALT"
CODE_HALT_RELEASED = "HALT_RELEASED"

HALT_DRAWDOWN = "daily_drawdown"
HALT_EXPOSURE = "exposure_above_halt_level"
HALT_BREAKER = "circuit_breaker_retries_exhausted"

_CB = PauseReason.CIRCUIT_BREAKER.value
_STALE = PauseReason.STALE_DATA.value


class _Pos:
    """Mutable position of the engine's portfolio view (hot path: no pydantic, no frozen)."""

    __slots__ = ("avg", "cost", "qty")

    def __init__(self, qty: float, avg: float, cost: float) -> None:
        self.qty = qty
        self.avg = avg
        self.cost = cost


class _SpreadWindow:
    """Rolling window of spread samples with an O(log n) search for the median."""

    __slots__ = ("anomalous", "ordered", "samples")

    def __init__(self, size: int) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.ordered: list[float] = []
        self.anomalous = False

    def median(self) -> float:
        s = self.ordered
        n = len(s)
        mid = n // 2
        return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0

    def push(self, value: float) -> None:
        samples = self.samples
        if len(samples) == samples.maxlen:
            old = samples[0]
            del self.ordered[bisect.bisect_left(self.ordered, old)]
        samples.append(value)
        bisect.insort(self.ordered, value)


class _Out:
    """Accumulates one call's outputs."""

    __slots__ = ("alerts", "decisions", "now", "orders", "state_change")

    def __init__(self, now: int) -> None:
        self.now = now
        self.orders: list[Order] = []
        self.alerts: list[Alert] = []
        self.decisions: list[Decision] = []
        self.state_change: StateChange | None = None

    def result(self) -> RiskOutput:
        return RiskOutput(self.orders, self.alerts, self.decisions, self.state_change)


class RiskEngine:
    """The risk manager's decision core: pure, synchronous, deterministic.

    Args:
        config: The risk parameters.

    Example:
        >>> engine = RiskEngine(RiskConfig())
        >>> out = engine.on_market_data(md, now_ms=md.timestamp)  # doctest: +SKIP
        >>> out = engine.on_signal(sig, now_ms=sig.timestamp)  # None: retry later  # doctest: +SKIP
    """

    def __init__(self, config: RiskConfig) -> None:
        self._cfg = config
        self._halted = False
        self._halt_reason: str | None = None
        self._halted_since_ms: int | None = None
        self._manual_paused = False
        self._pause: dict[str, None] = {}
        self._breaker_symbols: dict[str, None] = {}
        self._breaker_slippage = False
        self._breaker_retries = 0
        self._breaker_next_ms: int | None = None
        self._breaker_since_ms: int | None = None
        self._day: int | None = None
        self._baseline = config.paper_start_equity
        self._cash = config.paper_start_equity
        self._pos: dict[str, _Pos] = {}
        self._pos_value = 0.0
        self._prices: dict[str, float] = {}
        self._outstanding: dict[str, OutstandingOrder] = {}
        self._exit_out: dict[str, str] = {}
        self._last_data_ms: int | None = None
        self._spreads: dict[str, _SpreadWindow] = {}

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> RiskConfig:
        """The risk parameters."""
        return self._cfg

    @property
    def state(self) -> TradingState:
        """HALTED while halted, else PAUSED while an automatic pause holds, else ACTIVE."""
        if self._halted:
            return TradingState.HALTED
        if self._pause:
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
        return tuple(self._pause)

    @property
    def cash(self) -> float:
        """Cash in the quote currency."""
        return self._cash

    @property
    def equity(self) -> float:
        """Cash plus all positions at their last prices (average entry when no price known)."""
        return self._cash + self._pos_value

    @property
    def baseline_equity(self) -> float:
        """Equity at the last 00:00 UTC (or at the last release)."""
        return self._baseline

    @property
    def exposure(self) -> float:
        """Value of all positions as a fraction of equity (inf when equity is not positive)."""
        eq = self.equity
        if eq <= 0:
            return float("inf") if self._pos_value > 0 else 0.0
        return self._pos_value / eq

    @property
    def drawdown(self) -> float:
        """Fall of equity below the day's baseline, as a fraction (0 when above it)."""
        if self._baseline <= 0:
            return 0.0
        return max(0.0, (self._baseline - self.equity) / self._baseline)

    @property
    def positions(self) -> dict[str, Position]:
        """Held positions by symbol (a copy)."""
        return {
            s: Position(symbol=s, qty=p.qty, avg_price=p.avg, entry_value=p.cost)
            for s, p in self._pos.items()
        }

    @property
    def outstanding(self) -> dict[str, OutstandingOrder]:
        """Orders emitted by this engine that have no result yet, by order id (a copy)."""
        return dict(self._outstanding)

    @property
    def prices(self) -> dict[str, float]:
        """Last known price by symbol (a copy)."""
        return dict(self._prices)

    @property
    def last_data_ms(self) -> int | None:
        """Time of the last market data (or of the first tick before any data)."""
        return self._last_data_ms

    # ------------------------------------------------------------------ market data

    def on_market_data(self, md: MarketData, now_ms: int) -> RiskOutput:
        """Take a price observation: stale resume, spread check, drawdown, stop-loss.

        Args:
            md: The market data event.
            now_ms: Current time, Unix epoch milliseconds UTC.

        Returns:
            The output; usually the shared `EMPTY_OUTPUT`. A stop-loss exit comes with its
            decision and alert.
        """
        # Hot path: plain attribute and dict work; an output is built only when needed.
        out: _Out | None = None
        if now_ms // DAY_MS != self._day:
            self._roll_day(now_ms)
        sym = md.symbol
        price = md.price
        pos = self._pos.get(sym)
        if pos is not None:
            self._pos_value += pos.qty * (price - self._prices.get(sym, pos.avg))
        self._prices[sym] = price
        self._last_data_ms = now_ms
        if self._pause and _STALE in self._pause:
            out = _Out(now_ms)
            del self._pause[_STALE]
            self._changed(out, "market data resumed")

        bid = md.bid
        ask = md.ask
        if bid is not None and ask is not None and ask >= bid:
            spread, limit = self._push_spread(sym, bid, ask)
            if limit > 0 and spread > limit and sym not in self._breaker_symbols:
                if out is None:
                    out = _Out(now_ms)
                self._spread_trip(out, md, spread, limit)

        if pos is not None:
            if not self._halted and self.drawdown >= self._cfg.max_daily_drawdown_pct:
                if out is None:
                    out = _Out(now_ms)
                self._check_drawdown(out, md.event_id)
            if sym not in self._exit_out and price <= pos.avg * (1.0 - self._cfg.stop_loss_pct):
                if out is None:
                    out = _Out(now_ms)
                self._stop_loss(out, md, pos)
        return EMPTY_OUTPUT if out is None else out.result()

    def _push_spread(self, sym: str, bid: float, ask: float) -> tuple[float, float]:
        """Add a spread sample to the symbol's window; return it and the limit it met.

        The limit is MAX_SPREAD_MULTIPLIER x the median before this sample (-1 while the
        window has fewer than MIN_SPREAD_SAMPLES); the window remembers whether it was above.
        """
        spread = (ask - bid) * 2.0 / (ask + bid)
        window = self._spreads.get(sym)
        if window is None:
            window = self._spreads[sym] = _SpreadWindow(self._cfg.spread_window)
        limit = -1.0
        if len(window.ordered) >= self._cfg.min_spread_samples:
            limit = self._cfg.max_spread_multiplier * window.median()
        window.push(spread)
        window.anomalous = limit > 0 and spread > limit
        return spread, limit

    def warm_spreads(self, history: Iterable[MarketData]) -> int:
        """Refill the spread windows from market data applied before a restart.

        Only the windows change (prices, positions and the trading state come from the
        snapshot): each sample is taken as `on_market_data` takes it, in the given order
        (oldest first), so the windows are what they were before the restart.

        Args:
            history: Market data events, oldest first.

        Returns:
            The number of spread samples taken.
        """
        taken = 0
        for md in history:
            bid, ask = md.bid, md.ask
            if bid is not None and ask is not None and ask >= bid:
                self._push_spread(md.symbol, bid, ask)
                taken += 1
        return taken

    def _spread_trip(self, out: _Out, md: MarketData, spread: float, limit: float) -> None:
        sym = md.symbol
        self._breaker_symbols[sym] = None
        self._trip_breaker(out, f"spread anomaly on {sym}")
        self._alert(
            out,
            CODE_CIRCUIT_BREAKER,
            "WARNING",
            f"Spread of {sym} at {spread:.4%} exceeds {self._cfg.max_spread_multiplier}x "
            f"its rolling median ({limit:.4%}): new orders paused",
            {"symbol": sym, "spread_pct": spread, "limit_pct": limit, "trigger": "spread"},
            "spread",
            md.event_id,
        )

    def _stop_loss(self, out: _Out, md: MarketData, pos: _Pos) -> None:
        sym = md.symbol
        price = md.price
        qty = pos.qty
        size = qty * price
        if size <= 0:
            return
        now = out.now
        order_id = derive_id("stop_loss", md.event_id, sym)
        loss = (pos.avg - price) / pos.avg
        self._emit_order(out, sym, "sell", size, qty, order_id, None, False, "stop_loss")
        values: dict[str, float | str] = {
            "price": price,
            "avg_price": pos.avg,
            "loss_pct": loss,
            "limit": self._cfg.stop_loss_pct,
            "quantity": qty,
        }
        out.decisions.append(
            Decision(
                decision_id=derive_id("decision", order_id),
                signal_id=None,
                order_id=order_id,
                symbol=sym,
                side="sell",
                outcome="approved",
                check=Check.STOP_LOSS.value,
                requested_size=size,
                approved_size=size,
                values=values,
                ts_ms=now,
            )
        )
        self._alert(
            out,
            CODE_RISK_LIMIT,
            "WARNING",
            f"Stop-loss on {sym}: price {price:g} is {loss:.2%} below the average entry "
            f"{pos.avg:g}; exiting {qty:g}",
            {"symbol": sym, "order_id": order_id, **values},
            "stop_loss",
            order_id,
        )

    # ------------------------------------------------------------------ signals

    def on_signal(self, sig: Signal, now_ms: int) -> RiskOutput | None:
        """Decide a signal through the risk layers.

        Args:
            sig: The signal.
            now_ms: Current time, Unix epoch milliseconds UTC.

        Returns:
            The decision (and the order when approved), or None while an order of this engine
            awaits its result: the caller keeps the signal and offers it again later.
        """
        if self._outstanding:
            return None
        out = _Out(now_ms)
        if now_ms // DAY_MS != self._day:
            self._roll_day(now_ms)
        self._check_stale(out)
        if sig.direction == "sell":
            self._decide_sell(out, sig)
        else:
            self._decide_buy(out, sig)
        return out.result()

    def _decide_sell(self, out: _Out, sig: Signal) -> None:
        sym = sig.symbol
        pos = self._pos.get(sym)
        if pos is None or pos.qty <= 0:
            self._reject(out, sig, Check.NO_POSITION, {"held_qty": 0.0})
            return
        price = self._prices.get(sym, pos.avg)
        qty = pos.qty
        size = qty * price
        if size <= 0:
            self._reject(out, sig, Check.NO_POSITION, {"held_qty": qty, "price": price})
            return
        order_id = derive_id("order", sig.signal_id)
        self._emit_order(out, sym, "sell", size, qty, order_id, sig.signal_id, False, "signal")
        self._decide(
            out,
            sig,
            "approved",
            Check.EXIT,
            size,
            order_id,
            {"held_qty": qty, "quantity": qty, "price": price},
        )

    def _decide_buy(self, out: _Out, sig: Signal) -> None:
        cfg = self._cfg
        sym = sig.symbol
        size = sig.size

        # 1. drawdown / HALTED
        if not self._halted:
            self._check_drawdown(out, sig.signal_id)
        if self._halted:
            self._reject(
                out,
                sig,
                Check.DRAWDOWN,
                {
                    "drawdown": self.drawdown,
                    "limit": cfg.max_daily_drawdown_pct,
                    "equity": self.equity,
                    "baseline": self._baseline,
                    "halt_reason": self._halt_reason or "",
                },
            )
            return
        # 2. circuit breaker
        if _CB in self._pause:
            self._reject(
                out,
                sig,
                Check.CIRCUIT_BREAKER,
                {
                    "breaker_symbols": ",".join(self._breaker_symbols),
                    "slippage": "yes" if self._breaker_slippage else "no",
                    "retries": float(self._breaker_retries),
                },
            )
            return
        # 3. stale data, manual pause
        if _STALE in self._pause:
            last = self._last_data_ms
            age = 0 if last is None else out.now - last
            self._reject(
                out,
                sig,
                Check.STALE_DATA,
                {"data_age_sec": age / 1000.0, "limit": float(cfg.data_stale_timeout_sec)},
            )
            return
        if self._manual_paused:
            self._reject(out, sig, Check.MANUAL_PAUSE, {"manual_paused": "true"})
            return
        price = self._prices.get(sym)
        if price is None:
            self._reject(out, sig, Check.NO_PRICE, {"symbol": sym})
            return
        # 4. exposure
        equity = self.equity
        held = self._pos_value
        if equity <= 0:
            self._reject(out, sig, Check.EXPOSURE, {"equity": equity, "positions_value": held})
            return
        now_exp = held / equity
        if now_exp > cfg.exposure_halt_pct:
            values: dict[str, float | str] = {
                "exposure_now": now_exp,
                "limit": cfg.exposure_halt_pct,
                "equity": equity,
            }
            self._halt(out, HALT_EXPOSURE)
            self._alert(
                out,
                CODE_RISK_LIMIT,
                "CRITICAL",
                f"Exposure {now_exp:.2%} of equity is above {cfg.exposure_halt_pct:.0%}: "
                "trading halted",
                {"signal_id": sig.signal_id, **values},
                "exposure_halt",
                sig.signal_id,
            )
            self._reject(out, sig, Check.EXPOSURE, values)
            return
        after = (held + size) / equity
        if after > cfg.max_exposure_pct:
            values = {
                "exposure_now": now_exp,
                "exposure_after": after,
                "limit": cfg.max_exposure_pct,
                "equity": equity,
            }
            self._alert(
                out,
                CODE_RISK_LIMIT,
                "INFO",
                f"Buy {sym} {size:g} rejected: exposure would be {after:.2%} of equity, above "
                f"{cfg.max_exposure_pct:.0%}",
                {"symbol": sym, "signal_id": sig.signal_id, **values},
                "exposure",
                sig.signal_id,
            )
            self._reject(out, sig, Check.EXPOSURE, values)
            return
        # 5. single position
        pos = self._pos.get(sym)
        pos_value = pos.qty * price if pos is not None else 0.0
        pos_limit = cfg.max_position_pct * equity
        approved = size
        trimmed = pos_value + size > pos_limit
        if trimmed:
            approved = max(0.0, pos_limit - pos_value)
            values = {
                "position_value": pos_value,
                "requested": size,
                "limit": pos_limit,
                "approved": approved,
                "min_notional": cfg.min_order_notional,
            }
            accepted = approved > 0 and approved >= cfg.min_order_notional
            verdict = f"trimmed to {approved:g}" if accepted else "rejected (below minimum)"
            self._alert(
                out,
                CODE_RISK_LIMIT,
                "WARNING",
                f"Buy {sym} {size:g} {verdict}: position limit {cfg.max_position_pct:.0%} of "
                f"equity is {pos_limit:g}, held {pos_value:g}",
                {"symbol": sym, "signal_id": sig.signal_id, **values},
                "position_limit",
                sig.signal_id,
            )
            if not accepted:
                self._reject(out, sig, Check.POSITION_LIMIT, values)
                return
        elif approved <= 0 or approved < cfg.min_order_notional:
            self._reject(
                out, sig, Check.MIN_NOTIONAL, {"size": size, "min_notional": cfg.min_order_notional}
            )
            return
        order_id = derive_id("order", sig.signal_id)
        self._emit_order(
            out, sym, "buy", approved, None, order_id, sig.signal_id, trimmed, "signal"
        )
        if trimmed:
            self._decide(out, sig, "trimmed", Check.POSITION_LIMIT, approved, order_id, values)
        else:
            self._decide(
                out,
                sig,
                "approved",
                Check.ALL_PASSED,
                approved,
                order_id,
                {
                    "exposure_after": after,
                    "exposure_limit": cfg.max_exposure_pct,
                    "position_after": pos_value + approved,
                    "position_limit": pos_limit,
                    "drawdown": self.drawdown,
                    "price": price,
                },
            )

    # ------------------------------------------------------------------ order results

    def on_order_result(self, res: OrderResult, now_ms: int) -> RiskOutput:
        """Apply a fill (or rejection) of one of this engine's orders.

        Results for unknown order ids (duplicates, or orders already settled) change nothing.

        Args:
            res: The order result.
            now_ms: Current time, Unix epoch milliseconds UTC.

        Returns:
            The output: a slippage breaker trip or a drawdown halt, when they happen.
        """
        rec = self._outstanding.pop(res.order_id, None)
        if rec is None:
            return EMPTY_OUTPUT
        out = _Out(now_ms)
        if now_ms // DAY_MS != self._day:
            self._roll_day(now_ms)
        sym = rec.symbol
        if rec.side == "sell" and self._exit_out.get(sym) == rec.order_id:
            del self._exit_out[sym]
        filled = res.status != "rejected" and res.filled_qty > 0
        if filled:
            notional = res.filled_notional or res.filled_qty * res.fill_price
            if rec.side == "buy":
                self._apply_buy(sym, res.filled_qty, notional, res.fees)
            else:
                self._apply_sell(sym, res.filled_qty, notional, res.fees)
            self._revalue()
        if filled and res.slippage_pct > self._cfg.max_slippage_pct:
            fresh = not self._breaker_slippage
            self._breaker_slippage = True
            self._trip_breaker(out, f"slippage on {sym}")
            if fresh:
                self._alert(
                    out,
                    CODE_CIRCUIT_BREAKER,
                    "WARNING",
                    f"Fill of {sym} slipped {res.slippage_pct:.3%}, above "
                    f"{self._cfg.max_slippage_pct:.3%}: new orders paused",
                    {
                        "symbol": sym,
                        "order_id": res.order_id,
                        "slippage_pct": res.slippage_pct,
                        "limit_pct": self._cfg.max_slippage_pct,
                        "trigger": "slippage",
                    },
                    "slippage",
                    res.order_id,
                )
        if not self._halted:
            self._check_drawdown(out, res.order_id)
        return out.result()

    def _apply_buy(self, sym: str, qty: float, notional: float, fees: float) -> None:
        cost = notional + fees
        self._cash -= cost
        pos = self._pos.get(sym)
        if pos is None:
            self._pos[sym] = _Pos(qty, notional / qty, cost)
            return
        new_qty = pos.qty + qty
        pos.avg = (pos.qty * pos.avg + notional) / new_qty
        pos.cost += cost
        pos.qty = new_qty

    def _apply_sell(self, sym: str, qty: float, notional: float, fees: float) -> None:
        self._cash += notional - fees
        pos = self._pos.get(sym)
        if pos is None:
            return
        remaining = pos.qty - min(qty, pos.qty)
        if remaining <= pos.qty * _DUST:
            del self._pos[sym]
            return
        pos.cost *= remaining / pos.qty
        pos.qty = remaining

    def _revalue(self) -> None:
        prices = self._prices
        self._pos_value = sum(p.qty * prices.get(s, p.avg) for s, p in self._pos.items())

    # ------------------------------------------------------------------ ticks

    def on_tick(self, now_ms: int) -> RiskOutput:
        """Run the time-driven rules: stale data and circuit-breaker re-tests.

        Args:
            now_ms: Current time, Unix epoch milliseconds UTC.

        Returns:
            The output: a stale-data pause, a breaker resume, retry or halt.
        """
        out = _Out(now_ms)
        if now_ms // DAY_MS != self._day:
            self._roll_day(now_ms)
        if self._last_data_ms is None:
            self._last_data_ms = now_ms
        self._check_stale(out)
        if (
            _CB in self._pause
            and self._breaker_next_ms is not None
            and now_ms >= self._breaker_next_ms
        ):
            self._retest_breaker(out)
        return out.result()

    def _retest_breaker(self, out: _Out) -> None:
        cfg = self._cfg
        still = [
            s for s in self._breaker_symbols if s in self._spreads and self._spreads[s].anomalous
        ]
        since = self._breaker_since_ms
        if not still:
            self._clear_breaker()
            self._changed(out, "circuit breaker cleared")
            self._alert(
                out,
                CODE_CIRCUIT_BREAKER,
                "INFO",
                "Circuit breaker cleared: trading resumed",
                {"retries": self._breaker_retries},
                "cleared",
                since,
            )
            return
        self._breaker_retries += 1
        retries = self._breaker_retries
        context: dict[str, Any] = {
            "symbols": still,
            "retries": retries,
            "max_retries": cfg.circuit_breaker_max_retries,
        }
        if retries >= cfg.circuit_breaker_max_retries:
            self._clear_breaker()
            self._changed(out, "circuit breaker retries exhausted")
            self._halt(out, HALT_BREAKER)
            self._alert(
                out,
                CODE_CIRCUIT_BREAKER,
                "CRITICAL",
                f"Spread anomaly on {', '.join(still)} persists after {retries} re-tests: "
                "trading halted",
                context,
                "halt",
                since,
            )
            return
        self._breaker_next_ms = out.now + cfg.circuit_breaker_retry_sec * 1000
        self._alert(
            out,
            CODE_CIRCUIT_BREAKER,
            "INFO",
            f"Circuit breaker re-test {retries}/{cfg.circuit_breaker_max_retries} failed: "
            f"spread anomaly on {', '.join(still)}",
            context,
            "retry",
            since,
            retries,
        )

    # ------------------------------------------------------------------ manual control

    def halt(self, reason: str, by: str, now_ms: int) -> RiskOutput:
        """Halt trading by hand (no new buys until a release; exits still pass).

        Args:
            reason: Why.
            by: Who.
            now_ms: Current time, Unix epoch milliseconds UTC.

        Returns:
            The state change and an alert; empty when already HALTED.
        """
        out = _Out(now_ms)
        if self._halted:
            return out.result()
        self._halt(out, reason, detail=f"manual halt by {by}: {reason}")
        self._alert(
            out,
            CODE_MANUAL_HALT,
            "WARNING",
            f"Trading halted by {by}: {reason}",
            {"by": by, "reason": reason},
            now_ms,
            by,
            reason,
        )
        return out.result()

    def release(self, by: str, reason: str, now_ms: int) -> RiskOutput:
        """Lift a HALT and reset the drawdown baseline to the current equity.

        Args:
            by: Who releases.
            reason: Why.
            now_ms: Current time, Unix epoch milliseconds UTC.

        Returns:
            The state change and an alert; empty (state_change None) when not HALTED.
        """
        out = _Out(now_ms)
        if not self._halted:
            return out.result()
        if now_ms // DAY_MS != self._day:
            self._roll_day(now_ms)
        halted_since = self._halted_since_ms
        old_reason = self._halt_reason
        self._halted = False
        self._halt_reason = None
        self._halted_since_ms = None
        self._baseline = self.equity
        self._changed(out, f"released by {by}: {reason}")
        self._alert(
            out,
            CODE_HALT_RELEASED,
            "INFO",
            f"Halt ({old_reason}) released by {by}: {reason}",
            {"by": by, "reason": reason, "halt_reason": old_reason, "baseline": self._baseline},
            halted_since,
            now_ms,
        )
        return out.result()

    def set_manual_pause(self, paused: bool, now_ms: int) -> RiskOutput:
        """Set the manual pause switch (rejects buys; never lifts a HALT).

        Args:
            paused: The switch's new position.
            now_ms: Current time, Unix epoch milliseconds UTC.

        Returns:
            The state change; empty when the switch already had that position.
        """
        out = _Out(now_ms)
        if paused != self._manual_paused:
            self._manual_paused = paused
            self._changed(out, "manual pause on" if paused else "manual pause off")
        return out.result()

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> RiskSnapshot:
        """Return everything the engine keeps across a restart."""
        day = None if self._day is None else (_EPOCH + timedelta(days=self._day)).isoformat()
        return RiskSnapshot(
            state=self.state,
            halt_reason=self._halt_reason,
            halted_since_ms=self._halted_since_ms,
            manual_paused=self._manual_paused,
            pause_reasons=tuple(self._pause),
            breaker_symbols=tuple(self._breaker_symbols),
            breaker_slippage=self._breaker_slippage,
            breaker_retries=self._breaker_retries,
            breaker_next_retry_ms=self._breaker_next_ms,
            breaker_since_ms=self._breaker_since_ms,
            day=day,
            day_baseline_equity=self._baseline,
            cash=self._cash,
            positions=self.positions,
            outstanding=dict(self._outstanding),
            last_data_ms=self._last_data_ms,
            prices=dict(self._prices),
        )

    @classmethod
    def restore(cls, config: RiskConfig, snapshot: RiskSnapshot) -> RiskEngine:
        """Rebuild an engine from a snapshot (startup and crash recovery).

        Args:
            config: The risk parameters (may differ from those before the restart).
            snapshot: The state saved by `snapshot()`.

        Returns:
            An engine in the state it left.
        """
        eng = cls(config)
        eng._halted = snapshot.state is TradingState.HALTED
        if eng._halted:
            eng._halt_reason = snapshot.halt_reason or "restored"
            eng._halted_since_ms = snapshot.halted_since_ms
        eng._manual_paused = snapshot.manual_paused
        eng._pause = {PauseReason(r).value: None for r in snapshot.pause_reasons}
        if _CB in eng._pause:
            eng._breaker_symbols = dict.fromkeys(snapshot.breaker_symbols)
            eng._breaker_slippage = snapshot.breaker_slippage
            eng._breaker_retries = snapshot.breaker_retries
            # A missing retry time re-tests at the first tick.
            next_ms = snapshot.breaker_next_retry_ms
            eng._breaker_next_ms = 0 if next_ms is None else next_ms
            eng._breaker_since_ms = snapshot.breaker_since_ms
        if snapshot.day is not None:
            eng._day = (date.fromisoformat(snapshot.day) - _EPOCH).days
        eng._baseline = snapshot.day_baseline_equity
        eng._cash = snapshot.cash
        eng._pos = {
            s: _Pos(p.qty, p.avg_price, p.entry_value)
            for s, p in snapshot.positions.items()
            if p.qty > 0
        }
        eng._prices = dict(snapshot.prices)
        eng._outstanding = dict(snapshot.outstanding)
        eng._exit_out = {
            o.symbol: oid for oid, o in snapshot.outstanding.items() if o.side == "sell"
        }
        eng._last_data_ms = snapshot.last_data_ms
        eng._revalue()
        return eng

    # ------------------------------------------------------------------ helpers

    def _roll_day(self, now: int) -> None:
        """Start a new UTC day: the baseline becomes the current equity (a HALT stays)."""
        self._day = now // DAY_MS
        self._baseline = self.equity

    def _changed(self, out: _Out, reason: str) -> None:
        prev = out.state_change
        if prev is not None:
            reason = f"{prev.reason}; {reason}"
        out.state_change = StateChange(
            state=self.state,
            reason=reason,
            manual_paused=self._manual_paused,
            ts_ms=out.now,
            halted_since_ms=self._halted_since_ms,
            pause_reasons=tuple(self._pause),
        )

    def _halt(self, out: _Out, reason: str, detail: str | None = None) -> None:
        if self._halted:
            return
        self._halted = True
        self._halt_reason = reason
        self._halted_since_ms = out.now
        self._changed(out, detail or f"halt: {reason}")

    def _trip_breaker(self, out: _Out, reason: str) -> None:
        if _CB in self._pause:
            return
        now = out.now
        self._pause[_CB] = None
        self._breaker_retries = 0
        self._breaker_since_ms = now
        self._breaker_next_ms = now + self._cfg.circuit_breaker_retry_sec * 1000
        self._changed(out, f"circuit breaker: {reason}")

    def _clear_breaker(self) -> None:
        self._pause.pop(_CB, None)
        self._breaker_symbols = {}
        self._breaker_slippage = False
        self._breaker_retries = 0
        self._breaker_next_ms = None
        self._breaker_since_ms = None

    def _check_stale(self, out: _Out) -> None:
        last = self._last_data_ms
        if last is None or _STALE in self._pause:
            return
        age_ms = out.now - last
        if age_ms < self._cfg.data_stale_timeout_sec * 1000:
            return
        self._pause[_STALE] = None
        self._changed(out, "market data stale")
        self._alert(
            out,
            CODE_DATA_STALE,
            "WARNING",
            f"No market data for {age_ms / 1000:.0f} s (limit "
            f"{self._cfg.data_stale_timeout_sec} s): new orders paused",
            {"last_data_ms": last, "age_sec": age_ms / 1000.0},
            last,
        )

    def _check_drawdown(self, out: _Out, trigger: str) -> None:
        dd = self.drawdown
        limit = self._cfg.max_daily_drawdown_pct
        if dd < limit:
            return
        self._halt(out, HALT_DRAWDOWN)
        self._alert(
            out,
            CODE_RISK_LIMIT,
            "CRITICAL",
            f"Daily drawdown {dd:.2%} reached the limit {limit:.2%}: trading halted until a "
            "manual release",
            {
                "drawdown": dd,
                "limit": limit,
                "equity": self.equity,
                "baseline": self._baseline,
            },
            "drawdown",
            trigger,
        )

    def _risk_checks(self, *, trimmed: bool = False, stop_loss: bool = False) -> dict[str, str]:
        """Outcome per layer for an order: pass, trim, or (exits) exempt / trigger."""
        checks = dict.fromkeys((c.value for c in LAYERS), "pass")
        if trimmed:
            checks[Check.POSITION_LIMIT.value] = "trim"
        if self._halted:
            checks[Check.DRAWDOWN.value] = "exempt"
        if _CB in self._pause:
            checks[Check.CIRCUIT_BREAKER.value] = "exempt"
        if _STALE in self._pause or self._manual_paused:
            checks[Check.STALE_DATA.value] = "exempt"
        if stop_loss:
            checks[Check.STOP_LOSS.value] = "trigger"
        return checks

    def _emit_order(
        self,
        out: _Out,
        sym: str,
        side: Side,
        size: float,
        qty: float | None,
        order_id: str,
        signal_id: str | None,
        trimmed: bool,
        reason: str,
    ) -> None:
        stop = reason == "stop_loss"
        now = out.now
        out.orders.append(
            Order(
                event_id=derive_id("orders", order_id),
                timestamp=now,
                symbol=sym,
                side=side,
                size=size,
                quantity=qty,
                approved_by=SOURCE,
                risk_checks=self._risk_checks(trimmed=trimmed, stop_loss=stop),
                order_id=order_id,
                signal_id=signal_id,
                trimmed=trimmed,
                reason="stop_loss" if stop else "signal",
            )
        )
        self._outstanding[order_id] = OutstandingOrder(
            order_id=order_id,
            symbol=sym,
            side=side,
            size=size,
            quantity=qty,
            reason=reason,
            ts_ms=now,
        )
        if side == "sell":
            self._exit_out[sym] = order_id

    def _decide(
        self,
        out: _Out,
        sig: Signal,
        outcome: Outcome,
        check: Check,
        approved: float,
        order_id: str | None,
        values: dict[str, float | str],
    ) -> None:
        out.decisions.append(
            Decision(
                decision_id=derive_id("decision", sig.signal_id),
                signal_id=sig.signal_id,
                order_id=order_id,
                symbol=sig.symbol,
                side=sig.direction,
                outcome=outcome,
                check=check.value,
                requested_size=sig.size,
                approved_size=approved,
                values=values,
                ts_ms=out.now,
            )
        )

    def _reject(self, out: _Out, sig: Signal, check: Check, values: dict[str, float | str]) -> None:
        self._decide(out, sig, "rejected", check, 0.0, None, values)

    def _alert(
        self,
        out: _Out,
        code: str,
        level: AlertLevel,
        message: str,
        context: dict[str, Any],
        *id_parts: object,
    ) -> None:
        out.alerts.append(
            Alert(
                event_id=derive_id("alert", code, *id_parts),
                timestamp=out.now,
                code=code,
                level=level,
                message=message,
                source=SOURCE,
                context=context,
            )
        )

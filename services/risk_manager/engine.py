"""The pure risk engine: six protection layers between signals and orders.

No I/O and no clock: every method takes `now_ms` (Unix epoch milliseconds, UTC) and returns a
`RiskOutput` with the orders, alerts, decisions and state change for the service to record and
publish. The same inputs in the same order always give the same outputs, ids included (every
id is a UUIDv5 of the inputs that caused it).

Each layer keeps its rule in its own module; this class composes them in priority order (the
first failing layer decides a buy):

1. `drawdown`: equity vs the baseline at 00:00 UTC; at MAX_DAILY_DRAWDOWN_PCT -> HALTED.
2. `breaker`: a spread above MAX_SPREAD_MULTIPLIER x its pre-anomaly baseline, or a fill's
   slippage above MAX_SLIPPAGE_PCT -> PAUSED; re-tested every CIRCUIT_BREAKER_RETRY_SEC,
   cleared only on evidence, HALTED after CIRCUIT_BREAKER_MAX_RETRIES failed re-tests.
3. `staleness`: a symbol silent for DATA_STALE_TIMEOUT_SEC cannot be bought; every feed
   silent -> PAUSED until the next market data. The manual pause switch rejects buys here too.
4. and 5. `limits`: a buy is trimmed to the position limit, then to the exposure headroom;
   rejected when no headroom is left; exposure above 80 % after any move -> HALTED.
6. `exits`: a price STOP_LOSS_PCT below the average entry -> one working exit order, retried
   at a bounded rate while it fills nothing; `protective` adds take-profit, trailing stop and
   a time limit per position (off unless configured) under the same rules.

Time is event time: every call first fires the timers due up to its `now` (the 00:00 UTC
baseline, breaker re-tests, stale-data deadlines) in time order, each at its own due time, so a
gap in the data passes as it would live. `on_tick(now)` does only that. The account view
(`portfolio`) takes finite numbers only. Exits (sell signals, stop-losses) only reduce risk and
pass in every state; a buy refused while HALTED counts under the check that halted. While
any order of this engine awaits its result, `on_signal` defers (returns None) so that every
decision sees a portfolio view that includes all earlier orders.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.common.events import MarketData, OrderReason, OrderResult, Signal, derive_id
from services.risk_manager.config import RiskConfig
from services.risk_manager.limits import Sized, exposure_halt_due, size_buy
from services.risk_manager.models import (
    EMPTY_OUTPUT,
    Check,
    OutstandingOrder,
    PauseReason,
    RiskOutput,
    RiskSnapshot,
    Side,
    TradingState,
)
from services.risk_manager.output import (
    CODE_HALT_RELEASED,
    CODE_INVALID_INPUT,
    CODE_MANUAL_HALT,
    CODE_ORDER_TIMEOUT,
    HALT_BREAKER,
    HALT_DRAWDOWN,
    HALT_EXPOSURE,
    SOURCE,
    LeanOut,
    Out,
)
from services.risk_manager.portfolio import Holding
from services.risk_manager.protective import ExitKind
from services.risk_manager.view import RiskView

__all__ = ["SOURCE", "RiskEngine"]

LOST_KEPT = 1_000
"""Lost orders remembered so that their late results still apply (the oldest go first)."""
_EXIT_REASONS: dict[str, OrderReason] = {
    "signal": "signal", "stop_loss": "stop_loss", "take_profit": "take_profit",
    "trailing_stop": "trailing_stop", "time_limit": "time_limit",
}
"""An outstanding order's reason (a string in the snapshot) as an order reason."""

_NEVER = 1 << 62
_INF = float("inf")
_CB = PauseReason.CIRCUIT_BREAKER.value
_STALE = PauseReason.STALE_DATA.value
HALT_CHECKS: dict[str, Check] = {
    HALT_DRAWDOWN: Check.DRAWDOWN,
    HALT_EXPOSURE: Check.EXPOSURE,
    HALT_BREAKER: Check.CIRCUIT_BREAKER,
}
"""The check a buy refused while HALTED counts under: the one that halted (else a manual
halt)."""


class RiskEngine(RiskView):
    """The risk manager's decision core: pure, synchronous, deterministic.

    Args:
        config: The risk parameters.
        lean: Build no alerts and no decisions; everything else (the state, the orders, the
            state changes) is the same. For a run read only through its orders, fills and
            equity, such as an optimisation trial (a test compares both ways).

    Example:
        >>> engine = RiskEngine(RiskConfig())
        >>> out = engine.on_market_data(md, now_ms=md.timestamp)  # doctest: +SKIP
        >>> out = engine.on_signal(sig, now_ms=sig.timestamp)  # None: retry later  # doctest: +SKIP
    """

    def __init__(self, config: RiskConfig, lean: bool = False) -> None:
        super().__init__(config)
        self._out: type[Out] = LeanOut if lean else Out
        """What each call accumulates its outputs in."""

    # ------------------------------------------------------------------ time

    def _advance(self, out: Out | None, now: int) -> Out | None:
        """Fire every timer due up to `now`, in time order, each at its own due time."""
        dd = self._dd
        if dd.day is None:
            dd.roll_to(now, self._book.equity)
        cb = self._cb
        stale = self._stale
        while True:
            due = dd.next_midnight()
            kind = 0
            if cb.active and cb.next_ms is not None and (due is None or cb.next_ms < due):
                due, kind = cb.next_ms, 1
            stale_due = stale.next_due()
            if stale_due is not None and (due is None or stale_due < due):
                due, kind = stale_due, 2
            if due is None or due > now:
                self._due = _NEVER if due is None else due
                break
            if out is None:
                out = self._out(now)
            out.now = due
            if kind == 0:
                dd.roll_to(due, self._book.equity)
            elif kind == 1:
                self._retest_breaker(out)
            elif stale.fire(out):
                self._changed(out, "market data stale")
        if out is not None:
            out.now = now
        return out

    def _schedule(self, due: int | None) -> None:
        if due is not None and due < self._due:
            self._due = due

    def on_tick(self, now_ms: int) -> RiskOutput:
        """Let time pass to `now_ms`: fire the due timers (stale data, breaker re-tests, day).

        Args:
            now_ms: Current time, Unix epoch milliseconds UTC.

        Returns:
            The output: stale-data alerts and pause, a breaker resume, retry or halt.
        """
        stale = self._stale
        if stale.last_ms is None:
            stale.last_ms = now_ms
            self._schedule(now_ms + stale.span_ms)
        if now_ms < self._due:
            return EMPTY_OUTPUT
        out = self._advance(None, now_ms)
        return EMPTY_OUTPUT if out is None else out.result()

    # ------------------------------------------------------------------ market data

    def on_market_data(self, md: MarketData, now_ms: int) -> RiskOutput:
        """Take a price observation: stale resume, spread check, drawdown, exposure, stop-loss.

        Args:
            md: The market data event.
            now_ms: Current time, Unix epoch milliseconds UTC.

        Returns:
            The output; usually the shared `EMPTY_OUTPUT`. A stop-loss exit comes with its
            decision and alert.
        """
        # Hot path: plain attribute and dict work; an output is built only when needed.
        out = self._advance(None, now_ms) if now_ms >= self._due else None
        sym = md.symbol
        price = md.price
        book = self._book
        stamps = book.stamps
        newest = stamps.get(sym)
        if newest is not None and md.timestamp < newest:
            # Late: the screeners share one stream, so an older print can follow a newer one.
            self.late_market_data += 1
            return EMPTY_OUTPUT if out is None else out.result()
        holding = book.holdings.get(sym)
        if not 0.0 < price < _INF or (holding is not None and not book.mark(sym, price)):
            out = out or self._out(now_ms)
            self._refuse(out, f"market data of {sym} with price {price!r}", md.event_id)
            return out.result()
        stamps[sym] = md.timestamp
        if holding is None:
            book.prices[sym] = price
        stale = self._stale
        stale.seen[sym] = now_ms
        stale.last_ms = now_ms
        due = now_ms + stale.span_ms
        if due < self._due:
            self._due = due
        if stale.stale and sym in stale.stale:
            del stale.stale[sym]
        if stale.paused:
            stale.paused = False
            out = out or self._out(now_ms)
            self._changed(out, "market data resumed")

        cb = self._cb
        cb.volumes[sym] = md.volume
        bid = md.bid
        ask = md.ask
        anomalous = False
        if bid is not None and ask is not None and 0.0 < bid <= ask < _INF:
            spread, limit = cb.sample(sym, bid, ask)
            anomalous = limit > 0 and spread > limit
            if anomalous and sym not in cb.symbols and not self._halted:
                out = out or self._out(now_ms)
                if cb.trip_spread(out, sym, spread, limit, md.event_id):
                    self._changed(out, f"circuit breaker: spread anomaly on {sym}")
                    self._schedule(cb.next_ms)
        if cb.slipped:
            cb.market_evidence(sym, md.volume, anomalous)

        if holding is not None:
            if not self._halted:
                out = self._check_account(out, now_ms, md.event_id)
            exits = self._exits
            if exits.dust(holding.qty, price):
                if exits.episodes and sym in exits.episodes:
                    exits.end(sym)
            elif exits.triggered(price, holding.avg):
                if exits.may_exit(sym, now_ms):
                    out = out or self._out(now_ms)
                    self._stop_loss(out, md, holding)
            else:
                protect = self._protect
                kind = protect.triggered(sym, price, holding.avg, now_ms) if protect.on else None
                if exits.episodes and sym in exits.episodes and sym not in exits.working:
                    if kind is None:
                        exits.end(sym)
                    else:  # the stop-loss episode is over; the retry wait goes on
                        del exits.episodes[sym]
                if protect.on:
                    out = self._protective(out, md, holding, kind, now_ms)
        return EMPTY_OUTPUT if out is None else out.result()

    def _check_account(self, out: Out | None, now: int, trigger: str) -> Out | None:
        """Halt on a drawdown at the limit or an exposure above the halt level."""
        book = self._book
        if self._dd.breached(book.equity):
            out = out or self._out(now)
            self._drawdown_halt(out, trigger)
        elif book.exposure > self._cfg.exposure_halt_pct:
            out = out or self._out(now)
            if exposure_halt_due(out, self._cfg, book, trigger):
                self._halt(out, HALT_EXPOSURE)
        return out

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
            if bid is not None and ask is not None and 0.0 < bid <= ask < _INF:
                self._cb.sample(md.symbol, bid, ask)
                taken += 1
        return taken

    def _stop_loss(self, out: Out, md: MarketData, holding: Holding) -> None:
        size = holding.qty * md.price
        if size > 0:
            order_id = derive_id("stop_loss", md.event_id, md.symbol)
            self._emit_order(out, md.symbol, "sell", size, holding.qty, order_id, None, (),
                             "stop_loss")
            self._exits.stop_loss(out, md.symbol, md.price, holding.qty, holding.avg, order_id)

    def _protective(self, out: Out | None, md: MarketData, holding: Holding,
                    kind: ExitKind | None, now: int) -> Out | None:
        """Take-profit, trailing stop, time limit: one working exit, like the stop-loss.

        An exit that filled nothing waits before the next attempt as long as any exit
        condition holds; the wait ends with the last of them (or a fill).
        """
        sym = md.symbol
        protect = self._protect
        exits = self._exits
        if kind is None:
            if sym in protect.episodes and sym not in exits.working:
                del protect.episodes[sym]
                if sym not in exits.episodes:
                    exits.retry_at.pop(sym, None)
                    exits.attempts.pop(sym, None)
            return out
        size = holding.qty * md.price
        if not exits.may_exit(sym, now) or not size > 0:  # dust never gets here
            return out
        out = out or self._out(now)
        order_id = derive_id(kind, md.event_id, sym)
        self._emit_order(out, sym, "sell", size, holding.qty, order_id, None, (), kind)
        protect.decide(out, kind, sym, md.price, holding.qty, holding.avg, order_id,
                       exits.attempts.get(sym, 0) + 1, now)
        return out

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
        out = self._out(now_ms)
        if now_ms >= self._due:
            self._advance(out, now_ms)
        if sig.direction == "sell":
            self._decide_sell(out, sig)
        else:
            self._decide_buy(out, sig)
        return out.result()

    def _reject(self, out: Out, sig: Signal, check: Check, values: dict[str, float | str]) -> None:
        out.reject(sig, check.value, values)

    def _decide_sell(self, out: Out, sig: Signal) -> None:
        sym = sig.symbol
        holding = self._book.holdings.get(sym)
        if holding is None or holding.qty <= 0:
            self._reject(out, sig, Check.NO_POSITION, {"held_qty": 0.0})
            return
        price = self._book.prices.get(sym, holding.avg)
        qty = holding.qty
        size = qty * price
        if not size > 0:
            self._reject(out, sig, Check.NO_POSITION, {"held_qty": qty, "price": price})
            return
        if self._exits.dust(qty, price):
            self._reject(out, sig, Check.MIN_NOTIONAL, {
                "held_qty": qty, "price": price, "value": size,
                "min_notional": self._cfg.min_order_notional,
            })
            return
        held = qty
        if sig.fraction is not None and sig.fraction < 1.0:
            # A part of the position; a remainder that would be dust goes with it.
            part = held * sig.fraction
            if not self._exits.dust(held - part, price):
                if self._exits.dust(part, price):
                    self._reject(out, sig, Check.MIN_NOTIONAL, {
                        "held_qty": held, "price": price, "value": part * price,
                        "min_notional": self._cfg.min_order_notional,
                    })
                    return
                qty = part
                size = qty * price
        order_id = derive_id("order", sig.signal_id)
        self._emit_order(out, sym, "sell", size, qty, order_id, sig.signal_id, (), "signal")
        out.decide(sig.signal_id, sig.signal_id, order_id, sym, "sell", "approved",
                   Check.EXIT.value, sig.size, size,
                   {"held_qty": held, "quantity": qty, "price": price})

    def _decide_buy(self, out: Out, sig: Signal) -> None:
        cfg = self._cfg
        sym = sig.symbol
        book = self._book
        # 1. drawdown / HALTED
        if not self._halted and self._dd.breached(book.equity):
            self._drawdown_halt(out, sig.signal_id)
        if self._halted:
            # Counted under the check that halted, not under the drawdown it may never have
            # reached.
            check = HALT_CHECKS.get(self._halt_reason or "", Check.MANUAL_HALT)
            self._reject(out, sig, check, {
                "drawdown": self.drawdown,
                "limit": cfg.max_daily_drawdown_pct,
                "equity": book.equity,
                "baseline": self._dd.baseline,
                "halt_reason": self._halt_reason or "",
            })
            return
        # 2. circuit breaker
        if self._cb.active:
            self._reject(out, sig, Check.CIRCUIT_BREAKER, self._cb.rejection())
            return
        # 3. stale data (every feed, then this symbol), manual pause
        stale_values = self._stale.rejection(sym, out.now)
        if stale_values is not None:
            self._reject(out, sig, Check.STALE_DATA, stale_values)
            return
        if self._manual_paused:
            self._reject(out, sig, Check.MANUAL_PAUSE, {"manual_paused": "true"})
            return
        price = book.prices.get(sym)
        if price is None:
            self._reject(out, sig, Check.NO_PRICE, {"symbol": sym})
            return
        # 4. exposure above the halt level
        if exposure_halt_due(out, cfg, book, sig.signal_id):
            self._halt(out, HALT_EXPOSURE)
            self._reject(out, sig, Check.EXPOSURE, {
                "exposure_now": book.exposure, "limit": cfg.exposure_halt_pct,
                "equity": book.equity,
            })
            return
        # 4. and 5. position limit, then exposure headroom
        sized = size_buy(out, cfg, sig, price, book)
        if not isinstance(sized, Sized):
            self._reject(out, sig, *sized)
            return
        order_id = derive_id("order", sig.signal_id)
        self._emit_order(out, sym, "buy", sized.approved, None, order_id, sig.signal_id,
                         sized.trims, "signal")
        values = sized.values if sized.trims else {**sized.values, "drawdown": self.drawdown}
        out.decide(sig.signal_id, sig.signal_id, order_id, sym, "buy",
                   "trimmed" if sized.trims else "approved", sized.check.value, sig.size,
                   sized.approved, values)

    # ------------------------------------------------------------------ order results

    def on_order_result(self, res: OrderResult, now_ms: int) -> RiskOutput:
        """Apply a fill (or rejection) of one of this engine's orders.

        Results for unknown order ids (duplicates, or orders already settled) change nothing;
        a fill with non-finite or non-positive numbers is refused with an alert.

        Args:
            res: The order result.
            now_ms: Current time, Unix epoch milliseconds UTC.

        Returns:
            The output: a slippage breaker trip, a drawdown or exposure halt, when they happen.
        """
        rec = self._outstanding.pop(res.order_id, None)
        if rec is None:
            rec = self._lost.pop(res.order_id, None)  # the late result of a lost order
            if rec is None:
                return EMPTY_OUTPUT
        out = self._out(now_ms)
        if now_ms >= self._due:
            self._advance(out, now_ms)
        self._settle(out, rec, res, now_ms)
        return out.result()

    def _settle(self, out: Out, rec: OutstandingOrder, res: OrderResult, now_ms: int) -> None:
        """Apply the result `res` of the order `rec` (no longer outstanding)."""
        sym = rec.symbol
        book = self._book
        applied = 0.0
        qty = res.filled_qty
        if res.status != "rejected" and qty != 0:
            notional = res.filled_notional or qty * res.fill_price
            if book.apply_fill(rec.side, sym, qty, notional, res.fees):
                applied = qty
            else:
                self._refuse(out, f"fill of {sym} ({qty!r} at {res.fill_price!r}, fees "
                                  f"{res.fees!r})", res.order_id)
        if rec.side == "sell":
            self._exits.on_result(sym, rec.order_id, applied, self._closed(sym), now_ms)
        if applied:
            self._protect.on_fill(rec.side, sym, not self._closed(sym), now_ms)
        if applied and not self._halted and self._cb.on_fill(out, sym, res.slippage_pct,
                                                             res.order_id):
            self._changed(out, f"circuit breaker: slippage on {sym}")
            self._schedule(self._cb.next_ms)
        if not self._halted:
            self._check_account(out, now_ms, res.order_id)

    # ------------------------------------------------------------------ lost results

    def order_timed_out(
        self, order_id: str, now_ms: int, recorded: OrderResult | None
    ) -> RiskOutput:
        """Settle an order whose result did not come within the timeout.

        The service looks up what the execution recorded for the order and passes it here.
        With a record, the order is settled by it as if its result had come. Without one the
        execution never took the order: its symbol is freed (signals are decided again) and
        an exit is re-issued at once for the position still held (one working exit). Either
        way an ORDER_TIMEOUT WARNING says what happened. A result that still comes later is
        applied (the order is remembered as lost), so no fill is ever missed.

        Args:
            order_id: The outstanding order.
            now_ms: Current time, Unix epoch milliseconds UTC.
            recorded: The execution's result for the order, None when it has none.

        Returns:
            The output: the alert, and a re-issued exit with its decision.
        """
        rec = self._outstanding.pop(order_id, None)
        if rec is None:
            return EMPTY_OUTPUT
        out = self._out(now_ms)
        if now_ms >= self._due:
            self._advance(out, now_ms)
        sym = rec.symbol
        what = f"{rec.side} {sym} ({rec.reason}, order {order_id})"
        context: dict[str, object] = {
            "order_id": order_id, "symbol": sym, "side": rec.side, "reason": rec.reason,
            "size": rec.size, "waited_sec": max(0, now_ms - rec.ts_ms) / 1000.0,
        }
        if recorded is not None and recorded.order_id == order_id:
            out.alert(
                CODE_ORDER_TIMEOUT, "WARNING",
                f"No result came for {what}: settled by the execution's record "
                f"({recorded.status}, {recorded.filled_qty:g} filled)",
                {**context, "recorded_status": recorded.status,
                 "filled_qty": recorded.filled_qty},
                "recorded", order_id,
            )
            self._settle(out, rec, recorded, now_ms)
            return out.result()
        lost = self._lost
        lost[order_id] = rec
        while len(lost) > LOST_KEPT:
            del lost[next(iter(lost))]
        reissued = None
        if rec.side == "sell":
            self._exits.forget(sym, order_id)
            reissued = self._reissue(out, rec)
        out.alert(
            CODE_ORDER_TIMEOUT, "WARNING",
            f"No result came for {what} and the execution has no record of it: {sym} is free "
            + (f"and its exit is re-issued ({reissued})" if reissued else "again"),
            {**context, "reissued_order_id": reissued},
            "lost", order_id,
        )
        return out.result()

    def _reissue(self, out: Out, lost: OutstandingOrder) -> str | None:
        """Send the exit of a lost sell again for what is held now; its order id or None."""
        sym = lost.symbol
        holding = self._book.holdings.get(sym)
        if holding is None:
            return None
        price = self._book.prices.get(sym, holding.avg)
        qty = holding.qty
        size = qty * price
        if not size > 0 or self._exits.dust(qty, price):
            return None
        order_id = derive_id("reissue", lost.order_id)
        reason = _EXIT_REASONS.get(lost.reason, "signal")
        self._emit_order(out, sym, "sell", size, qty, order_id, None, (), reason)
        # A stop-loss or protective exit keeps its own check; a sell signal's is `exit`.
        check = Check.EXIT.value if reason == "signal" else Check(reason).value
        out.decide(order_id, None, order_id, sym, "sell", "approved", check, size, size,
                   {"quantity": qty, "price": price, "reissue_of": lost.order_id})
        return order_id

    # ------------------------------------------------------------------ breaker re-tests

    def _retest_breaker(self, out: Out) -> None:
        verdict = self._cb.retest(out)
        if verdict == "cleared":
            self._changed(out, "circuit breaker cleared")
        elif verdict == "halt":
            self._changed(out, "circuit breaker retries exhausted")
            self._halt(out, HALT_BREAKER)

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
        out = self._out(now_ms)
        if self._halted:
            return out.result()
        self._halt(out, reason, detail=f"manual halt by {by}: {reason}")
        out.alert(CODE_MANUAL_HALT, "WARNING", f"Trading halted by {by}: {reason}",
                  {"by": by, "reason": reason}, now_ms, by, reason)
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
        out = self._out(now_ms)
        if not self._halted:
            return out.result()
        if now_ms >= self._due:
            self._advance(out, now_ms)
        halted_since = self._halted_since_ms
        old_reason = self._halt_reason
        self._halted = False
        self._halt_reason = None
        self._halted_since_ms = None
        self._dd.baseline = self._book.equity
        self._changed(out, f"released by {by}: {reason}")
        out.alert(
            CODE_HALT_RELEASED,
            "INFO",
            f"Halt ({old_reason}) released by {by}: {reason}",
            {"by": by, "reason": reason, "halt_reason": old_reason,
             "baseline": self._dd.baseline},
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
        out = self._out(now_ms)
        if paused != self._manual_paused:
            self._manual_paused = paused
            self._changed(out, "manual pause on" if paused else "manual pause off")
        return out.result()

    # ------------------------------------------------------------------ persistence

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
        reasons = {PauseReason(r).value for r in snapshot.pause_reasons}
        eng._cb.load(snapshot, _CB in reasons)
        eng._stale.load(snapshot, _STALE in reasons)
        eng._dd.load(snapshot)
        eng._book.load(snapshot)
        eng._outstanding = dict(snapshot.outstanding)
        eng._lost = dict(snapshot.lost_orders)
        eng._exits.load(snapshot)
        eng._protect.load(snapshot)
        return eng

    def rolled_back(self, snapshot: RiskSnapshot) -> RiskEngine:
        """This engine as it was at `snapshot` (a command whose commit failed is undone).

        Everything the snapshot holds comes from it; what it leaves out (the spread windows
        and the latest volumes, the late-data count) is kept from this engine.

        Args:
            snapshot: `snapshot()` taken before the command.

        Returns:
            The engine to use from now on.
        """
        eng = RiskEngine.restore(self._cfg, snapshot)
        eng._cb.windows = self._cb.windows
        eng._cb.volumes = self._cb.volumes
        eng.late_market_data = self.late_market_data
        return eng

    # ------------------------------------------------------------------ helpers

    def _closed(self, sym: str) -> bool:
        """True when `sym` is no longer held, or only as dust (nothing left to exit)."""
        holding = self._book.holdings.get(sym)
        if holding is None:
            return True
        return self._exits.dust(holding.qty, self._book.prices.get(sym, holding.avg))

    def _drawdown_halt(self, out: Out, trigger: str) -> None:
        self._halt(out, HALT_DRAWDOWN)
        self._dd.alert(out, self._book.equity, trigger)

    def _refuse(self, out: Out, what: str, trigger: str) -> None:
        out.alert(CODE_INVALID_INPUT, "WARNING",
                  f"Refused {what}: prices and fills must be finite and positive",
                  {"input": what}, "refused", trigger)

    def _emit_order(
        self,
        out: Out,
        sym: str,
        side: Side,
        size: float,
        qty: float | None,
        order_id: str,
        signal_id: str | None,
        trims: tuple[str, ...],
        reason: OrderReason,
    ) -> None:
        exempt = {
            Check.DRAWDOWN.value: self._halted,
            Check.CIRCUIT_BREAKER.value: self._cb.active,
            Check.STALE_DATA.value: self._stale.paused or self._manual_paused
            or sym in self._stale.stale,
        }
        now = out.now
        out.order(sym, side, size, qty, order_id, signal_id, trims, reason, exempt)
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
            self._exits.working[sym] = order_id

"""Pure paper execution: orders in, fills, results and alerts out.

The engine remembers the latest quote of every symbol from market data and fills market orders
against it. It does no I/O and reads no clock: time comes in as `now_ms`.

Fill model, for an order on a symbol with last price `ref` and last interval quote volume `V`:

- half spread `h = (ask - bid) / 2 / mid` when bid and ask are both known (and not crossed),
  else `DEFAULT_SPREAD_PCT / 2`;
- at most `MAX_VOLUME_SHARE * V` (quote notional) fills; the part above it is cancelled and the
  order is `partially_filled`; `V == 0` fills nothing (rejected, "no volume");
- impact `k * share`, where share is the filled notional over `V` (the cancelled part never
  reaches the market, so it moves no price); slippage `h + impact`, capped at
  `MAX_FILL_SLIPPAGE`; buys fill at `ref * (1 + slippage)`, sells at `ref * (1 - slippage)`;
- fee `FEE_RATE * filled notional`.

Buys spend at most the free cash (fee included): the order is reduced to it
(`partially_filled`) or rejected when there is none. Sells never exceed the held quantity
(spot, no shorting): a larger sell is clamped to it and closes the position (`filled`); a sell
without a position is rejected. Order quantities: a sell uses `order.quantity` when given, else
`size / ref`; a buy spends `size` (quote notional).

Accounting (all in the quote currency): a position keeps its quantity, average fill price and
the buy fees of the held quantity. A sell realizes `(price - avg_price) * qty - sell fee - the
sold part's entry fees`, so the realized PnL is net of every fee, and at all times
`cash + sum(qty * avg_price + entry_fees) == start equity + realized PnL` and
`equity == cash + sum(qty * last price) == start equity + realized PnL + unrealized PnL`.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from typing import Any

from services.common.events import (
    Alert,
    MarketData,
    Order,
    OrderResult,
    OrderStatus,
    fast_derive_id,
)
from services.execution.config import MAX_FILL_SLIPPAGE, ExecutionConfig
from services.execution.models import ExecutionOutput, Fill, PortfolioSnapshot, Position

_INF = math.inf

SOURCE = "execution"
RESULTS_KEPT = 50_000
"""Results kept to answer a redelivered order with its first result; a redelivery comes within
minutes, and the store must not grow with every order of a long run."""
"""The `source` of the alerts this engine raises."""

_MIN_NOTIONAL = 1e-9
"""Quote notional below which a fill counts as nothing."""
_CLOSE_TOLERANCE = 1e-9
"""Relative tolerance within which a sell of the held quantity closes the position exactly."""



def result_id(order_id: str) -> str:
    """Event id of the result of `order_id`: `derive_id("result", order_id)`, computed faster.

    The namespace is hashed once and the UUIDv5 string formatted directly; a test pins the
    equality with `services.common.events.derive_id`.
    """
    return fast_derive_id("result|" + order_id)


def slippage_alert_id(order_id: str) -> str:
    """Event id of the slippage alert of `order_id`: `derive_id("alert", "SLIPPAGE", order_id)`."""
    return fast_derive_id("alert|SLIPPAGE|" + order_id)



_Quote = tuple[int, float, float | None, float | None, float]
"""(timestamp, last price, bid, ask, last interval quote volume)."""


class _Holding:
    """Mutable position state."""

    __slots__ = ("avg_price", "entry_fees", "qty")

    def __init__(self, qty: float, avg_price: float, entry_fees: float) -> None:
        self.qty = qty
        self.avg_price = avg_price
        self.entry_fees = entry_fees


class ExecutionEngine:
    """Paper broker of one account: quotes, fills, positions, cash and PnL."""

    def __init__(self, config: ExecutionConfig) -> None:
        """Create an engine with the start equity in cash and no positions.

        Args:
            config: The execution parameters.
        """
        self._config = config
        self._quotes: dict[str, _Quote] = {}
        self._holdings: dict[str, _Holding] = {}
        self._results: collections.OrderedDict[str, OrderResult] = collections.OrderedDict()
        self._cash = config.start_equity
        self._realized = 0.0
        self._fees = 0.0
        self._fills = 0
        self.late_market_data = 0
        """Market data ignored because it was older than its symbol's newest (a metric)."""

    # ------------------------------------------------------------------ properties (metrics)

    @property
    def config(self) -> ExecutionConfig:
        """The parameters this engine runs with."""
        return self._config

    @property
    def cash(self) -> float:
        """Free cash, quote currency."""
        return self._cash

    @property
    def realized_pnl(self) -> float:
        """Realized PnL so far, net of all fees of the sold quantities."""
        return self._realized

    @property
    def total_fees(self) -> float:
        """Fees paid so far."""
        return self._fees

    @property
    def fill_count(self) -> int:
        """Number of fills so far (this process)."""
        return self._fills

    @property
    def positions(self) -> dict[str, Position]:
        """Held positions by symbol (a copy)."""
        return {
            symbol: Position(symbol, h.qty, h.avg_price, h.entry_fees)
            for symbol, h in sorted(self._holdings.items())
        }

    @property
    def exposure(self) -> float:
        """Value of all positions at the last prices (quote currency)."""
        return sum(h.qty * self._mark(symbol, h) for symbol, h in self._holdings.items())

    @property
    def equity(self) -> float:
        """Cash plus the value of all positions at the last prices."""
        return self._cash + self.exposure

    @property
    def unrealized_pnl(self) -> float:
        """PnL of the held positions at the last prices, net of their entry fees."""
        return sum(
            h.qty * (self._mark(symbol, h) - h.avg_price) - h.entry_fees
            for symbol, h in self._holdings.items()
        )

    def last_price(self, symbol: str) -> float | None:
        """The last price seen for `symbol`, None if none."""
        quote = self._quotes.get(symbol)
        return None if quote is None else quote[1]

    def _keep_result(self, result: OrderResult) -> None:
        """Keep a result for redeliveries of its order (the latest RESULTS_KEPT)."""
        results = self._results
        results[result.order_id] = result
        if len(results) > RESULTS_KEPT:
            results.popitem(last=False)

    def result_for(self, order_id: str) -> OrderResult | None:
        """The stored result of `order_id`, None if it was not handled."""
        return self._results.get(order_id)

    def _mark(self, symbol: str, holding: _Holding) -> float:
        quote = self._quotes.get(symbol)
        return holding.avg_price if quote is None else quote[1]

    # ------------------------------------------------------------------ input

    def on_market_data(self, md: MarketData) -> None:
        """Remember the latest price, bid, ask and quote volume of the event's symbol.

        Events not newer than the symbol's last one (redelivery, out of order) and events with a
        non-finite price are ignored; the older ones (late, out of order) are counted in
        `late_market_data`.

        Args:
            md: The market data event.
        """
        self.on_market_batch((md,))

    def on_market_batch(self, events: Iterable[MarketData]) -> None:
        """Apply market data events in order, exactly as `on_market_data` one by one.

        Args:
            events: The market data events (a backtest hands over a whole bar at once).
        """
        quotes = self._quotes
        for md in events:
            symbol = md.symbol
            ts = md.timestamp
            quote = quotes.get(symbol)
            if quote is not None and ts <= quote[0]:
                if ts < quote[0]:
                    self.late_market_data += 1
                continue
            price = md.price
            if 0.0 < price < _INF:
                quotes[symbol] = (ts, price, md.bid, md.ask, md.volume)

    def on_order(self, order: Order, now_ms: int) -> ExecutionOutput:
        """Fill (or reject) one order against the latest quote of its symbol.

        Args:
            order: The approved order.
            now_ms: Current time, Unix epoch ms UTC (stamps the result and the fill).

        Returns:
            The result (stored: a second call with the same `order_id` returns it again with
            `duplicate=True` and changes nothing), the fill if any, and alerts.
        """
        stored = self._results.get(order.order_id)
        if stored is not None:
            return ExecutionOutput(result=stored, fill=None, alerts=[], duplicate=True)
        quote = self._quotes.get(order.symbol)
        if quote is None:
            return self._reject(order, now_ms, "no price")
        _, ref, bid, ask, volume = quote
        if not volume > 0.0:
            return self._reject(order, now_ms, "no volume")
        config = self._config
        if bid is not None and ask is not None and 0.0 < bid <= ask:
            half_spread = (ask - bid) / (ask + bid)
        else:
            half_spread = config.default_spread_pct / 2.0
        fillable = config.max_volume_share * volume
        if order.side == "buy":
            return self._buy(order, now_ms, ref, volume, half_spread, fillable)
        return self._sell(order, now_ms, ref, volume, half_spread, fillable)

    # ------------------------------------------------------------------ fills

    def _slippage(self, notional: float, volume: float, half_spread: float) -> float:
        impact = self._config.impact_coefficient * (notional / volume)
        return min(half_spread + impact, MAX_FILL_SLIPPAGE)

    def _buy(
        self,
        order: Order,
        now_ms: int,
        ref: float,
        volume: float,
        half_spread: float,
        fillable: float,
    ) -> ExecutionOutput:
        fee_rate = self._config.fee_rate
        requested = order.size
        notional = requested
        notes: list[str] = []
        if notional > fillable:
            notional = fillable
            notes.append(f"volume cap: {fillable:.8g} of {requested:.8g} filled, rest cancelled")
        affordable = self._cash / (1.0 + fee_rate)
        cash_bound = affordable < notional
        if cash_bound:
            notional = affordable
            notes.append(f"reduced to the available cash {self._cash:.8g}")
        if notional < _MIN_NOTIONAL:
            return self._reject(order, now_ms, "insufficient cash")
        slippage = self._slippage(notional, volume, half_spread)
        price = ref * (1.0 + slippage)
        qty = notional / price
        if cash_bound:
            fee = self._cash - notional
            self._cash = 0.0
        else:
            fee = fee_rate * notional
            self._cash -= notional + fee
        holding = self._holdings.get(order.symbol)
        if holding is None:
            self._holdings[order.symbol] = _Holding(qty, price, fee)
        else:
            total = holding.qty + qty
            holding.avg_price = (holding.qty * holding.avg_price + notional) / total
            holding.qty = total
            holding.entry_fees += fee
        status: OrderStatus = "partially_filled" if notes else "filled"
        return self._filled(order, now_ms, status, qty, price, notional, fee, slippage, 0.0, notes)

    def _sell(
        self,
        order: Order,
        now_ms: int,
        ref: float,
        volume: float,
        half_spread: float,
        fillable: float,
    ) -> ExecutionOutput:
        holding = self._holdings.get(order.symbol)
        if holding is None:
            return self._reject(order, now_ms, "no position")
        held = holding.qty
        requested = order.quantity if order.quantity is not None else order.size / ref
        if not requested > 0.0:
            return self._reject(order, now_ms, "nothing to sell")
        notes: list[str] = []
        partial = False
        qty = requested
        closes = qty >= held * (1.0 - _CLOSE_TOLERANCE)
        if closes:
            if qty > held * (1.0 + _CLOSE_TOLERANCE):
                notes.append(f"clamped to the held quantity {held:.8g}")
            qty = held
        fillable_qty = fillable / ref
        if qty > fillable_qty:
            notes.append(f"volume cap: {fillable_qty:.8g} of {qty:.8g} filled, rest cancelled")
            qty = fillable_qty
            closes = False
            partial = True
        if qty * ref < _MIN_NOTIONAL:
            return self._reject(order, now_ms, "nothing to sell")
        slippage = self._slippage(qty * ref, volume, half_spread)
        price = ref * (1.0 - slippage)
        notional = qty * price
        fee = self._config.fee_rate * notional
        entry_fees = holding.entry_fees if closes else holding.entry_fees * (qty / held)
        realized = (price - holding.avg_price) * qty - fee - entry_fees
        self._cash += notional - fee
        self._realized += realized
        if closes:
            del self._holdings[order.symbol]
        else:
            holding.qty = held - qty
            holding.entry_fees -= entry_fees
        status: OrderStatus = "partially_filled" if partial else "filled"
        return self._filled(
            order, now_ms, status, qty, price, notional, fee, slippage, realized, notes
        )

    def _filled(
        self,
        order: Order,
        now_ms: int,
        status: OrderStatus,
        qty: float,
        price: float,
        notional: float,
        fee: float,
        slippage: float,
        realized: float,
        notes: list[str],
    ) -> ExecutionOutput:
        self._fees += fee
        self._fills += 1
        result = OrderResult(
            event_id=result_id(order.order_id),
            timestamp=now_ms,
            order_id=order.order_id,
            status=status,
            fill_price=price,
            fees=fee,
            symbol=order.symbol,
            side=order.side,
            filled_qty=qty,
            filled_notional=notional,
            slippage_pct=slippage,
            reason="; ".join(notes)[:200] if notes else None,
        )
        self._keep_result(result)
        fill = Fill(
            order_id=order.order_id,
            symbol=order.symbol,
            side=order.side,
            qty=qty,
            price=price,
            notional=notional,
            fee=fee,
            slippage_pct=slippage,
            realized_pnl=realized,
            ts_ms=now_ms,
        )
        alerts: list[Alert] = []
        limit = self._config.max_slippage_pct
        if slippage > limit:
            alerts.append(
                Alert(
                    event_id=slippage_alert_id(order.order_id),
                    timestamp=now_ms,
                    code="SLIPPAGE",
                    level="WARNING",
                    message=(
                        f"{order.side} {order.symbol} filled with slippage {slippage:.4%}"
                        f" above the limit {limit:.4%}"
                    ),
                    source=SOURCE,
                    context={
                        "order_id": order.order_id,
                        "symbol": order.symbol,
                        "side": order.side,
                        "slippage_pct": slippage,
                        "max_slippage_pct": limit,
                        "fill_price": price,
                        "filled_notional": notional,
                    },
                )
            )
        return ExecutionOutput(result=result, fill=fill, alerts=alerts)

    def _reject(self, order: Order, now_ms: int, reason: str) -> ExecutionOutput:
        result = OrderResult(
            event_id=result_id(order.order_id),
            timestamp=now_ms,
            order_id=order.order_id,
            status="rejected",
            fill_price=0.0,
            fees=0.0,
            symbol=order.symbol,
            side=order.side,
            filled_qty=0.0,
            filled_notional=0.0,
            slippage_pct=0.0,
            reason=reason,
        )
        self._keep_result(result)
        return ExecutionOutput(result=result, fill=None, alerts=[])

    # ------------------------------------------------------------------ persistence

    def quotes(self) -> dict[str, list[Any]]:
        """Return the latest quote per symbol: [timestamp, price, bid, ask, quote volume]."""
        return {symbol: list(q) for symbol, q in self._quotes.items()}

    def restore_quotes(self, quotes: dict[str, list[Any]]) -> None:
        """Restore the quotes saved by `quotes` (after a restart, before new market data).

        Args:
            quotes: Symbol -> [timestamp, price, bid, ask, quote volume].
        """
        for symbol, (ts, price, bid, ask, volume) in quotes.items():
            self._quotes[symbol] = (int(ts), float(price), bid, ask, float(volume))

    def snapshot(self) -> PortfolioSnapshot:
        """Return the account's state (cash, positions, PnL, fees, handled results)."""
        return PortfolioSnapshot(
            cash=self._cash,
            realized_pnl=self._realized,
            total_fees=self._fees,
            positions=tuple(self.positions.values()),
            results=tuple(self._results.values()),
        )

    def restore(self, snapshot: PortfolioSnapshot) -> None:
        """Replace the account's state with `snapshot` (quotes are kept).

        The service calls this at start with the state read back from PostgreSQL, so startup
        and crash recovery share one code path.

        Args:
            snapshot: The state to restore.

        Raises:
            ValueError: The snapshot holds a negative cash or a non-positive position.
        """
        if snapshot.cash < 0 or not math.isfinite(snapshot.cash):
            raise ValueError(f"invalid cash {snapshot.cash!r} in the snapshot")
        for p in snapshot.positions:
            if not (p.qty > 0 and p.avg_price > 0 and p.entry_fees >= 0):
                raise ValueError(f"invalid position {p!r} in the snapshot")
        self._cash = snapshot.cash
        self._realized = snapshot.realized_pnl
        self._fees = snapshot.total_fees
        self._holdings = {
            p.symbol: _Holding(p.qty, p.avg_price, p.entry_fees) for p in snapshot.positions
        }
        self._results = collections.OrderedDict()
        for r in snapshot.results:
            self._keep_result(r)

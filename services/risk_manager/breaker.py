"""Layer 2, the circuit breaker: market anomalies pause new orders until they are gone.

Two triggers:

- spread: a symbol's relative spread above MAX_SPREAD_MULTIPLIER x the median of its window.
  Only normal samples (at or under the limit) enter the window, so the median is the baseline
  from before the anomaly for as long as the anomaly lasts: a spread that stays wide never
  becomes the new normal.
- slippage: a fill that slipped more than MAX_SLIPPAGE_PCT.

Tripped, the breaker pauses new orders and is re-tested every CIRCUIT_BREAKER_RETRY_SEC. A
re-test clears it only with evidence that the anomaly is over: every tripped symbol's latest
spread back under the limit of its baseline, and for every slipped symbol either a fill since
the trip within MAX_SLIPPAGE_PCT or market data since the trip with more volume than at the
trip (the paper fill's slippage is its half spread plus its share of recent volume) and a
normal spread. CIRCUIT_BREAKER_MAX_RETRIES failed re-tests end in a HALT.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any, Literal

from services.risk_manager.config import RiskConfig
from services.risk_manager.models import RiskSnapshot
from services.risk_manager.output import CODE_CIRCUIT_BREAKER, Out

Retest = Literal["cleared", "retry", "halt"]


class SpreadWindow:
    """Rolling window of normal spread samples with an O(log n) median."""

    __slots__ = ("anomalous", "ordered", "samples")

    def __init__(self, size: int) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.ordered: list[float] = []
        self.anomalous = False
        """True when the latest sample was above the limit (and kept out of the window)."""

    def median(self) -> float:
        """The median of the samples (the window must not be empty)."""
        s = self.ordered
        n = len(s)
        mid = n // 2
        return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0

    def push(self, value: float) -> None:
        """Add a sample, dropping the oldest when full."""
        samples = self.samples
        if len(samples) == samples.maxlen:
            old = samples[0]
            del self.ordered[bisect.bisect_left(self.ordered, old)]
        samples.append(value)
        bisect.insort(self.ordered, value)


class CircuitBreaker:
    """Spread baselines, the breaker's trip state and its re-tests.

    Args:
        config: The risk parameters.
    """

    __slots__ = (
        "active",
        "cfg",
        "evidence",
        "next_ms",
        "retries",
        "since_ms",
        "slipped",
        "symbols",
        "volumes",
        "windows",
    )

    def __init__(self, config: RiskConfig) -> None:
        self.cfg = config
        self.windows: dict[str, SpreadWindow] = {}
        self.volumes: dict[str, float] = {}
        """Latest market data volume by symbol (the reference of a slippage trip)."""
        self.active = False
        self.symbols: dict[str, None] = {}
        """Symbols whose spread tripped the breaker."""
        self.slipped: dict[str, float] = {}
        """Symbols whose fill slipped, with their market volume at the trip."""
        self.evidence: dict[str, None] = {}
        """Slipped symbols with evidence since the trip that fills are normal again."""
        self.retries = 0
        self.next_ms: int | None = None
        self.since_ms: int | None = None

    def dump(self) -> dict[str, Any]:
        """The breaker's part of the snapshot (the windows refill from history instead)."""
        return {
            "breaker_symbols": tuple(self.symbols),
            "breaker_slippage": bool(self.slipped),
            "breaker_retries": self.retries,
            "breaker_next_retry_ms": self.next_ms,
            "breaker_since_ms": self.since_ms,
            "breaker_slippage_symbols": dict(self.slipped),
            "breaker_slippage_evidence": tuple(self.evidence),
        }

    def load(self, snapshot: RiskSnapshot, active: bool) -> None:
        """Take the breaker's state from a snapshot; a missing retry time re-tests at once."""
        if not active:
            return
        self.active = True
        self.symbols = dict.fromkeys(snapshot.breaker_symbols)
        self.slipped = dict(snapshot.breaker_slippage_symbols)
        self.evidence = dict.fromkeys(snapshot.breaker_slippage_evidence)
        self.retries = snapshot.breaker_retries
        next_ms = snapshot.breaker_next_retry_ms
        self.next_ms = 0 if next_ms is None else next_ms
        self.since_ms = snapshot.breaker_since_ms

    # -- samples ---------------------------------------------------------------------------

    def sample(self, symbol: str, bid: float, ask: float) -> tuple[float, float]:
        """Take a spread sample; return it and the limit it met (-1 while warming up).

        The sample enters the window only when it is not above the limit.
        """
        spread = (ask - bid) * 2.0 / (ask + bid)
        window = self.windows.get(symbol)
        if window is None:
            window = self.windows[symbol] = SpreadWindow(self.cfg.spread_window)
        limit = -1.0
        if len(window.ordered) >= self.cfg.min_spread_samples:
            limit = self.cfg.max_spread_multiplier * window.median()
        anomalous = limit > 0 and spread > limit
        window.anomalous = anomalous
        if not anomalous:
            window.push(spread)
        return spread, limit

    def market_evidence(self, symbol: str, volume: float, anomalous: bool) -> None:
        """Count market data of a slipped symbol as evidence: more volume, normal spread."""
        reference = self.slipped.get(symbol)
        if reference is not None and not anomalous and volume > reference:
            self.evidence[symbol] = None

    def trip_spread(self, out: Out, symbol: str, spread: float, limit: float,
                    event_id: str) -> bool:
        """Trip on a spread anomaly of `symbol` (one alert per symbol and episode).

        Returns:
            True when the breaker was not active before.
        """
        self.symbols[symbol] = None
        tripped = self.trip(out.now)
        out.alert(
            CODE_CIRCUIT_BREAKER,
            "WARNING",
            f"Spread of {symbol} at {spread:.4%} exceeds {self.cfg.max_spread_multiplier}x "
            f"its baseline median ({limit:.4%}): new orders paused",
            {"symbol": symbol, "spread_pct": spread, "limit_pct": limit, "trigger": "spread"},
            "spread",
            event_id,
        )
        return tripped

    def on_fill(self, out: Out, symbol: str, slippage: float, order_id: str) -> bool:
        """Take a fill's slippage: trip above the limit, count as evidence within it.

        Returns:
            True when this fill tripped a breaker that was not active.
        """
        limit = self.cfg.max_slippage_pct
        if slippage <= limit:
            if symbol in self.slipped:
                self.evidence[symbol] = None
            return False
        fresh = symbol not in self.slipped
        self.slipped[symbol] = self.volumes.get(symbol, 0.0)
        self.evidence.pop(symbol, None)
        tripped = self.trip(out.now)
        if fresh:
            out.alert(
                CODE_CIRCUIT_BREAKER,
                "WARNING",
                f"Fill of {symbol} slipped {slippage:.3%}, above {limit:.3%}: new orders paused",
                {
                    "symbol": symbol,
                    "order_id": order_id,
                    "slippage_pct": slippage,
                    "limit_pct": limit,
                    "trigger": "slippage",
                },
                "slippage",
                order_id,
            )
        return tripped

    def rejection(self) -> dict[str, float | str]:
        """The values a buy rejected by the breaker records."""
        return {
            "breaker_symbols": ",".join(self.symbols),
            "slippage": "yes" if self.slipped else "no",
            "slippage_symbols": ",".join(self.slipped),
            "retries": float(self.retries),
        }

    # -- trip and re-test ------------------------------------------------------------------

    def trip(self, now: int) -> bool:
        """Activate the breaker (first re-test one interval from `now`); False if active."""
        if self.active:
            return False
        self.active = True
        self.retries = 0
        self.since_ms = now
        self.next_ms = now + self.cfg.circuit_breaker_retry_sec * 1000
        return True

    def clear(self) -> None:
        """Deactivate the breaker and forget its triggers (the baselines stay)."""
        self.active = False
        self.symbols = {}
        self.slipped = {}
        self.evidence = {}
        self.retries = 0
        self.next_ms = None
        self.since_ms = None

    def retest(self, out: Out) -> Retest:
        """Re-test the anomaly at `out.now`: clear, schedule the next re-test, or give up.

        Returns:
            "cleared", "retry" or "halt" (the breaker is then cleared; the caller halts).
        """
        cfg = self.cfg
        windows = self.windows
        spread = [s for s in self.symbols if s in windows and windows[s].anomalous]
        slipped = [s for s in self.slipped if s not in self.evidence]
        since = self.since_ms
        if not spread and not slipped:
            retries = self.retries
            self.clear()
            out.alert(
                CODE_CIRCUIT_BREAKER,
                "INFO",
                "Circuit breaker cleared: trading resumed",
                {"retries": retries},
                "cleared",
                since,
            )
            return "cleared"
        self.retries += 1
        retries = self.retries
        what = "; ".join(
            part
            for part in (
                f"spread anomaly on {', '.join(spread)}" if spread else "",
                f"no evidence of normal fills on {', '.join(slipped)}" if slipped else "",
            )
            if part
        )
        context: dict[str, object] = {
            "symbols": spread,
            "slippage_symbols": slipped,
            "retries": retries,
            "max_retries": cfg.circuit_breaker_max_retries,
        }
        if retries >= cfg.circuit_breaker_max_retries:
            self.clear()
            out.alert(
                CODE_CIRCUIT_BREAKER,
                "CRITICAL",
                f"{what[0].upper()}{what[1:]} persists after {retries} re-tests: trading halted",
                context,
                "halt",
                since,
            )
            return "halt"
        self.next_ms = out.now + cfg.circuit_breaker_retry_sec * 1000
        out.alert(
            CODE_CIRCUIT_BREAKER,
            "INFO",
            f"Circuit breaker re-test {retries}/{cfg.circuit_breaker_max_retries} failed: {what}",
            context,
            "retry",
            since,
            retries,
        )
        return "retry"

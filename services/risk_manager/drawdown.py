"""Layer 1, daily drawdown: equity against the baseline taken at the last 00:00 UTC.

The baseline resets at every 00:00 UTC (the equity at that moment, so a midnight inside a data
gap takes the equity the last prices before it gave) and at a release; a HALT never resets with
it, only a release lifts it.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from services.risk_manager.models import RiskSnapshot
from services.risk_manager.output import CODE_RISK_LIMIT, Out

DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)


class DailyDrawdown:
    """The day's baseline equity and the drawdown rule.

    Args:
        limit: MAX_DAILY_DRAWDOWN_PCT (fraction).
        baseline: Start baseline (the start equity).
    """

    __slots__ = ("baseline", "day", "limit")

    def __init__(self, limit: float, baseline: float) -> None:
        self.limit = limit
        self.baseline = baseline
        self.day: int | None = None
        """Days since the epoch of the baseline, None before the first event."""

    def dump(self) -> dict[str, Any]:
        """The drawdown part of the snapshot (the day as an ISO date)."""
        day = None if self.day is None else (_EPOCH + timedelta(days=self.day)).isoformat()
        return {"day": day, "day_baseline_equity": self.baseline}

    def load(self, snapshot: RiskSnapshot) -> None:
        """Take the day and its baseline from a snapshot."""
        if snapshot.day is not None:
            self.day = (date.fromisoformat(snapshot.day) - _EPOCH).days
        self.baseline = snapshot.day_baseline_equity

    def next_midnight(self) -> int | None:
        """When the baseline resets next (Unix epoch ms), None before the first event."""
        return None if self.day is None else (self.day + 1) * DAY_MS

    def roll_to(self, now: int, equity: float) -> None:
        """Move to the day of `now` if it is later; the baseline becomes `equity` then."""
        day = now // DAY_MS
        if self.day is None or day > self.day:
            self.day = day
            self.baseline = equity

    def drawdown(self, equity: float) -> float:
        """Fall of `equity` below the baseline as a fraction, in [0, 1]."""
        base = self.baseline
        if not base > 0:
            return 0.0
        fall = (base - equity) / base
        if fall <= 0:
            return 0.0
        return fall if fall < 1.0 else 1.0

    def breached(self, equity: float) -> bool:
        """True when the drawdown reached the limit."""
        return self.drawdown(equity) >= self.limit

    def alert(self, out: Out, equity: float, trigger: str) -> None:
        """Alert the halt at the limit (RISK_LIMIT CRITICAL)."""
        dd = self.drawdown(equity)
        out.alert(
            CODE_RISK_LIMIT,
            "CRITICAL",
            f"Daily drawdown {dd:.2%} reached the limit {self.limit:.2%}: trading halted until "
            "a manual release",
            {"drawdown": dd, "limit": self.limit, "equity": equity, "baseline": self.baseline},
            "drawdown",
            trigger,
        )

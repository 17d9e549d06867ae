"""Layers 4 and 5, portfolio exposure and single position: how much of a buy may go out.

A buy is trimmed to the position limit (MAX_POSITION_PCT x equity minus what the symbol holds),
then to the exposure headroom (MAX_EXPOSURE_PCT x equity minus the value of all positions);
each trim raises a RISK_LIMIT WARNING. It is rejected by `exposure` (RISK_LIMIT INFO) only when
the headroom is under MIN_ORDER_NOTIONAL, by `position_limit` when the symbol's room is. Apart
from buys, exposure above EXPOSURE_HALT_PCT (80 %) of equity after any move, a price or a fill,
halts trading (RISK_LIMIT CRITICAL); exits still pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.events import Signal
from services.risk_manager.config import RiskConfig
from services.risk_manager.models import Check
from services.risk_manager.output import CODE_RISK_LIMIT, Out
from services.risk_manager.portfolio import Portfolio


@dataclass(frozen=True, slots=True)
class Sized:
    """A buy's approved size.

    Attributes:
        approved: Notional to send.
        trims: The layers that trimmed it (`Check` values, in order), empty when untrimmed.
        values: The values the deciding layer compared.
    """

    approved: float
    trims: tuple[str, ...]
    values: dict[str, float | str]

    @property
    def check(self) -> Check:
        """The deciding layer: the last trim, or all_passed."""
        return Check(self.trims[-1]) if self.trims else Check.ALL_PASSED


def exposure_halt_due(out: Out, cfg: RiskConfig, portfolio: Portfolio, trigger: str) -> bool:
    """Alert RISK_LIMIT CRITICAL and return True when exposure is above the halt level.

    Args:
        out: The call's output.
        cfg: The risk parameters.
        portfolio: The account.
        trigger: Id of the event that moved exposure (alert id part).
    """
    exposure = portfolio.exposure
    limit = cfg.exposure_halt_pct
    if not exposure > limit:
        return False
    out.alert(
        CODE_RISK_LIMIT,
        "CRITICAL",
        f"Exposure {exposure:.2%} of equity is above {limit:.0%}: trading halted",
        {"exposure_now": exposure, "limit": limit, "equity": portfolio.equity},
        "exposure_halt",
        trigger,
    )
    return True


def size_buy(
    out: Out, cfg: RiskConfig, sig: Signal, price: float, portfolio: Portfolio
) -> Sized | tuple[Check, dict[str, float | str]]:
    """Size a buy through the exposure and position layers.

    Args:
        out: The call's output (trim and rejection alerts go here).
        cfg: The risk parameters.
        sig: The buy signal.
        price: The symbol's last price.
        portfolio: The account.

    Returns:
        The sized buy, or the rejecting check and the values it compared.
    """
    sym = sig.symbol
    size = sig.size
    equity = portfolio.equity
    held = portfolio.value
    minimum = cfg.min_order_notional
    if equity <= 0:
        return Check.EXPOSURE, {"equity": equity, "positions_value": held}
    now_exp = held / equity
    headroom = cfg.max_exposure_pct * equity - held
    if headroom < minimum or headroom <= 0:
        values: dict[str, float | str] = {
            "exposure_now": now_exp,
            "exposure_after": (held + size) / equity,
            "headroom": max(headroom, 0.0),
            "limit": cfg.max_exposure_pct,
            "equity": equity,
            "min_notional": minimum,
        }
        out.alert(
            CODE_RISK_LIMIT,
            "INFO",
            f"Buy {sym} {size:g} rejected: exposure {now_exp:.2%} of equity leaves "
            f"{max(headroom, 0.0):g} under the {cfg.max_exposure_pct:.0%} cap, below the "
            f"minimum order {minimum:g}",
            {"symbol": sym, "signal_id": sig.signal_id, **values},
            "exposure",
            sig.signal_id,
        )
        return Check.EXPOSURE, values
    if size <= 0 or size < minimum:
        return Check.MIN_NOTIONAL, {"size": size, "min_notional": minimum}
    holding = portfolio.holdings.get(sym)
    pos_value = holding.qty * price if holding is not None else 0.0
    pos_limit = cfg.max_position_pct * equity
    approved = size
    trims: list[str] = []
    values = {}
    if pos_value + size > pos_limit:
        approved = max(0.0, pos_limit - pos_value)
        values = {
            "position_value": pos_value,
            "requested": size,
            "limit": pos_limit,
            "approved": approved,
            "min_notional": minimum,
        }
        accepted = approved > 0 and approved >= minimum
        verdict = f"trimmed to {approved:g}" if accepted else "rejected (below minimum)"
        out.alert(
            CODE_RISK_LIMIT,
            "WARNING",
            f"Buy {sym} {size:g} {verdict}: position limit {cfg.max_position_pct:.0%} of "
            f"equity is {pos_limit:g}, held {pos_value:g}",
            {"symbol": sym, "signal_id": sig.signal_id, **values},
            "position_limit",
            sig.signal_id,
        )
        if not accepted:
            return Check.POSITION_LIMIT, values
        trims.append(Check.POSITION_LIMIT.value)
    if approved > headroom:
        before = approved
        approved = headroom
        values = {
            **values,
            "exposure_now": now_exp,
            "headroom": headroom,
            "limit": cfg.max_exposure_pct,
            "requested": size,
            "approved": approved,
            "equity": equity,
        }
        out.alert(
            CODE_RISK_LIMIT,
            "WARNING",
            f"Buy {sym} {before:g} trimmed to {approved:g}: exposure cap "
            f"{cfg.max_exposure_pct:.0%} of equity leaves {headroom:g}",
            {"symbol": sym, "signal_id": sig.signal_id, **values},
            "exposure_trim",
            sig.signal_id,
        )
        trims.append(Check.EXPOSURE.value)
    if not trims:
        values = {
            "exposure_after": (held + approved) / equity,
            "exposure_limit": cfg.max_exposure_pct,
            "position_after": pos_value + approved,
            "position_limit": pos_limit,
            "price": price,
        }
    return Sized(approved, tuple(trims), values)

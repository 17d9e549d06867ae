"""Small value parsers shared by the services: symbol lists and exchange numbers."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator

SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")
"""An exchange symbol as the event contract allows it (`BTCUSDT`)."""


def parse_whitelist(raw: str) -> tuple[str, ...]:
    """Parse a comma-separated symbol list.

    Args:
        raw: Symbols separated by commas, any case, blanks allowed (`"btcusdt, ETHUSDT"`).

    Returns:
        The distinct symbols, upper-case and sorted; empty when `raw` names none.

    Raises:
        ValueError: An entry is not a valid symbol.
    """
    symbols = {part.strip().upper() for part in raw.split(",") if part.strip()}
    for symbol in symbols:
        if not SYMBOL.match(symbol):
            raise ValueError(f"invalid symbol {symbol!r} in the whitelist")
    return tuple(sorted(symbols))


def finite_number(value: object) -> float | None:
    """Return a finite float from a JSON number or numeric string, else None (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def _check_whitelist(value: str) -> str:
    """Refuse a whitelist entry that is not a symbol (exit 1 at start, not a late error)."""
    parse_whitelist(value)
    return value


WhitelistStr = Annotated[str, AfterValidator(_check_whitelist)]
"""A SYMBOL_WHITELIST setting: a comma-separated list of valid symbols (or empty)."""

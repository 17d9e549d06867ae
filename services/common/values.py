"""Small value parsers shared by the services: symbol lists and exchange numbers."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator

SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")
"""An exchange symbol as the event contract allows it (`BTCUSDT`)."""

KNOWN_QUOTES = (
    "USDT", "USDC", "USDE", "FDUSD", "TUSD", "BUSD", "USD1", "EURT", "EUR", "TRY", "BRL",
    "BTC", "ETH", "BNB", "MX",
)
"""Quote assets recognised when a symbol is given without a separator (longest first)."""


def quote_asset(symbol: str) -> str | None:
    """The quote asset a symbol ends with (`ETHBTC` -> `BTC`), the longest known one.

    Args:
        symbol: An exchange symbol without a separator, any case.

    Returns:
        The quote asset (upper-case), None when it ends with none of `KNOWN_QUOTES`.
    """
    upper = symbol.upper()
    return next((q for q in sorted(KNOWN_QUOTES, key=len, reverse=True)
                 if upper.endswith(q) and len(upper) > len(q)), None)


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

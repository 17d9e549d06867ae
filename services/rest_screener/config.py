"""Configuration of the REST screener.

`RestScreenerSettings` is read from the environment (a value out of range warns and falls back
to the default). `RestConfig` carries the values the pure engine needs, so tests build one
directly without touching the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, SecretStr

from services.common.settings import BaseServiceSettings
from services.common.values import WhitelistStr, parse_whitelist

TOP_MOVERS_KEY = "screener:top_movers"
"""Redis key (after STREAM_PREFIX) holding the REST screener's current symbol list as JSON."""



class RestScreenerSettings(BaseServiceSettings):
    """Environment settings of the REST screener service."""

    SERVICE_NAME: ClassVar[str] = "rest_screener"
    DEFAULT_PORT: ClassVar[int] = 8080

    DATABASE_URL: SecretStr = Field(
        default=SecretStr("postgresql://unused/unused"),
        description="Unused: the screener keeps no records (accepted for a shared environment)",
    )
    MEXC_REST_URL: str = Field(
        default="https://api.mexc.com",
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="Base URL of the MEXC spot REST API (tests point it at a local server)",
    )
    MEXC_API_KEY: SecretStr | None = Field(
        default=None, description="Optional API key (public endpoints need none)"
    )
    MEXC_API_SECRET: SecretStr | None = Field(
        default=None, description="Optional API secret (public endpoints need none)"
    )
    SYMBOL_WHITELIST: WhitelistStr = Field(
        default="",
        pattern=r"^[A-Za-z0-9, ]*$",
        description="Comma-separated symbols to follow; empty follows the TOP_N movers",
    )
    TOP_N: int = Field(
        default=20, ge=1, le=200, description="Movers followed when no whitelist is set"
    )
    QUOTE_ASSET: str = Field(
        default="USDT", pattern=r"^[A-Z0-9]{2,10}$", description="Quote asset of the movers"
    )
    MIN_QUOTE_VOLUME: float = Field(
        default=100_000.0, ge=0, description="24 h quote volume a mover needs"
    )
    LOOKBACK_MINUTES: int = Field(
        default=15, ge=1, le=240, description="Window of pct_change in minutes (1m klines)"
    )
    REST_POLL_INTERVAL_SEC: float = Field(
        default=10.0, ge=0.05, le=3600, description="Time between two polls"
    )
    EXCHANGE_INFO_REFRESH_SEC: float = Field(
        default=3600.0, ge=10, le=86_400,
        description="How often /exchangeInfo is re-read to skip pairs not tradeable by API",
    )
    REST_TIMEOUT_SEC: float = Field(
        default=10.0, ge=0.1, le=120, description="Timeout of one HTTP request"
    )
    REST_RATE_LIMIT_PER_10S: int = Field(
        default=400, ge=1, le=500,
        description="Requests per 10 s and endpoint the screener allows itself (MEXC: 500)",
    )
    REST_KLINE_CONCURRENCY: int = Field(
        default=8, ge=1, le=64, description="Kline requests in flight at once"
    )
    REST_BOOK_SOURCE: str = Field(
        default="book_ticker",
        pattern=r"^(ticker|book_ticker|depth)$",
        description="Where bid/ask come from: the 24 h ticker, /ticker/bookTicker or /depth",
    )
    REST_BACKOFF_BASE_SEC: float = Field(
        default=1.0, ge=0.01, le=60, description="First delay after a failed poll"
    )
    REST_BACKOFF_MAX_SEC: float = Field(
        default=60.0, ge=0.05, le=600, description="Largest delay after failed polls"
    )
    REST_BAN_DEFAULT_SEC: float = Field(
        default=60.0, ge=0.05, le=3600,
        description="Wait after a 418/429 that carries no Retry-After",
    )
    REST_STALE_AFTER_SEC: float = Field(
        default=60.0, ge=0.1, le=3600, description="Feed age after which /ready fails"
    )
    FEED_DEGRADED_AFTER_SEC: float = Field(
        default=60.0, ge=0, le=3600,
        description="Faults lasting this long raise a FEED_DEGRADED alert",
    )
    TOP_MOVERS_TTL_SEC: int = Field(
        default=300, ge=1, le=86_400, description="Expiry of the published top-mover list"
    )



@dataclass(frozen=True, slots=True)
class RestConfig:
    """What the pure engine needs.

    Attributes:
        whitelist: Symbols to follow (upper-case, sorted); empty follows the movers.
        top_n: Number of movers.
        quote_asset: Quote asset movers must be quoted in.
        min_quote_volume: 24 h quote volume a mover needs.
        lookback_minutes: Window of pct_change in minutes.
    """

    whitelist: tuple[str, ...] = ()
    top_n: int = 20
    quote_asset: str = "USDT"
    min_quote_volume: float = 100_000.0
    lookback_minutes: int = 15

    def __post_init__(self) -> None:
        """Normalize the whitelist and refuse values outside the engine's domain.

        Raises:
            ValueError: A value is unusable.
        """
        if self.top_n < 1 or self.lookback_minutes < 1 or self.min_quote_volume < 0:
            raise ValueError("top_n and lookback_minutes must be >= 1, min_quote_volume >= 0")
        object.__setattr__(self, "whitelist", parse_whitelist(",".join(self.whitelist)))

    @property
    def kline_limit(self) -> int:
        """Number of 1m klines to request: the lookback, its reference bar and the open bar."""
        return self.lookback_minutes + 2

    @classmethod
    def from_settings(cls, s: RestScreenerSettings) -> RestConfig:
        """Build the engine configuration from the service settings.

        Args:
            s: The validated settings.

        Returns:
            The engine configuration.
        """
        return cls(
            whitelist=parse_whitelist(s.SYMBOL_WHITELIST),
            top_n=s.TOP_N,
            quote_asset=s.QUOTE_ASSET,
            min_quote_volume=s.MIN_QUOTE_VOLUME,
            lookback_minutes=s.LOOKBACK_MINUTES,
        )

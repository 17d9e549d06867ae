"""Configuration of the WebSocket screener.

`WsScreenerSettings` is read from the environment (a value out of range warns and falls back to
the default); `WsConfig` carries what the pure engine needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, SecretStr, field_validator

from services.common.settings import BaseServiceSettings
from services.common.values import WhitelistStr

CHANNEL_NAMES = ("deals", "kline", "book_ticker")
"""Per-symbol streams the screener can subscribe to."""


def parse_channels(raw: str) -> tuple[str, ...]:
    """Parse WS_CHANNELS.

    Args:
        raw: Comma-separated channel names out of `CHANNEL_NAMES`.

    Returns:
        The distinct channels in `CHANNEL_NAMES` order.

    Raises:
        ValueError: A name is unknown or none is given.
    """
    names = {part.strip().lower() for part in raw.split(",") if part.strip()}
    unknown = names - set(CHANNEL_NAMES)
    if unknown or not names:
        raise ValueError(f"WS_CHANNELS must name some of {CHANNEL_NAMES}, got {raw!r}")
    return tuple(c for c in CHANNEL_NAMES if c in names)


class WsScreenerSettings(BaseServiceSettings):
    """Environment settings of the WebSocket screener service."""

    SERVICE_NAME: ClassVar[str] = "ws_screener"
    DEFAULT_PORT: ClassVar[int] = 8000

    DATABASE_URL: SecretStr = Field(
        default=SecretStr("postgresql://unused/unused"),
        description="Unused: the screener keeps no records (accepted for a shared environment)",
    )
    MEXC_WS_URL: str = Field(
        default="wss://wbs-api.mexc.com/ws",
        pattern=r"^wss?://[^\s/]+(/[^\s]*)?$",
        description="MEXC spot WebSocket URL (tests point it at a local server)",
    )
    MEXC_REST_URL: str = Field(
        default="https://api.mexc.com",
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="Base URL of the MEXC spot REST API (its /exchangeInfo says which "
        "whitelisted pairs are tradeable)",
    )
    SYMBOL_WHITELIST: WhitelistStr = Field(
        default="",
        pattern=r"^[A-Za-z0-9, ]*$",
        description="Comma-separated symbols; empty follows the REST screener's top movers",
    )
    EXCHANGE_INFO_REFRESH_SEC: float = Field(
        default=3600.0, ge=10, le=86_400,
        description="How often /exchangeInfo is re-read (with a whitelist) to skip pairs not "
        "tradeable by API",
    )
    WS_CHANNELS: str = Field(
        default="deals,kline,book_ticker",
        pattern=r"^[a-z_, ]+$",
        description="Streams per symbol: deals (trades), kline (1m), book_ticker",
    )
    WS_MAX_SUBSCRIPTIONS: int = Field(
        default=30, ge=1, le=30, description="Subscriptions per connection (MEXC allows 30)"
    )
    WS_MAX_SYMBOLS: int = Field(
        default=200, ge=1, le=2000, description="Symbols followed at most"
    )
    WS_EMIT_INTERVAL_MS: int = Field(
        default=1000, ge=10, le=600_000,
        description="At most one market_data per symbol per this interval",
    )
    WS_PING_INTERVAL_SEC: float = Field(
        default=20.0, ge=0.05, le=60, description="Time between two PINGs on a connection"
    )
    WS_PONG_TIMEOUT_SEC: float = Field(
        default=60.0, ge=0.1, le=600,
        description="A connection without a PONG for this long is dropped and reopened",
    )
    WS_MAX_CONNECTION_AGE_SEC: float = Field(
        default=82_800.0, ge=10, le=86_000,
        description="Planned reconnect after this age (MEXC closes connections at 24 h)",
    )
    WS_CONNECT_TIMEOUT_SEC: float = Field(
        default=10.0, ge=0.1, le=120, description="Timeout of the WebSocket handshake"
    )
    WS_RECONNECT_BASE_SEC: float = Field(
        default=0.5, ge=0.01, le=60, description="First delay before a reconnect after a drop"
    )
    WS_RECONNECT_MAX_SEC: float = Field(
        default=30.0, ge=0.05, le=600, description="Largest delay between reconnects"
    )
    WS_STALE_AFTER_SEC: float = Field(
        default=30.0, ge=0.1, le=3600, description="Feed age after which /ready fails"
    )
    WS_SYMBOLS_REFRESH_SEC: float = Field(
        default=5.0, ge=0.05, le=3600, description="How often the top-mover list is re-read"
    )
    LOOKBACK_MINUTES: int = Field(
        default=15, ge=1, le=240, description="Window of pct_change in minutes"
    )
    FEED_DEGRADED_AFTER_SEC: float = Field(
        default=60.0, ge=0, le=3600,
        description="Faults lasting this long raise a FEED_DEGRADED alert",
    )


    @field_validator("WS_CHANNELS")
    @classmethod
    def _channels_known(cls, value: str) -> str:
        """Refuse an unknown channel name."""
        parse_channels(value)
        return value


@dataclass(frozen=True, slots=True)
class WsConfig:
    """What the pure engine needs.

    Attributes:
        channels: Streams per symbol (see `CHANNEL_NAMES`).
        max_subscriptions: Subscriptions per connection.
        emit_interval_ms: Throttle interval per symbol.
        lookback_minutes: Window of pct_change.
        max_connection_age_ms: Planned reconnect age.
    """

    channels: tuple[str, ...] = CHANNEL_NAMES
    max_subscriptions: int = 30
    emit_interval_ms: int = 1000
    lookback_minutes: int = 15
    max_connection_age_ms: int = 82_800_000

    def __post_init__(self) -> None:
        """Refuse values outside the engine's domain.

        Raises:
            ValueError: A value is unusable.
        """
        parse_channels(",".join(self.channels))
        if not self.max_subscriptions >= 1 or self.emit_interval_ms < 1:
            raise ValueError("max_subscriptions and emit_interval_ms must be positive")
        if self.lookback_minutes < 1 or self.max_connection_age_ms < 1:
            raise ValueError("lookback_minutes and max_connection_age_ms must be positive")

    @property
    def symbols_per_connection(self) -> int:
        """Symbols one connection carries (all channels of a symbol share its connection)."""
        return max(1, self.max_subscriptions // len(self.channels))

    @classmethod
    def from_settings(cls, s: WsScreenerSettings) -> WsConfig:
        """Build the engine configuration from the service settings.

        Args:
            s: The validated settings.

        Returns:
            The engine configuration.
        """
        return cls(
            channels=parse_channels(s.WS_CHANNELS),
            max_subscriptions=s.WS_MAX_SUBSCRIPTIONS,
            emit_interval_ms=s.WS_EMIT_INTERVAL_MS,
            lookback_minutes=s.LOOKBACK_MINUTES,
            max_connection_age_ms=int(s.WS_MAX_CONNECTION_AGE_SEC * 1000),
        )

"""WebSocket screener settings."""

from __future__ import annotations

import pytest

from services.common.settings import SettingsError, load_settings
from services.ws_screener.config import WsConfig, WsScreenerSettings


def test_defaults() -> None:
    s = load_settings(WsScreenerSettings, REDIS_URL="redis://x:1/0")
    assert s.port == 8000 and s.SERVICE_NAME == "ws_screener"
    assert s.MEXC_WS_URL == "wss://wbs-api.mexc.com/ws"
    config = WsConfig.from_settings(s)
    assert config.channels == ("deals", "kline", "book_ticker")
    assert config.max_connection_age_ms == 23 * 3_600_000


def test_more_than_thirty_subscriptions_falls_back_to_thirty() -> None:
    s = load_settings(WsScreenerSettings, REDIS_URL="redis://x:1/0", WS_MAX_SUBSCRIPTIONS=50,
                      WS_MAX_CONNECTION_AGE_SEC=90_000)
    assert s.WS_MAX_SUBSCRIPTIONS == 30 and s.WS_MAX_CONNECTION_AGE_SEC == 82_800


def test_unknown_channel_stops_the_service() -> None:
    with pytest.raises(SettingsError):
        load_settings(WsScreenerSettings, REDIS_URL="redis://x:1/0", WS_CHANNELS="kline,depth")

"""REST screener settings: defaults, the seed's range rule, no PostgreSQL needed."""

from __future__ import annotations

import logging

import pytest

from services.common.settings import SettingsError, load_settings
from services.rest_screener.config import RestConfig, RestScreenerSettings


def test_defaults_need_only_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    s = load_settings(RestScreenerSettings, REDIS_URL="redis://127.0.0.1:1/0")
    assert s.port == 8080 and s.SERVICE_NAME == "rest_screener"
    assert s.MEXC_REST_URL == "https://api.mexc.com"
    assert s.MEXC_API_KEY is None
    config = RestConfig.from_settings(s)
    assert config.kline_limit == 17 and config.whitelist == ()


def test_out_of_range_value_warns_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cdb.settings"):
        s = load_settings(RestScreenerSettings, REDIS_URL="redis://x:1/0",
                          REST_RATE_LIMIT_PER_10S=900, TOP_N=0)
    assert s.REST_RATE_LIMIT_PER_10S == 400 and s.TOP_N == 20
    assert "REST_RATE_LIMIT_PER_10S" in caplog.text


def test_secrets_never_appear_in_the_repr() -> None:
    s = load_settings(RestScreenerSettings, REDIS_URL="redis://x:1/0",
                      MEXC_API_KEY="abcd-key", MEXC_API_SECRET="abcd-secret")
    assert "abcd-secret" not in repr(s) and "abcd-key" not in repr(s)


@pytest.mark.parametrize(("name", "value"), [("SYMBOL_WHITELIST", "BTC-USDT"),
                                             ("REST_BOOK_SOURCE", "l2"),
                                             ("MEXC_REST_URL", "ftp://x")])
def test_unusable_values_stop_the_service(name: str, value: str) -> None:
    with pytest.raises(SettingsError):
        load_settings(RestScreenerSettings, REDIS_URL="redis://x:1/0", **{name: value})

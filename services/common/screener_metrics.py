"""Prometheus metrics of both screeners (label `source`: `mexc_rest` or `mexc_ws`).

Shared by both screeners: a collector name can be registered only once per process.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MESSAGES = Counter(
    "cdb_screener_messages_total", "Exchange responses or frames received", ["source", "kind"]
)
MARKET_DATA = Counter(
    "cdb_screener_market_data_total", "market_data events published", ["source"]
)
REJECTED = Counter(
    "cdb_screener_rejected_total", "Rows or symbols that produced no event", ["source", "reason"]
)
ERRORS = Counter("cdb_screener_errors_total", "Feed faults", ["source", "kind"])
RATE_LIMIT_HITS = Counter(
    "cdb_screener_rate_limit_hits_total",
    "429/418 answers and client-side limiter waits",
    ["source", "endpoint"],
)
RECONNECTS = Counter(
    "cdb_screener_reconnects_total", "Feed reconnections by reason", ["source", "reason"]
)
FEED_AGE = Gauge(
    "cdb_screener_feed_age_seconds", "Seconds since the feed last delivered data", ["source"]
)
SYMBOLS = Gauge("cdb_screener_symbols", "Symbols followed", ["source"])
CONNECTIONS = Gauge("cdb_screener_connections", "Open feed connections", ["source"])
DEGRADED = Gauge("cdb_screener_feed_degraded", "1 while the feed is degraded", ["source"])
LAST_ERROR = Gauge(
    "cdb_screener_last_error_info",
    "1 for the class of the latest fault (one series per source)",
    ["source", "error_class"],
)

_last_error: dict[str, str] = {}


def set_last_error(source: str, error_class: str) -> None:
    """Point the last-error info metric of `source` at `error_class`.

    Args:
        source: `mexc_rest` or `mexc_ws`.
        error_class: Class (or kind) of the latest fault.
    """
    previous = _last_error.get(source)
    if previous == error_class:
        return
    if previous is not None:
        LAST_ERROR.remove(source, previous)
    LAST_ERROR.labels(source, error_class).set(1)
    _last_error[source] = error_class

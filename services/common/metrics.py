"""Prometheus metrics shared by every service (names prefixed `cdb_`).

Service-specific metrics live in the service's own module; these cover the runtime: the bus,
processing time, consumer lag, dead letters and alerts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

EVENTS_CONSUMED = Counter(
    "cdb_events_consumed_total", "Events consumed and acked", ["stream", "group"]
)
EVENTS_PUBLISHED = Counter("cdb_events_published_total", "Events published", ["stream"])
EVENTS_FAILED = Counter(
    "cdb_events_failed_total", "Handler failures (entry left pending)", ["stream", "group"]
)
PROCESSING_SECONDS = Histogram(
    "cdb_event_processing_seconds",
    "Handler time per event",
    ["stream", "group"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
CONSUMER_LAG = Gauge(
    "cdb_consumer_lag", "Entries not yet delivered to the group", ["stream", "group"]
)
CONSUMER_PENDING = Gauge(
    "cdb_consumer_pending", "Entries delivered but not acked", ["stream", "group"]
)
DEAD_LETTERS = Counter(
    "cdb_dead_letters_total", "Entries moved to <stream>.dlq", ["stream", "group", "reason"]
)
BUS_RECONNECTS = Counter("cdb_bus_reconnects_total", "Redis connection failures retried", ["op"])
ALERTS = Counter("cdb_alerts_total", "Alerts raised", ["code", "level"])
SERVICE_READY = Gauge("cdb_service_ready", "1 when the service is ready", ["service"])


class _LateMarketData(Collector):
    """`cdb_market_data_late_total{service}`: market data older than its symbol's newest.

    The engines count such events themselves (they ignore them for prices); the count is read
    at scrape time, so the hot path pays one integer increment per late event and nothing else.
    """

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], int]] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "cdb_market_data_late",
            "Market data older than the newest seen for its symbol (ignored for prices)",
            labels=["service"],
        )
        for service, read in sorted(self.sources.items()):
            family.add_metric([service], float(read()))
        yield family


_LATE = _LateMarketData()
REGISTRY.register(_LATE)


def count_late_market_data(service: str, read: Callable[[], int]) -> None:
    """Export an engine's count of late market data as `cdb_market_data_late_total`.

    Args:
        service: The `service` label.
        read: Returns the count so far (read at every scrape).
    """
    _LATE.sources[service] = read

"""Where each service lives: its module, settings class, default port and container name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One runnable service.

    Attributes:
        name: Name used by `cdb run NAME` and in logs.
        module: Module holding `service.py` and `config.py`.
        service_class: Class name in `<module>.service`.
        settings_class: Class name in `<module>.config`.
        container: Compose container name.
        port: Default HTTP port.
    """

    name: str
    module: str
    service_class: str
    settings_class: str
    container: str
    port: int

    def load(self) -> tuple[type[Any], type[Any]]:
        """Import and return (service class, settings class)."""
        service = importlib.import_module(f"{self.module}.service")
        config = importlib.import_module(f"{self.module}.config")
        return getattr(service, self.service_class), getattr(config, self.settings_class)


SERVICES: dict[str, ServiceSpec] = {
    s.name: s
    for s in (
        ServiceSpec("ws_screener", "services.ws_screener", "WsScreenerService",
                    "WsScreenerSettings", "cdb_ws", 8000),
        ServiceSpec("rest_screener", "services.rest_screener", "RestScreenerService",
                    "RestScreenerSettings", "cdb_rest", 8080),
        ServiceSpec("signal_engine", "services.signal_engine", "SignalService",
                    "SignalSettings", "cdb_core", 8001),
        ServiceSpec("risk_manager", "services.risk_manager", "RiskService",
                    "RiskSettings", "cdb_risk", 8002),
        ServiceSpec("execution", "services.execution", "ExecutionService",
                    "ExecutionSettings", "cdb_execution", 8003),
        ServiceSpec("replay", "services.replay", "ReplayService",
                    "ReplaySettings", "cdb_replay", 8090),
    )
}
"""Every service `cdb run` knows."""

PIPELINE = ("signal_engine", "risk_manager", "execution")
"""The services that turn market data into decisions and fills."""

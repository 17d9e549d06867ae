"""JSON logging of the operator: the services' format and secret redaction, minus kopf's noise.

kopf's per-object loggers attach the operator settings and internal flags to every record;
the formatter drops those and keeps the object reference (`k8s_ref`).
"""

from __future__ import annotations

import copy
import logging
import logging.config
import re
from typing import Any

from services.common.logs import JsonFormatter, RedactSecretsFilter, register_env_secrets

_DROPPED = ("settings", "k8s_skip")
_ROUTINE = re.compile(r"^Timer '[^']+' succeeded\.$")


class RoutineFilter(logging.Filter):
    """Drop kopf's line for every successful timer run (one per resource every 15 s)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but the routine timer success."""
        return not (record.name == "kopf.objects" and _ROUTINE.match(str(record.msg)))


class OperatorJsonFormatter(JsonFormatter):
    """The services' JSON lines without kopf's internal record attributes."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record (a copy: kopf's own handlers still see the original)."""
        if any(hasattr(record, key) for key in _DROPPED):
            record = copy.copy(record)
            for key in _DROPPED:
                record.__dict__.pop(key, None)
        return super().format(record)


def configure_logging(level: str = "INFO") -> None:
    """Log JSON lines to stderr through the redaction filter.

    Args:
        level: Root log level.
    """
    register_env_secrets()
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecretsFilter}, "routine": {"()": RoutineFilter}},
        "formatters": {"json": {"()": OperatorJsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["routine", "redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "asyncio": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            "aiohttp.access": {"level": "WARNING"},
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }
    logging.config.dictConfig(config)

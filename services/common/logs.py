"""JSON logging with secret redaction.

Logging is configured from `backoffice/logging_config.json`. Every handler carries the
`RedactSecretsFilter`, and the JSON formatter redacts again as it renders, so a registered
secret value never reaches a log line, whether in the message, its arguments, an extra field
or a traceback.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from services.common.text import scrub

REDACTED = "***"
_MIN_SECRET_LEN = 4
_secrets: set[str] = set()
_lock = threading.Lock()

CONFIG_PATH = Path(
    os.environ.get("CDB_LOGGING_CONFIG")
    or Path(__file__).resolve().parents[2] / "backoffice" / "logging_config.json"
)
"""The logging configuration: CDB_LOGGING_CONFIG, else the repository's file."""
SECRET_ENV_NAMES = (
    "REDIS_PASSWORD",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "RISK_ADMIN_TOKEN",
    "MEXC_API_KEY",
    "MEXC_API_SECRET",
    "GRAFANA_PASSWORD",
)
_STANDARD_ATTRS = set(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
) | {"message", "asctime", "taskName"}


def register_secret(value: str | None) -> None:
    """Add a value that must never be logged.

    Args:
        value: The secret; empty or very short values are ignored (they would redact noise).
    """
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)
        _register_url_password(value)


def _register_url_password(value: str) -> None:
    if "://" in value and "@" in value:
        creds = value.split("://", 1)[1].split("@", 1)[0]
        if ":" in creds:
            password = creds.split(":", 1)[1]
            if len(password) >= _MIN_SECRET_LEN:
                with _lock:
                    _secrets.add(password)


def register_env_secrets() -> None:
    """Register the secret variables of the environment and passwords inside URLs."""
    for name in SECRET_ENV_NAMES:
        register_secret(os.environ.get(name))
    for name in ("REDIS_URL", "DATABASE_URL"):
        url = os.environ.get(name)
        if url:
            _register_url_password(url)


def redact(text: str) -> str:
    """Replace every registered secret in `text` with a placeholder."""
    if not _secrets:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


class RedactSecretsFilter(logging.Filter):
    """Rewrite a record so that no registered secret survives in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the message, its arguments, extras and exception text; keep the record."""
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info:
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS:
                record.__dict__[key] = _redact_value(value)
        return True


class JsonFormatter(logging.Formatter):
    """Render records as one JSON object per line: timestamp, level, logger, message, extra."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record."""
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
        if extra:
            payload["extra"] = extra
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exception"] = record.exc_text
        try:
            line = orjson.dumps(payload, default=str).decode()
        except orjson.JSONEncodeError:  # a lone surrogate from outside: keep the line readable
            line = json.dumps(scrub(payload), default=lambda o: scrub(str(o)),
                              ensure_ascii=False)
        return redact(line)


def configure_logging(level: str | None = None, service: str | None = None) -> None:
    """Configure logging from `backoffice/logging_config.json` (or a built-in equivalent).

    Args:
        level: Root level override (LOG_LEVEL).
        service: Service name added to every record as `service`.
    """
    register_env_secrets()
    if CONFIG_PATH.exists():
        config = json.loads(CONFIG_PATH.read_text())
    else:
        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"redact": {"()": "services.common.logs.RedactSecretsFilter"}},
            "formatters": {"json": {"()": "services.common.logs.JsonFormatter"}},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "json",
                    "filters": ["redact"],
                    "stream": "ext://sys.stderr",
                }
            },
            "root": {"level": "INFO", "handlers": ["stderr"]},
        }
    if level:
        config.setdefault("root", {})["level"] = level
    logging.config.dictConfig(config)
    if service:
        old_factory = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = old_factory(*args, **kwargs)
            record.service = service
            return record

        logging.setLogRecordFactory(factory)

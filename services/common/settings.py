"""Typed settings with the seed's rule.

A missing required variable stops the service with exit code 1 and a message naming it; a value
out of range logs a WARNING naming the variable and the default, then the default is used.
Secrets are `SecretStr`: they never appear in a repr, a log line or an error message, and their
values are registered with the log redaction filter as soon as they are read.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, ClassVar, TypeVar

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.logs import register_secret

logger = logging.getLogger("cdb.settings")

_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}

S = TypeVar("S", bound="SeedRuleSettings")


class SettingsError(SystemExit):
    """Raised (as exit code 1) when required configuration is missing or unusable."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(1)


class SeedRuleSettings(BaseSettings):
    """Frozen settings from the environment with the seed's rule for out-of-range values.

    The base of every settings class; `BaseServiceSettings` adds what the pipeline services
    share, processes without Redis or PostgreSQL (the market simulator) use this directly.
    """

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=True, secrets_dir=None
    )

    SERVICE_NAME: ClassVar[str] = "service"
    DEFAULT_PORT: ClassVar[int] = 8000

    @field_validator("*", mode="wrap")
    @classmethod
    def _out_of_range_falls_back(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        """Apply the seed's rule: out-of-range values warn and fall back to the default."""
        try:
            result = handler(value)
        except ValidationError as exc:
            name = info.field_name or "?"
            field = cls.model_fields.get(name)
            kinds = {e["type"] for e in exc.errors()}
            if field is None or field.is_required() or not kinds <= _RANGE_ERRORS:
                raise
            logger.warning(
                "%s=%r is out of range; using the default %r",
                name,
                value,
                field.default,
                extra={"variable": name, "default": field.default},
            )
            return field.default
        if isinstance(result, SecretStr):
            register_secret(result.get_secret_value())
        return result


class BaseServiceSettings(SeedRuleSettings):
    """Settings every service shares: infrastructure, bus tuning, HTTP and logging.

    Subclasses add their own fields; each service has exactly one settings class.
    """

    REDIS_URL: SecretStr = Field(description="Redis URL, redis://host:port/db")
    REDIS_PASSWORD: SecretStr | None = Field(
        default=None, description="Redis password (overrides the URL's)"
    )
    DATABASE_URL: SecretStr = Field(description="PostgreSQL URL, postgresql://user:pw@host/db")
    STREAM_PREFIX: str = Field(
        default="", pattern=r"^[a-z0-9_.:-]*$", description="Prefix of every stream name"
    )
    BUS_MAX_DELIVERIES: int = Field(
        default=5, ge=1, le=100, description="Deliveries before an entry is dead-lettered"
    )
    BUS_MAXLEN: int = Field(
        default=100_000, ge=1_000, le=10_000_000, description="Approximate MAXLEN per stream"
    )
    BUS_CLAIM_IDLE_MS: int = Field(
        default=30_000, ge=100, le=3_600_000, description="Idle time before an entry is reclaimed"
    )
    BUS_CLAIM_INTERVAL_MS: int = Field(
        default=5_000, ge=100, le=600_000, description="How often the reclaim sweep runs"
    )
    BUS_BATCH: int = Field(default=100, ge=1, le=10_000, description="Entries read per call")
    HTTP_HOST: str = Field(default="127.0.0.1", description="Address the HTTP server binds")
    HTTP_PORT: int = Field(default=0, ge=0, le=65535, description="HTTP port (0: default)")
    LOG_LEVEL: str = Field(
        default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Log level"
    )
    CONSUMER_NAME: str = Field(
        default="", description="Consumer name in the groups (default: service-hostname)"
    )
    CLOCK: str = Field(
        default="wall",
        pattern=r"^(wall|event)$",
        description="Time source of decisions: wall clock (live) or event time (replay)",
    )

    @property
    def port(self) -> int:
        """The HTTP port: HTTP_PORT when set, else the service's default."""
        return self.HTTP_PORT or self.DEFAULT_PORT


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        name = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            parts.append(f"required variable {name} is not set")
        else:
            parts.append(f"variable {name} is invalid: {err['msg']}")
    return "; ".join(parts)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Read `cls` from the environment, applying the seed's rule.

    Args:
        cls: The service's settings class.
        **overrides: Values taking precedence over the environment (tests, CLI).

    Returns:
        The frozen settings.

    Raises:
        SettingsError: A required variable is missing or a value is unusable (exit code 1).
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        message = f"{cls.SERVICE_NAME}: {_describe(exc)}"
        logger.error(message)
        sys.stderr.write(message + "\n")
        raise SettingsError(message) from None

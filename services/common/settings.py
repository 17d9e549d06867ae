"""Typed settings with the seed's rule.

A missing required variable stops the service with exit code 1 and a message naming it; a value
out of range logs a WARNING naming the variable and the default, then the default is used.
Secrets are `SecretStr`: they never appear in a repr, a log line or an error message, and their
values are registered with the log redaction filter as soon as they are read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import annotated_types
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
from services.common.text import text_problem

logger = logging.getLogger("cdb.settings")

_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}

S = TypeVar("S", bound="SeedRuleSettings")


@dataclass(frozen=True)
class Fallback:
    """An out-of-range value that was replaced by its default (the seed's rule).

    Attributes:
        variable: The variable's name.
        value: The value given.
        default: The default used instead.
        allowed: The allowed range, e.g. `0.01..0.25`.
    """

    variable: str
    value: Any
    default: Any
    allowed: str

    def message(self) -> str:
        """One line for the user."""
        return (f"{self.variable}={self.value} is out of range ({self.allowed}); "
                f"using the default {self.default!r}")


_FALLBACKS: ContextVar[tuple[list[Fallback], bool] | None] = ContextVar(
    "cdb_settings_fallbacks", default=None)


@contextlib.contextmanager
def collect_fallbacks(quiet: bool = False) -> Iterator[list[Fallback]]:
    """Collect the fallbacks of the settings loaded inside the block.

    Args:
        quiet: Do not log them (the caller shows them to the user itself).

    Yields:
        The list the fallbacks are appended to.
    """
    found: list[Fallback] = []
    token = _FALLBACKS.set((found, quiet))
    try:
        yield found
    finally:
        _FALLBACKS.reset(token)


def allowed_range(field: Any) -> str:
    """The range a field allows, as `low..high` (`low..` or `..high` when open)."""
    low = high = ""
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge | annotated_types.Gt):
            low = str(getattr(rule, "ge", getattr(rule, "gt", "")))
        if isinstance(rule, annotated_types.Le | annotated_types.Lt):
            high = str(getattr(rule, "le", getattr(rule, "lt", "")))
    return f"{low}..{high}"


def settings_fallbacks(cls: type[BaseSettings], environ: Mapping[str, str],
                       **overrides: Any) -> list[Fallback]:
    """The fallbacks `cls` makes on `environ` (the environment a service will get).

    Args:
        cls: A settings class.
        environ: The environment to read instead of this process's.
        **overrides: Values taking precedence (placeholders for required URLs).

    Returns:
        The fallbacks; empty also when the settings are unusable (the service says why).
    """
    saved = dict(os.environ)
    with collect_fallbacks(quiet=True) as found:
        try:
            os.environ.clear()
            os.environ.update(environ)
            cls(**overrides)
        except ValidationError:
            pass
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return found


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
        """Apply the seed's rule: out-of-range values warn and fall back to the default.

        Text no service could store (a NUL character, or the lone surrogates that undecodable
        bytes in the environment become) is refused with the variable's name, never its value.
        """
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                raise ValueError(f"holds {problem}")
        try:
            result = handler(value)
        except ValidationError as exc:
            name = info.field_name or "?"
            field = cls.model_fields.get(name)
            kinds = {e["type"] for e in exc.errors()}
            if field is None or field.is_required() or not kinds <= _RANGE_ERRORS:
                raise
            fallback = Fallback(name, value, field.default, allowed_range(field))
            collecting = _FALLBACKS.get()
            if collecting is not None:
                collecting[0].append(fallback)
            if collecting is None or not collecting[1]:
                logger.warning(
                    "%s=%r is out of range (%s); using the default %r",
                    name,
                    value,
                    fallback.allowed,
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

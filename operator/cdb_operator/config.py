"""Settings of the operator itself (environment variables `CDB_OPERATOR_*`).

Names of the objects a TradingSystem drives are templates with the placeholders `{name}` (the
TradingSystem's name), `{namespace}`, `{service}` (`risk_manager`) and `{component}`
(`risk-manager`). The chart sets them to the names it renders; the defaults follow its
conventions. Where the risk manager lives and which Secret holds its token are the operator's
settings, never the resource's: whoever may edit a TradingSystem cannot redirect the token.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdb_operator.model import ManagedService

_PLACEHOLDERS = {"name": "n", "namespace": "ns", "service": "s", "component": "c"}


def _check_template(value: str) -> str:
    try:
        value.format(**_PLACEHOLDERS)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad template {value!r}: use {{name}} {{namespace}} "
                         "{service} {component}") from exc
    return value


class OperatorConfig(BaseSettings):
    """Environment settings of the operator."""

    model_config = SettingsConfigDict(
        env_prefix="CDB_OPERATOR_", frozen=True, extra="ignore", case_sensitive=True
    )

    NAMESPACE: str = Field(
        default="",
        description="Namespace to watch (empty: the service account's namespace, else default)",
    )
    TRADINGSYSTEM: str = Field(
        default="", description="Only handle the TradingSystem of this name (empty: all)"
    )
    RISK_URL: str = Field(
        default="http://{name}-risk-manager.{namespace}.svc:8002",
        description="Base URL of the risk manager's HTTP API (template)",
    )
    ADMIN_SECRET: str = Field(
        default="{name}", description="Secret holding the risk manager's admin token (template)"
    )
    ADMIN_SECRET_KEY: str = Field(
        default="RISK_ADMIN_TOKEN", description="Key of the token in that Secret"
    )
    DEPLOYMENT_NAME: str = Field(
        default="{name}-{component}", description="Deployment of a service (template)"
    )
    CONFIGMAP_NAME: str = Field(
        default="{name}-{component}-params",
        description="ConfigMap holding a service's parameters (template)",
    )
    STATUS_INTERVAL_SEC: float = Field(
        default=15.0, ge=0.2, le=3600, description="Seconds between two observations"
    )
    HTTP_TIMEOUT_SEC: float = Field(
        default=5.0, ge=0.1, le=120, description="Timeout of one call to the risk manager"
    )
    KUBE_TIMEOUT_SEC: float = Field(
        default=10.0, ge=0.1, le=120, description="Timeout of one call to the Kubernetes API"
    )
    RETRY_DELAY_SEC: float = Field(
        default=10.0, ge=0.1, le=3600, description="Delay before a failed handler is retried"
    )
    UNINSTALL_WAIT_SEC: float = Field(
        default=60.0, ge=1, le=3600,
        description="How long the uninstall hook waits for the operator to release a "
        "deleted TradingSystem before it removes the operator's finalizer itself",
    )
    LIVENESS_ENDPOINT: str = Field(
        default="http://0.0.0.0:8080/healthz",
        description="Liveness probe endpoint kopf serves (empty: none)",
    )
    LOG_LEVEL: str = Field(
        default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Log level"
    )

    @field_validator("RISK_URL", "ADMIN_SECRET", "DEPLOYMENT_NAME", "CONFIGMAP_NAME")
    @classmethod
    def _templates(cls, value: str) -> str:
        """Refuse a template with an unknown placeholder."""
        return _check_template(value)

    def risk_url(self, name: str, namespace: str) -> str:
        """The risk manager's base URL for one TradingSystem (no trailing slash)."""
        return self.RISK_URL.format(
            name=name, namespace=namespace, service="risk_manager", component="risk-manager"
        ).rstrip("/")

    def admin_secret(self, name: str, namespace: str) -> str:
        """Name of the Secret holding the admin token for one TradingSystem."""
        return self.ADMIN_SECRET.format(
            name=name, namespace=namespace, service="risk_manager", component="risk-manager"
        )

    def deployment(self, name: str, namespace: str, service: ManagedService) -> str:
        """Name of a service's Deployment."""
        return self.DEPLOYMENT_NAME.format(
            name=name, namespace=namespace, service=service.name, component=service.component
        )

    def configmap(self, name: str, namespace: str, service: ManagedService) -> str:
        """Name of a service's parameter ConfigMap."""
        return self.CONFIGMAP_NAME.format(
            name=name, namespace=namespace, service=service.name, component=service.component
        )

    def handles(self, name: str) -> bool:
        """True when this operator handles the TradingSystem `name`."""
        return not self.TRADINGSYSTEM or name == self.TRADINGSYSTEM

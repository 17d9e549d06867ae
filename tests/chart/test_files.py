"""The chart's copies of backoffice/ files (helm cannot read outside the chart) stay identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.conftest import CHART, ROOT

COPIES = [
    ("backoffice/prometheus/rules/cdb.rules.yml", "files/prometheus/cdb.rules.yml"),
    ("backoffice/grafana/dashboards/trading.json", "files/grafana/trading.json"),
    ("backoffice/grafana/dashboards/pipeline.json", "files/grafana/pipeline.json"),
    ("backoffice/alertmanager/cdb.tmpl", "files/alertmanager/cdb.tmpl"),
]


@pytest.mark.parametrize(("original", "copy"), COPIES, ids=[c for _, c in COPIES])
def test_the_charts_copy_equals_the_backoffice_original_byte_for_byte(
    original: str, copy: str
) -> None:
    source = ROOT / original
    if not source.exists():
        pytest.skip(f"{original} does not exist yet (the chart ships no copy until it does)")
    target: Path = CHART / copy
    assert target.exists(), f"copy {original} to charts/claire-de-binaire/{copy}"
    assert target.read_bytes() == source.read_bytes(), (
        f"charts/claire-de-binaire/{copy} differs from {original}: copy it again")


def test_the_chart_ships_no_file_without_a_backoffice_original() -> None:
    shipped = {p.relative_to(CHART).as_posix() for p in (CHART / "files").rglob("*")
               if p.is_file()}
    assert shipped <= {c for _, c in COPIES}

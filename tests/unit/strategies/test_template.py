"""The file `cdb strategy new` writes is the README's example, and a working strategy."""

from __future__ import annotations

import re
from pathlib import Path

from services.strategies import load_strategy
from services.strategies.template import class_name, render

ROOT = Path(__file__).resolve().parents[3]


def test_the_readme_example_is_the_file_strategy_new_writes() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Write your own strategy", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    assert block.group(1) == render("my_cross")[0]


def test_the_written_strategy_loads_from_its_file_with_its_parameters(tmp_path: Path) -> None:
    strategy_text, test_text = render("trend_rider")
    path = tmp_path / "trend_rider.py"
    path.write_text(strategy_text)
    strategy = load_strategy(f"{path}:TrendRider", {"fast": 5})
    assert type(strategy).__name__ == class_name("trend_rider") == "TrendRider"
    assert strategy.warmup == 31
    assert "trend_rider.py" in test_text and "TrendRider" in test_text
    assert len(strategy_text.splitlines()) <= 40

"""Literal rendering of the batch-commit script."""

from __future__ import annotations

import pytest

from services.common.ledger import entry_id, render_sql, sql_literal


def test_values_render_as_postgres_literals() -> None:
    assert sql_literal(None) == "NULL"
    assert sql_literal(True) == "true" and sql_literal(False) == "false"
    assert sql_literal(42) == "42"
    assert sql_literal(0.1) == "0.1" and sql_literal(1e-05) == "1e-05"
    assert sql_literal("it's") == "'it''s'"
    assert sql_literal("back\\slash") == "'back\\slash'"
    assert sql_literal(b"\x00\xff") == "decode('00ff', 'hex')"
    assert sql_literal([]) == "'{}'::text[]"
    assert sql_literal(["a", "b'c"]) == "ARRAY['a', 'b''c']::text[]"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nul\x00", object()])
def test_values_without_a_safe_literal_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"literal|NUL"):
        sql_literal(value)


def test_placeholders_are_replaced_by_position_including_two_digit_ones() -> None:
    args = list(range(1, 12))
    assert render_sql("SELECT $1, $10, $11", args) == "SELECT 1, 10, 11"


def test_stream_entry_ids_compare_by_time_then_sequence() -> None:
    assert entry_id(b"1700-2") < entry_id("1700-10") < entry_id(b"1701-0")

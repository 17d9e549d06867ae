"""Rendered literals round-trip through a real PostgreSQL exactly."""

from __future__ import annotations

import asyncpg

from services.common.infra import Infrastructure
from services.common.ledger import render_sql


async def test_rendered_values_come_back_unchanged(infra: Infrastructure) -> None:
    text = "quote ' backslash \\ unicode é ✓ newline \n end"
    payload = b'{"message": "a \\"quoted\\" \\\\ value"}'
    floats = [0.1, 1e-05, 123456.789012345, 2.2250738585072014e-308]
    conn = await asyncpg.connect(infra.database_url)
    try:
        sql = render_sql(
            "SELECT $1::text, $2::bytea, $3::jsonb, $4::numeric, $5::numeric, $6::numeric, "
            "$7::numeric, $8::text[]",
            [text, payload, '{"k": "v\'s"}', *floats, ["x", "y'z"]],
        )
        row = await conn.fetchrow(sql)
    finally:
        await conn.close()
    assert row[0] == text
    assert bytes(row[1]) == payload
    assert row[2] == '{"k": "v\'s"}'
    assert [float(v) for v in row[3:7]] == floats
    assert row[7] == ["x", "y'z"]

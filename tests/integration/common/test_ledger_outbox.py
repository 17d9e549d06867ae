"""The outbox rows of a published round are deleted by the next commit, not on their own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.bus import Bus, Outgoing
from services.common.events import Alert
from services.common.ledger import CommitFailedError, Ledger
from services.common.store import Store


def alert(i: int) -> Outgoing:
    return Outgoing("alerts", Alert(code="TEST", level="INFO", message=f"alert {i}",
                                    source="test", context={}, timestamp=1_700_000_000_000 + i))


@pytest.fixture
async def store(own_database: str) -> AsyncIterator[Store]:
    opened = Store(own_database)
    await opened.open()
    yield opened
    await opened.close()


async def outbox_rows(store: Store) -> int:
    return int(await store.pool.fetchval("SELECT count(*) FROM outbox WHERE service = 'svc'"))


async def test_a_published_rounds_outbox_rows_go_with_the_next_commit(
    store: Store, bus: Bus
) -> None:
    ledger = Ledger(store, bus, "svc", lambda: {"n": 1})
    ledger.emit([alert(1), alert(2)])
    await ledger.commit()
    assert await outbox_rows(store) == 2, "committed before publishing"
    await ledger.published()
    assert await outbox_rows(store) == 2, "no round trip of its own after the publish"
    ledger.emit([alert(3)])
    await ledger.commit()
    assert await outbox_rows(store) == 1, "the next commit deleted the published rows"
    await ledger.published()
    await ledger.commit()
    assert await outbox_rows(store) == 0



@pytest.mark.parametrize("bad", ["nul \u0000 in text", "lone \ud800 surrogate"])
async def test_a_commit_postgresql_refuses_drops_its_own_writes_and_never_blocks_the_next(
    store: Store, bus: Bus, bad: str,
) -> None:
    state = {"n": 1}
    ledger = Ledger(store, bus, "svc", lambda: dict(state))
    ledger.add("INSERT INTO halts (reason, halted_by, ts) VALUES ($1, 'a', now())", "kept")
    mark = ledger.mark()
    ledger.add("INSERT INTO halts (reason, halted_by, ts) VALUES ($1, 'b', now())", bad)
    with pytest.raises(CommitFailedError):
        await ledger.commit_now([alert(1)], since=mark)
    assert await store.pool.fetchval("SELECT count(*) FROM halts") == 0  # all or nothing
    assert await outbox_rows(store) == 0
    state["n"] = 2
    await ledger.commit_now([])  # the queue before the mark goes through; the bad write is gone
    assert [r["reason"] for r in await store.pool.fetch("SELECT reason FROM halts")] == ["kept"]
    snapshot = await store.pool.fetchval(
        "SELECT value->>'n' FROM service_state WHERE service = 'svc' AND key = 'snapshot'")
    assert snapshot == "2"

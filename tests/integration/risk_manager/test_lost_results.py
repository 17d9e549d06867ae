"""Orders whose result never comes, with the real risk manager and execution processes on real
Redis and PostgreSQL: the result is dead-lettered (acked for the risk manager's group and moved
to `order_results.dlq`, as the bus does after BUS_MAX_DELIVERIES), or the order itself never
reached the execution. After ORDER_RESULT_TIMEOUT_SEC the risk manager settles the order from
the execution's `order_results` row, or frees the symbol and re-issues the exit.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from services.common.events import (
    MarketData,
    Order,
    Signal,
    dump_event,
    new_id,
    parse_event,
)
from services.common.infra import Infrastructure, free_port
from tests.conftest import ROOT, fresh_database, service_env
from tests.support.processes import stop_process
from tests.support.risk_process import RiskProcess
from tests.support.waiting import wait_for

TOKEN = "lost-results-token"
TIMEOUT_SEC = 5


class Pair:
    """A risk manager and an execution process of one account (database and prefix)."""

    def __init__(self, infra: Infrastructure, prefix: str, logs: Path) -> None:
        self.env = service_env(infra, fresh_database(infra.database_url), prefix,
                               RISK_ADMIN_TOKEN=TOKEN,
                               ORDER_RESULT_TIMEOUT_SEC=str(TIMEOUT_SEC))
        self.prefix = prefix
        self.risk = RiskProcess(self.env, TOKEN)
        self.logs = logs
        self.execution: subprocess.Popen[bytes] | None = None
        self.redis = redis.Redis.from_url(self.env["REDIS_URL"])

    def start_execution(self) -> None:
        port = free_port()
        with (self.logs / "execution.log").open("ab") as log:
            self.execution = subprocess.Popen(
                [sys.executable, "-m", "services.execution"], cwd=ROOT,
                env={**self.env, "HTTP_PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _ready(port), 30, "execution ready")

    def stop_execution(self) -> None:
        if self.execution is not None:
            assert stop_process(self.execution) == 0
            self.execution = None

    def publish(self, stream: str, event: Any) -> None:
        self.redis.xadd(self.prefix + stream, {b"data": dump_event(event)})

    def events(self, stream: str) -> list[tuple[bytes, Any]]:
        return [(eid, parse_event(stream, fields[b"data"]))
                for eid, fields in self.redis.xrange(self.prefix + stream)]

    def dead_letter(self, stream: str, group: str, entry_id: bytes) -> None:
        """What the bus does after BUS_MAX_DELIVERIES: copy to `<stream>.dlq` and ack."""
        key = self.prefix + stream
        self.redis.xreadgroup(group, "drill", {key: ">"})
        fields = dict(self.redis.xrange(key, entry_id, entry_id)[0][1])
        self.redis.xadd(key + ".dlq", {**fields, b"error": b"delivered 6 times without success"})
        assert self.redis.xack(key, group, entry_id) == 1

    def rows(self, sql: str) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.env["DATABASE_URL"])
            try:
                return list(await conn.fetch(sql))
            finally:
                await conn.close()

        return asyncio.run(run())

    def close(self) -> None:
        self.stop_execution()
        if self.risk.proc is not None:
            self.risk.stop()
        self.redis.close()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def pair(infra: Infrastructure, prefix: str, tmp_path: Path) -> Iterator[Pair]:
    accounts = Pair(infra, prefix, tmp_path)
    try:
        yield accounts
    finally:
        accounts.close()


def tick(pair: Pair, price: float, symbol: str = "BTCUSDT") -> MarketData:
    md = MarketData(timestamp=int(time.time() * 1000), symbol=symbol, price=price,
                    volume=5_000_000.0, pct_change=1.0, source="mexc_rest")
    pair.publish("market_data", md)
    return md


def buy(pair: Pair, md: MarketData, size: float = 500.0) -> Order:
    signal_id = new_id()
    pair.publish("signals", Signal(timestamp=md.timestamp, symbol=md.symbol, direction="buy",
                                   size=size, signal_strength=0.9, signal_id=signal_id,
                                   market_event_id=md.event_id, reason="drill"))
    return wait_for(lambda: next((o for _, o in pair.events("orders")
                                  if o.signal_id == signal_id), None), 30, "the buy order")


def test_a_buy_whose_result_was_dead_lettered_is_settled_from_the_executions_record(
    pair: Pair,
) -> None:
    pair.risk.start()
    md = tick(pair, 100.0)
    order = buy(pair, md)
    assert pair.risk.state()["outstanding_orders"] == 1
    # Published: its outbox row goes with the next commit (else a restart republishes it,
    # and the execution answers a republished order with its result again).
    tick(pair, 100.0)
    wait_for(lambda: pair.rows("SELECT * FROM outbox WHERE service = 'risk_manager'") == [],
             30, "the order's outbox row cleaned up")
    assert pair.risk.stop() == 0  # the risk manager is away while the execution fills
    pair.start_execution()
    entry_id, result = wait_for(lambda: next(((eid, r) for eid, r in pair.events("order_results")
                                              if r.order_id == order.order_id), None),
                                30, "the execution's result")
    assert result.status == "filled"
    pair.dead_letter("order_results", "risk_manager", entry_id)
    pair.risk.start()
    held = wait_for(lambda: pair.risk.state()["positions"].get("BTCUSDT"), 30,
                    "the position settled from the execution's record")
    assert held["qty"] == pytest.approx(result.filled_qty)
    state = pair.risk.state()
    assert state["outstanding_orders"] == 0
    assert state["cash"] == pytest.approx(10_000.0 - result.filled_notional - result.fees)
    alerts = wait_for(lambda: pair.rows("SELECT level, message, context FROM alerts "
                                        "WHERE code = 'ORDER_TIMEOUT'"), 30, "ORDER_TIMEOUT")
    assert alerts[0]["level"] == "WARNING" and "execution's record" in alerts[0]["message"]
    # Signals are decided again, sells included: the position can be sold.
    later = tick(pair, 101.0)
    signal_id = new_id()
    pair.publish("signals", Signal(timestamp=later.timestamp, symbol="BTCUSDT",
                                   direction="sell", size=0.0, signal_strength=0.5,
                                   signal_id=signal_id, market_event_id=later.event_id,
                                   reason="exit"))
    sell = wait_for(lambda: next((o for _, o in pair.events("orders")
                                  if o.signal_id == signal_id), None), 30, "the sell")
    assert sell.side == "sell" and sell.quantity == pytest.approx(result.filled_qty)
    wait_for(lambda: pair.risk.state()["positions"] == {}, 30, "the position sold")


def test_a_stop_loss_exit_the_execution_never_got_is_reissued_and_closes_the_position(
    pair: Pair,
) -> None:
    pair.risk.start()
    pair.start_execution()
    order = buy(pair, tick(pair, 100.0))
    wait_for(lambda: pair.risk.state()["positions"].get("BTCUSDT"), 30, "the position")
    pair.stop_execution()
    tick(pair, 90.0)  # 10 % under the entry: the stop-loss exits
    lost_exit = wait_for(lambda: next((o for _, o in pair.events("orders")
                                       if o.reason == "stop_loss"), None), 30, "the exit")
    (entry_id,) = [eid for eid, o in pair.events("orders") if o.order_id == lost_exit.order_id]
    pair.dead_letter("orders", "execution", entry_id)  # the execution never takes it
    reissued = wait_for(
        lambda: next((o for _, o in pair.events("orders")
                      if o.reason == "stop_loss" and o.order_id != lost_exit.order_id), None),
        30, "the re-issued exit")
    assert reissued.side == "sell" and reissued.quantity == pytest.approx(lost_exit.quantity)
    alert = wait_for(lambda: pair.rows("SELECT message, context FROM alerts "
                                       "WHERE code = 'ORDER_TIMEOUT'"), 30, "ORDER_TIMEOUT")
    assert "no record" in alert[0]["message"] and reissued.order_id in alert[0]["context"]
    pair.start_execution()
    wait_for(lambda: pair.risk.state()["positions"] == {}, 30, "the re-issued exit filled")
    assert pair.rows(f"SELECT * FROM order_results WHERE order_id = '{lost_exit.order_id}'") == []
    assert len(pair.rows("SELECT * FROM fills WHERE side = 'sell'")) == 1
    assert order.order_id != reissued.order_id

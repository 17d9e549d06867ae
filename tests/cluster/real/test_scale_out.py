"""Scale-out as DESIGN 12 says: a second account is a second release, in another namespace,
beside the first. It shares account A's Redis (its own stream prefix) and A's PostgreSQL (its
own schema, `?search_path=` in its URL) and reads A's market simulator; its state is its own:
a HALT of B leaves A trading.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest

from tests.cluster.real.conftest import (
    RELEASE,
    TIMINGS,
    Images,
    Release,
    base_values,
    wait_pods_settled,
)
from tests.support.real_cluster import RealCluster
from tests.support.waiting import wait_for

PREFIX = "acct-b:"
SCHEMA = "account_b"


@pytest.fixture(scope="module")
def account_b(real: RealCluster, images: Images, account_a: Release,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """Account B: no datastores of its own (A's, through external URLs), no simulator of its
    own (A's), its own stream prefix and schema."""
    a = account_a.namespace
    sim = f"http://{RELEASE}-market-simulator.{a}.svc:8095"
    values = copy.deepcopy(base_values(images))
    values["marketSimulator"] = {"enabled": False}
    values["config"]["streamPrefix"] = PREFIX
    values["redis"] = {"enabled": False, "externalUrl":
                       f"redis://:{account_a.secret('REDIS_PASSWORD')}@{RELEASE}-redis.{a}.svc"
                       ":6379/0"}
    values["postgresql"] = {"enabled": False, "externalUrl":
                            f"postgresql://{account_a.secret('POSTGRES_USER')}:"
                            f"{account_a.secret('POSTGRES_PASSWORD')}@{RELEASE}-postgresql.{a}"
                            f".svc:5432/cdb?search_path={SCHEMA}"}
    values["services"]["restScreener"] = {"env": {"MEXC_REST_URL": sim}}
    values["services"]["wsScreener"] = {"env": {"MEXC_WS_URL": sim.replace("http", "ws") + "/ws"}}
    release = Release(real, "cdb-b", values, tmp_path_factory.mktemp("b"))
    TIMINGS["helm install --wait (account B)"] = release.install()
    try:
        yield release
    finally:
        release.uninstall()
        real.kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)


def test_a_second_account_runs_beside_the_first_with_its_own_streams_and_schema(
    account_a: Release, account_b: Release,
) -> None:
    pods = wait_pods_settled(account_b)
    # B's release renders no datastore and no simulator of its own: its Secret holds the URLs
    # of A's (there is no Service `cdb-redis` in B's namespace, nor a Redis password)
    assert set(pods) == {"ws-screener", "rest-screener", "signal-engine", "risk-manager",
                         "execution", "operator"}, pods
    assert account_b.get("statefulsets")["items"] == []
    services = {s["metadata"]["name"] for s in account_b.get("services")["items"]}
    assert not services & {f"{RELEASE}-redis", f"{RELEASE}-postgresql",
                           f"{RELEASE}-market-simulator"}
    assert set(account_b.get("secret", RELEASE)["data"]) == {
        "RISK_ADMIN_TOKEN", "REDIS_URL", "DATABASE_URL"}
    wait_for(lambda: account_b.status().get("tradingState") in ("ACTIVE", "PAUSED"), 120,
             "B's status observed", 2)
    wait_for(lambda: account_b.count("risk_decisions") > 0, 300, "B decides", 5)
    r = account_a.redis_client()
    assert r.xlen(f"{PREFIX}market_data") > 0  # B's screeners publish into B's streams
    groups = {g["name"].decode() for g in r.xinfo_groups(f"{PREFIX}market_data")}
    assert {"signal_engine", "risk_manager", "execution"} <= groups
    tables = {schema: {t for (t,) in account_a.sql(
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'")}
        for schema in ("public", SCHEMA)}
    assert tables[SCHEMA] == tables["public"] and "risk_decisions" in tables[SCHEMA]
    # B's rows are in B's schema (its connections work there): the same data gives the same
    # deterministic signal ids, but each account decides them on its own
    assert account_b.sql("SELECT current_schema()") == [(SCHEMA,)]
    assert account_a.sql(f"SELECT count(*) FROM {SCHEMA}.signals")[0][0] > 0


def test_a_halt_of_one_account_leaves_the_other_trading(
    account_a: Release, account_b: Release,
) -> None:
    account_b.halt("e2e: account B only")
    wait_for(lambda: account_b.status().get("tradingState") == "HALTED", 60, "B HALTED", 2)
    since = account_a.sql("SELECT now()")[0][0].isoformat()
    assert account_a.risk_state()["state"] != "HALTED"
    # the same buy signal to both accounts: A approves it and orders, B refuses it
    in_a, outcome, check = account_a.decide_buy("e2e: A after B's halt")
    assert outcome in ("approved", "trimmed"), (outcome, check)
    wait_for(lambda: account_a.count("orders", f"signal_id = '{in_a}'") == 1, 60, "A's order", 1)
    in_b, outcome, check = account_b.decide_buy("e2e: B while halted")
    assert outcome == "rejected" and account_b.count("orders", f"signal_id = '{in_b}'") == 0
    assert account_a.status().get("tradingState") != "HALTED"
    assert account_b.risk_state()["state"] == "HALTED"
    b_since = account_b.sql(f"SELECT outcome FROM risk_decisions WHERE ts > '{since}' "
                            "AND side = 'buy'")
    assert {o for (o,) in b_since} <= {"rejected"}
    # the halt is recorded in B's schema only
    assert account_b.count("halts", "reason LIKE '%account B only%'") == 1
    assert account_a.count("halts", "reason LIKE '%account B only%'") == 0

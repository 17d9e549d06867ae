"""The admin API under hostile input, over real HTTP against a real risk manager process on real
Redis and PostgreSQL: text PostgreSQL cannot store, replayed and racing request ids, large and
unauthenticated bodies, and a write PostgreSQL refuses.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.risk_manager.conftest import TOKEN
from tests.support.risk_process import RiskProcess
from tests.support.waiting import wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def post_raw(risk: RiskProcess, path: str, raw: bytes,
             headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{risk.url}{path}", content=raw,
                      headers=AUTH if headers is None else headers, timeout=10)


def assert_safe_422(response: httpx.Response) -> Any:
    """A 422 whose body is valid JSON without a NUL or a lone surrogate, escaped or not."""
    assert response.status_code == 422, (response.status_code, response.text)
    raw = response.content
    assert b"\x00" not in raw and b"\\u0000" not in raw
    assert b"\\ud8" not in raw.lower() and b"\\udc" not in raw.lower()
    raw.decode("utf-8")  # strict: no encoded surrogate either
    return response.json()


def fetch(risk: RiskProcess, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(risk.env["DATABASE_URL"])
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


def execute(risk: RiskProcess, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(risk.env["DATABASE_URL"])
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def assert_alive_and_ready(risk: RiskProcess) -> None:
    assert risk.proc is not None and risk.proc.poll() is None, risk.log.read_text()[-2000:]
    assert httpx.get(f"{risk.url}/ready", timeout=5).status_code == 200


# ---------------------------------------------------------------------- unstorable text


@pytest.mark.parametrize("field", ["reason", "halted_by", "request_id"])
def test_a_halt_whose_text_holds_a_nul_answers_422_and_changes_nothing(
    risk: RiskProcess, field: str,
) -> None:
    body = {"request_id": "h-nul", "halted_by": "mallory", "reason": "drill"}
    body[field] = "before\u0000after"
    details = assert_safe_422(risk.request("/risk/halt", body))["detail"]
    assert any(d["loc"][-1] == field and "NUL" in d["msg"] for d in details), details
    assert_alive_and_ready(risk)
    assert risk.state()["state"] == "ACTIVE"
    assert fetch(risk, "SELECT * FROM halts") == []
    # The pipeline goes on: the next halt works and is durable across a restart.
    ok = risk.request("/risk/halt", {"request_id": "h-ok", "halted_by": "ops", "reason": "real"})
    assert ok.status_code == 200 and ok.json()["state"]["state"] == "HALTED"
    assert risk.stop() == 0
    risk.start()
    assert risk.state()["state"] == "HALTED" and risk.state()["halt_reason"] == "real"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"request_id": "s1", "halted_by": "x", "reason": "\\ud800"}',  # escaped, lone
        b'{"request_id": "s2", "halted_by": "\\udfff tail", "reason": "y"}',
        b'{"request_id": "s3", "halted_by": "x", "reason": "\xed\xa0\x80"}',  # encoded surrogate
        b'{"request_id": "s4", "halted_by": "x", "reason": "\xff\xfe"}',  # not UTF-8 at all
    ],
    ids=["escaped-high", "escaped-low", "utf8-encoded-surrogate", "invalid-utf8"],
)
def test_a_halt_with_a_lone_surrogate_or_invalid_utf8_answers_422(
    risk: RiskProcess, raw: bytes,
) -> None:
    assert_safe_422(post_raw(risk, "/risk/halt", raw))
    assert_alive_and_ready(risk)
    assert risk.state()["state"] == "ACTIVE"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/risk/halt", {"request_id": "echo", "halted_by": "x", "reason": "\u0000" * 600}),
        ("/risk/release", {"request_id": ["\u0000"], "released_by": "x", "reason": "y"}),
        ("/risk/pause", {"paused": "\u0000yes"}),
        ("/risk/release", {"request_id": "", "released_by": "\u0000", "reason": 5}),
    ],
    ids=["too-long-echoes-nul", "wrong-type-echoes-nul", "bool-echoes-nul", "several"],
)
def test_an_error_that_echoes_the_input_is_still_a_safe_422(
    risk: RiskProcess, path: str, body: dict[str, Any],
) -> None:
    details = assert_safe_422(risk.request(path, body))["detail"]
    assert details and all({"type", "loc", "msg"} <= set(d) for d in details)
    assert_alive_and_ready(risk)


def test_the_same_with_a_lone_surrogate_in_an_echoed_value(risk: RiskProcess) -> None:
    raw = b'{"paused": "\\ud83d"}'  # half an emoji
    assert_safe_422(post_raw(risk, "/risk/pause", raw))
    too_long = ('{"request_id": "r", "released_by": "x", "reason": "' + "\\udc00" * 600
                + '"}').encode()
    assert_safe_422(post_raw(risk, "/risk/release", too_long))
    assert_alive_and_ready(risk)


def test_text_with_any_other_unicode_is_taken_and_stored_as_sent(risk: RiskProcess) -> None:
    reason = "Wartung \u00e9\u20ac \U0001f6a8 \u202e control\u0007"
    r = risk.request("/risk/halt", {"request_id": "u1", "halted_by": "Zo\u00eb", "reason": reason})
    assert r.status_code == 200, r.text
    assert fetch(risk, "SELECT reason, halted_by FROM halts")[0]["reason"] == reason
    assert risk.state()["halt_reason"] == reason


# ---------------------------------------------------------------------- request ids


def test_a_replayed_request_id_gets_the_first_answer_and_another_body_409(
    risk: RiskProcess,
) -> None:
    release = {"request_id": "r-replay", "released_by": "ops", "reason": "first"}
    first = risk.request("/risk/release", release)
    assert first.status_code == 200
    assert first.json()["result"] == "nothing to release" and not first.json()["duplicate"]
    halted = risk.request("/risk/halt", {"request_id": "h1", "halted_by": "ops", "reason": "x"})
    assert halted.json()["state"]["state"] == "HALTED"
    again = risk.request("/risk/release", release)
    assert again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}  # the first answer, as it was
    assert risk.state()["state"] == "HALTED"  # and nothing was done now
    other = risk.request("/risk/release", {**release, "reason": "another"})
    assert other.status_code == 409 and "r-replay" in other.json()["detail"]
    assert risk.state()["state"] == "HALTED"
    same_keys_reordered = json.dumps({"reason": "first", "request_id": "r-replay",
                                      "released_by": "ops"}, indent=2).encode()
    assert post_raw(risk, "/risk/release", same_keys_reordered).json()["duplicate"] is True
    halt_again = risk.request("/risk/halt", {"request_id": "h1", "halted_by": "eve",
                                             "reason": "x"})
    assert halt_again.status_code == 409


def test_twenty_concurrent_releases_with_one_id_release_once(risk: RiskProcess) -> None:
    risk.request("/risk/halt", {"request_id": "h-race", "halted_by": "ops", "reason": "race"})
    body = {"request_id": "r-race", "released_by": "ops", "reason": "race over"}
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: risk.request("/risk/release", body), range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    fresh = [a.json() for a in answers if not a.json()["duplicate"]]
    assert len(fresh) == 1 and fresh[0]["result"] == "released"
    assert {a.json()["result"] for a in answers} == {"released"}
    assert len(fetch(risk, "SELECT * FROM releases")) == 1
    wait_for(lambda: fetch(risk, "SELECT * FROM alerts WHERE code = 'HALT_RELEASED'"), 30,
             "the release's alert recorded")
    risk.request("/risk/halt", {"request_id": "h-after", "halted_by": "ops", "reason": "marker"})
    wait_for(lambda: fetch(risk, "SELECT * FROM alerts WHERE code = 'MANUAL_HALT' "
                                 "AND message LIKE '%marker%'"), 30, "a later alert recorded")
    assert len(fetch(risk, "SELECT * FROM alerts WHERE code = 'HALT_RELEASED'")) == 1


# ---------------------------------------------------------------------- size and token


def test_a_large_body_answers_413_and_a_chunked_one_too(risk: RiskProcess) -> None:
    big = {"request_id": "big", "halted_by": "x", "reason": "y" * 1_000_000}
    assert risk.request("/risk/halt", big).status_code == 413

    def chunks() -> Any:
        yield b'{"request_id": "chunked", "halted_by": "x", "reason": "'
        for _ in range(100):
            yield b"z" * 1_000
        yield b'"}'

    chunked = httpx.post(f"{risk.url}/risk/halt", content=chunks(), headers=AUTH, timeout=10)
    assert chunked.status_code == 413
    assert_alive_and_ready(risk)
    assert risk.state()["state"] == "ACTIVE"


@pytest.mark.parametrize("token", [None, "wrong"])
@pytest.mark.parametrize("raw", [b"{not json", b'{"reason": "\\u0000"}', b""])
def test_a_request_without_the_token_is_refused_401_before_its_body_is_read(
    risk: RiskProcess, token: str | None, raw: bytes,
) -> None:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    for path in ("/risk/halt", "/risk/release", "/risk/pause"):
        r = post_raw(risk, path, raw, headers)
        assert r.status_code == 401, (path, r.status_code, r.text)


# ---------------------------------------------------------------------- a write that fails


def test_a_command_whose_write_fails_is_rolled_back_and_the_next_one_works(
    risk: RiskProcess,
) -> None:
    execute(risk, "ALTER TABLE halts RENAME TO halts_away")  # the halt's row cannot be written
    r = risk.request("/risk/halt", {"request_id": "h-fail", "halted_by": "ops", "reason": "x"})
    assert r.status_code == 500 and "nothing changed" in r.json()["detail"]
    assert risk.state()["state"] == "ACTIVE"  # rolled back, never seen as HALTED
    assert_alive_and_ready(risk)
    pause = risk.request("/risk/pause", {"paused": True})  # the failed write is not kept
    assert pause.status_code == 200 and pause.json()["state"]["manual_paused"] is True
    execute(risk, "ALTER TABLE halts_away RENAME TO halts")
    assert fetch(risk, "SELECT * FROM halts") == []
    assert fetch(risk, "SELECT * FROM admin_requests WHERE command = 'halt'") == []
    ok = risk.request("/risk/halt", {"request_id": "h-fail", "halted_by": "ops", "reason": "x"})
    assert ok.status_code == 200 and ok.json()["result"] == "halted"
    assert risk.stop() == 0
    risk.start()
    state = risk.state()
    assert state["state"] == "HALTED" and state["manual_paused"] is True
    assert len(fetch(risk, "SELECT * FROM halts")) == 1


# ---------------------------------------------------------------------- fuzzed bodies

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
"""Any code point, NUL and lone surrogates included (hypothesis leaves those out by default)."""
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=6,
)
FIELDS = ("request_id", "halted_by", "released_by", "reason", "paused")
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=5),
    st.fixed_dictionaries({"request_id": ANY_TEXT, "halted_by": ANY_TEXT, "reason": ANY_TEXT,
                           "released_by": ANY_TEXT}),
    JSON_VALUES,
)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(["/risk/halt", "/risk/release", "/risk/pause"]), body=BODIES,
       raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_no_body_whatever_it_holds_gets_a_500_or_an_unsafe_answer(
    risk: RiskProcess, path: str, body: Any, raw: bytes | None,
) -> None:
    content = raw if raw is not None else json.dumps(body).encode()  # escapes surrogates
    r = post_raw(risk, path, content)
    assert r.status_code in (200, 409, 413, 422), (r.status_code, r.text)
    r.content.decode("utf-8")
    assert b"\x00" not in r.content and b"\\u0000" not in r.content
    assert "\\ud8" not in r.text.lower() and "\\udc" not in r.text.lower()
    r.json()
    if r.status_code == 200 and path != "/risk/pause":
        assert r.json()["result"] in ("halted", "already halted", "released",
                                      "nothing to release")


def test_after_refused_and_accepted_commands_the_state_survives_a_restart_as_it_was(
    risk: RiskProcess,
) -> None:
    for i in range(30):
        reason = ["drill", "a\u0000b", "\ud800"][i % 3]
        answer = post_raw(risk, "/risk/halt", json.dumps(
            {"request_id": f"f{i}", "halted_by": "x", "reason": reason}).encode())
        assert answer.status_code == (200 if i % 3 == 0 else 422)
    before = risk.state()
    assert risk.stop() == 0
    risk.start()
    after = risk.state()
    assert {k: after[k] for k in ("state", "halt_reason", "manual_paused")} == {
        k: before[k] for k in ("state", "halt_reason", "manual_paused")}
    assert after["state"] == "HALTED" and after["halt_reason"] == "drill"
    assert fetch(risk, "SELECT count(*) AS n FROM halts")[0]["n"] == 1
    assert fetch(risk, "SELECT count(*) AS n FROM admin_requests")[0]["n"] == 10


@pytest.mark.parametrize("content", [b"Infinity", b"-Infinity", b"NaN", b'{"paused": Infinity}'])
def test_a_body_of_non_finite_numbers_gets_a_422_that_json_can_carry(
    risk: RiskProcess, content: bytes,
) -> None:
    for path in ("/risk/halt", "/risk/release", "/risk/pause"):
        r = post_raw(risk, path, content)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert isinstance(r.json()["detail"], list)

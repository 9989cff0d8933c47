"""The audit trail: what is recorded (tokens, admin changes, invoke decisions), the hash chain,
`bradax audit verify` naming the first broken entry, concurrent writers, and what is never kept.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import orjson
import pytest

from bradax_cli.routes import REPO_ROOT
from common import audit, deps
from common.audit import AuditEvent
from common.db import Database
from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, create_tenant, env_for, ledger_rows, login

MESSAGES = [{"role": "user", "content": "Explique seguros de vida"}]
# A word no code path would produce on its own: if it is stored anywhere, a prompt was.
PROMPT_WORD = "zanzibarquokka"


async def sql(settings: Settings, query: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of a query, straight from PostgreSQL."""
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        return [dict(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def chain(settings: Settings) -> list[dict[str, Any]]:
    """The audit rows, oldest first."""
    return await sql(
        settings,
        "SELECT id, event, outcome, project_id, actor, request_id, reason, details "
        "FROM audit_log ORDER BY id",
    )


async def verify(settings: Settings) -> audit.Verdict:
    """common.audit.verify over the test database."""
    db = Database(settings)
    try:
        return await audit.verify(db)
    finally:
        await db.close()


async def append(settings: Settings, events: list[AuditEvent]) -> None:
    """Append events in one transaction of a fresh connection."""
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        async with conn.transaction():
            await audit.append(conn, events)
    finally:
        await conn.close()


def events(count: int, prefix: str = "test") -> list[AuditEvent]:
    """`count` distinct events."""
    return [
        AuditEvent(f"{prefix}.event", "allowed", "proj_a", "cli", f"req_{i}", None, {"n": i})
        for i in range(count)
    ]


def bradax_verify(settings: Settings) -> subprocess.CompletedProcess[str]:
    """`python -m bradax_cli.cli audit verify` as a child process against the test services."""
    return subprocess.run(
        [sys.executable, "-m", "bradax_cli.cli", "audit", "verify"],
        env=env_for(settings),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def invoke(http: httpx2.AsyncClient, tenant: Tenant, **body: Any) -> httpx2.Response:
    """POST /api/v1/llm/invoke (gpt-4.1-nano, 5 tokens) with overrides."""
    payload = {"model": "gpt-4.1-nano", "messages": MESSAGES, "parameters": {"max_tokens": 5}}
    payload.update(body)
    return await http.post("/api/v1/llm/invoke", json=payload, headers=tenant.auth)


# -- the chain itself ------------------------------------------------------------------------


async def test_empty_chain_verifies(settings: Settings) -> None:
    """An empty audit log is a valid chain of zero entries with no head."""
    assert await verify(settings) == audit.Verdict(True, 0, None, None)


async def test_rows_link_by_hash(settings: Settings) -> None:
    """Each row's hash is sha256(previous hash || canonical row); the first links to zeros."""
    await append(settings, events(2))
    await append(settings, events(1, "later"))
    rows = await sql(settings, "SELECT * FROM audit_log ORDER BY id")
    assert [r["id"] for r in rows] == [1, 2, 3]
    prev = audit.GENESIS
    for row in rows:
        assert bytes(row["prev_hash"]) == prev
        micros = (row["occurred_at"] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
            microseconds=1
        )
        values = [row[c] for c in ("event", "outcome", "project_id", "actor", "request_id")]
        values += [row["reason"], row["details"]]
        prev = audit.chain_hash(prev, row["id"], micros, values)
        assert bytes(row["hash"]) == prev
    assert rows[0]["details"] == '{"n":0}'
    verdict = await verify(settings)
    assert verdict == audit.Verdict(True, 3, 3, prev.hex())


async def test_a_stalled_writer_cannot_hold_the_chain_for_good(settings: Settings) -> None:
    """The chain's lock serialises every writer: a writer that stops mid-transaction, its
    connection open (a frozen process), is ended by PostgreSQL once idle for 30 s, not held
    forever; the bound is its transaction's only."""
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        async with conn.transaction():
            assert await audit.append(conn, events(1)) == 1
            bound = await conn.fetchval("SHOW idle_in_transaction_session_timeout")
        after = await conn.fetchval("SHOW idle_in_transaction_session_timeout")
        # and it does end such a writer: the same bound, shortened, on a stalled transaction
        stalled = conn.transaction()
        await stalled.start()
        await conn.execute("SET LOCAL idle_in_transaction_session_timeout = '200ms'")
        await audit.append(conn, events(1, "stalled"))  # sets its own 30 s: shorten it again
        await conn.execute("SET LOCAL idle_in_transaction_session_timeout = '200ms'")
        await asyncio.sleep(0.6)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    assert (bound, after) == ("30s", "0")
    await asyncio.wait_for(append(settings, events(1, "next")), 5)  # the lock is free again
    rows = await sql(settings, "SELECT event FROM audit_log ORDER BY id")
    # the stalled writer's entry went with its transaction
    assert [r["event"] for r in rows] == ["test.event", "next.event"]


async def test_verify_walks_in_batches(settings: Settings) -> None:
    """A chain longer than one verification batch verifies, and a break past it is found."""
    await append(settings, events(25))
    db = Database(settings)
    try:
        assert (await audit.verify(db, batch=7)).checked == 25
        await sql(settings, "UPDATE audit_log SET actor = 'mallory' WHERE id = 17")
        verdict = await audit.verify(db, batch=7)
    finally:
        await db.close()
    assert (verdict.ok, verdict.broken_id, verdict.checked) == (False, 17, 16)


@pytest.mark.parametrize(
    ("tamper", "broken", "reason"),
    [
        ("UPDATE audit_log SET reason = 'forged' WHERE id = 3", 3, "content"),
        ("UPDATE audit_log SET details = '{\"n\": 2}' WHERE id = 3", 3, "content"),
        (
            "UPDATE audit_log SET occurred_at = occurred_at + interval '1 us' WHERE id = 3",
            3,
            "content",
        ),
        ("UPDATE audit_log SET outcome = 'denied' WHERE id = 5", 5, "content"),
        ("UPDATE audit_log SET hash = sha256(hash) WHERE id = 3", 3, "content"),
        ("UPDATE audit_log SET prev_hash = sha256(prev_hash) WHERE id = 3", 3, "link"),
        ("DELETE FROM audit_log WHERE id = 3", 4, "missing"),
        ("DELETE FROM audit_log WHERE id IN (2, 3)", 4, "missing"),
        ("DELETE FROM audit_log WHERE id = 1", 2, "missing"),
        ("UPDATE audit_log SET id = 9 WHERE id = 5", 9, "missing"),
    ],
    ids=[
        "reason",
        "details",
        "time",
        "outcome",
        "hash",
        "prev-hash",
        "delete-middle",
        "delete-two",
        "delete-first",
        "renumber-last",
    ],
)
async def test_verify_names_the_first_tampered_entry(
    settings: Settings, tamper: str, broken: int, reason: str
) -> None:
    """A modified, relinked, renumbered or deleted row is found, named by id, with what broke."""
    await append(settings, events(5))
    assert (await verify(settings)).ok
    await sql(settings, tamper)
    verdict = await verify(settings)
    assert not verdict.ok
    assert verdict.broken_id == broken
    assert reason in (verdict.reason or "")


async def test_the_cli_verifies_and_names_the_broken_entry(settings: Settings) -> None:
    """`bradax audit verify` prints the head when intact and exits 1 naming a modified row."""
    await append(settings, events(4))
    head = (await verify(settings)).head_hash
    good = bradax_verify(settings)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) == {"ok": True, "entries": 4, "head_id": 4, "head_hash": head}

    await sql(settings, "UPDATE audit_log SET reason = 'nothing to see' WHERE id = 2")
    bad = bradax_verify(settings)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.strip() == (
        "bradax: error: audit chain broken at entry 2: row content does not match its hash "
        "(1 entries verified before it)"
    )

    await sql(settings, "UPDATE audit_log SET reason = NULL WHERE id = 2")
    await sql(settings, "DELETE FROM audit_log WHERE id = 3")
    gap = bradax_verify(settings)
    assert gap.returncode == 1
    assert "broken at entry 4: rows 3..3 are missing (deleted)" in gap.stderr


async def test_concurrent_writers_keep_one_chain(settings: Settings, tmp_path: Path) -> None:
    """Appends from 12 asyncio tasks and 2 other processes at once still form one valid chain."""
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            import asyncpg
            from common import audit, deps
            from common.audit import AuditEvent

            async def main(dsn, name):
                conn = await asyncpg.connect(dsn)
                for i in range(15):
                    async with conn.transaction():
                        await audit.append(
                            conn, [AuditEvent("proc.event", "allowed", "p", name, f"{name}-{i}")]
                        )
                await conn.close()

            asyncio.run(main(sys.argv[1], sys.argv[2]))
            """
        )
    )
    dsn = settings.database_url.get_secret_value()
    procs = [
        subprocess.Popen([sys.executable, str(script), dsn, f"proc{n}"], cwd=REPO_ROOT)
        for n in range(2)
    ]

    async def writer(task: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for batch in range(5):
                async with conn.transaction():
                    await audit.append(conn, events(2, f"task{task}.{batch}"))
        finally:
            await conn.close()

    await asyncio.gather(*(writer(n) for n in range(12)))
    for proc in procs:
        assert await asyncio.to_thread(proc.wait, 60) == 0
    verdict = await verify(settings)
    assert (verdict.ok, verdict.checked, verdict.head_id) == (True, 150, 150)
    counts = await sql(settings, "SELECT actor, count(*) AS n FROM audit_log GROUP BY actor")
    assert {r["actor"]: r["n"] for r in counts} == {"cli": 120, "proc0": 15, "proc1": 15}


async def test_nul_characters_are_stored_and_verified(settings: Settings) -> None:
    """A NUL in client-supplied text (PostgreSQL refuses it) is replaced, and the chain holds."""
    await append(settings, [AuditEvent("x", "denied", "p\x00q", reason="a\x00b")])
    rows = await chain(settings)
    assert (rows[0]["project_id"], rows[0]["reason"]) == ("p\ufffdq", "a\ufffdb")
    assert (await verify(settings)).ok


def test_stream_encoding_round_trips() -> None:
    """An event survives the Redis stream encoding with its time to the microsecond."""
    event = AuditEvent(
        "invoke",
        "denied",
        "proj_a",
        "key:k1",
        "req_1",
        "rate_limited",
        {"status": 429},
        datetime(2025, 7, 27, 15, 45, 0, 123456, tzinfo=UTC),
    )
    as_read = {name.encode(): value for name, value in event.to_stream().items()}  # as Redis gives
    assert AuditEvent.from_stream(as_read) == event


# -- what is recorded ------------------------------------------------------------------------


async def test_every_kind_of_event_lands_in_one_verifiable_chain(
    broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Token issue/refresh/revoke, project and key changes, invoke allowed and denied: one chain."""
    from bradax_cli import cli

    http, settings = broker
    for name, value in env_for(settings).items():
        monkeypatch.setenv(name, value)

    def bradax(*argv: str) -> None:
        # The CLI runs its own event loop: keep it off this test's loop.
        assert cli.main(list(argv)) == 0

    await asyncio.to_thread(
        bradax, "project", "create", "--id", "proj_audit", "--name", "Audit",
        "--budget-usd", "10", "--models", "gpt-4.1-nano", "--compliance", "lgpd",
    )  # fmt: skip
    await asyncio.to_thread(bradax, "project", "update", "--id", "proj_audit", "--team", "ml")
    await asyncio.to_thread(bradax, "key", "create", "--project", "proj_audit")
    tenant = await create_tenant(settings, "proj_audit_2", allowed_models=("gpt-4.1-nano",))
    tenant = await login(http, tenant)
    pair = (
        await http.post(
            "/api/v1/auth/token",
            json={"project_id": tenant.project_id, "api_key": tenant.api_key},
        )
    ).json()
    refreshed = await http.post(
        "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
    )
    assert refreshed.status_code == 200
    revoked = await http.post(
        "/api/v1/auth/revoke", json={"refresh_token": refreshed.json()["refresh_token"]}
    )
    assert revoked.status_code == 200
    ok = await invoke(http, tenant)
    assert ok.status_code == 200
    denied = await invoke(http, tenant, model="gpt-4.1-mini")
    assert denied.status_code == 403
    await ledger_rows(settings)  # the drainer appends invoke decisions

    rows = await chain(settings)
    # The CLI appends directly; request paths queue their events for the drainer, which
    # appends each batch (invoke decisions beside their ledger rows) in the order it reads.
    assert [(r["event"], r["outcome"]) for r in rows[:4]] == [
        ("project.create", "allowed"),
        ("key.create", "allowed"),
        ("project.update", "allowed"),
        ("key.create", "allowed"),
    ]
    queued = [(r["event"], r["outcome"]) for r in rows[4:]]
    assert [e for e in queued if e[0].startswith("token.")] == [
        ("token.issue", "allowed"),
        ("token.issue", "allowed"),
        ("token.refresh", "allowed"),
        ("token.revoke", "allowed"),
    ]
    assert sorted(e for e in queued if e[0] == "invoke") == [
        ("invoke", "allowed"),
        ("invoke", "denied"),
    ]
    decisions = {r["outcome"]: r["request_id"] for r in rows if r["event"] == "invoke"}
    assert decisions == {
        "allowed": ok.headers["x-request-id"],
        "denied": denied.headers["x-request-id"],
    }
    verdict = await verify(settings)
    assert (verdict.ok, verdict.checked) == (True, 10)


async def test_invoke_decisions_say_why(broker: Any, mock: MockUpstream) -> None:
    """Allowed calls carry outcome and usage; denials name the reason, key and HTTP status."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings, "proj_dec"))
    limited = await login(http, await create_tenant(settings, "proj_lim", max_requests_per_hour=1))
    broke = await login(http, await create_tenant(settings, "proj_broke", budget_monthly_usd="0"))
    replies = [
        await invoke(http, tenant),
        await invoke(http, tenant, model="gpt-4.1"),
        await invoke(http, limited),
        await invoke(http, limited),
        await invoke(http, broke),
        await invoke(http, tenant, parameters={"max_tokens": 99_999}),
    ]
    assert [r.status_code for r in replies] == [200, 403, 200, 429, 402, 400]
    bad_token = await http.post(
        "/api/v1/llm/invoke",
        json={"model": "gpt-4.1-nano", "messages": MESSAGES},
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert bad_token.status_code == 401
    await ledger_rows(settings)

    rows = {r["request_id"]: r for r in await chain(settings) if r["event"] == "invoke"}
    seen = [
        (rows[r.headers["x-request-id"]]["outcome"], rows[r.headers["x-request-id"]]["reason"])
        for r in [*replies, bad_token]
    ]
    assert seen == [
        ("allowed", "success"),
        ("denied", "model_not_allowed"),
        ("allowed", "success"),
        ("denied", "rate_limited"),
        ("denied", "budget_exceeded"),
        ("denied", "max_tokens_exceeded"),
        ("denied", "invalid_token"),
    ]
    first = rows[replies[0].headers["x-request-id"]]
    assert (first["project_id"], first["actor"]) == ("proj_dec", f"key:{tenant.key_id}")
    assert json.loads(first["details"]) == {
        "model": "gpt-4.1-nano",
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "cost_usd": "0.0000031",
        "cached": False,
        "streamed": False,
    }
    rate = rows[replies[3].headers["x-request-id"]]
    assert (rate["project_id"], json.loads(rate["details"])) == ("proj_lim", {"status": 429})
    anonymous = rows[bad_token.headers["x-request-id"]]
    assert (anonymous["project_id"], anonymous["actor"]) == (None, None)
    assert len(rows) == 7
    assert (await verify(settings)).ok


async def test_an_admitted_call_that_fails_upstream_is_one_allowed_row(
    broker: Any, mock: MockUpstream
) -> None:
    """A call admitted and then failed by the upstream is audited once, as allowed."""
    http, settings = broker
    tenant = await login(http, await create_tenant(settings, "proj_up"))
    mock.enqueue({"status": 500})
    reply = await invoke(http, tenant)
    assert reply.status_code == 502
    await ledger_rows(settings)
    rows = [r for r in await chain(settings) if r["event"] == "invoke"]
    assert [(r["outcome"], r["reason"]) for r in rows] == [("allowed", "upstream_error")]


async def test_disabled_audit_writes_nothing(broker: Any, configure: Any) -> None:
    """With AUDIT_LOGGING_ENABLED=false no token, invoke or denial leaves an audit row."""
    http, settings = broker
    await deps.aclose()
    current = configure(
        openai_api_key="mock-key",
        openai_base_url=settings.openai_base_url,
        audit_logging_enabled=False,
    )
    tenant = await login(http, await create_tenant(current))
    assert (await invoke(http, tenant)).status_code == 200
    assert (await invoke(http, tenant, model="gpt-4.1")).status_code == 403
    wrong = await http.post(
        "/api/v1/auth/token", json={"project_id": tenant.project_id, "api_key": "bx_x_y"}
    )
    assert wrong.status_code == 401
    ledger = await ledger_rows(current)
    assert [r["status"] for r in ledger] == ["success"]
    assert await chain(current) == []


async def test_no_prompt_or_secret_is_stored(broker: Any, mock: MockUpstream) -> None:
    """Ledger and audit rows hold ids and figures: never the prompt, the answer, a key or token."""
    http, settings = broker
    tenant = await login(
        http,
        await create_tenant(
            settings, "proj_lgpd", compliance_rules=("lgpd", "pii_detection"), cache_enabled=True
        ),
    )
    prompt = [{"role": "user", "content": f"Explique {PROMPT_WORD} seguros"}]
    replies = [
        await invoke(http, tenant, messages=prompt),
        await invoke(http, tenant, messages=prompt, model="gpt-4.1"),
        await invoke(http, tenant, messages=[{"role": "user", "content": f"{PROMPT_WORD} a@b.co"}]),
        await invoke(http, tenant, messages=[{"role": PROMPT_WORD, "content": "x"}]),
        await invoke(http, tenant, messages=prompt, parameters={"temperature": 0}),
    ]
    mock.enqueue({"status": 500})
    replies.append(await invoke(http, tenant, messages=prompt))
    assert [r.status_code for r in replies] == [200, 403, 422, 400, 200, 502]
    await ledger_rows(settings)
    answer = replies[0].json()["choices"][0]["message"]["content"]
    assert answer == "w0 w1 w2 w3 w4"
    for table in ("usage_ledger", "audit_log"):
        dump = await sql(
            settings, f"SELECT coalesce(string_agg(t::text, '|'), '') AS d FROM {table} t"
        )
        text = dump[0]["d"]
        assert text, table
        for secret in (PROMPT_WORD, "Explique", answer, tenant.access_token, tenant.api_key):
            assert secret not in text, (table, secret)
    assert orjson.dumps(mock.stats()["last_messages"]).count(PROMPT_WORD.encode()) == 1


async def test_token_requests_never_wait_on_the_chain_lock(broker: Any) -> None:
    """With the chain's lock held elsewhere, token issue and refresh still answer at once;
    their events are appended once the lock is free, and the chain verifies."""
    http, settings = broker
    tenant = await create_tenant(settings, "proj_lock")
    holder = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", audit.LOCK_KEY)
        issued = await asyncio.wait_for(
            http.post(
                "/api/v1/auth/token",
                json={"project_id": tenant.project_id, "api_key": tenant.api_key},
            ),
            timeout=5,
        )
        assert issued.status_code == 200
        refreshed = await asyncio.wait_for(
            http.post(
                "/api/v1/auth/refresh", json={"refresh_token": issued.json()["refresh_token"]}
            ),
            timeout=5,
        )
        assert refreshed.status_code == 200
        assert await holder.fetchval("SELECT count(*) FROM audit_log") == 0
    finally:
        await holder.execute("SELECT pg_advisory_unlock($1)", audit.LOCK_KEY)
        await holder.close()
    await ledger_rows(settings)
    rows = await chain(settings)
    assert [(r["event"], r["project_id"]) for r in rows] == [
        ("token.issue", "proj_lock"),
        ("token.refresh", "proj_lock"),
    ]
    assert (await verify(settings)).ok

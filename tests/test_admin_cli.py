"""Tests of the admin CLI (`bradax project ...`, `bradax key ...`) on real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx2
import pytest
import redis as sync_redis
from conftest import env_for, free_port, with_database

from bradax_cli import cli
from bradax_cli.routes import REPO_ROOT
from common import keyspace
from common.settings import Settings

PROJECT = "proj_inovacao_ia_chatbot"
CREATE = [
    "project", "create", "--id", PROJECT, "--name", "Chatbot Atendimento",
    "--division", "inovacao", "--team", "ia", "--budget-usd", "1000", "--max-tokens", "4096",
    "--max-requests-per-hour", "100", "--models", "gpt-4.1-nano,gpt-4.1-mini",
    "--compliance", "lgpd,pii_detection",
]  # fmt: skip


@dataclass
class Result:
    """What one `bradax` invocation did."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout as JSON."""
        return json.loads(self.out)


@pytest.fixture
def bradax(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    """Run `bradax ARGS` in-process with the test services in its environment."""
    for name, value in env_for(settings).items():
        monkeypatch.setenv(name, value)

    def run(*argv: str, **env: str) -> Result:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def created(bradax: Any) -> Any:
    """The issue's example project, created through the CLI; its JSON output."""
    result = bradax(*CREATE)
    assert result.code == 0, result.err
    return result.json()


def sql(settings: Settings, query: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of a query, straight from PostgreSQL."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(settings.database_url.get_secret_value())
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def redis_db(settings: Settings) -> Iterator[sync_redis.Redis]:
    """A plain Redis client on the test database."""
    client = sync_redis.Redis.from_url(settings.redis_url.get_secret_value())
    yield client
    client.close()


def one_error_line(result: Result) -> str:
    """The single stderr line of a failed command (asserting there is exactly one)."""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert result.out == ""
    return lines[0]


# -- the flow ----------------------------------------------------------------------


def test_project_create_as_a_subprocess(settings: Settings) -> None:
    """`python -m bradax_cli.cli project create ...` prints the project and its key as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "bradax_cli.cli", *CREATE],
        env=env_for(settings),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    project = body["project"]
    assert {k: project[k] for k in project if k not in ("created_at", "updated_at")} == {
        "id": PROJECT,
        "name": "Chatbot Atendimento",
        "division": "inovacao",
        "team": "ia",
        "budget_monthly_usd": "1000.0000",
        "max_tokens_per_request": 4096,
        "max_requests_per_hour": 100,
        "max_requests_per_second": 10,
        "allowed_models": ["gpt-4.1-nano", "gpt-4.1-mini"],
        "compliance_rules": ["lgpd", "pii_detection"],
        "pii_action": "block",
        "output_pii_action": None,
        "output_pii_action_effective": "redact",
        "cache_enabled": False,
        "status": "active",
    }
    key = body["api_key"]
    assert key["key"].startswith(f"bx_{key['key_id']}_")
    assert (key["project_id"], key["status"], key["name"]) == (PROJECT, "active", "initial")
    assert key["scopes"] == ["invoke_llm", "read_metrics"]


def test_python_m_errors_are_one_line(settings: Settings) -> None:
    """Under `python -m`, a validation error is still one line and exit 1 (no traceback)."""
    done = subprocess.run(
        [sys.executable, "-m", "bradax_cli.cli", *CREATE[:6], "--compliance", "gdpr"],
        env=env_for(settings),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == (
        "bradax: error: --compliance: unknown compliance rule(s) gdpr; known: lgpd, pii_detection\n"
    )


def test_only_a_hash_of_the_key_is_stored(created: Any, settings: Settings) -> None:
    """api_keys holds SHA-256 of the secret; the secret and full key appear nowhere in it."""
    full = created["api_key"]["key"]
    secret = full.split("_", 2)[2]
    rows = sql(settings, "SELECT t::text AS row, secret_hash FROM api_keys t")
    assert len(rows) == 1
    assert bytes(rows[0]["secret_hash"]) == hashlib.sha256(secret.encode()).digest()
    assert secret not in rows[0]["row"]
    dump = sql(settings, "SELECT string_agg(t::text, '|') AS all FROM audit_log t")[0]["all"]
    assert secret not in dump


def test_key_is_shown_only_when_created(created: Any, bradax: Any) -> None:
    """show and list never print a key's secret."""
    secret = created["api_key"]["key"].split("_", 2)[2]
    shown = bradax("project", "show", "--id", PROJECT)
    listed = bradax("key", "list", "--project", PROJECT)
    assert (shown.code, listed.code) == (0, 0)
    assert secret not in shown.out
    assert secret not in listed.out
    assert [k["key_id"] for k in listed.json()["keys"]] == [created["api_key"]["key_id"]]
    assert "key" not in listed.json()["keys"][0]


async def test_created_key_logs_in(
    client: httpx2.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key printed by `project create` buys tokens at POST /api/v1/auth/token."""
    for name, value in env_for(settings).items():
        monkeypatch.setenv(name, value)
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()

    def create() -> int:
        with redirect_stdout(out):
            return cli.main(CREATE)

    assert await asyncio.to_thread(create) == 0
    key = json.loads(out.getvalue())["api_key"]["key"]
    response = await client.post("/api/v1/auth/token", json={"project_id": PROJECT, "api_key": key})
    assert response.status_code == 200
    assert response.json()["scopes"] == ["invoke_llm", "read_metrics"]


# -- projects ------------------------------------------------------------------------------


def test_project_list_and_show(created: Any, bradax: Any) -> None:
    """list gives every project by id; show gives one with its keys."""
    assert bradax("project", "create", "--id", "proj_a_first", "--name", "A").code == 0
    listed = bradax("project", "list")
    assert listed.code == 0
    assert [p["id"] for p in listed.json()["projects"]] == ["proj_a_first", PROJECT]
    shown = bradax("project", "show", "--id", PROJECT).json()
    assert shown["project"]["name"] == "Chatbot Atendimento"
    assert [k["key_id"] for k in shown["keys"]] == [created["api_key"]["key_id"]]


def test_project_update_changes_only_given_fields(created: Any, bradax: Any) -> None:
    """update changes the fields passed and keeps the rest."""
    result = bradax(
        "project", "update", "--id", PROJECT, "--budget-usd", "250.50",
        "--models", "gpt-4.1-nano", "--pii-action", "redact", "--cache",
    )  # fmt: skip
    assert result.code == 0, result.err
    project = result.json()["project"]
    assert project["budget_monthly_usd"] == "250.5000"
    assert project["allowed_models"] == ["gpt-4.1-nano"]
    assert project["pii_action"] == "redact"
    assert project["cache_enabled"] is True
    assert project["name"] == "Chatbot Atendimento"
    assert project["max_requests_per_hour"] == 100


def test_project_output_pii_action_is_set_and_shown(created: Any, bradax: Any) -> None:
    """--output-pii-action sets what is done with PII in answers; show reports it and its effect."""
    result = bradax("project", "update", "--id", PROJECT, "--output-pii-action", "block")
    assert result.code == 0, result.err
    project = result.json()["project"]
    assert (project["output_pii_action"], project["output_pii_action_effective"]) == (
        "block",
        "block",
    )
    shown = bradax("project", "show", "--id", PROJECT).json()["project"]
    assert shown["output_pii_action"] == "block"
    off = bradax("project", "update", "--id", PROJECT, "--output-pii-action", "off").json()
    assert off["project"]["output_pii_action_effective"] == "off"
    bad = bradax("project", "update", "--id", PROJECT, "--output-pii-action", "mask")
    assert bad.code != 0


def test_suspend_and_resume(created: Any, bradax: Any, redis_db: sync_redis.Redis) -> None:
    """suspend marks the project and sets its deny-list entry; resume undoes both."""
    suspended = bradax("project", "suspend", "--id", PROJECT)
    assert suspended.code == 0
    assert suspended.json()["project"]["status"] == "suspended"
    assert suspended.json()["effective_immediately"] is True
    assert redis_db.get(f"bx:deny:proj:{{{PROJECT}}}") == b"1"
    resumed = bradax("project", "resume", "--id", PROJECT)
    assert resumed.json()["project"]["status"] == "active"
    assert resumed.json()["effective_immediately"] is True
    assert redis_db.exists(f"bx:deny:proj:{{{PROJECT}}}") == 0


def test_suspend_without_redis_warns(created: Any, bradax: Any, settings: Settings) -> None:
    """With Redis unreachable, suspend still suspends in PostgreSQL and says what that means."""
    result = bradax("project", "suspend", "--id", PROJECT, REDIS_URL="redis://127.0.0.1:1/0")
    assert result.code == 0
    assert result.json()["effective_immediately"] is False
    assert result.err == (
        "bradax: warning: Redis unreachable; live access tokens are refused after the policy "
        "cache expires (POLICY_CACHE_SECONDS=0) instead of at once\n"
    )
    rows = sql(settings, "SELECT status FROM projects WHERE id = $1", PROJECT)
    assert rows[0]["status"] == "suspended"


def test_resume_without_redis_warns(created: Any, bradax: Any) -> None:
    """With Redis unreachable, resume warns that the project stays blocked."""
    assert bradax("project", "suspend", "--id", PROJECT).code == 0
    result = bradax("project", "resume", "--id", PROJECT, REDIS_URL="redis://127.0.0.1:1/0")
    assert result.code == 0
    assert result.json()["effective_immediately"] is False
    assert "the project stays blocked until `bradax project resume` succeeds" in result.err


# -- keys ----------------------------------------------------------------------------------


def test_key_create_with_fewer_scopes(created: Any, bradax: Any) -> None:
    """key create makes a named key with the scopes asked for, shown once."""
    result = bradax(
        "key", "create", "--project", PROJECT, "--scopes", "read_metrics", "--name", "grafana"
    )
    assert result.code == 0, result.err
    key = result.json()["api_key"]
    assert key["scopes"] == ["read_metrics"]
    assert key["name"] == "grafana"
    assert key["key"].startswith(f"bx_{key['key_id']}_")
    listed = bradax("key", "list", "--project", PROJECT).json()["keys"]
    assert sorted(k["key_id"] for k in listed) == sorted(
        [key["key_id"], created["api_key"]["key_id"]]
    )


def test_key_revoke(created: Any, bradax: Any, redis_db: sync_redis.Redis) -> None:
    """revoke marks the key and denies its live tokens for as long as one can live."""
    key_id = created["api_key"]["key_id"]
    result = bradax("key", "revoke", "--key-id", key_id)
    assert result.code == 0
    body = result.json()
    assert body["api_key"]["status"] == "revoked"
    assert body["api_key"]["revoked_at"] is not None
    assert body["effective_immediately"] is True
    assert redis_db.get(keyspace.deny_key(PROJECT, key_id)) == b"1"
    assert 15 * 60 < redis_db.ttl(keyspace.deny_key(PROJECT, key_id)) <= 15 * 60 + 30 + 60


def test_key_revoke_without_redis_warns(created: Any, bradax: Any, settings: Settings) -> None:
    """With Redis unreachable, revoke still revokes and warns that live tokens run to expiry."""
    key_id = created["api_key"]["key_id"]
    result = bradax("key", "revoke", "--key-id", key_id, REDIS_URL="redis://127.0.0.1:1/0")
    assert result.code == 0
    assert result.json()["effective_immediately"] is False
    assert "live access tokens of this key stay valid until they expire (up to 15 min)" in (
        result.err
    )
    rows = sql(settings, "SELECT status FROM api_keys WHERE key_id = $1", key_id)
    assert rows[0]["status"] == "revoked"


def test_key_rotate_with_grace(created: Any, bradax: Any) -> None:
    """rotate prints a new key and keeps the old one until the grace ends."""
    old_id = created["api_key"]["key_id"]
    before = datetime.now(UTC)
    result = bradax("key", "rotate", "--key-id", old_id, "--grace-minutes", "30")
    assert result.code == 0, result.err
    body = result.json()
    new = body["api_key"]
    assert new["key"].startswith(f"bx_{new['key_id']}_")
    assert new["scopes"] == created["api_key"]["scopes"]
    previous = body["previous"]
    assert previous["key_id"] == old_id
    assert previous["replaced_by"] == new["key_id"]
    assert previous["status"] == "active"
    ends = datetime.fromisoformat(previous["expires_at"])
    assert before + timedelta(minutes=30) <= ends <= datetime.now(UTC) + timedelta(minutes=30)
    again = bradax("key", "rotate", "--key-id", old_id)
    assert again.code == 1
    assert one_error_line(again) == (
        f"bradax: error: key {old_id} was already rotated (replaced by {new['key_id']})"
    )


def test_admin_changes_are_audited(created: Any, bradax: Any, settings: Settings) -> None:
    """Every admin change is an audit row by `cli`, and the chain verifies."""
    key_id = created["api_key"]["key_id"]
    for argv in (
        ("project", "update", "--id", PROJECT, "--team", "ml"),
        ("project", "suspend", "--id", PROJECT),
        ("project", "resume", "--id", PROJECT),
        ("key", "create", "--project", PROJECT),
        ("key", "rotate", "--key-id", key_id, "--grace-minutes", "0"),
        ("key", "revoke", "--key-id", key_id),
    ):
        assert bradax(*argv).code == 0
    rows = sql(settings, "SELECT event, outcome, actor, project_id FROM audit_log ORDER BY id")
    assert [r["event"] for r in rows] == [
        "project.create",
        "key.create",
        "project.update",
        "project.suspend",
        "project.resume",
        "key.create",
        "key.rotate",
        "key.revoke",
    ]
    assert {(r["outcome"], r["actor"], r["project_id"]) for r in rows} == {
        ("allowed", "cli", PROJECT)
    }
    verified = bradax("audit", "verify")
    assert verified.code == 0
    assert verified.json()["ok"] is True
    assert verified.json()["entries"] == 8


# -- help and errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["project"],
        ["project", "create"],
        ["project", "list"],
        ["project", "show"],
        ["project", "update"],
        ["project", "suspend"],
        ["project", "resume"],
        ["key"],
        ["key", "create"],
        ["key", "list"],
        ["key", "revoke"],
        ["key", "rotate"],
        ["audit", "verify"],
    ],
    ids=" ".join,
)
def test_every_command_has_help(bradax: Any, command: list[str]) -> None:
    """--help prints the command's usage and exits 0."""
    result = bradax(*command, "--help")
    assert result.code == 0
    assert result.out.startswith(f"usage: bradax {' '.join(command)}")
    assert result.err == ""


def test_create_options_are_documented(bradax: Any) -> None:
    """project create --help describes each option it takes."""
    out = bradax("project", "create", "--help").out
    for option in ("--budget-usd", "--max-tokens", "--models", "--compliance", "--scopes"):
        assert option in out


@pytest.mark.parametrize(
    ("argv", "code", "line"),
    [
        (
            CREATE,
            1,
            f"bradax: error: project {PROJECT} already exists",
        ),
        (
            ["project", "show", "--id", "proj_unknown"],
            1,
            "bradax: error: project proj_unknown does not exist",
        ),
        (
            ["project", "update", "--id", "proj_unknown", "--team", "x"],
            1,
            "bradax: error: project proj_unknown does not exist",
        ),
        (
            ["project", "suspend", "--id", "proj_unknown"],
            1,
            "bradax: error: project proj_unknown does not exist",
        ),
        (
            ["key", "create", "--project", "proj_unknown"],
            1,
            "bradax: error: project proj_unknown does not exist",
        ),
        (
            ["key", "list", "--project", "proj_unknown"],
            1,
            "bradax: error: project proj_unknown does not exist",
        ),
        (
            ["key", "revoke", "--key-id", "0000000000000000"],
            1,
            "bradax: error: key 0000000000000000 does not exist",
        ),
        (
            ["key", "rotate", "--key-id", "0000000000000000"],
            1,
            "bradax: error: key 0000000000000000 does not exist",
        ),
        (
            ["project", "create", "--id", "p", "--name", "x"],
            1,
            "bradax: error: project id must be 3-128 characters of letters, digits, '_', '.', '-'",
        ),
        (
            ["project", "create", "--id", "proj_new", "--name", "x", "--budget-usd", "abc"],
            2,
            "bradax project create: error: argument --budget-usd: not an amount: 'abc' "
            "(see --help)",
        ),
        (
            ["project", "create", "--id", "proj_new", "--name", "x", "--budget-usd", "-5"],
            2,
            "bradax project create: error: argument --budget-usd: must be a non-negative amount "
            "(see --help)",
        ),
        (
            ["project", "create", "--id", "proj_new", "--name", "x", "--budget-usd", "1e20"],
            1,
            "bradax: error: --budget-usd: Decimal input should have no more than 14 digits "
            "in total",
        ),
        (
            ["project", "create", "--id", "proj_new", "--name", "x", "--compliance", "gdpr"],
            1,
            "bradax: error: --compliance: unknown compliance rule(s) gdpr; "
            "known: lgpd, pii_detection",
        ),
        (
            ["project", "create", "--id", "proj_new", "--name", "x", "--max-tokens", "0"],
            2,
            "bradax project create: error: argument --max-tokens: must be between 1 and "
            "10000000 (see --help)",
        ),
        (
            [
                "project",
                "create",
                "--id",
                "proj_new",
                "--name",
                "x",
                "--max-requests-per-hour",
                "99999999999",
            ],
            2,
            "bradax project create: error: argument --max-requests-per-hour: must be between 0 "
            "and 2147483647 (see --help)",
        ),
        (
            ["project", "create", "--id", "proj_new", "--name", ""],
            1,
            "bradax: error: --name: String should have at least 1 character",
        ),
        (
            ["project", "create", "--id", "proj_new"],
            2,
            "bradax project create: error: the following arguments are required: --name "
            "(see --help)",
        ),
        (
            ["key", "create", "--project", PROJECT, "--scopes", ""],
            2,
            "bradax key create: error: argument --scopes: must be a non-empty, comma separated "
            "subset of invoke_llm,read_metrics (see --help)",
        ),
        (
            ["key", "create", "--project", PROJECT, "--scopes", "admin"],
            2,
            "bradax key create: error: argument --scopes: must be a non-empty, comma separated "
            "subset of invoke_llm,read_metrics (see --help)",
        ),
        (
            ["key", "rotate", "--key-id", "0000000000000000", "--grace-minutes", "-1"],
            2,
            "bradax key rotate: error: argument --grace-minutes: must be between 0 and 43200 "
            "(see --help)",
        ),
        (
            ["key", "revoke", "--key-id", "bx_0000000000000000_" + "S3cret" * 8],
            2,
            "bradax key revoke: error: argument --key-id: that is a whole API key (a secret): "
            "pass only its id, the 16 hex digits after bx_ (see --help)",
        ),
        (
            ["key", "revoke", "--key-id", "x"],
            2,
            "bradax key revoke: error: argument --key-id: expected a key id: 16 hex digits, "
            "as `bradax key list` shows (see --help)",
        ),
        (
            [*CREATE[:-4], "--models", "gpt-4.1-nano,gpt-9000"],
            1,
            "bradax: error: --models: not served by this broker: gpt-9000 (served: gpt-4.1, "
            "gpt-4.1-mini, gpt-4.1-nano, gpt-4o, gpt-4o-mini, o3, o3-mini, o4-mini, "
            "text-embedding-3-large, text-embedding-3-small; add others with "
            "MODEL_ROUTES/MODEL_PRICES)",
        ),
        (
            ["project"],
            2,
            "bradax project: error: the following arguments are required: ACTION (see --help)",
        ),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    created: Any, bradax: Any, argv: list[str], code: int, line: str
) -> None:
    """Each mistake exits non-zero with exactly one clear line on stderr."""
    result = bradax(*argv)
    assert result.code == code
    assert one_error_line(result) == line


def test_revoked_key_cannot_be_rotated(created: Any, bradax: Any) -> None:
    """rotate of a revoked key is refused with one line."""
    key_id = created["api_key"]["key_id"]
    assert bradax("key", "revoke", "--key-id", key_id).code == 0
    result = bradax("key", "rotate", "--key-id", key_id)
    assert result.code == 1
    assert one_error_line(result) == (
        f"bradax: error: key {key_id} is revoked or expired and cannot be rotated"
    )


def test_failed_create_leaves_nothing_behind(bradax: Any, settings: Settings) -> None:
    """A refused create writes no project, no key and no audit row."""
    assert bradax(*CREATE[:6], "--compliance", "gdpr").code == 1
    assert bradax("project", "create", "--id", "p", "--name", "x").code == 1
    for table in ("projects", "api_keys", "audit_log"):
        assert sql(settings, f"SELECT count(*) AS n FROM {table}")[0]["n"] == 0


def test_unreachable_database_is_one_line(bradax: Any, settings: Settings) -> None:
    """A DATABASE_URL naming a missing database is one line, exit 1, no traceback."""
    missing = with_database(settings.database_url.get_secret_value(), "no_such_db")
    result = bradax("project", "list", DATABASE_URL=missing)
    assert result.code == 1
    assert (
        one_error_line(result)
        == 'bradax: error: database error: database "no_such_db" does not exist'
    )


def test_admin_commands_use_the_running_dev_instance(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: Any
) -> None:
    """With DATABASE_URL unset, an admin command in a `bradax dev` directory uses the servers
    that instance recorded in dev.json; a dev.json whose process died is one clear line."""
    from bradax_cli import devstate

    for name, value in env_for(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / ".bradax"
    data.mkdir()
    devstate.write(
        data,
        {
            "database_url": settings.database_url.get_secret_value(),
            "redis_url": settings.redis_url.get_secret_value(),
        },
    )
    assert cli.main([*CREATE]) == 0
    capsys.readouterr()
    assert cli.main(["project", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["id"] for p in listed["projects"]] == [PROJECT]

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    state = json.loads((data / "dev.json").read_text())
    (data / "dev.json").write_text(json.dumps({**state, "pid": int(dead.stdout)}))
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.delenv("REDIS_URL")
    assert cli.main(["project", "list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("bradax: error: ")
    assert "that is not running: start `bradax dev` here again" in err[0]


def test_mock_command_serves_and_has_help() -> None:
    """`bradax mock-openai --help` prints the mock's options; `--port N` serves on N."""
    helped = subprocess.run(
        [sys.executable, "-m", "bradax_cli.cli", "mock-openai", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert helped.returncode == 0, helped.stderr
    assert "--latency-ms" in helped.stdout
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bradax_cli.cli", "mock-openai", "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert (
            proc.stdout.readline()
            .decode()
            .startswith(f"mock-openai listening on http://127.0.0.1:{port}/v1")
        )
        models = httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
        assert models.status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_migrate_on_a_missing_database_is_one_line(bradax: Any, settings: Settings) -> None:
    """`bradax migrate` against a database that does not exist: one line, exit 1."""
    missing = with_database(settings.database_url.get_secret_value(), "no_such_db")
    result = bradax("migrate", DATABASE_URL=missing)
    assert result.code == 1
    line = one_error_line(result)
    assert line.startswith("bradax: error: cannot connect to postgresql://")
    assert line.endswith('database "no_such_db" does not exist')

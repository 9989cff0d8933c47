"""Tests of the auth_token function: API key in, JWT pair out; refresh, revoke, brute force, audit.

Access tokens are then presented at GET /metrics, which verifies them with common.auth (the
one verification every function uses), so revocation and suspension are checked end to end.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx2
import jwt
import pytest
from conftest import JWT_SECRET, env_for, ledger_rows, make_settings, serve_function
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bradax_cli import cli
from bradax_cli.routes import REPO_ROOT
from common import deps
from common.apikeys import ApiKeyStore
from common.db import Database
from common.projects import ProjectFields, ProjectStore
from common.scopes import ALL_SCOPES
from common.settings import Settings
from common.tokens import TokenService

TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/refresh"
REVOKE = "/api/v1/auth/revoke"
JWKS = "/.well-known/jwks.json"
PROJECT = "proj_inovacao_ia_chatbot"
INVALID = {"code": "invalid_credentials", "message": "invalid project_id or api_key"}


@dataclass(frozen=True)
class Creds:
    """A project and one of its API keys."""

    project_id: str
    key: str
    key_id: str


async def _make_project(settings: Settings, project_id: str, scopes: Any = ALL_SCOPES) -> Creds:
    db = Database(settings)
    try:
        await ProjectStore(db).create(
            project_id, ProjectFields(name="Chatbot", budget_monthly_usd=1)
        )
        key, full = await ApiKeyStore(db).create(project_id, scopes=tuple(scopes))
    finally:
        await db.close()
    return Creds(project_id, full, key.key_id)


@pytest.fixture
async def creds(settings: Settings) -> Creds:
    """An active project with a key granting every scope."""
    return await _make_project(settings, PROJECT)


@pytest.fixture
def admin(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run a `bradax` admin command in-process (as an operator would); returns its JSON."""
    for name, value in env_for(settings).items():
        monkeypatch.setenv(name, value)

    async def run(*argv: str) -> Any:
        from contextlib import redirect_stdout
        from io import StringIO

        out = StringIO()

        def call() -> int:
            with redirect_stdout(out):
                return cli.main(list(argv))

        assert await asyncio.to_thread(call) == 0
        return json.loads(out.getvalue())

    return run


async def _sql(settings: Settings, query: str, *args: Any) -> Any:
    if "audit_log" in query:
        await ledger_rows(settings)  # token events reach the chain through the audit stream
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def login(client: httpx2.AsyncClient, creds: Creds, **headers: str) -> httpx2.Response:
    return await client.post(
        TOKEN, json={"project_id": creds.project_id, "api_key": creds.key}, headers=headers
    )


async def tokens(client: httpx2.AsyncClient, creds: Creds) -> dict[str, Any]:
    response = await login(client, creds)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def metrics(client: httpx2.AsyncClient, token: str) -> httpx2.Response:
    return await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})


def error(response: httpx2.Response) -> dict[str, Any]:
    """The error object without its request id (checked to be the response's own)."""
    body = response.json()
    assert set(body) == {"error"}
    found: dict[str, Any] = dict(body["error"])
    assert found.pop("request_id") == response.headers["x-request-id"]
    return found


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": "bradax",
        "aud": "bradax-broker",
        "sub": PROJECT,
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": "jti-forged",
        "scope": "invoke_llm read_metrics",
        "typ": "access",
        "fam": "fam-forged",
        "key": "0123456789abcdef",
    }
    payload.update(overrides)
    return payload


# -- issuing -------------------------------------------------------------------------------


async def test_login_returns_an_access_and_refresh_pair(
    client: httpx2.AsyncClient, creds: Creds
) -> None:
    """A valid key gets access + refresh tokens, 900 s, Bearer, both scopes, never cached."""
    response = await login(client, creds)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {
        "access_token", "refresh_token", "expires_in", "refresh_expires_in", "token_type", "scopes"
    }  # fmt: skip
    assert body["expires_in"] == 900
    assert body["refresh_expires_in"] == 7 * 86400
    assert body["token_type"] == "Bearer"
    assert body["scopes"] == ["invoke_llm", "read_metrics"]
    claims = jwt.decode(
        body["access_token"], JWT_SECRET, algorithms=["HS256"], audience="bradax-broker"
    )
    assert claims["sub"] == PROJECT
    assert claims["iss"] == "bradax"
    assert claims["typ"] == "access"
    assert claims["key"] == creds.key_id
    assert claims["exp"] - claims["iat"] == 900
    assert claims["nbf"] == claims["iat"]
    refresh = jwt.decode(
        body["refresh_token"], JWT_SECRET, algorithms=["HS256"], audience="bradax-broker"
    )
    assert refresh["typ"] == "refresh"
    assert refresh["fam"] == claims["fam"]
    assert refresh["jti"] != claims["jti"]


async def test_access_token_reads_its_project_metrics(
    client: httpx2.AsyncClient, creds: Creds
) -> None:
    """The access token is accepted by GET /metrics for its own project."""
    response = await metrics(client, (await tokens(client, creds))["access_token"])
    assert response.status_code == 200, response.text
    assert response.json()["project_id"] == PROJECT


async def test_expires_in_follows_the_setting(
    client: httpx2.AsyncClient, creds: Creds, configure: Any
) -> None:
    """expires_in is JWT_ACCESS_TOKEN_EXPIRE_MINUTES in seconds."""
    configure(jwt_access_token_expire_minutes=5)
    body = await tokens(client, creds)
    claims = jwt.decode(
        body["access_token"], JWT_SECRET, algorithms=["HS256"], audience="bradax-broker"
    )
    assert body["expires_in"] == 300
    assert claims["exp"] - claims["iat"] == 300


async def test_key_limited_to_fewer_scopes(client: httpx2.AsyncClient, settings: Settings) -> None:
    """A key limited to invoke_llm yields tokens with that scope only, refused at /metrics (403)."""
    creds = await _make_project(settings, "proj_invoke_only", scopes=("invoke_llm",))
    body = await tokens(client, creds)
    assert body["scopes"] == ["invoke_llm"]
    response = await metrics(client, body["access_token"])
    assert response.status_code == 403
    assert error(response) == {
        "code": "insufficient_scope",
        "message": "token lacks the 'read_metrics' scope",
    }


async def test_last_use_of_the_key_is_recorded(
    client: httpx2.AsyncClient, creds: Creds, settings: Settings
) -> None:
    """A login stamps the key's last_used_at."""
    await tokens(client, creds)
    rows = await _sql(settings, "SELECT last_used_at FROM api_keys WHERE key_id = $1", creds.key_id)
    assert rows[0]["last_used_at"] is not None


# -- refused logins ------------------------------------------------------------------------


async def test_unknown_project_and_wrong_key_get_the_same_answer(
    client: httpx2.AsyncClient, creds: Creds, settings: Settings
) -> None:
    """Unknown project, wrong secret or key id, malformed or another project's key: one 401."""
    other = await _make_project(settings, "proj_other")
    key_id = creds.key.split("_")[1]
    attempts = [
        {"project_id": "proj_does_not_exist", "api_key": creds.key},
        {"project_id": PROJECT, "api_key": f"bx_{key_id}_{'A' * 43}"},
        {"project_id": PROJECT, "api_key": f"bx_{'0' * 16}_{'A' * 43}"},
        {"project_id": PROJECT, "api_key": "hunter2"},
        {"project_id": PROJECT, "api_key": other.key},
    ]
    for attempt in attempts:
        response = await client.post(TOKEN, json=attempt)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="bradax"'
        assert error(response) == INVALID


async def test_suspended_project_gets_no_tokens(
    client: httpx2.AsyncClient, creds: Creds, admin: Any
) -> None:
    """After `project suspend`, a login with the right key is 403 project_suspended."""
    await admin("project", "suspend", "--id", PROJECT)
    response = await login(client, creds)
    assert response.status_code == 403
    assert error(response) == {
        "code": "project_suspended",
        "message": f"project {PROJECT} is suspended",
    }


@pytest.mark.parametrize(
    ("content", "content_type", "status", "expected"),
    [
        (b'{"project_id": "p", ', "application/json", 400, "request body is not valid JSON"),
        (b"", "application/json", 400, "request body is empty; a JSON object is required"),
        (b"{}", "application/json", 400, "project_id: Field required"),
        (b'{"project_id": "proj_x"}', "application/json", 400, "api_key: Field required"),
        (
            b'{"project_id": 123, "api_key": "k"}',
            "application/json",
            400,
            "project_id: Input should be a valid string",
        ),
        (
            b'{"project_id": "proj_x", "api_key": null}',
            "application/json",
            400,
            "api_key: Input should be a valid string",
        ),
        (
            b'{"project_id": "proj_x", "api_key": ["k"]}',
            "application/json",
            400,
            "api_key: Input should be a valid string",
        ),
        (
            b'{"project_id": "", "api_key": "k"}',
            "application/json",
            400,
            "project_id: String should have at least 1 character",
        ),
        (
            b'{"project_id": "proj_x", "api_key": "k", "scope": "admin"}',
            "application/json",
            400,
            "scope: Extra inputs are not permitted",
        ),
        (b'["proj_x", "k"]', "application/json", 400, "Input should be an object"),
        (
            b'{"project_id": "proj\\u0000x", "api_key": "k"}',
            "application/json",
            400,
            "project_id: must be 3-128 characters of letters, digits, '_', '.', '-'",
        ),
        (
            b'{"project_id": "../../etc", "api_key": "k"}',
            "application/json",
            400,
            "project_id: must be 3-128 characters of letters, digits, '_', '.', '-'",
        ),
        (b"project_id=proj_x", "application/x-www-form-urlencoded", 415, None),
    ],
)
async def test_bad_bodies_get_a_clear_4xx(
    client: httpx2.AsyncClient,
    content: bytes,
    content_type: str,
    status: int,
    expected: str | None,
) -> None:
    """Malformed JSON, missing fields, wrong types, unknown fields, not JSON: a JSON 4xx error."""
    response = await client.post(TOKEN, content=content, headers={"Content-Type": content_type})
    assert response.status_code == status
    found = error(response)
    if expected is not None:
        assert found == {"code": "invalid_request", "message": expected}
    else:
        assert found == {
            "code": "unsupported_media_type",
            "message": "Content-Type must be application/json",
        }


async def test_oversized_body_is_413(client: httpx2.AsyncClient, settings: Settings) -> None:
    """A body over MAX_BODY_BYTES is refused with 413, declared or streamed."""
    big = b'{"project_id": "p", "api_key": "' + b"k" * settings.max_body_bytes + b'"}'
    response = await client.post(TOKEN, content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert error(response) == {
        "code": "payload_too_large",
        "message": f"request body exceeds {settings.max_body_bytes} bytes",
    }

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * (settings.max_body_bytes // 2)

    streamed = await client.post(
        TOKEN, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413


async def test_overlong_key_is_400(client: httpx2.AsyncClient) -> None:
    """An api_key longer than 512 characters is refused before any lookup."""
    response = await client.post(TOKEN, json={"project_id": PROJECT, "api_key": "k" * 513})
    assert response.status_code == 400
    assert error(response) == {
        "code": "invalid_request",
        "message": "api_key: String should have at most 512 characters",
    }


async def test_wrong_method_is_405(client: httpx2.AsyncClient) -> None:
    """GET on the token route is 405 naming the allowed method."""
    response = await client.get(TOKEN)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert error(response) == {
        "code": "method_not_allowed",
        "message": f"GET is not allowed on {TOKEN}",
    }


async def test_store_outage_fails_closed(
    client: httpx2.AsyncClient, creds: Creds, database_url: str
) -> None:
    """With Redis unreachable no token is issued: 503 with Retry-After, never 200 or 500."""
    deps.configure(make_settings(database_url, "redis://127.0.0.1:1/0", redis_timeout=0.5))
    response = await login(client, creds)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert error(response) == {
        "code": "service_unavailable",
        "message": "governance store (redis) unavailable",
    }


# -- refresh and revoke --------------------------------------------------------------------


async def test_refresh_rotates_the_pair(client: httpx2.AsyncClient, creds: Creds) -> None:
    """A refresh token buys a new pair in the same family; the new access token works."""
    first = await tokens(client, creds)
    response = await client.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    second = response.json()
    assert second["expires_in"] == 900
    assert second["scopes"] == ["invoke_llm", "read_metrics"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    old = jwt.decode(first["refresh_token"], options={"verify_signature": False})
    new = jwt.decode(second["refresh_token"], options={"verify_signature": False})
    assert new["fam"] == old["fam"]
    assert (await metrics(client, second["access_token"])).status_code == 200


async def test_reused_refresh_token_revokes_the_family(
    client: httpx2.AsyncClient, creds: Creds, settings: Settings
) -> None:
    """Presenting a consumed refresh token revokes every token of its family, at once."""
    first = await tokens(client, creds)
    second = (await client.post(REFRESH, json={"refresh_token": first["refresh_token"]})).json()
    other = await tokens(client, creds)  # another login: another family, unaffected

    reuse = await client.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401
    assert error(reuse) == {
        "code": "refresh_token_reused",
        "message": "refresh token was already used; the session has been revoked",
    }
    stolen = await client.post(REFRESH, json={"refresh_token": second["refresh_token"]})
    assert stolen.status_code == 401
    assert error(stolen) == {"code": "revoked", "message": "refresh token has been revoked"}
    live = await metrics(client, second["access_token"])
    assert live.status_code == 401
    assert error(live) == {"code": "revoked", "message": "token has been revoked"}
    assert (await metrics(client, other["access_token"])).status_code == 200
    rows = await _sql(
        settings, "SELECT outcome, reason FROM audit_log WHERE event = 'token.refresh' ORDER BY id"
    )
    assert [(r["outcome"], r["reason"]) for r in rows] == [
        ("allowed", None),
        ("denied", "refresh token reuse detected; token family revoked"),
        ("denied", "refresh_token_reused"),
        ("denied", "revoked"),
    ]


async def test_token_refreshed_after_family_revocation_is_refused(
    client: httpx2.AsyncClient, creds: Creds, settings: Settings
) -> None:
    """A token minted into a family after it was revoked (a refresh racing the reuse) is refused."""
    first = await tokens(client, creds)
    second = (await client.post(REFRESH, json={"refresh_token": first["refresh_token"]})).json()
    await client.post(REFRESH, json={"refresh_token": first["refresh_token"]})  # reuse
    # Simulate the racing refresh: its new row was written after the family was revoked.
    jti = jwt.decode(second["refresh_token"], options={"verify_signature": False})["jti"]
    await _sql(settings, "UPDATE refresh_tokens SET revoked_at = NULL WHERE jti = $1", jti)
    response = await client.post(REFRESH, json={"refresh_token": second["refresh_token"]})
    assert response.status_code == 401
    assert error(response) == {"code": "revoked", "message": "refresh token has been revoked"}


async def test_revoke_ends_a_refresh_session(client: httpx2.AsyncClient, creds: Creds) -> None:
    """Revoking a refresh token refuses it and the family's live access tokens."""
    pair = await tokens(client, creds)
    response = await client.post(REVOKE, json={"refresh_token": pair["refresh_token"]})
    assert response.status_code == 200
    assert response.json() == {"revoked": True}
    refused = await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
    assert refused.status_code == 401
    assert error(refused) == {"code": "revoked", "message": "refresh token has been revoked"}
    live = await metrics(client, pair["access_token"])
    assert live.status_code == 401
    assert error(live) == {"code": "revoked", "message": "token has been revoked"}


async def test_revoke_one_access_token(client: httpx2.AsyncClient, creds: Creds) -> None:
    """Revoking an access token refuses it at once and leaves other sessions alone."""
    pair = await tokens(client, creds)
    other = await tokens(client, creds)
    response = await client.post(REVOKE, json={"token": pair["access_token"]})
    assert response.status_code == 200
    live = await metrics(client, pair["access_token"])
    assert live.status_code == 401
    assert error(live) == {"code": "revoked", "message": "token has been revoked"}
    assert (await metrics(client, other["access_token"])).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (
            {},
            400,
            {"code": "invalid_request", "message": "give exactly one of refresh_token or token"},
        ),
        (
            {"refresh_token": "a", "token": "b"},
            400,
            {"code": "invalid_request", "message": "give exactly one of refresh_token or token"},
        ),
        (
            {"refresh_token": "not-a-jwt"},
            401,
            {"code": "invalid_token", "message": "malformed token"},
        ),
    ],
)
async def test_revoke_bad_input(
    client: httpx2.AsyncClient, body: dict[str, str], status: int, expected: dict[str, str]
) -> None:
    """Revoke needs exactly one token, and a real one."""
    response = await client.post(REVOKE, json=body)
    assert response.status_code == status
    assert error(response) == expected


async def test_access_token_cannot_refresh(client: httpx2.AsyncClient, creds: Creds) -> None:
    """An access token presented as a refresh token is 401."""
    pair = await tokens(client, creds)
    response = await client.post(REFRESH, json={"refresh_token": pair["access_token"]})
    assert response.status_code == 401
    assert error(response) == {
        "code": "invalid_token",
        "message": "an access token cannot be used as refresh",
    }


async def test_refresh_token_is_not_an_access_token(
    client: httpx2.AsyncClient, creds: Creds
) -> None:
    """A refresh token presented as a Bearer access token is 401."""
    pair = await tokens(client, creds)
    response = await metrics(client, pair["refresh_token"])
    assert response.status_code == 401
    assert error(response) == {
        "code": "invalid_token",
        "message": "a refresh token cannot be used as access",
    }


async def test_expired_refresh_token_is_refused(
    client: httpx2.AsyncClient, creds: Creds, settings: Settings
) -> None:
    """A refresh token past its expiry is 401 token has expired."""
    stale = TokenService(settings).issue(
        project_id=PROJECT,
        key_id=creds.key_id,
        scopes=ALL_SCOPES,
        token_type="refresh",
        family="f",
        now=int(time.time()) - 8 * 86400,
    )
    response = await client.post(REFRESH, json={"refresh_token": stale.token})
    assert response.status_code == 401
    assert error(response) == {"code": "invalid_token", "message": "token has expired"}


async def test_unknown_refresh_token_is_refused(
    client: httpx2.AsyncClient, creds: Creds, settings: Settings
) -> None:
    """A validly signed refresh token that was never issued (no row) is 401."""
    ghost = TokenService(settings).issue(
        project_id=PROJECT,
        key_id=creds.key_id,
        scopes=ALL_SCOPES,
        token_type="refresh",
        family="f",
        now=int(time.time()),
    )
    response = await client.post(REFRESH, json={"refresh_token": ghost.token})
    assert response.status_code == 401
    assert error(response) == {"code": "invalid_token", "message": "unknown refresh token"}


# -- access token verification (common.auth at GET /metrics) -------------------------------


def _hs(payload: dict[str, Any], key: str = JWT_SECRET, **header: Any) -> str:
    return jwt.encode(payload, key, algorithm="HS256", headers={"kid": "k1", **header})


def _issued(settings: Settings, now: int) -> str:
    return (
        TokenService(settings)
        .issue(
            project_id=PROJECT,
            key_id="0123456789abcdef",
            scopes=ALL_SCOPES,
            token_type="access",
            family="f",
            now=now,
        )
        .token
    )


def _tampered(settings: Settings) -> str:
    head, payload, sig = _issued(settings, int(time.time())).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "proj_someone_else"
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


BAD_TOKENS: list[tuple[str, Any, str]] = [
    ("expired", lambda s: _issued(s, int(time.time()) - 900 - 31), "token has expired"),
    ("not yet valid", lambda s: _issued(s, int(time.time()) + 120), "token is not valid yet"),
    ("tampered", _tampered, "invalid token"),
    (
        "alg none",
        lambda s: jwt.encode(_claims(), None, algorithm="none", headers={"kid": "k1"}),
        "token algorithm is not accepted",
    ),
    ("wrong audience", lambda s: _hs(_claims(aud="other")), "token audience is not accepted"),
    ("wrong issuer", lambda s: _hs(_claims(iss="evil")), "token issuer is not accepted"),
    ("other secret", lambda s: _hs(_claims(), key="z" * 40), "invalid token"),
    ("unknown kid", lambda s: _hs(_claims(), kid="k7"), "token signed with an unknown key"),
    ("garbage", lambda s: "abc.def.ghi", "malformed token"),
]


@pytest.mark.parametrize(("case", "make", "message"), BAD_TOKENS, ids=[b[0] for b in BAD_TOKENS])
async def test_bad_access_tokens_are_401(
    client: httpx2.AsyncClient, settings: Settings, case: str, make: Any, message: str
) -> None:
    """Expired, not-yet-valid, tampered, alg=none, wrong aud/iss/key: 401 invalid_token."""
    response = await metrics(client, make(settings))
    assert response.status_code == 401, case
    assert response.headers["www-authenticate"] == 'Bearer realm="bradax"'
    assert error(response) == {"code": "invalid_token", "message": message}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Authorization header (expected: Bearer <token>)"),
        ("Basic dXNlcjpwYXNz", "malformed Authorization header (expected: Bearer <token>)"),
        ("Bearer", "malformed Authorization header (expected: Bearer <token>)"),
        ("Bearer a b", "malformed Authorization header (expected: Bearer <token>)"),
        ("Bearer " + "a" * 8193, "credential is too long"),
    ],
)
async def test_bad_authorization_headers_are_401(
    client: httpx2.AsyncClient, header: str | None, message: str
) -> None:
    """A missing or malformed Authorization header is 401 with WWW-Authenticate."""
    headers = {"Authorization": header} if header is not None else {}
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="bradax"'
    assert error(response) == {"code": "invalid_token", "message": message}


def _pem(key: Any, private: bool) -> str:
    if private:
        raw = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        raw = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return raw.decode()


async def test_rs256_tokens_verify_through_jwks(
    client: httpx2.AsyncClient, creds: Creds, configure: Any
) -> None:
    """With RS256, JWKS serves the public key; tokens verify offline and HS256 forgeries fail."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    configure(jwt_algorithm="RS256", jwt_private_key=_pem(key, True), jwt_key_id="rk1")
    jwks = await client.get(JWKS)
    assert jwks.status_code == 200
    assert jwks.headers["cache-control"] == "public, max-age=300"
    served = jwks.json()["keys"]
    assert [(k["kid"], k["kty"], k["alg"]) for k in served] == [("rk1", "RSA", "RS256")]
    assert "d" not in served[0]
    pair = await tokens(client, creds)
    payload = jwt.decode(
        pair["access_token"], jwt.PyJWK(served[0]), algorithms=["RS256"], audience="bradax-broker"
    )
    assert payload["sub"] == PROJECT
    assert (await metrics(client, pair["access_token"])).status_code == 200

    # Algorithm confusion: HS256 keyed with the public PEM that anyone can fetch.
    public_pem = _pem(key, False).encode()
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"rk1","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(_claims()).encode()).rstrip(b"=")
    mac = hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()
    forged = b".".join((header, body, base64.urlsafe_b64encode(mac).rstrip(b"="))).decode()
    response = await metrics(client, forged)
    assert response.status_code == 401
    assert error(response) == {
        "code": "invalid_token",
        "message": "token algorithm is not accepted",
    }


async def test_rs256_token_refused_when_hs256_is_configured(
    client: httpx2.AsyncClient, settings: Settings
) -> None:
    """With HS256 configured, an RS256 token is refused and JWKS publishes nothing."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k1"})
    response = await metrics(client, token)
    assert response.status_code == 401
    assert error(response) == {
        "code": "invalid_token",
        "message": "token algorithm is not accepted",
    }
    assert (await client.get(JWKS)).json() == {"keys": []}


# -- brute force ---------------------------------------------------------------------------


async def test_failed_attempts_per_ip_are_limited(
    client: httpx2.AsyncClient, creds: Creds, configure: Any
) -> None:
    """After AUTH_FAILURES_PER_IP failures, the next attempt is 429 even with the right key."""
    configure(auth_failures_per_ip=3)
    wrong = {"project_id": PROJECT, "api_key": "bx_0000000000000000_" + "A" * 43}
    for _ in range(3):
        assert (await client.post(TOKEN, json=wrong)).status_code == 401
    response = await login(client, creds)
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 900
    assert error(response) == {
        "code": "too_many_failed_attempts",
        "message": "too many failed authentication attempts; try again later",
        "limit_name": "failed_auth_per_ip",
    }
    refresh = await client.post(REFRESH, json={"refresh_token": "x"})
    assert refresh.status_code == 429


async def test_failed_refreshes_count_towards_the_ip_limit(
    client: httpx2.AsyncClient, creds: Creds, configure: Any
) -> None:
    """Bad refresh tokens count as failures of the client IP."""
    configure(auth_failures_per_ip=2)
    for _ in range(2):
        assert (await client.post(REFRESH, json={"refresh_token": "x.y.z"})).status_code == 401
    assert (await login(client, creds)).status_code == 429


async def test_failed_attempts_per_project_are_limited_per_client_ip(
    client: httpx2.AsyncClient, creds: Creds, configure: Any, settings: Settings
) -> None:
    """AUTH_FAILURES_PER_PROJECT failures lock that project out for the IP that sent them only:
    guesses sent from elsewhere never lock the project's real key out."""
    configure(
        auth_failures_per_ip=100, auth_failures_per_project=2, trusted_proxies=("10.0.0.0/8",)
    )
    other = await _make_project(settings, "proj_other")
    wrong = {"project_id": PROJECT, "api_key": "bx_0000000000000000_" + "A" * 43}
    attacker = {"X-Forwarded-For": "203.0.113.1"}
    for _ in range(2):
        assert (await client.post(TOKEN, json=wrong, headers=attacker)).status_code == 401
    locked = await client.post(TOKEN, json=wrong, headers=attacker)
    assert locked.status_code == 429
    assert error(locked)["code"] == "too_many_failed_attempts"
    assert (await login(client, creds, **attacker)).status_code == 429  # right key, same IP
    assert (await login(client, other, **attacker)).status_code == 200  # another project
    assert (await login(client, creds, **{"X-Forwarded-For": "198.51.100.7"})).status_code == 200


async def test_concurrent_guesses_cannot_pass_the_limit(
    client: httpx2.AsyncClient, creds: Creds, configure: Any
) -> None:
    """Attempts are counted before verification: 40 concurrent wrong keys under a limit of 20
    get exactly 20 verdicts (401) and 20 refusals (429)."""
    configure(auth_failures_per_ip=20, auth_failures_per_project=1000)
    wrong = {"project_id": PROJECT, "api_key": "bx_0000000000000000_" + "A" * 43}
    answers = await asyncio.gather(*(client.post(TOKEN, json=wrong) for _ in range(40)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [401] * 20 + [429] * 20


async def test_successful_logins_do_not_count_as_failures(
    client: httpx2.AsyncClient, creds: Creds, configure: Any
) -> None:
    """A verified credential gives its attempt back: many logins never exhaust the failure
    limit, and the failures that follow are counted from zero."""
    configure(auth_failures_per_ip=3)
    for _ in range(6):
        assert (await login(client, creds)).status_code == 200
    wrong = {"project_id": PROJECT, "api_key": "bx_0000000000000000_" + "A" * 43}
    statuses = [(await client.post(TOKEN, json=wrong)).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


async def test_login_rate_per_ip(client: httpx2.AsyncClient, creds: Creds, configure: Any) -> None:
    """RATE_LIMIT_AUTH_PER_MINUTE caps token requests per IP, successful ones included."""
    configure(rate_limit_auth_per_minute=2)
    assert (await login(client, creds)).status_code == 200
    assert (await login(client, creds)).status_code == 200
    response = await login(client, creds)
    assert response.status_code == 429
    assert error(response)["code"] == "rate_limited"
    assert response.headers["x-ratelimit-limit"] == "2"


# -- audit ---------------------------------------------------------------------------------


async def test_every_attempt_is_audited_without_secrets(
    client: httpx2.AsyncClient, creds: Creds, settings: Settings, configure: Any
) -> None:
    """Logins, refreshes, revokes and refusals are audit rows naming ids, never keys or tokens."""
    configure(auth_failures_per_ip=2)
    wrong_key = creds.key[:-4] + "AAAA"
    pair = await tokens(client, creds)
    refreshed = (await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})).json()
    await client.post(REVOKE, json={"refresh_token": refreshed["refresh_token"]})
    await client.post(TOKEN, json={"project_id": PROJECT, "api_key": wrong_key})
    await client.post(TOKEN, json={"project_id": "proj_nope", "api_key": creds.key})
    await login(client, creds)  # the third attempt: locked out

    rows = await _sql(
        settings,
        "SELECT event, outcome, project_id, actor, reason, request_id, details "
        "FROM audit_log ORDER BY id",
    )
    seen = [(r["event"], r["outcome"], r["project_id"], r["reason"]) for r in rows]
    assert seen == [
        ("token.issue", "allowed", PROJECT, None),
        ("token.refresh", "allowed", PROJECT, None),
        ("token.revoke", "allowed", PROJECT, "refresh"),
        ("token.issue", "denied", PROJECT, "invalid_credentials"),
        ("token.issue", "denied", "proj_nope", "invalid_credentials"),
        ("token.issue", "denied", PROJECT, "too_many_failed_attempts"),
    ]
    assert {r["actor"] for r in rows} == {"ip:10.1.2.3"}
    assert all(r["request_id"].startswith("req_") for r in rows)
    assert json.loads(rows[0]["details"])["key_id"] == creds.key_id

    dump = (await _sql(settings, "SELECT string_agg(t::text, '|') AS all FROM audit_log t"))[0]
    secret = creds.key.split("_", 2)[2]
    for value in (
        secret,
        wrong_key.split("_", 2)[2],
        pair["access_token"],
        pair["refresh_token"],
        refreshed["access_token"],
        refreshed["refresh_token"],
    ):
        assert value not in dump["all"]


# -- suspension, key revocation, rotation (through the CLI) --------------------------------


async def test_suspension_stops_live_tokens_at_once(
    client: httpx2.AsyncClient, creds: Creds, admin: Any
) -> None:
    """`project suspend` refuses live access tokens, logins and refreshes; resume restores all."""
    pair = await tokens(client, creds)
    assert (await metrics(client, pair["access_token"])).status_code == 200

    result = await admin("project", "suspend", "--id", PROJECT)
    assert result["effective_immediately"] is True
    live = await metrics(client, pair["access_token"])
    assert live.status_code == 401
    assert error(live) == {"code": "revoked", "message": "project is suspended"}
    assert (await login(client, creds)).status_code == 403
    refused = await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
    assert refused.status_code == 403
    assert error(refused)["code"] == "project_suspended"

    await admin("project", "resume", "--id", PROJECT)
    assert (await metrics(client, pair["access_token"])).status_code == 200
    assert (await login(client, creds)).status_code == 200
    resumed = await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
    assert resumed.status_code == 200, resumed.text


async def test_key_revocation_stops_live_tokens_at_once(
    client: httpx2.AsyncClient, creds: Creds, admin: Any, settings: Settings
) -> None:
    """`key revoke` refuses the key's live access tokens, its refreshes and new logins."""
    pair = await tokens(client, creds)
    second = await admin("key", "create", "--project", PROJECT)
    other = Creds(PROJECT, second["api_key"]["key"], second["api_key"]["key_id"])
    other_pair = await tokens(client, other)

    result = await admin("key", "revoke", "--key-id", creds.key_id)
    assert result["effective_immediately"] is True
    live = await metrics(client, pair["access_token"])
    assert live.status_code == 401
    assert error(live) == {"code": "revoked", "message": "credential has been revoked"}
    refused = await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
    assert refused.status_code == 401
    assert error(refused) == {
        "code": "revoked",
        "message": "the API key behind this session was revoked or has expired",
    }
    login_refused = await login(client, creds)
    assert login_refused.status_code == 401
    assert error(login_refused) == INVALID
    assert (await metrics(client, other_pair["access_token"])).status_code == 200


async def test_rotation_grace_then_refusal(
    client: httpx2.AsyncClient, creds: Creds, admin: Any, settings: Settings
) -> None:
    """After `key rotate --grace-minutes 5`, the old key logs in until the grace ends, then not."""
    rotated = await admin("key", "rotate", "--key-id", creds.key_id, "--grace-minutes", "5")
    new = Creds(PROJECT, rotated["api_key"]["key"], rotated["api_key"]["key_id"])
    during = await tokens(client, creds)
    assert 290 <= during["expires_in"] <= 300  # never past the end of the grace
    assert (await tokens(client, new))["expires_in"] == 900

    await _sql(
        settings,
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE key_id = $1",
        creds.key_id,
    )
    after = await login(client, creds)
    assert after.status_code == 401
    assert error(after) == INVALID
    refused = await client.post(REFRESH, json={"refresh_token": during["refresh_token"]})
    assert refused.status_code == 401
    assert error(refused)["code"] == "revoked"
    assert (await login(client, new)).status_code == 200


# -- deployment ----------------------------------------------------------------------------


async def test_function_serves_alone(creds: Creds, settings: Settings, tmp_path: Any) -> None:
    """auth_token started alone by functions-framework answers its routes and only those."""
    process = await asyncio.to_thread(serve_function, "auth_token", settings, JWKS, tmp_path)
    try:
        async with httpx2.AsyncClient(base_url=process.url, timeout=10) as http:
            jwks = await http.get(JWKS)
            assert (jwks.status_code, jwks.json()) == (200, {"keys": []})
            response = await http.post(
                TOKEN, json={"project_id": creds.project_id, "api_key": creds.key}
            )
            assert response.status_code == 200, process.output()[-2000:]
            assert response.json()["token_type"] == "Bearer"
            bad = await http.post(TOKEN, content=b"{", headers={"Content-Type": "application/json"})
            assert bad.status_code == 400
            assert bad.json()["error"]["code"] == "invalid_request"
            other = await http.get("/metrics")
            assert other.status_code == 404
            assert other.json()["error"]["code"] == "not_found"
    finally:
        await asyncio.to_thread(process.stop)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JWT_SECRET_KEY": "too-short"}, "JWT_SECRET_KEY: must be at least 32 bytes"),
        ({"JWT_SECRET_KEY": ""}, "JWT_SECRET_KEY: must be at least 32 bytes"),
        (
            {"JWT_ALGORITHM": "RS256", "JWT_PRIVATE_KEY": "not a key"},
            "JWT_PRIVATE_KEY: not a usable RS256 key",
        ),
    ],
)
def test_function_refuses_to_start_with_bad_keys(
    settings: Settings, env: dict[str, str], message: str
) -> None:
    """A short secret or an unusable private key stops the function at start, naming it."""
    environment = env_for(settings, **env)
    script = "import runpy; runpy.run_path('functions/auth_token/main.py')"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

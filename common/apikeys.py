"""Project API keys: `bx_<keyid>_<secret>`, shown once, stored as a SHA-256 hash.

The key id is public (list, revoke, rotate without the secret). Verification is in constant
time and gives the same answer for an unknown project, an unknown key and a wrong secret.
Rotation keeps the old key valid until its grace period ends.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from common.db import Database
from common.errors import BadRequest, NotFound, Unauthorized
from common.scopes import ALL_SCOPES

KEY_PREFIX = "bx"
_KEY = re.compile(r"^bx_([0-9a-f]{16})_([A-Za-z0-9_-]{32,128})$")
# Compared against when the key id is unknown, so every failure costs the same.
_DUMMY_HASH = hashlib.sha256(b"bradax-no-such-key").digest()
INVALID_CREDENTIALS = "invalid project_id or api_key"


def hash_secret(secret: str) -> bytes:
    """SHA-256 of a key's secret part (the key has 256 bits of entropy: no slow hash needed)."""
    return hashlib.sha256(secret.encode()).digest()


def new_key() -> tuple[str, str, str]:
    """A fresh key: (key_id, secret, the full key string)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{KEY_PREFIX}_{key_id}_{secret}"


def parse_key(full: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    match = _KEY.match(full)
    return (match[1], match[2]) if match else None


def looks_like_key(value: str) -> bool:
    """True if the value has the shape of an API key (rather than a JWT)."""
    return value.startswith(f"{KEY_PREFIX}_")


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    key_id: str
    project_id: str
    name: str
    scopes: tuple[str, ...]
    status: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    replaced_by: str | None

    def usable(self, now: datetime) -> bool:
        """Active and not past its (rotation) expiry."""
        return self.status == "active" and (self.expires_at is None or self.expires_at > now)

    def public(self) -> dict[str, Any]:
        """JSON-ready view (never holds the secret)."""
        return {
            "key_id": self.key_id,
            "project_id": self.project_id,
            "name": self.name,
            "scopes": list(self.scopes),
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "replaced_by": self.replaced_by,
        }


_COLUMNS = (
    "key_id, project_id, name, scopes, status, created_at, expires_at, revoked_at, "
    "last_used_at, replaced_by"
)


def _from_row(row: asyncpg.Record | dict[str, Any]) -> ApiKey:
    data = dict(row)
    data["scopes"] = tuple(data["scopes"])
    return ApiKey(**data)


def check_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    """The scopes, validated against the known ones (BadRequest otherwise)."""
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown or not scopes:
        raise BadRequest(f"scopes must be a non-empty subset of {', '.join(ALL_SCOPES)}")
    return tuple(dict.fromkeys(scopes))


class ApiKeyStore:
    """Keys in PostgreSQL: create, list, revoke, rotate, verify."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        project_id: str,
        *,
        scopes: tuple[str, ...] = ALL_SCOPES,
        name: str = "",
        conn: asyncpg.Connection | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for the project: (the stored key, the full key to show once)."""
        scopes = check_scopes(scopes)
        key_id, secret, full = new_key()
        query = (
            "INSERT INTO api_keys (key_id, project_id, name, secret_hash, scopes) "
            f"VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}"
        )
        args = (key_id, project_id, name, hash_secret(secret), list(scopes))
        try:
            if conn is not None:
                row = await conn.fetchrow(query, *args)
            else:
                row = await self._db.fetchrow(query, *args)
        except asyncpg.ForeignKeyViolationError:
            raise NotFound(f"project {project_id} does not exist") from None
        assert row is not None
        return _from_row(row), full

    async def get(self, key_id: str) -> ApiKey | None:
        """The key, or None."""
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = $1", key_id)
        return _from_row(row) if row else None

    async def list(self, project_id: str) -> list[ApiKey]:
        """The project's keys, newest first."""
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE project_id = $1 "
            "ORDER BY created_at DESC, key_id",
            project_id,
        )
        return [_from_row(row) for row in rows]

    async def revoke(self, key_id: str, *, conn: asyncpg.Connection | None = None) -> ApiKey:
        """Revoke now (inside the caller's transaction when `conn` is given); raises NotFound."""
        query = (
            "UPDATE api_keys SET status = 'revoked', revoked_at = coalesce(revoked_at, now()) "
            f"WHERE key_id = $1 RETURNING {_COLUMNS}"
        )
        if conn is not None:
            row = await conn.fetchrow(query, key_id)
        else:
            row = await self._db.fetchrow(query, key_id)
        if row is None:
            raise NotFound(f"key {key_id} does not exist")
        return _from_row(row)

    async def rotate(
        self,
        key_id: str,
        grace: timedelta,
        now: datetime,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key with the old one's scopes; the old one stays valid for `grace`.

        Raises NotFound, or BadRequest for a negative grace or a key that is revoked, expired
        or already rotated (rotating it again could only stretch its grace).
        """
        if grace < timedelta(0):
            raise BadRequest("the grace period cannot be negative")
        if conn is not None:
            async with conn.transaction():
                return await self._rotate(conn, key_id, grace, now)
        async with self._db.connection() as own, own.transaction():
            return await self._rotate(own, key_id, grace, now)

    async def _rotate(
        self, conn: asyncpg.Connection, key_id: str, grace: timedelta, now: datetime
    ) -> tuple[ApiKey, str]:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = $1 FOR UPDATE", key_id
        )
        if row is None:
            raise NotFound(f"key {key_id} does not exist")
        old = _from_row(row)
        if not old.usable(now):
            raise BadRequest(f"key {key_id} is revoked or expired and cannot be rotated")
        if old.replaced_by is not None:
            raise BadRequest(f"key {key_id} was already rotated (replaced by {old.replaced_by})")
        new, full = await self.create(old.project_id, scopes=old.scopes, name=old.name, conn=conn)
        await conn.execute(
            "UPDATE api_keys SET expires_at = $2, replaced_by = $3 WHERE key_id = $1",
            key_id,
            now + grace,
            new.key_id,
        )
        return new, full

    async def verify(self, full_key: str, project_id: str | None, now: datetime) -> ApiKey:
        """The usable key matching `full_key` (and `project_id` when given); else Unauthorized."""
        parsed = parse_key(full_key)
        row = None
        if parsed is not None:
            row = await self._db.fetchrow(
                f"SELECT {_COLUMNS}, secret_hash FROM api_keys WHERE key_id = $1", parsed[0]
            )
        stored_hash = bytes(row["secret_hash"]) if row is not None else _DUMMY_HASH
        presented = hash_secret(parsed[1] if parsed else full_key)
        matches = hmac.compare_digest(stored_hash, presented)
        if row is None or not matches:
            raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")
        data = dict(row)
        data.pop("secret_hash")
        key = _from_row(data)
        if project_id is not None and not hmac.compare_digest(
            key.project_id.encode(), project_id.encode()
        ):
            raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")
        if not key.usable(now):
            raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")
        return key

    async def touch(self, key_id: str) -> None:
        """Record that the key was just used (best effort)."""
        await self._db.execute("UPDATE api_keys SET last_used_at = now() WHERE key_id = $1", key_id)

"""Tests of common.apikeys: keys shown once, stored hashed, verified in constant time, rotated."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from common.apikeys import (
    INVALID_CREDENTIALS,
    ApiKeyStore,
    check_scopes,
    hash_secret,
    looks_like_key,
    new_key,
    parse_key,
)
from common.db import Database
from common.errors import BadRequest, NotFound, Unauthorized
from common.projects import ProjectFields, ProjectStore
from common.settings import Settings

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """A database with two projects, proj_alpha and proj_beta."""
    database = Database(settings)
    projects = ProjectStore(database)
    await projects.create("proj_alpha", ProjectFields(name="Alpha"))
    await projects.create("proj_beta", ProjectFields(name="Beta"))
    yield database
    await database.close()


@pytest.fixture
def store(db: Database) -> ApiKeyStore:
    """The key store under test."""
    return ApiKeyStore(db)


async def _refused(store: ApiKeyStore, key: str, project: str | None, now: datetime = NOW) -> None:
    with pytest.raises(Unauthorized) as caught:
        await store.verify(key, project, now)
    assert (caught.value.status, caught.value.code) == (401, "invalid_credentials")
    assert caught.value.message == INVALID_CREDENTIALS


def test_new_key_has_a_public_id_and_a_long_secret() -> None:
    """A key reads bx_<16 hex>_<secret of 43 url-safe chars> and parses back into its parts."""
    key_id, secret, full = new_key()
    assert full == f"bx_{key_id}_{secret}"
    assert len(key_id) == 16
    assert re.fullmatch(r"[0-9a-f]{16}", key_id)
    assert len(secret) == 43
    assert parse_key(full) == (key_id, secret)
    assert looks_like_key(full)
    assert new_key()[2] != full


@pytest.mark.parametrize(
    "value",
    ["", "bx_", "bx_0123456789abcdef_short", "bx_0123456789ABCDEF_" + "a" * 43, "xx_" + "0" * 60],
)
def test_malformed_keys_do_not_parse(value: str) -> None:
    """Wrong prefix, wrong id alphabet or a short secret: parse_key gives None."""
    assert parse_key(value) is None


def test_scopes_are_checked() -> None:
    """Scopes must be a non-empty subset of invoke_llm, read_metrics; duplicates collapse."""
    assert check_scopes(("read_metrics", "read_metrics")) == ("read_metrics",)
    with pytest.raises(BadRequest, match="non-empty subset"):
        check_scopes(())
    with pytest.raises(BadRequest, match="non-empty subset"):
        check_scopes(("admin",))


async def test_only_the_hash_is_stored(store: ApiKeyStore, db: Database) -> None:
    """The table holds SHA-256 of the secret and never the secret or the full key."""
    key, full = await store.create("proj_alpha")
    _, secret = parse_key(full) or ("", "")
    row = await db.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key.key_id)
    assert row is not None
    assert bytes(row["secret_hash"]) == hashlib.sha256(secret.encode()).digest()
    assert bytes(row["secret_hash"]) == hash_secret(secret)
    dump = await db.fetchval("SELECT string_agg(t::text, '|') FROM api_keys t")
    assert secret not in dump
    assert full not in dump
    assert secret not in str(key.public())


async def test_create_returns_key_with_default_scopes(store: ApiKeyStore) -> None:
    """A new key is active, belongs to its project and grants every scope by default."""
    key, full = await store.create("proj_alpha", name="ci")
    assert full.startswith(f"bx_{key.key_id}_")
    assert key.project_id == "proj_alpha"
    assert key.scopes == ("invoke_llm", "read_metrics")
    assert (key.status, key.name, key.expires_at, key.revoked_at) == ("active", "ci", None, None)


async def test_create_for_unknown_project_is_not_found(store: ApiKeyStore) -> None:
    """A key cannot be made for a project that does not exist."""
    with pytest.raises(NotFound, match="project proj_nope does not exist"):
        await store.create("proj_nope")


async def test_verify_accepts_the_right_key(store: ApiKeyStore) -> None:
    """The full key with its own project verifies, with or without the project id."""
    key, full = await store.create("proj_alpha", scopes=("read_metrics",))
    found = await store.verify(full, "proj_alpha", NOW)
    assert (found.key_id, found.scopes) == (key.key_id, ("read_metrics",))
    assert (await store.verify(full, None, NOW)).key_id == key.key_id


async def test_every_wrong_credential_gets_the_same_answer(store: ApiKeyStore) -> None:
    """Wrong secret, unknown id, malformed key, other or unknown project: one identical 401."""
    _, full = await store.create("proj_alpha")
    key_id, secret = parse_key(full) or ("", "")
    await _refused(store, f"bx_{key_id}_{'A' * len(secret)}", "proj_alpha")
    await _refused(store, f"bx_{'f' * 16}_{secret}", "proj_alpha")
    await _refused(store, "not-a-key", "proj_alpha")
    await _refused(store, full, "proj_beta")
    await _refused(store, full, "proj_unknown")


async def test_revoked_key_is_refused(store: ApiKeyStore) -> None:
    """After revoke, the key no longer verifies; revoking twice keeps the first time."""
    key, full = await store.create("proj_alpha")
    first = await store.revoke(key.key_id)
    assert first.status == "revoked"
    assert first.revoked_at is not None
    await _refused(store, full, "proj_alpha")
    again = await store.revoke(key.key_id)
    assert again.revoked_at == first.revoked_at


async def test_revoke_unknown_key_is_not_found(store: ApiKeyStore) -> None:
    """Revoking an id that does not exist is NotFound."""
    with pytest.raises(NotFound, match="key 0000000000000000 does not exist"):
        await store.revoke("0000000000000000")


async def test_rotation_keeps_the_old_key_for_the_grace(store: ApiKeyStore) -> None:
    """After rotate, both keys work until the grace ends; then only the new one does."""
    old, old_full = await store.create("proj_alpha", scopes=("invoke_llm",), name="app")
    new, new_full = await store.rotate(old.key_id, timedelta(minutes=10), NOW)
    assert new.key_id != old.key_id
    assert (new.scopes, new.name, new.project_id) == (("invoke_llm",), "app", "proj_alpha")
    previous = await store.get(old.key_id)
    assert previous is not None
    assert previous.replaced_by == new.key_id
    assert previous.expires_at == NOW + timedelta(minutes=10)
    during = NOW + timedelta(minutes=9, seconds=59)
    assert (await store.verify(old_full, "proj_alpha", during)).key_id == old.key_id
    assert (await store.verify(new_full, "proj_alpha", during)).key_id == new.key_id
    after = NOW + timedelta(minutes=10)
    await _refused(store, old_full, "proj_alpha", after)
    assert (await store.verify(new_full, "proj_alpha", after)).key_id == new.key_id


async def test_rotation_without_grace_ends_the_old_key_at_once(store: ApiKeyStore) -> None:
    """A zero-minute grace refuses the old key from the moment of rotation."""
    old, old_full = await store.create("proj_alpha")
    await store.rotate(old.key_id, timedelta(0), NOW)
    await _refused(store, old_full, "proj_alpha")


async def test_rotated_key_cannot_be_rotated_again(store: ApiKeyStore) -> None:
    """Rotating a key already replaced is refused, so its grace can never be extended."""
    old, old_full = await store.create("proj_alpha")
    await store.rotate(old.key_id, timedelta(minutes=1), NOW)
    with pytest.raises(BadRequest, match="already rotated"):
        await store.rotate(old.key_id, timedelta(days=30), NOW)
    await _refused(store, old_full, "proj_alpha", NOW + timedelta(minutes=2))
    assert len(await store.list("proj_alpha")) == 2


async def test_revoked_key_cannot_be_rotated(store: ApiKeyStore) -> None:
    """A revoked key cannot be rotated (and no new key is made)."""
    key, _ = await store.create("proj_alpha")
    await store.revoke(key.key_id)
    with pytest.raises(BadRequest, match="revoked or expired"):
        await store.rotate(key.key_id, timedelta(minutes=5), NOW)
    assert [k.key_id for k in await store.list("proj_alpha")] == [key.key_id]


async def test_rotate_unknown_key_is_not_found(store: ApiKeyStore) -> None:
    """Rotating an id that does not exist is NotFound."""
    with pytest.raises(NotFound):
        await store.rotate("0000000000000000", timedelta(minutes=5), NOW)


async def test_negative_grace_is_refused(store: ApiKeyStore) -> None:
    """A negative grace period is a BadRequest."""
    key, _ = await store.create("proj_alpha")
    with pytest.raises(BadRequest, match="grace"):
        await store.rotate(key.key_id, timedelta(minutes=-1), NOW)


async def test_list_is_per_project_newest_first(store: ApiKeyStore) -> None:
    """list() gives only the project's keys, newest first."""
    first, _ = await store.create("proj_alpha")
    second, _ = await store.rotate(first.key_id, timedelta(minutes=1), datetime.now(UTC))
    await store.create("proj_beta")
    assert [k.key_id for k in await store.list("proj_alpha")] == [second.key_id, first.key_id]


async def test_touch_records_use(store: ApiKeyStore) -> None:
    """touch() stamps last_used_at."""
    key, _ = await store.create("proj_alpha")
    await store.touch(key.key_id)
    found = await store.get(key.key_id)
    assert found is not None
    assert found.last_used_at is not None

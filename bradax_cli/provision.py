"""Provisioning: the typed operations behind `bradax project ...`, `key ...`, `audit verify`.

They replace the spec's raw SQL. Each change goes to PostgreSQL together with its audit row
(one transaction: no change without its record), then to the Redis deny-list so suspensions
and revocations bite at once. They take plain values (no argparse) and return JSON-ready
dicts; an API key is returned once, when created; only its hash is stored.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from common import audit as audit_chain
from common import keyspace
from common.apikeys import ApiKeyStore
from common.audit import AuditEvent, AuditTrail
from common.db import Database
from common.denylist import DenyList
from common.errors import BrokerError, ServiceUnavailable, StoreError, StoreUnsupported
from common.pricing import PriceTable
from common.projects import ProjectFields, ProjectStore
from common.redis import RedisStore
from common.scopes import ALL_SCOPES
from common.settings import Settings, load_settings

ACTOR = "cli"
DEMO_PROJECT = "proj_demo"
DEMO_FIELDS = ProjectFields(
    name="Demo project",
    division="demo",
    team="demo",
    budget_monthly_usd=Decimal("10"),
    max_tokens_per_request=4096,
    max_requests_per_hour=1000,
    max_requests_per_second=10,
    allowed_models=("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini"),
    compliance_rules=("pii_detection",),
)


class AdminError(BrokerError):
    """An operation that cannot be carried out: one line on stderr, exit status 1."""


@dataclass
class Admin:
    """The stores a provisioning operation works on."""

    settings: Settings
    db: Database
    redis: RedisStore
    projects: ProjectStore
    keys: ApiKeyStore
    audit: AuditTrail

    async def deny(self, key: str, ttl: int | None, consequence: str) -> bool:
        """Set a deny-list entry; False (warning with `consequence`) if Redis cannot be told."""
        return await self._or_warn(DenyList(self.redis).add(key, ttl), consequence)

    async def allow(self, key: str, consequence: str) -> bool:
        """Delete a deny-list entry; False (warning with `consequence`) if Redis cannot be told."""
        return await self._or_warn(DenyList(self.redis).remove(key), consequence)

    async def _or_warn(self, change: Awaitable[None], consequence: str) -> bool:
        try:
            await change
        except (ServiceUnavailable, StoreError, RedisError) as exc:
            why = exc.message if isinstance(exc, StoreUnsupported) else "Redis unreachable"
            print(f"bradax: warning: {why}; {consequence}", file=sys.stderr)
            return False
        return True

    async def record(self, conn: asyncpg.Connection, *events: AuditEvent) -> None:
        """Append audit events inside the caller's transaction (no change without its record)."""
        if self.audit.enabled:
            await audit_chain.append(conn, list(events))

    @property
    def token_deny_ttl(self) -> int:
        """How long a deny entry must outlive the longest-lived access token."""
        return (
            self.settings.jwt_access_token_expire_minutes * 60
            + self.settings.jwt_leeway_seconds
            + 60
        )


async def open_admin(stack: AsyncExitStack, settings: Settings | None = None) -> Admin:
    """Stores for one operation, closed when `stack` closes."""
    settings = settings or load_settings()
    db = Database(settings)
    stack.push_async_callback(db.close)
    redis = RedisStore(settings, timeout=3.0)
    stack.push_async_callback(redis.close)
    return Admin(
        settings,
        db,
        redis,
        ProjectStore(db),
        ApiKeyStore(db),
        AuditTrail(db, settings.audit_logging_enabled),
    )


def served_models(settings: Settings) -> set[str]:
    """Every model alias this broker can serve (a model without a price is not served)."""
    prices = PriceTable(settings)
    return {m for m in (*prices.models, *settings.model_routes) if prices.get(m) is not None}


def check_models(settings: Settings, fields: ProjectFields) -> None:
    """AdminError unless every allowed model is one this broker serves (exact names)."""
    served = served_models(settings)
    unknown = [m for m in fields.allowed_models or () if m not in served]
    if unknown:
        raise AdminError(
            f"--models: not served by this broker: {', '.join(unknown)} "
            f"(served: {', '.join(sorted(served))}; add others with MODEL_ROUTES/MODEL_PRICES)"
        )


async def create_project(
    admin: Admin,
    project_id: str,
    fields: ProjectFields,
    scopes: tuple[str, ...] = ALL_SCOPES,
) -> dict[str, Any]:
    """Create a project and its first API key (shown once)."""
    check_models(admin.settings, fields)
    # One transaction: a failure anywhere leaves no project whose only key was never shown.
    async with admin.db.connection() as conn, conn.transaction():
        project = await admin.projects.create(project_id, fields, conn)
        key, full = await admin.keys.create(project.id, scopes=scopes, name="initial", conn=conn)
        await admin.record(
            conn,
            AuditEvent("project.create", "allowed", project.id, ACTOR, details=project.public()),
            AuditEvent("key.create", "allowed", project.id, ACTOR, details={"key_id": key.key_id}),
        )
    return {"project": project.public(), "api_key": {**key.public(), "key": full}}


async def update_project(admin: Admin, project_id: str, fields: ProjectFields) -> dict[str, Any]:
    """Change a project's governance fields (audited in the same transaction)."""
    check_models(admin.settings, fields)
    changed = fields.model_dump(mode="json", exclude_none=True)
    async with admin.db.connection() as conn, conn.transaction():
        project = await admin.projects.update(project_id, fields, conn)
        await admin.record(
            conn, AuditEvent("project.update", "allowed", project.id, ACTOR, details=changed)
        )
    return {"project": project.public()}


async def set_project_status(admin: Admin, project_id: str, *, suspend: bool) -> dict[str, Any]:
    """Suspend or resume a project: PostgreSQL and its audit row, then the deny-list."""
    action, status = ("suspend", "suspended") if suspend else ("resume", "active")
    async with admin.db.connection() as conn, conn.transaction():
        project = await admin.projects.set_status(project_id, status, conn)
        await admin.record(conn, AuditEvent(f"project.{action}", "allowed", project.id, ACTOR))
    key = keyspace.deny_project(project.id)
    if suspend:
        immediate = await admin.deny(
            key,
            None,
            "live access tokens are refused after the policy cache expires "
            f"(POLICY_CACHE_SECONDS={admin.settings.policy_cache_seconds:g}) instead of at once",
        )
    else:
        immediate = await admin.allow(
            key,
            "the project stays blocked until `bradax project resume` succeeds with Redis up",
        )
    return {"project": project.public(), "effective_immediately": immediate}


async def show_project(admin: Admin, project_id: str) -> dict[str, Any]:
    """A project and its keys (never their secrets)."""
    project = await admin.projects.require(project_id)
    keys = await admin.keys.list(project.id)
    return {"project": project.public(), "keys": [k.public() for k in keys]}


async def list_projects(admin: Admin) -> dict[str, Any]:
    """Every project."""
    return {"projects": [p.public() for p in await admin.projects.list()]}


async def create_key(
    admin: Admin, project_id: str, scopes: tuple[str, ...] = ALL_SCOPES, name: str = ""
) -> dict[str, Any]:
    """A new API key for a project (shown once)."""
    await admin.projects.require(project_id)
    async with admin.db.connection() as conn, conn.transaction():
        key, full = await admin.keys.create(project_id, scopes=scopes, name=name, conn=conn)
        await admin.record(
            conn,
            AuditEvent(
                "key.create", "allowed", key.project_id, ACTOR, details={"key_id": key.key_id}
            ),
        )
    return {"api_key": {**key.public(), "key": full}}


async def list_keys(admin: Admin, project_id: str) -> dict[str, Any]:
    """A project's keys, without secrets."""
    await admin.projects.require(project_id)
    return {"keys": [k.public() for k in await admin.keys.list(project_id)]}


async def revoke_key(admin: Admin, key_id: str) -> dict[str, Any]:
    """Revoke a key: no new tokens, and live tokens refused at once."""
    async with admin.db.connection() as conn, conn.transaction():
        key = await admin.keys.revoke(key_id, conn=conn)
        await admin.record(
            conn,
            AuditEvent(
                "key.revoke", "allowed", key.project_id, ACTOR, details={"key_id": key.key_id}
            ),
        )
    # Nothing but the deny-list stops a live access token: without Redis it runs to its expiry.
    immediate = await admin.deny(
        keyspace.deny_key(key.project_id, key.key_id),
        admin.token_deny_ttl,
        "no new tokens are issued, but live access tokens of this key stay valid until they "
        f"expire (up to {admin.settings.jwt_access_token_expire_minutes} min); "
        "run the command again when Redis is back",
    )
    return {"api_key": key.public(), "effective_immediately": immediate}


async def rotate_key(admin: Admin, key_id: str, grace_minutes: int) -> dict[str, Any]:
    """A replacement key; the old one keeps working for `grace_minutes`."""
    now = datetime.now(UTC)
    async with admin.db.connection() as conn, conn.transaction():
        new, full = await admin.keys.rotate(
            key_id, timedelta(minutes=grace_minutes), now, conn=conn
        )
        await admin.record(
            conn,
            AuditEvent(
                "key.rotate",
                "allowed",
                new.project_id,
                ACTOR,
                details={"old": key_id, "new": new.key_id, "grace_minutes": grace_minutes},
            ),
        )
    old = await admin.keys.get(key_id)
    assert old is not None
    return {"api_key": {**new.public(), "key": full}, "previous": old.public()}


async def verify_audit(admin: Admin) -> dict[str, Any]:
    """Walk the audit chain; AdminError naming the first broken entry."""
    verdict = await audit_chain.verify(admin.db)
    if not verdict.ok:
        raise AdminError(
            f"audit chain broken at entry {verdict.broken_id}: {verdict.reason} "
            f"({verdict.checked} entries verified before it)"
        )
    return {
        "ok": True,
        "entries": verdict.checked,
        "head_id": verdict.head_id,
        "head_hash": verdict.head_hash,
    }


async def ensure_demo_project(settings: Settings) -> dict[str, Any] | None:
    """On an empty database, create `proj_demo` with a key (for `bradax dev`); else None."""
    async with AsyncExitStack() as stack:
        admin = await open_admin(stack, settings)
        if await admin.projects.list():
            return None
        # The routed models this instance serves (the mock's native dialects in `bradax dev`)
        served = served_models(settings)
        routed = tuple(sorted(m for m in settings.model_routes if m in served))
        allowed = tuple(dict.fromkeys((*(DEMO_FIELDS.allowed_models or ()), *routed)))
        fields = DEMO_FIELDS.model_copy(update={"allowed_models": allowed})
        return await create_project(admin, DEMO_PROJECT, fields)

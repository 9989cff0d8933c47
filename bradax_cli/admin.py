"""Admin commands: `bradax project ...`, `bradax key ...`, `bradax audit verify`.

They replace the spec's raw SQL: each change goes to PostgreSQL, the Redis deny-list (so
suspensions and revocations bite at once) and the audit trail, and prints JSON. An API key
is printed once, when created; only its hash is stored.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from common import audit as audit_chain
from common.apikeys import ApiKeyStore
from common.audit import AuditEvent, AuditTrail
from common.db import Database
from common.errors import ServiceUnavailable
from common.projects import ProjectFields, ProjectStore
from common.redis import RedisStore
from common.settings import Settings, load_settings
from common.tokens import ALL_SCOPES

ACTOR = "cli"


@dataclass
class Admin:
    """The stores an admin command works on."""

    settings: Settings
    db: Database
    redis: RedisStore
    projects: ProjectStore
    keys: ApiKeyStore
    audit: AuditTrail

    async def deny(self, key: str, ttl: int | None) -> bool:
        """Set a deny-list entry; False (with a warning) if Redis cannot be reached."""
        try:
            if ttl is None:
                await self.redis.call("SET", key, "1")
            else:
                await self.redis.call("SET", key, "1", "EX", ttl)
        except ServiceUnavailable:
            print(
                "bradax: warning: Redis unreachable; live tokens stop within "
                f"{self.settings.policy_cache_seconds:g}s (policy cache) instead of at once",
                file=sys.stderr,
            )
            return False
        return True

    @property
    def token_deny_ttl(self) -> int:
        """How long a deny entry must outlive the longest-lived access token."""
        return (
            self.settings.jwt_access_token_expire_minutes * 60
            + self.settings.jwt_leeway_seconds
            + 60
        )


async def open_admin(stack: AsyncExitStack, settings: Settings | None = None) -> Admin:
    """Stores for one command, closed when `stack` closes."""
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


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _money(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError("must be a non-negative amount")
    return amount


def _fields(args: argparse.Namespace) -> ProjectFields:
    from pydantic import ValidationError

    from bradax_cli.cli import CliError

    values: dict[str, Any] = {
        "name": args.name,
        "division": args.division,
        "team": args.team,
        "budget_monthly_usd": args.budget_usd,
        "max_tokens_per_request": args.max_tokens,
        "max_requests_per_hour": args.max_requests_per_hour,
        "max_requests_per_second": args.max_requests_per_second,
        "allowed_models": _csv(args.models),
        "compliance_rules": _csv(args.compliance),
        "pii_action": args.pii_action,
        "cache_enabled": args.cache,
    }
    try:
        return ProjectFields(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else "value"
        raise CliError(f"{field}: {error['msg']}") from None


async def project_create(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """Create a project and its first API key."""
    fields = _fields(args)
    async with admin.db.connection() as conn, conn.transaction():
        project = await admin.projects.create(args.id, fields, conn)
        key, full = await admin.keys.create(
            project.id, scopes=_csv(args.scopes) or ALL_SCOPES, name="initial", conn=conn
        )
    await admin.audit.record(
        AuditEvent("project.create", "allowed", project.id, ACTOR, details=project.public()),
        AuditEvent("key.create", "allowed", project.id, ACTOR, details={"key_id": key.key_id}),
    )
    return {"project": project.public(), "api_key": {**key.public(), "key": full}}


async def project_update(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """Change a project's governance fields."""
    fields = _fields(args)
    project = await admin.projects.update(args.id, fields)
    changed = fields.model_dump(mode="json", exclude_none=True)
    await admin.audit.record(
        AuditEvent("project.update", "allowed", project.id, ACTOR, details=changed)
    )
    return {"project": project.public()}


async def project_status(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """Suspend or resume a project (deny-list updated at once)."""
    status = "suspended" if args.action == "suspend" else "active"
    project = await admin.projects.set_status(args.id, status)
    key = f"bx:deny:proj:{project.id}"
    if status == "suspended":
        immediate = await admin.deny(key, None)
    else:
        try:
            await admin.redis.call("DEL", key)
            immediate = True
        except ServiceUnavailable:
            immediate = False
    await admin.audit.record(AuditEvent(f"project.{args.action}", "allowed", project.id, ACTOR))
    return {"project": project.public(), "effective_immediately": immediate}


async def project_show(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """A project and its keys (never their secrets)."""
    project = await admin.projects.require(args.id)
    keys = await admin.keys.list(project.id)
    return {"project": project.public(), "keys": [k.public() for k in keys]}


async def project_list(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """Every project."""
    return {"projects": [p.public() for p in await admin.projects.list()]}


async def key_create(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """A new API key for a project (printed once)."""
    await admin.projects.require(args.project)
    key, full = await admin.keys.create(
        args.project, scopes=_csv(args.scopes) or ALL_SCOPES, name=args.name or ""
    )
    await admin.audit.record(
        AuditEvent("key.create", "allowed", key.project_id, ACTOR, details={"key_id": key.key_id})
    )
    return {"api_key": {**key.public(), "key": full}}


async def key_list(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """A project's keys, without secrets."""
    await admin.projects.require(args.project)
    return {"keys": [k.public() for k in await admin.keys.list(args.project)]}


async def key_revoke(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """Revoke a key: no new tokens, and live tokens refused at once."""
    key = await admin.keys.revoke(args.key_id)
    immediate = await admin.deny(f"bx:deny:key:{key.key_id}", admin.token_deny_ttl)
    await admin.audit.record(
        AuditEvent("key.revoke", "allowed", key.project_id, ACTOR, details={"key_id": key.key_id})
    )
    return {"api_key": key.public(), "effective_immediately": immediate}


async def key_rotate(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """A replacement key; the old one keeps working for --grace-minutes."""
    now = datetime.now(UTC)
    new, full = await admin.keys.rotate(args.key_id, timedelta(minutes=args.grace_minutes), now)
    old = await admin.keys.get(args.key_id)
    assert old is not None
    await admin.audit.record(
        AuditEvent(
            "key.rotate",
            "allowed",
            new.project_id,
            ACTOR,
            details={"old": old.key_id, "new": new.key_id, "grace_minutes": args.grace_minutes},
        )
    )
    return {"api_key": {**new.public(), "key": full}, "previous": old.public()}


async def audit_verify(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """Walk the audit chain; fails (exit 1) naming the first broken entry."""
    from bradax_cli.cli import CliError

    verdict = await audit_chain.verify(admin.db)
    if not verdict.ok:
        raise CliError(
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
        args = argparse.Namespace(
            id="proj_demo",
            name="Demo project",
            division="demo",
            team="demo",
            budget_usd=Decimal("10"),
            max_tokens=4096,
            max_requests_per_hour=1000,
            max_requests_per_second=10,
            models="gpt-4.1,gpt-4.1-mini,gpt-4.1-nano,gpt-4o,gpt-4o-mini",
            compliance="pii_detection",
            pii_action=None,
            cache=None,
            scopes=None,
        )
        return await project_create(admin, args)


Handler = Callable[[Admin, argparse.Namespace], Awaitable[dict[str, Any]]]


def _runner(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from bradax_cli.cli import emit, run_async

        async def go() -> dict[str, Any]:
            async with AsyncExitStack() as stack:
                return await handler(await open_admin(stack), args)

        emit(run_async(go()))
        return 0

    return run


def _project_options(parser: argparse.ArgumentParser, creating: bool) -> None:
    parser.add_argument("--id", required=True, help="project id, e.g. proj_inovacao_ia_chatbot")
    parser.add_argument("--name", required=creating, help="display name")
    parser.add_argument("--division")
    parser.add_argument("--team")
    parser.add_argument("--budget-usd", type=_money, help="hard monthly budget in USD")
    parser.add_argument("--max-tokens", type=int, help="max_tokens_per_request")
    parser.add_argument("--max-requests-per-hour", type=int)
    parser.add_argument("--max-requests-per-second", type=int, help="burst limit")
    parser.add_argument("--models", help="allowed models, comma separated")
    parser.add_argument("--compliance", help="compliance rules: lgpd,pii_detection")
    parser.add_argument("--pii-action", choices=["block", "redact"])
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="allow the exact-match response cache",
    )


def register(sub: Any) -> None:
    """Add the project, key and audit sub-commands to the `bradax` parser."""
    project = sub.add_parser("project", help="create and govern projects")
    psub = project.add_subparsers(dest="action", metavar="ACTION", parser_class=type(project))
    psub.required = True
    create = psub.add_parser("create", help="create a project and its first API key")
    _project_options(create, creating=True)
    create.add_argument("--scopes", help="scopes of the first key (default: all)")
    create.set_defaults(func=_runner(project_create))
    update = psub.add_parser("update", help="change a project's governance fields")
    _project_options(update, creating=False)
    update.set_defaults(func=_runner(project_update))
    for action, text in (("suspend", "suspend a project"), ("resume", "resume a project")):
        cmd = psub.add_parser(action, help=text)
        cmd.add_argument("--id", required=True)
        cmd.set_defaults(func=_runner(project_status))
    show = psub.add_parser("show", help="a project and its keys")
    show.add_argument("--id", required=True)
    show.set_defaults(func=_runner(project_show))
    listing = psub.add_parser("list", help="every project")
    listing.set_defaults(func=_runner(project_list))

    key = sub.add_parser("key", help="manage project API keys")
    ksub = key.add_subparsers(dest="action", metavar="ACTION", parser_class=type(key))
    ksub.required = True
    kcreate = ksub.add_parser("create", help="a new API key (shown once)")
    kcreate.add_argument("--project", required=True)
    kcreate.add_argument("--scopes", help="comma separated: invoke_llm,read_metrics")
    kcreate.add_argument("--name")
    kcreate.set_defaults(func=_runner(key_create))
    klist = ksub.add_parser("list", help="a project's keys (without secrets)")
    klist.add_argument("--project", required=True)
    klist.set_defaults(func=_runner(key_list))
    krevoke = ksub.add_parser("revoke", help="revoke a key at once")
    krevoke.add_argument("--key-id", required=True)
    krevoke.set_defaults(func=_runner(key_revoke))
    krotate = ksub.add_parser("rotate", help="replace a key, keeping the old one for a while")
    krotate.add_argument("--key-id", required=True)
    krotate.add_argument("--grace-minutes", type=int, default=60)
    krotate.set_defaults(func=_runner(key_rotate))

    audit = sub.add_parser("audit", help="the audit trail")
    asub = audit.add_subparsers(dest="action", metavar="ACTION", parser_class=type(audit))
    asub.required = True
    verify = asub.add_parser("verify", help="check the hash chain; names the first broken entry")
    verify.set_defaults(func=_runner(audit_verify))

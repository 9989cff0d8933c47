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

import asyncpg
from redis.exceptions import RedisError

from common import audit as audit_chain
from common.apikeys import ApiKeyStore
from common.audit import AuditEvent, AuditTrail
from common.db import Database
from common.errors import BrokerError, ServiceUnavailable
from common.projects import ProjectFields, ProjectStore
from common.redis import RedisStore
from common.settings import Settings, load_settings
from common.tokens import ALL_SCOPES

ACTOR = "cli"
INT32_MAX = 2**31 - 1
MAX_GRACE_MINUTES = 30 * 24 * 60
# Model field -> the option that sets it, so validation errors name what the user typed.
OPTIONS = {
    "budget_monthly_usd": "--budget-usd",
    "max_tokens_per_request": "--max-tokens",
    "allowed_models": "--models",
    "compliance_rules": "--compliance",
    "cache_enabled": "--cache",
}


class AdminError(BrokerError):
    """A command that cannot be carried out: one line on stderr, exit status 1.

    A BrokerError (not bradax_cli.cli.CliError) so `bradax` catches it however it was started:
    under `python -m bradax_cli.cli` the running module is __main__, whose CliError is another
    class than the one `import bradax_cli.cli` would give.
    """


@dataclass
class Admin:
    """The stores an admin command works on."""

    settings: Settings
    db: Database
    redis: RedisStore
    projects: ProjectStore
    keys: ApiKeyStore
    audit: AuditTrail

    async def deny(self, key: str, ttl: int | None, consequence: str) -> bool:
        """Set a deny-list entry; False (warning with `consequence`) if Redis cannot be told."""
        args: list[object] = ["SET", key, "1"] if ttl is None else ["SET", key, "1", "EX", ttl]
        return await self._redis_or_warn(args, consequence)

    async def allow(self, key: str, consequence: str) -> bool:
        """Delete a deny-list entry; False (warning with `consequence`) if Redis cannot be told."""
        return await self._redis_or_warn(["DEL", key], consequence)

    async def _redis_or_warn(self, command: list[object], consequence: str) -> bool:
        try:
            await self.redis.call(*command)
        except (ServiceUnavailable, RedisError):
            print(f"bradax: warning: Redis unreachable; {consequence}", file=sys.stderr)
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


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return number

    return parse


def _scopes(value: str) -> tuple[str, ...]:
    scopes = _csv(value) or ()
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown or not scopes:
        raise argparse.ArgumentTypeError(
            f"must be a non-empty, comma separated subset of {','.join(ALL_SCOPES)}"
        )
    return tuple(dict.fromkeys(scopes))


def _fields(args: argparse.Namespace) -> ProjectFields:
    from pydantic import ValidationError

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
        "output_pii_action": args.output_pii_action,
        "cache_enabled": args.cache,
    }
    try:
        return ProjectFields(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        option = OPTIONS.get(name, "--" + name.replace("_", "-")) if name else "value"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise AdminError(f"{option}: {message}") from None


async def project_create(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """Create a project and its first API key."""
    fields = _fields(args)
    # One transaction: a failure anywhere leaves no project whose only key was never shown.
    async with admin.db.connection() as conn, conn.transaction():
        project = await admin.projects.create(args.id, fields, conn)
        key, full = await admin.keys.create(
            project.id, scopes=args.scopes or ALL_SCOPES, name="initial", conn=conn
        )
        await admin.record(
            conn,
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
    await admin.audit.record(
        AuditEvent(
            f"project.{args.action}",
            "allowed",
            project.id,
            ACTOR,
            details={"effective_immediately": immediate},
        )
    )
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
    async with admin.db.connection() as conn, conn.transaction():
        key, full = await admin.keys.create(
            args.project, scopes=args.scopes or ALL_SCOPES, name=args.name or "", conn=conn
        )
        await admin.record(
            conn,
            AuditEvent(
                "key.create", "allowed", key.project_id, ACTOR, details={"key_id": key.key_id}
            ),
        )
    return {"api_key": {**key.public(), "key": full}}


async def key_list(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """A project's keys, without secrets."""
    await admin.projects.require(args.project)
    return {"keys": [k.public() for k in await admin.keys.list(args.project)]}


async def key_revoke(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """Revoke a key: no new tokens, and live tokens refused at once."""
    async with admin.db.connection() as conn, conn.transaction():
        key = await admin.keys.revoke(args.key_id, conn=conn)
        await admin.record(
            conn,
            AuditEvent(
                "key.revoke", "allowed", key.project_id, ACTOR, details={"key_id": key.key_id}
            ),
        )
    # Nothing but the deny-list stops a live access token: without Redis it runs to its expiry.
    immediate = await admin.deny(
        f"bx:deny:key:{key.key_id}",
        admin.token_deny_ttl,
        "no new tokens are issued, but live access tokens of this key stay valid until they "
        f"expire (up to {admin.settings.jwt_access_token_expire_minutes} min); "
        "run the command again when Redis is back",
    )
    return {"api_key": key.public(), "effective_immediately": immediate}


async def key_rotate(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """A replacement key; the old one keeps working for --grace-minutes."""
    now = datetime.now(UTC)
    grace = timedelta(minutes=args.grace_minutes)
    async with admin.db.connection() as conn, conn.transaction():
        new, full = await admin.keys.rotate(args.key_id, grace, now, conn=conn)
        await admin.record(
            conn,
            AuditEvent(
                "key.rotate",
                "allowed",
                new.project_id,
                ACTOR,
                details={
                    "old": args.key_id,
                    "new": new.key_id,
                    "grace_minutes": args.grace_minutes,
                },
            ),
        )
    old = await admin.keys.get(args.key_id)
    assert old is not None
    return {"api_key": {**new.public(), "key": full}, "previous": old.public()}


async def audit_verify(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    """Walk the audit chain; fails (exit 1) naming the first broken entry."""
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
            output_pii_action=None,
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
                try:
                    return await handler(await open_admin(stack), args)
                except asyncpg.UndefinedTableError:
                    raise AdminError(
                        "the database has no bradax schema; run `bradax migrate`"
                    ) from None
                except asyncpg.PostgresError as exc:
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise AdminError(f"database error: {first}") from None

        emit(run_async(go()))
        return 0

    return run


def _project_options(parser: argparse.ArgumentParser, creating: bool) -> None:
    parser.add_argument("--id", required=True, help="project id, e.g. proj_inovacao_ia_chatbot")
    parser.add_argument("--name", required=creating, help="display name")
    parser.add_argument("--division", help="business division, e.g. inovacao")
    parser.add_argument("--team", help="owning team, e.g. ia")
    parser.add_argument("--budget-usd", type=_money, help="hard monthly budget in USD")
    parser.add_argument("--max-tokens", type=_count(1, 10_000_000), help="max_tokens_per_request")
    parser.add_argument(
        "--max-requests-per-hour", type=_count(0, INT32_MAX), help="hourly request limit"
    )
    parser.add_argument("--max-requests-per-second", type=_count(0, INT32_MAX), help="burst limit")
    parser.add_argument("--models", help="allowed models, comma separated")
    parser.add_argument("--compliance", help="compliance rules: lgpd,pii_detection")
    parser.add_argument(
        "--pii-action", choices=["block", "redact"], help="what to do with personal data"
    )
    parser.add_argument(
        "--output-pii-action",
        choices=["redact", "block", "off"],
        help="what to do with personal data in answers (default: redact under lgpd, else off)",
    )
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
    create.add_argument(
        "--scopes", type=_scopes, help="scopes of the first key, comma separated (default: all)"
    )
    create.set_defaults(func=_runner(project_create))
    update = psub.add_parser("update", help="change a project's governance fields")
    _project_options(update, creating=False)
    update.set_defaults(func=_runner(project_update))
    for action, text in (("suspend", "suspend a project"), ("resume", "resume a project")):
        cmd = psub.add_parser(action, help=text)
        cmd.add_argument("--id", required=True, help="project id")
        cmd.set_defaults(func=_runner(project_status))
    show = psub.add_parser("show", help="a project and its keys")
    show.add_argument("--id", required=True, help="project id")
    show.set_defaults(func=_runner(project_show))
    listing = psub.add_parser("list", help="every project")
    listing.set_defaults(func=_runner(project_list))

    key = sub.add_parser("key", help="manage project API keys")
    ksub = key.add_subparsers(dest="action", metavar="ACTION", parser_class=type(key))
    ksub.required = True
    kcreate = ksub.add_parser("create", help="a new API key (shown once)")
    kcreate.add_argument("--project", required=True, help="project id")
    kcreate.add_argument(
        "--scopes", type=_scopes, help="comma separated: invoke_llm,read_metrics (default: all)"
    )
    kcreate.add_argument("--name", help="a label, e.g. the application using the key")
    kcreate.set_defaults(func=_runner(key_create))
    klist = ksub.add_parser("list", help="a project's keys (without secrets)")
    klist.add_argument("--project", required=True, help="project id")
    klist.set_defaults(func=_runner(key_list))
    krevoke = ksub.add_parser("revoke", help="revoke a key at once")
    krevoke.add_argument("--key-id", required=True, help="the key's public id (bx_<key-id>_...)")
    krevoke.set_defaults(func=_runner(key_revoke))
    krotate = ksub.add_parser("rotate", help="replace a key, keeping the old one for a while")
    krotate.add_argument("--key-id", required=True, help="the key's public id (bx_<key-id>_...)")
    krotate.add_argument(
        "--grace-minutes",
        type=_count(0, MAX_GRACE_MINUTES),
        default=60,
        help="how long the old key keeps working (default: 60; 0 ends it at once)",
    )
    krotate.set_defaults(func=_runner(key_rotate))

    audit = sub.add_parser("audit", help="the audit trail")
    asub = audit.add_subparsers(dest="action", metavar="ACTION", parser_class=type(audit))
    asub.required = True
    verify = asub.add_parser("verify", help="check the hash chain; names the first broken entry")
    verify.set_defaults(func=_runner(audit_verify))

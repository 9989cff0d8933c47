"""The `bradax project ...`, `bradax key ...` and `bradax audit verify` commands (argparse only).

Each command turns its options into the typed values of a `bradax_cli.provision`
operation, runs it and prints its JSON; option errors are one line naming the option.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from bradax_cli import provision
from bradax_cli.console import emit, run_async
from bradax_cli.provision import Admin, AdminError
from common.apikeys import KEY_PREFIX, parse_key
from common.projects import ProjectFields
from common.scopes import ALL_SCOPES

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


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


KEY_ID_HELP = "the key's id: 16 hex digits, as `bradax key list` shows (bx_<id> also accepted)"


def _key_id(value: str) -> str:
    """A key id from `abcd...` or `bx_abcd...`; a whole key is refused without echoing it."""
    candidate = value.removeprefix(f"{KEY_PREFIX}_")
    if re.fullmatch(r"[0-9a-f]{16}", candidate):
        return candidate
    if parse_key(value) is not None:
        raise argparse.ArgumentTypeError(
            "that is a whole API key (a secret): pass only its id, the 16 hex digits after bx_"
        )
    raise argparse.ArgumentTypeError("expected a key id: 16 hex digits, as `bradax key list` shows")


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


Command = Callable[[Admin, argparse.Namespace], Awaitable[dict[str, Any]]]

COMMANDS: dict[str, Command] = {
    "project create": lambda a, o: provision.create_project(
        a, o.id, _fields(o), o.scopes or ALL_SCOPES
    ),
    "project update": lambda a, o: provision.update_project(a, o.id, _fields(o)),
    "project suspend": lambda a, o: provision.set_project_status(a, o.id, suspend=True),
    "project resume": lambda a, o: provision.set_project_status(a, o.id, suspend=False),
    "project show": lambda a, o: provision.show_project(a, o.id),
    "project list": lambda a, o: provision.list_projects(a),
    "key create": lambda a, o: provision.create_key(
        a, o.project, o.scopes or ALL_SCOPES, o.name or ""
    ),
    "key list": lambda a, o: provision.list_keys(a, o.project),
    "key revoke": lambda a, o: provision.revoke_key(a, o.key_id),
    "key rotate": lambda a, o: provision.rotate_key(a, o.key_id, o.grace_minutes),
    "audit verify": lambda a, o: provision.verify_audit(a),
}


def _runner(name: str) -> Callable[[argparse.Namespace], int]:
    command = COMMANDS[name]

    def run(args: argparse.Namespace) -> int:
        async def go() -> dict[str, Any]:
            async with AsyncExitStack() as stack:
                try:
                    return await command(await provision.open_admin(stack), args)
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
    create.set_defaults(func=_runner("project create"))
    update = psub.add_parser("update", help="change a project's governance fields")
    _project_options(update, creating=False)
    update.set_defaults(func=_runner("project update"))
    for action, text in (("suspend", "suspend a project"), ("resume", "resume a project")):
        cmd = psub.add_parser(action, help=text)
        cmd.add_argument("--id", required=True, help="project id")
        cmd.set_defaults(func=_runner(f"project {action}"))
    show = psub.add_parser("show", help="a project and its keys")
    show.add_argument("--id", required=True, help="project id")
    show.set_defaults(func=_runner("project show"))
    listing = psub.add_parser("list", help="every project")
    listing.set_defaults(func=_runner("project list"))

    key = sub.add_parser("key", help="manage project API keys")
    ksub = key.add_subparsers(dest="action", metavar="ACTION", parser_class=type(key))
    ksub.required = True
    kcreate = ksub.add_parser("create", help="a new API key (shown once)")
    kcreate.add_argument("--project", required=True, help="project id")
    kcreate.add_argument(
        "--scopes", type=_scopes, help="comma separated: invoke_llm,read_metrics (default: all)"
    )
    kcreate.add_argument("--name", help="a label, e.g. the application using the key")
    kcreate.set_defaults(func=_runner("key create"))
    klist = ksub.add_parser("list", help="a project's keys (without secrets)")
    klist.add_argument("--project", required=True, help="project id")
    klist.set_defaults(func=_runner("key list"))
    krevoke = ksub.add_parser("revoke", help="revoke a key at once")
    krevoke.add_argument("--key-id", required=True, type=_key_id, help=KEY_ID_HELP)
    krevoke.set_defaults(func=_runner("key revoke"))
    krotate = ksub.add_parser("rotate", help="replace a key, keeping the old one for a while")
    krotate.add_argument("--key-id", required=True, type=_key_id, help=KEY_ID_HELP)
    krotate.add_argument(
        "--grace-minutes",
        type=_count(0, MAX_GRACE_MINUTES),
        default=60,
        help="how long the old key keeps working (default: 60; 0 ends it at once)",
    )
    krotate.set_defaults(func=_runner("key rotate"))

    audit = sub.add_parser("audit", help="the audit trail")
    asub = audit.add_subparsers(dest="action", metavar="ACTION", parser_class=type(audit))
    asub.required = True
    verify = asub.add_parser("verify", help="check the hash chain; names the first broken entry")
    verify.set_defaults(func=_runner("audit verify"))

"""The `bradax` command: run the broker, migrate the database, administer projects and keys.

Every command has --help, exits non-zero with one clear line on error, and the admin
commands print JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from bradax_cli import admin, devstate
from bradax_cli.console import CliError, Parser, emit, run_async
from common.errors import BrokerError
from common.migrate import MigrationError
from common.settings import ConfigError

Command = Callable[[argparse.Namespace], int]


def _cmd_migrate(args: argparse.Namespace) -> int:
    from common import migrate
    from common.settings import load_settings

    settings = load_settings()
    applied = run_async(
        migrate.migrate(
            settings.database_url.get_secret_value(),
            statement_cache_size=settings.db_statement_cache_size,
        )
    )
    emit(
        {
            "applied": [f"{m.version:04d}_{m.name}" for m in applied],
            "schema_version": migrate.latest_version(),
        }
    )
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from bradax_cli.dev import run_dev

    return run_dev(host=args.host, port=args.port, data_dir=args.data_dir)


def _cmd_serve(args: argparse.Namespace) -> int:
    from bradax_cli.server import serve
    from common.settings import load_settings

    settings = load_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    serve(host, port, workers=args.workers or settings.workers, settings=settings)
    return 0


def _cmd_mock(args: argparse.Namespace) -> int:
    from bradax_cli import mock_openai

    return mock_openai.main(args.rest)


def _cmd_openapi(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bradax_cli import openapi_doc

    if args.check:
        current = Path(args.output).read_bytes() if Path(args.output).exists() else b""
        if current != openapi_doc.render():
            raise CliError(f"{args.output} is stale: run `bradax openapi`")
        return 0
    emit({"written": str(openapi_doc.write(Path(args.output)))})
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = Parser(prog="bradax", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    dev = sub.add_parser(
        "dev",
        help="run the whole broker locally (embedded PostgreSQL/Redis/mock upstream when unset)",
    )
    dev.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    dev.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    dev.add_argument(
        "--data-dir",
        default=str(devstate.data_dir()),
        help="where embedded servers keep data (default: BRADAX_DATA_DIR, else .bradax)",
    )
    dev.set_defaults(func=_cmd_dev)

    serve = sub.add_parser("serve", help="serve every function behind the path router")
    serve.add_argument("--host", default=None, help="default: HOST")
    serve.add_argument("--port", type=int, default=None, help="default: PORT")
    serve.add_argument("--workers", type=int, default=None, help="default: WORKERS")
    serve.set_defaults(func=_cmd_serve)

    migrate = sub.add_parser("migrate", help="apply pending SQL migrations to DATABASE_URL")
    migrate.set_defaults(func=_cmd_migrate)

    mock = sub.add_parser(
        "mock-openai",
        help="run the OpenAI-compatible mock upstream (see `bradax mock-openai --help`)",
        add_help=False,
    )
    mock.add_argument("rest", nargs=argparse.REMAINDER)
    mock.set_defaults(func=_cmd_mock)

    spec = sub.add_parser("openapi", help="write the broker's merged OpenAPI document")
    spec.add_argument("--output", default="docs/openapi.json")
    spec.add_argument("--check", action="store_true", help="fail if the file is stale")
    spec.set_defaults(func=_cmd_openapi)

    admin.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bradax` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mock-openai"]:
        # The mock has its own parser (and --help); argparse's REMAINDER would eat neither.
        from bradax_cli import mock_openai

        return mock_openai.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        if args.command not in ("dev", "serve", "openapi"):
            # Admin commands and migrate next to a running `bradax dev` use its servers.
            devstate.adopt()
        return func(args)
    except (CliError, ConfigError, MigrationError, devstate.DevInstanceGone) as exc:
        print(f"bradax: error: {exc}", file=sys.stderr)
        return 1
    except BrokerError as exc:
        print(f"bradax: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

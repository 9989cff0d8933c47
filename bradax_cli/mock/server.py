"""The mock's aiohttp application (every protocol and the control API) and its command line.

A protocol is a module with `routes(state) -> list[Route]`, listed once in `PROTOCOLS`.
The server closes connections idle for `--keepalive-timeout` seconds (a request head that never
completes included) and gives a request `--body-timeout` seconds to send its body.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Final

from aiohttp import web

from bradax_cli.mock import (
    anthropic,
    bedrock,
    control,
    gemini,
    openai_api,
    openai_chat,
    openai_embeddings,
)
from bradax_cli.mock.config import DEFAULT_MODELS, BadConfig, MockConfig, check_config
from bradax_cli.mock.http import Route
from bradax_cli.mock.state import MockState

PROTOCOLS: Final[tuple[Callable[[MockState], list[Route]], ...]] = (
    openai_api.routes,
    openai_chat.routes,
    openai_embeddings.routes,
    anthropic.routes,
    bedrock.routes,
    gemini.routes,
)
"""The provider protocols the mock speaks, each a module's `routes`."""

BODY_TIMEOUT: Final = 30.0
KEEPALIVE_TIMEOUT: Final = 15.0
STATE_KEY: Final = web.AppKey("mock_state", MockState)


def build_app(config: MockConfig, *, body_timeout: float = BODY_TIMEOUT) -> web.Application:
    """Build the aiohttp application serving the mock (its protocols and /_mock/ control).

    Raises `BadConfig` when `config` cannot be applied."""
    state = MockState(config, body_timeout)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE_KEY] = state
    for routes in (*PROTOCOLS, control.routes):
        for method, path, handler in routes(state):
            app.router.add_route(method, path, handler)
    app.on_shutdown.append(_release_hanging)
    return app


async def _release_hanging(app: web.Application) -> None:
    """Release hanging requests so the server can stop promptly."""
    app[STATE_KEY].shutting_down.set()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mock-openai",
        description="Serve a mock upstream speaking the OpenAI, Anthropic, Bedrock and Gemini "
        "protocols.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fail-rate-429", type=float, default=0.0)
    parser.add_argument("--fail-rate-500", type=float, default=0.0)
    parser.add_argument("--hang-rate", type=float, default=0.0)
    parser.add_argument("--cut-rate", type=float, default=0.0)
    parser.add_argument("--cut-after-chunks", type=int, default=2)
    parser.add_argument("--reply-words", type=int, default=12)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="the model names it serves, comma separated (every protocol)",
    )
    parser.add_argument("--keepalive-timeout", type=float, default=KEEPALIVE_TIMEOUT)
    parser.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT)
    return parser.parse_args(argv)


async def _serve(
    config: MockConfig,
    host: str,
    port: int,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
) -> int:
    app = build_app(config, body_timeout=body_timeout)
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=keepalive_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            sys.stderr.write(f"mock-openai: cannot listen on {host}:{port}: {exc}\n")
            return 1
        bound_port = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        print(f"mock-openai listening on http://{shown}:{bound_port}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: serve the mock until SIGINT/SIGTERM; returns the exit status."""
    args = _parse_args(argv)
    try:
        config = MockConfig(
            latency_ms=args.latency_ms,
            fail_rate_429=args.fail_rate_429,
            fail_rate_500=args.fail_rate_500,
            hang_rate=args.hang_rate,
            cut_rate=args.cut_rate,
            cut_after_chunks=args.cut_after_chunks,
            reply_words=args.reply_words,
            api_key=args.api_key,
            seed=args.seed,
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        )
        check_config(config)
    except BadConfig as exc:
        sys.stderr.write(f"mock-openai: {exc}\n")
        return 2
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(
            _serve(config, args.host, args.port, args.keepalive_timeout, args.body_timeout)
        )

"""llm_invoke: the spec's POST /api/v1/llm/invoke and the OpenAI-compatible /v1 API.

POST /api/v1/llm/invoke, POST /v1/chat/completions, GET /v1/models.
Serve alone: functions-framework --asgi --source functions/llm_invoke/main.py --target llm_invoke
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from common import deps, services
from common.http import Route
from common.invoke import Invoker
from common.llm import ModelCatalog, UpstreamClient
from common.pricing import PriceTable
from common.runtime import function_app


def _client() -> UpstreamClient:
    settings = deps.settings()
    telemetry = services.telemetry.get()
    return UpstreamClient(
        settings,
        ModelCatalog(settings, PriceTable(settings)),
        on_retry=lambda model, why: telemetry.incr(
            "upstream_retries_total", model=model, reason=why
        ),
    )


_upstream = deps.Lazy(_client)
_invoker = deps.Lazy(
    lambda: Invoker(
        deps.settings(),
        authenticator=services.authenticator.get(),
        policies=services.policies.get(),
        governor=services.governor.get(),
        client=_upstream.get(),
        redis=deps.redis.get(),
        telemetry=services.telemetry.get(),
        drainer=services.drainer.get(),
        pending=services.pending_settles.get(),
        failures=services.failures.get(),
    )
)


async def invoke(request: Request) -> Response:
    return await _invoker.get().handle(request, "invoke")


async def chat_completions(request: Request) -> Response:
    return await _invoker.get().handle(request, "openai")


async def list_models(request: Request) -> Response:
    return await _invoker.get().models(request)


_app = function_app(
    "llm_invoke",
    [
        Route("/api/v1/llm/invoke", invoke, ("POST",)),
        Route("/v1/chat/completions", chat_completions, ("POST",)),
        Route("/v1/models", list_models),
    ],
)


async def llm_invoke(request: Request) -> Response:
    """The deployable entry point (functions-framework --target llm_invoke)."""
    return await _app(request)

"""llm_invoke: the spec's POST /api/v1/llm/invoke and the OpenAI-compatible /v1 API.

POST /api/v1/llm/invoke, POST /v1/chat/completions, POST /v1/responses, POST /v1/embeddings,
POST /v1/messages, POST /v1/messages/count_tokens (Anthropic's format), GET /v1/models,
GET /v1/models/{model}.
Serve alone: functions-framework --asgi --source functions/llm_invoke/main.py --target llm_invoke
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from common import deps, ledger_workers, services
from common.anthropic_schemas import (
    CountTokensRequest,
    MessageObject,
    MessagesRequest,
    TokenCount,
)
from common.catalog import ModelCatalog
from common.face_schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ResponseObject,
    ResponsesRequest,
)
from common.http import Route
from common.invoke import Invoker
from common.llm import UpstreamClient
from common.openapi import Operation
from common.pricing import PriceTable
from common.runtime import function_app
from common.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    InvokeRequest,
    InvokeResponse,
    ModelCard,
    ModelList,
)
from common.tracing import Tracing

INVOKE_ERRORS = (400, 401, 402, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504)


def _client() -> UpstreamClient:
    settings = deps.settings()
    telemetry = deps.telemetry.get()
    return UpstreamClient(
        settings,
        ModelCatalog(settings, PriceTable(settings)),
        on_retry=lambda model, why: telemetry.incr(
            "upstream_retries_total", model=model, reason=why
        ),
    )


_upstream = deps.Lazy(_client)
_tracing = deps.Lazy(lambda: Tracing(deps.settings(), "llm_invoke"))
_invoker = deps.Lazy(
    lambda: Invoker(
        deps.settings(),
        authenticator=services.authenticator.get(),
        policies=services.policies.get(),
        governor=services.governor.get(),
        client=_upstream.get(),
        redis=deps.redis.get(),
        telemetry=deps.telemetry.get(),
        drainer=ledger_workers.drainer.get(),
        pending=ledger_workers.pending_settles.get(),
        failures=services.failures.get(),
        audit=services.audit.get(),
        tracing=_tracing.get(),
    )
)


async def invoke(request: Request) -> Response:
    return await _invoker.get().handle(request, "invoke")


async def chat_completions(request: Request) -> Response:
    return await _invoker.get().handle(request, "openai")


async def messages(request: Request) -> Response:
    return await _invoker.get().handle(request, "anthropic")


async def count_tokens(request: Request) -> Response:
    return await _invoker.get().count_tokens(request)


async def responses(request: Request) -> Response:
    return await _invoker.get().handle(request, "responses")


async def embeddings(request: Request) -> Response:
    return await _invoker.get().handle(request, "embeddings")


async def list_models(request: Request) -> Response:
    return await _invoker.get().models(request)


async def retrieve_model(request: Request) -> Response:
    return await _invoker.get().model(request)


_app = function_app(
    "llm_invoke",
    [
        Route(
            "/api/v1/llm/invoke",
            invoke,
            ("POST",),
            Operation(
                "Invoke a model",
                InvokeRequest,
                InvokeResponse,
                INVOKE_ERRORS,
                auth=True,
                stream=True,
            ),
        ),
        Route(
            "/v1/chat/completions",
            chat_completions,
            ("POST",),
            Operation(
                "Create a chat completion (OpenAI-compatible)",
                ChatCompletionRequest,
                ChatCompletion,
                INVOKE_ERRORS,
                auth=True,
                stream=True,
                openai_errors=True,
            ),
        ),
        Route(
            "/v1/messages",
            messages,
            ("POST",),
            Operation(
                "Create a message (Anthropic Messages API)",
                MessagesRequest,
                MessageObject,
                INVOKE_ERRORS,
                auth=True,
                stream=True,
                anthropic_errors=True,
            ),
        ),
        Route(
            "/v1/messages/count_tokens",
            count_tokens,
            ("POST",),
            Operation(
                "Estimate a message's input tokens (Anthropic Messages API)",
                CountTokensRequest,
                TokenCount,
                (400, 401, 403, 404, 413, 415, 429, 503),
                auth=True,
                anthropic_errors=True,
            ),
        ),
        Route(
            "/v1/responses",
            responses,
            ("POST",),
            Operation(
                "Create a response (OpenAI Responses API, stateless)",
                ResponsesRequest,
                ResponseObject,
                INVOKE_ERRORS,
                auth=True,
                stream=True,
                openai_errors=True,
            ),
        ),
        Route(
            "/v1/embeddings",
            embeddings,
            ("POST",),
            Operation(
                "Create embeddings (OpenAI-compatible)",
                EmbeddingsRequest,
                EmbeddingsResponse,
                INVOKE_ERRORS,
                auth=True,
                openai_errors=True,
            ),
        ),
        Route(
            "/v1/models",
            list_models,
            doc=Operation(
                "List the project's models (OpenAI-compatible)",
                response=ModelList,
                errors=(401, 403, 429, 503),
                auth=True,
                openai_errors=True,
            ),
        ),
        Route(
            "/v1/models/{model}",
            retrieve_model,
            doc=Operation(
                "Retrieve one of the project's models (OpenAI-compatible)",
                response=ModelCard,
                errors=(401, 403, 429, 503),
                auth=True,
                openai_errors=True,
                path_params=(("model", "a model alias this project may use"),),
            ),
        ),
    ],
    openapi_path="/api/v1/llm/openapi.json",
)


async def llm_invoke(request: Request) -> Response:
    """The deployable entry point (functions-framework --target llm_invoke)."""
    return await _app(request)

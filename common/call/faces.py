"""API faces: how each client-facing API's body becomes a `Call` and an answer goes back.

A face parses and validates its request format and renders answers in its own shape; the
governance between the two is the same for every face: the spec's invoke API
(`/api/v1/llm/invoke`) and OpenAI chat completions (`/v1/chat/completions`) here; embeddings
(common.call.embeddings), the Responses API (common.call.responses) and Anthropic Messages
(common.call.anthropic_face) in their modules. A face that is not chat completions translates
to a chat call, and back; its stream adapter (common.call.stream.StreamAdapter) turns the
upstream's chat events into its own. A new face is a class with the same four methods,
registered in FACES.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.responses import Response

from common import bounds
from common.call.anthropic_face import AnthropicFace
from common.call.embeddings import EmbeddingsFace
from common.call.model import Api, Call, Context
from common.call.responses import ResponsesFace
from common.call.stream import StreamAdapter
from common.errors import BadRequest
from common.http import JSONResponse, validation_error
from common.llm import Completion, StreamCall
from common.schemas import ChatCompletionRequest, InvokeRequest

_FORWARD_EXCLUDE = {"model", "messages", "stream", "stream_options", "parameters"}
# The spec API's stream flag is its top-level field; inside `parameters` it would reach the
# upstream unseen by the broker.
_SPEC_PARAMS_REFUSED = ("stream", "stream_options")


class Face(Protocol):
    """One client-facing API."""

    api: Api

    def parse(self, raw: bytes) -> Call:
        """Validate a body; BadRequest names the first invalid field."""
        ...

    def render(
        self, ctx: Context, result: Completion, cost: Decimal, charge: bounds.Charge
    ) -> Response:
        """The answer to a served call (`charge`: what it was charged)."""
        ...

    def render_cached(self, call: Call, request_id: str, data: dict[str, Any]) -> Response:
        """The answer to a call served from the response cache."""
        ...

    def stream_adapter(self, ctx: Context, stream: StreamCall) -> StreamAdapter | None:
        """What turns the upstream's chat events into this face's (None: relayed as is)."""
        ...


class SpecFace:
    """The spec's invoke API: {model, messages, parameters, stream} -> choices, usage, cost."""

    api: Api = "invoke"

    def parse(self, raw: bytes) -> Call:
        """Validate an invoke body."""
        try:
            spec = InvokeRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error(exc) from None
        params = spec.parameters.model_dump(exclude_none=True)
        for name in _SPEC_PARAMS_REFUSED:
            if name in params:
                raise BadRequest(
                    f"parameters.{name} is not accepted; use the top-level 'stream' field",
                    param=f"parameters.{name}",
                )
        messages = [m.model_dump(exclude_none=True) for m in spec.messages]
        return Call("invoke", spec.model, messages, params, spec.stream, True, len(raw))

    def render(
        self, ctx: Context, result: Completion, cost: Decimal, charge: bounds.Charge
    ) -> Response:
        """The spec's answer, with the tokens the call was charged."""
        body = spec_body(
            result.data,
            ctx.call.model,
            ctx.request_id,
            cost,
            cached=False,
            tokens=(charge.prompt, charge.completion),
        )
        return JSONResponse(body)

    def render_cached(self, call: Call, request_id: str, data: dict[str, Any]) -> Response:
        """The spec's answer for a cache hit (free)."""
        return JSONResponse(spec_body(data, call.model, request_id, Decimal(0), cached=True))

    def stream_adapter(self, ctx: Context, stream: StreamCall) -> StreamAdapter | None:
        """The spec's stream is the upstream's chat stream."""
        return None


class OpenAIChatFace:
    """OpenAI chat completions, forwarded as they are (the model alias put back)."""

    api: Api = "openai"

    def parse(self, raw: bytes) -> Call:
        """Validate a chat.completions body."""
        try:
            oai = ChatCompletionRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error(exc) from None
        params = oai.model_dump(exclude_none=True, exclude=_FORWARD_EXCLUDE)
        client_usage = bool(oai.stream_options and oai.stream_options.include_usage)
        messages = [m.model_dump(exclude_none=True) for m in oai.messages]
        return Call("openai", oai.model, messages, params, bool(oai.stream), client_usage, len(raw))

    def render(
        self, ctx: Context, result: Completion, cost: Decimal, charge: bounds.Charge
    ) -> Response:
        """The upstream's chat.completion; usage replaced by the charge when it was not
        verifiable (the client sees what it was charged, not the upstream's claim)."""
        if charge.unverified is not None:
            usage = {
                "prompt_tokens": charge.prompt,
                "completion_tokens": charge.completion,
                "total_tokens": charge.prompt + charge.completion,
            }
            return JSONResponse({**result.data, "model": ctx.call.model, "usage": usage})
        if result.upstream.model == ctx.call.model and result.data.get("model"):
            return Response(result.body, media_type="application/json")
        return JSONResponse({**result.data, "model": ctx.call.model})

    def render_cached(self, call: Call, request_id: str, data: dict[str, Any]) -> Response:
        """The cached chat.completion under the alias asked for."""
        return JSONResponse({**data, "model": call.model})

    def stream_adapter(self, ctx: Context, stream: StreamCall) -> StreamAdapter | None:
        """Chat chunks are relayed as they are."""
        return None


FACES: dict[Api, Face] = {
    "invoke": SpecFace(),
    "openai": OpenAIChatFace(),
    "embeddings": EmbeddingsFace(),
    "responses": ResponsesFace(),
    "anthropic": AnthropicFace(),
}


def spec_body(
    data: dict[str, Any],
    model: str,
    request_id: str,
    cost: Decimal,
    *,
    cached: bool,
    tokens: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The spec's invoke response built from an OpenAI chat.completion object; `tokens`
    are what the call was charged (else the answer's own usage, if it is usable)."""
    if tokens is None:
        tokens = bounds.read_usage(data.get("usage")) or (0, 0)
    prompt, completion = tokens
    choices = []
    for index, choice in enumerate(data.get("choices") or ()):
        message = choice.get("message") or {}
        entry = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("tool_calls"):
            entry["tool_calls"] = message["tool_calls"]
        choices.append(
            {
                "index": choice.get("index", index),
                "message": entry,
                "finish_reason": choice.get("finish_reason"),
            }
        )
    return {
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        "model": model,
        "request_id": request_id,
        "cost_usd": str(cost),
        "cached": cached,
    }

"""The Anthropic Messages face (`POST /v1/messages`), translated to chat completions.

The request (system, content blocks, tools, tool_choice, stop_sequences, max_tokens) becomes
a chat call that goes through the same pipeline as every call (policy, PII screen of the
translated body, bound, admission, ledger); the chat answer is translated back. Usage is
what the call was charged: `input_tokens` + `cache_read_input_tokens` is the upstream's
`prompt_tokens` (its cached part reported as cache reads, as Anthropic counts them),
`output_tokens` its `completion_tokens`. Streams go through `AnthropicStream`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from common import bounds
from common.anthropic_schemas import (
    AnthropicMessage,
    CacheControl,
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    TextBlock,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)
from common.call.anthropic_stream import AnthropicStream, message_object
from common.call.model import Api, Call, Context
from common.http import JSONResponse, validation_error
from common.llm import Completion, StreamCall
from common.wire import dumps


class AnthropicFace:
    """Anthropic Messages, translated to and from chat completions."""

    api: Api = "anthropic"

    def parse(self, raw: bytes) -> Call:
        """Validate a Messages body and translate it to a chat call."""
        try:
            request = MessagesRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error(exc) from None
        return Call(
            "anthropic",
            request.model,
            chat_messages(request.system, request.messages),
            chat_params(request),
            bool(request.stream),
            True,  # the adapter reads the usage chunk; the client never sees it raw
            len(raw),
        )

    def render(
        self, ctx: Context, result: Completion, cost: Decimal, charge: bounds.Charge
    ) -> Response:
        """The chat answer as a Messages `message`, with the tokens it was charged."""
        tokens = (charge.prompt, charge.completion)
        return JSONResponse(message_object(ctx.request_id, ctx.call.model, result.data, tokens))

    def render_cached(self, call: Call, request_id: str, data: dict[str, Any]) -> Response:
        """A cached chat answer as a `message` (a cache hit is free: usage 0)."""
        return JSONResponse(message_object(request_id, call.model, data, (0, 0)))

    def stream_adapter(self, ctx: Context, stream: StreamCall) -> AnthropicStream:
        """Chat chunks in, Messages events out."""
        return AnthropicStream(ctx, stream)


def _text(blocks: str | list[TextBlock] | None) -> str:
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    return "\n\n".join(block.text for block in blocks)


def _hinted(part: dict[str, Any], hint: CacheControl | None) -> dict[str, Any]:
    """A chat part with its block's prompt-cache breakpoint (kept for Anthropic upstreams,
    dropped by the others)."""
    if hint is None:
        return part
    return {**part, "cache_control": hint.model_dump(exclude_none=True)}


def _content(blocks: str | list[TextBlock] | None) -> str | list[dict[str, Any]]:
    """Text blocks as a chat content: one string, or text parts when a block is a cache
    breakpoint (so that the breakpoint stays where the client put it)."""
    if isinstance(blocks, list) and any(block.cache_control for block in blocks):
        return [
            _hinted({"type": "text", "text": block.text}, block.cache_control) for block in blocks
        ]
    return _text(blocks)


def chat_messages(
    system: str | list[TextBlock] | None, messages: list[AnthropicMessage]
) -> list[dict[str, Any]]:
    """`system` and the conversation as chat messages (tool results as `tool` messages)."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": _content(system)})
    for message in messages:
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for block in message.content:
            if isinstance(block, TextBlock):
                parts.append(_hinted({"type": "text", "text": block.text}, block.cache_control))
            elif isinstance(block, ImageBlock):
                source = block.source
                url = (
                    f"data:{source.media_type};base64,{source.data}"
                    if source.type == "base64"
                    else source.url
                )
                part = {"type": "image_url", "image_url": {"url": url}}
                parts.append(_hinted(part, block.cache_control))
            elif isinstance(block, ToolUseBlock):
                arguments = dumps(block.input).decode()  # integers beyond 64 bits too
                calls.append(
                    {
                        "id": block.id,
                        "type": "function",
                        "function": {"name": block.name, "arguments": arguments},
                    }
                )
            elif isinstance(block, ToolResultBlock):
                content = _text(block.content)
                if block.is_error:
                    content = f"Error: {content}"
                result: str | list[dict[str, Any]] = content
                if block.cache_control is not None:
                    result = [_hinted({"type": "text", "text": content}, block.cache_control)]
                out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": result})
        if message.role == "assistant":
            text = "".join(p["text"] for p in parts if p["type"] == "text")
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = calls
            if text or calls:
                out.append(entry)
        elif parts:
            out.append({"role": "user", "content": parts})
    return out


def chat_params(request: MessagesRequest) -> dict[str, Any]:
    """The chat parameters a Messages request maps to."""
    params: dict[str, Any] = {"max_completion_tokens": request.max_tokens}
    if request.stop_sequences:
        params["stop"] = request.stop_sequences
    for name in ("temperature", "top_p"):
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    if request.metadata is not None and request.metadata.user_id:
        params["user"] = request.metadata.user_id
    return {**params, **chat_tools(request)}


def chat_tools(request: CountTokensRequest) -> dict[str, Any]:
    """The chat `tools` and `tool_choice` of a Messages request's tools."""
    params: dict[str, Any] = {}
    if request.tools:
        params["tools"] = [
            _hinted(
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        **({"description": tool.description} if tool.description else {}),
                        "parameters": tool.input_schema,
                    },
                },
                tool.cache_control,
            )
            for tool in request.tools
        ]
    choice = request.tool_choice
    if choice is not None:
        if isinstance(choice, ToolChoiceTool):
            params["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            params["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use and request.tools:
            params["parallel_tool_calls"] = False
    return params

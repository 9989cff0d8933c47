"""The Responses face (`POST /v1/responses`, OpenAI's Responses API), served statelessly.

A Responses request is translated to a chat completion for the upstream (the call goes
through the same pipeline as a chat call: policy, PII screen of the translated body, bound,
admission, ledger) and the chat answer is translated back. Usage is exact: `input_tokens` /
`output_tokens` are what the call was charged, i.e. the upstream's chat `prompt_tokens` /
`completion_tokens` once verified. Nothing is stored: `previous_response_id` (and
`store: true` semantics beyond this answer) are not served, and a call naming a previous
response is a 400. Only function tools map; any other field is refused by name.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from common import bounds
from common.call.model import Api, Call, Context
from common.call.responses_stream import ResponsesStream, response_object
from common.face_schemas import (
    FunctionCallItem,
    FunctionCallOutput,
    InputMessage,
    PlainFormat,
    ResponsesRequest,
    SchemaFormat,
)
from common.http import JSONResponse, validation_error
from common.llm import Completion, StreamCall


class ResponsesFace:
    """OpenAI Responses, translated to and from chat completions."""

    api: Api = "responses"

    def parse(self, raw: bytes) -> Call:
        """Validate a Responses body and translate it to a chat call."""
        try:
            request = ResponsesRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error(exc) from None
        messages = chat_messages(request)
        return Call(
            "responses",
            request.model,
            messages,
            chat_params(request),
            bool(request.stream),
            True,  # the adapter reads the usage chunk; the client never sees it raw
            len(raw),
        )

    def render(
        self, ctx: Context, result: Completion, cost: Decimal, charge: bounds.Charge
    ) -> Response:
        """The chat answer as a `response` object, with the tokens it was charged."""
        return JSONResponse(response_object(ctx, result.data, (charge.prompt, charge.completion)))

    def render_cached(self, call: Call, request_id: str, data: dict[str, Any]) -> Response:
        """A cached chat answer as a `response` object (a cache hit is free: usage 0)."""
        return JSONResponse(response_object(None, data, (0, 0), call=call, request_id=request_id))

    def stream_adapter(self, ctx: Context, stream: StreamCall) -> ResponsesStream:
        """Chat chunks in, Responses events out."""
        return ResponsesStream(ctx, stream)


def chat_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` and `input` as chat messages."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
        return messages
    for item in request.input:
        if isinstance(item, InputMessage):
            messages.append({"role": item.role, "content": _content(item)})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return messages


def _content(item: InputMessage) -> str | list[dict[str, Any]]:
    if isinstance(item.content, str):
        return item.content
    parts: list[dict[str, Any]] = []
    for part in item.content:
        if part.type == "input_image":
            image: dict[str, Any] = {"url": part.image_url}
            if part.detail is not None:
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
        else:
            parts.append({"type": "text", "text": part.text})
    return parts


def chat_params(request: ResponsesRequest) -> dict[str, Any]:
    """The chat parameters a Responses request maps to."""
    params: dict[str, Any] = {}
    if request.max_output_tokens is not None:
        params["max_completion_tokens"] = request.max_output_tokens
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    if request.tools:
        params["tools"] = [
            {
                "type": "function",
                "function": tool.model_dump(exclude_none=True, exclude={"type"}),
            }
            for tool in request.tools
        ]
    choice = request.tool_choice
    if isinstance(choice, str):
        params["tool_choice"] = choice
    elif choice is not None:
        params["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    fmt = request.text.format if request.text is not None else None
    if isinstance(fmt, PlainFormat) and fmt.type == "json_object":
        params["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, SchemaFormat):
        spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            spec["strict"] = fmt.strict
        if fmt.description is not None:
            spec["description"] = fmt.description
        params["response_format"] = {"type": "json_schema", "json_schema": spec}
    if request.reasoning is not None and request.reasoning.effort is not None:
        params["reasoning_effort"] = request.reasoning.effort
    return params

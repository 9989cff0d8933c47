"""Chat completions translated to the Responses API: the `response` object, and its events.

`response_object` builds a `response` from a chat.completion. `ResponsesStream` is the stream
adapter of the Responses face: it takes the upstream's chat chunks (after the PII filter)
and emits `response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta`... and at the upstream's
`[DONE]` the `.done` events and `response.completed` with usage. The usage is what the call
is charged (the upstream's claim checked against the bound, exactly as the settle checks it:
common.bounds.verify), so the client sees the tokens the ledger holds. A stream that ends
any other way ends with `response.failed`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from common.call.chat_events import ChatEventTranslator
from common.call.model import Call, Context
from common.llm import StreamCall


def _ids(request_id: str) -> tuple[str, str]:
    """The response id and its message item id, from the request id."""
    tail = request_id.removeprefix("req_")
    return f"resp_{tail}", f"msg_{tail}"


def _usage(data: dict[str, Any], tokens: tuple[int, int]) -> dict[str, Any]:
    prompt, completion = tokens
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    cached = _detail(usage, "prompt_tokens_details", "cached_tokens", prompt)
    reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens", completion)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def _detail(usage: Any, group: str, name: str, most: int) -> int:
    """A detail count of the upstream's usage, if plausible (else 0)."""
    details = usage.get(group) if isinstance(usage, dict) else None
    value = details.get(name) if isinstance(details, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most:
        return value
    return 0


def _status(finish: object) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _envelope(
    response_id: str, model: str, created: int, call: Call, status: str
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": call.params.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "store": False,
        "temperature": call.params.get("temperature"),
        "top_p": call.params.get("top_p"),
        "max_output_tokens": call.params.get("max_completion_tokens"),
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "metadata": {},
        "usage": None,
    }


def _message_item(item_id: str, text: str, refusal: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append({"type": "output_text", "text": text, "annotations": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {
        "type": "message",
        "id": item_id,
        "status": "completed",
        "role": "assistant",
        "content": content,
    }


def _call_item(response_id: str, index: int, call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": f"fc_{response_id.removeprefix('resp_')}_{index}",
        "call_id": str(call.get("id") or f"call_{index}"),
        "name": str(function.get("name") or ""),
        "arguments": str(function.get("arguments") or ""),
        "status": "completed",
    }


def response_object(
    ctx: Context | None,
    data: dict[str, Any],
    tokens: tuple[int, int],
    *,
    call: Call | None = None,
    request_id: str = "",
) -> dict[str, Any]:
    """The `response` for a chat.completion; `tokens`: what the call was charged."""
    if ctx is not None:
        call, request_id = ctx.call, ctx.request_id
    assert call is not None
    response_id, item_id = _ids(request_id)
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    assert isinstance(message, dict)
    status, incomplete = _status(choice.get("finish_reason"))
    created = data.get("created") if isinstance(data.get("created"), int) else int(time.time())
    assert isinstance(created, int)
    body = _envelope(response_id, call.model, created, call, status)
    text = message.get("content") if isinstance(message.get("content"), str) else ""
    refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else None
    output: list[dict[str, Any]] = []
    tool_calls = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []
    assert isinstance(tool_calls, list)
    if text or refusal or not tool_calls:
        output.append(_message_item(item_id, str(text), refusal))
    for index, tool_call in enumerate(tool_calls):
        if isinstance(tool_call, dict):
            output.append(_call_item(response_id, index, tool_call))
    body.update(output=output, incomplete_details=incomplete, usage=_usage(data, tokens))
    if "bradax" in data:
        body["bradax"] = data["bradax"]  # the PII redaction notice
    return body


class ResponsesStream(ChatEventTranslator):
    """The stream adapter of the Responses face (see the module docstring)."""

    def __init__(self, ctx: Context, stream: StreamCall) -> None:
        super().__init__(ctx, stream)
        self.response_id, self.item_id = _ids(ctx.request_id)
        self.created = int(time.time())
        self.sequence = 0
        self.opened = False  # the message item and its text part
        self.text: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _response(self, status: str) -> dict[str, Any]:
        return _envelope(self.response_id, self.ctx.call.model, self.created, self.ctx.call, status)

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        created = self._event("response.created", response=self._response("in_progress"))
        return [
            created,
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    def _upstream_error(self, error: dict[str, Any]) -> list[bytes]:
        return self._failed(error)

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        assert isinstance(delta, dict)
        text = delta.get("content")
        if isinstance(text, str) and text:
            if not self.opened:
                out += self._open()
            self.text.append(text)
            out.append(
                self._event(
                    "response.output_text.delta",
                    item_id=self.item_id,
                    output_index=0,
                    content_index=0,
                    delta=text,
                    logprobs=[],
                )
            )
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            index = call.get("index") if isinstance(call.get("index"), int) else 0
            assert isinstance(index, int)
            held = self.tool_calls.setdefault(index, {"id": None, "function": {}})
            if call.get("id"):
                held["id"] = call["id"]
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            assert isinstance(function, dict)
            if function.get("name"):
                held["function"]["name"] = function["name"]
            if isinstance(function.get("arguments"), str):
                args = held["function"].get("arguments", "")
                held["function"]["arguments"] = args + function["arguments"]
        return out

    def _open(self) -> list[bytes]:
        self.opened = True
        item = {
            "type": "message",
            "id": self.item_id,
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        part = {"type": "output_text", "text": "", "annotations": []}
        return [
            self._event("response.output_item.added", output_index=0, item=item),
            self._event(
                "response.content_part.added",
                item_id=self.item_id,
                output_index=0,
                content_index=0,
                part=part,
            ),
        ]

    def _complete(self) -> list[bytes]:
        self.ended = True
        out: list[bytes] = []
        text = "".join(self.text)
        output: list[dict[str, Any]] = []
        if self.opened or not self.tool_calls:
            if not self.opened:
                out += self._open()
            item = _message_item(self.item_id, text, None)
            common = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
            out.append(self._event("response.output_text.done", text=text, logprobs=[], **common))
            out.append(self._event("response.content_part.done", part=item["content"][0], **common))
            out.append(self._event("response.output_item.done", output_index=0, item=item))
            output.append(item)
        for index in sorted(self.tool_calls):
            position = len(output)
            item = _call_item(self.response_id, index, self.tool_calls[index])
            added = {**item, "arguments": "", "status": "in_progress"}
            out.append(self._event("response.output_item.added", output_index=position, item=added))
            common = {"item_id": item["id"], "output_index": position}
            out.append(
                self._event(
                    "response.function_call_arguments.delta", delta=item["arguments"], **common
                )
            )
            out.append(
                self._event(
                    "response.function_call_arguments.done", arguments=item["arguments"], **common
                )
            )
            out.append(self._event("response.output_item.done", output_index=position, item=item))
            output.append(item)
        status, incomplete = _status(self.finish_reason)
        response = self._response(status)
        response.update(
            output=output,
            incomplete_details=incomplete,
            usage=_usage(self.usage_chunk, self._charged()),
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [*out, self._event(kind, response=response)]

    def _failed(self, error: dict[str, Any]) -> list[bytes]:
        self.ended = True
        response = self._response("failed")
        response.update(
            error={
                "code": str(error.get("code") or "server_error"),
                "message": str(error.get("message") or ""),
            },
            usage=_usage({}, self._charged()),
        )
        return [self._event("response.failed", response=response)]

    def tail(self, outcome: str) -> list[bytes]:
        """The last events of a stream that did not complete (`outcome`: cut, timeout...)."""
        if self.ended:
            return []
        error = {
            "code": f"upstream_stream_{outcome}",
            "message": f"upstream stream ended early ({outcome})",
        }
        return [*self._start(), *self._failed(error)]

"""`POST /v1/messages/count_tokens`: an estimate of a Messages request's input tokens.

OpenAI-compatible upstreams have no token-counting endpoint and the broker ships no
tokenizer, so the count is an estimate of the translated chat request: a token per 4 bytes
of its text (tool definitions included), 4 per message and 3 per request, plus each image's
bound (common.bounds). No upstream is called and nothing is billed. The request is
validated as /v1/messages would validate it (without max_tokens), and the model must be one
the project may use.
"""

from __future__ import annotations

from pydantic import ValidationError

from common import bounds
from common.anthropic_schemas import CountTokensRequest
from common.call.anthropic_face import chat_messages
from common.http import validation_error
from common.wire import dumps


def parse(raw: bytes) -> CountTokensRequest:
    """Validate a count_tokens body."""
    try:
        return CountTokensRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None


def estimate(request: CountTokensRequest) -> int:
    """The estimated input tokens of the request (see the module docstring)."""
    messages = chat_messages(request.system, request.messages)
    found = bounds.media(messages)
    text = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            text += len(content.encode())
        elif isinstance(content, list):
            text += sum(
                len(str(p.get("text", "")).encode()) for p in content if isinstance(p, dict)
            )
        for call in message.get("tool_calls") or ():
            text += len(dumps(call["function"]))
    if request.tools:
        text += len(dumps([t.model_dump(exclude_none=True) for t in request.tools]))
    return 3 + 4 * len(messages) + -(-text // 4) + found.tokens(request.model)

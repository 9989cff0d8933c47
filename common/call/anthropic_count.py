"""`POST /v1/messages/count_tokens`: a Messages request's input tokens, counted or estimated.

A model served by an Anthropic upstream counts them itself: the request, translated and
screened as /v1/messages would be (personal data redacted or refused for LGPD projects), goes
to its `/messages/count_tokens` (free there; not billed here). Other upstreams have no
token-counting endpoint and the broker ships no tokenizer, so for them (and when the
Anthropic upstream cannot answer) the count is an estimate of the translated chat request: a
token per 4 bytes of its text (tool definitions included), 4 per message and 3 per request,
plus each image's bound (common.bounds). `X-Bradax-Token-Count` says which: `upstream` or
`estimate`. The request is validated as /v1/messages would validate it (without max_tokens),
and the model must be one the project may use.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from common import bounds
from common.anthropic_schemas import CountTokensRequest
from common.call.anthropic_face import chat_messages, chat_tools
from common.http import validation_error
from common.wire import dumps


def parse(raw: bytes) -> CountTokensRequest:
    """Validate a count_tokens body."""
    try:
        return CountTokensRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None


def chat_body(request: CountTokensRequest) -> dict[str, Any]:
    """The chat body whose input tokens are counted (a token cap only because a Messages
    request needs one; it is not sent to count_tokens)."""
    return {
        "model": request.model,
        "messages": chat_messages(request.system, request.messages),
        "max_tokens": 1,
        **chat_tools(request),
    }


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

"""Typed objects of the broker's API (pydantic): messages, answers, stream deltas, tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Choice",
    "InvokeResponse",
    "Message",
    "MessagesInput",
    "StreamDelta",
    "TokenPair",
    "Usage",
    "normalize_messages",
]


class Message(BaseModel):
    """A chat message in OpenAI's shape; extra fields (tool_calls, ...) are kept."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


MessagesInput = str | Sequence[Message | Mapping[str, Any]]
"""What `invoke` accepts: one user prompt as a string, or messages (models or dicts)."""


def normalize_messages(messages: MessagesInput) -> list[dict[str, Any]]:
    """Messages as JSON-ready dicts; a bare string becomes one user message."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out: list[dict[str, Any]] = []
    for item in messages:
        if isinstance(item, Message):
            out.append(item.model_dump(exclude_none=True))
        else:
            out.append(dict(item))
    if not out:
        raise ValueError("messages must not be empty")
    return out


class Usage(BaseModel):
    """Token counts of a call."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Choice(BaseModel):
    """One choice of an answer."""

    model_config = ConfigDict(extra="allow")

    index: int = 0
    message: Message
    finish_reason: str | None = None


class InvokeResponse(BaseModel):
    """The answer of POST /api/v1/llm/invoke.

    `cost_usd` is exact (Decimal); `cached` is True when the broker's response cache answered;
    `replayed` is True when the broker replayed the stored answer of an earlier attempt with
    the same Idempotency-Key (no second upstream call, no second charge).
    """

    choices: list[Choice]
    usage: Usage
    model: str
    request_id: str
    cost_usd: Decimal
    cached: bool = False
    replayed: bool = False

    @property
    def text(self) -> str:
        """The first choice's text ("" if it has none)."""
        if not self.choices:
            return ""
        content = self.choices[0].message.content
        return content if isinstance(content, str) else ""

    @property
    def finish_reason(self) -> str | None:
        """The first choice's finish reason."""
        return self.choices[0].finish_reason if self.choices else None


class StreamDelta(BaseModel):
    """One piece of a streamed answer.

    `content` is the text piece ("" when the event carries none), `role` comes with the first
    delta, `finish_reason` with the last delta of a choice, and `usage` with the final event.
    `raw` is the choice's delta as sent (tool_calls and the like).
    """

    index: int = 0
    content: str = ""
    role: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict)


class TokenPair(BaseModel):
    """The answer of /api/v1/auth/token and /api/v1/auth/refresh."""

    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    token_type: str = "Bearer"
    scopes: list[str] = Field(default_factory=list)

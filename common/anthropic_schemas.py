"""The HTTP contract of the Anthropic Messages face (`POST /v1/messages`, `count_tokens`).

Requests reject unknown fields and content blocks the broker cannot translate for its
upstreams (thinking, documents, server tools), so a refusal names what is not served.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    field_validator,
)

from common.schemas import Strict, _no_coercion


class CacheControl(Strict):
    """A prompt-caching hint (accepted; OpenAI upstreams cache on their own)."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(Strict):
    """A text content block."""

    type: Literal["text"]
    text: StrictStr
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class Base64Source(Strict):
    """An image as base64 data."""

    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: StrictStr = Field(min_length=1)


class UrlSource(Strict):
    """An image by URL."""

    type: Literal["url"]
    url: StrictStr = Field(min_length=1)


class ImageBlock(Strict):
    """An image content block."""

    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None


class ToolUseBlock(Strict):
    """A tool call the model made earlier (in an assistant message)."""

    type: Literal["tool_use"]
    id: StrictStr = Field(min_length=1, max_length=256)
    name: StrictStr = Field(min_length=1, max_length=128)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(Strict):
    """The result of a tool call (in a user message)."""

    type: Literal["tool_result"]
    tool_use_id: StrictStr = Field(min_length=1, max_length=256)
    content: StrictStr | list[TextBlock] | None = None
    is_error: StrictBool | None = None
    cache_control: CacheControl | None = None


# Plain unions (each block's `type` is a const): schemathesis cannot always generate arrays of
# discriminated oneOf items.
UserBlock = TextBlock | ImageBlock | ToolResultBlock
AssistantBlock = TextBlock | ToolUseBlock


class UserMessage(Strict):
    """A user turn: text, images, tool results."""

    role: Literal["user"]
    content: StrictStr | Annotated[list[UserBlock], Field(min_length=1, max_length=1024)]


class AssistantMessage(Strict):
    """An assistant turn: text and tool calls."""

    role: Literal["assistant"]
    content: StrictStr | Annotated[list[AssistantBlock], Field(min_length=1, max_length=1024)]


AnthropicMessage = UserMessage | AssistantMessage


class AnthropicTool(Strict):
    """A client tool (custom tools only: server tools are billed outside tokens)."""

    type: Literal["custom"] | None = None
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: StrictStr | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolChoiceMode(Strict):
    """How the model may use tools: auto, any (at least one), none."""

    type: Literal["auto", "any", "none"]
    disable_parallel_tool_use: StrictBool | None = None


class ToolChoiceTool(Strict):
    """The model must call the named tool."""

    type: Literal["tool"]
    name: StrictStr = Field(min_length=1, max_length=64)
    disable_parallel_tool_use: StrictBool | None = None


ToolChoice = Annotated[ToolChoiceMode | ToolChoiceTool, Field(discriminator="type")]


class Metadata(Strict):
    """Request metadata."""

    user_id: StrictStr | None = Field(default=None, max_length=256)


class CountTokensRequest(Strict):
    """POST /v1/messages/count_tokens: what a Messages request's input would count."""

    model: str = Field(min_length=1, max_length=128)
    messages: Annotated[list[AnthropicMessage], Field(min_length=1, max_length=4096)]
    system: StrictStr | list[TextBlock] | None = None
    tools: Annotated[list[AnthropicTool], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages: Anthropic's Messages API."""

    max_tokens: int = Field(ge=1)
    stop_sequences: Annotated[list[StrictStr], Field(max_length=4)] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: StrictBool | None = False
    metadata: Metadata | None = None

    @field_validator("max_tokens", "temperature", "top_p", mode="before")
    @classmethod
    def _numbers_only(cls, value: object) -> object:
        return _no_coercion(value)


class AnthropicUsage(BaseModel):
    """What a Messages call was charged."""

    model_config = ConfigDict(extra="allow")

    input_tokens: int
    output_tokens: int


class MessageObject(BaseModel):
    """The answer of POST /v1/messages."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    usage: AnthropicUsage


class TokenCount(BaseModel):
    """The answer of POST /v1/messages/count_tokens."""

    input_tokens: int

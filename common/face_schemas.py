"""The HTTP contract of the faces beyond chat: embeddings and the Responses API.

Requests reject unknown fields (a typo fails loudly, and nothing reaches the upstream that
the broker did not read and bound); answers are documented with the fields the broker sets.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from common.schemas import Strict, _no_coercion

_Text = Annotated[StrictStr, Field(min_length=1)]
_TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class EmbeddingsRequest(Strict):
    """POST /v1/embeddings: one or many inputs (text, or token ids) to embed."""

    model: str = Field(min_length=1, max_length=128)
    input: (
        _Text
        | Annotated[list[_Text], Field(min_length=1, max_length=2048)]
        | _TokenIds
        | Annotated[list[_TokenIds], Field(min_length=1, max_length=2048)]
    )
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("dimensions", mode="before")
    @classmethod
    def _number_only(cls, value: object) -> object:
        return _no_coercion(value)

    @field_validator("input", mode="before")
    @classmethod
    def _token_ids_are_numbers(cls, value: object) -> object:
        """Token ids are JSON numbers: true is not 1, nor "7" 7."""
        items = value if isinstance(value, list) else ()
        for item in items:
            for entry in item if isinstance(item, list) else (item,):
                if isinstance(entry, bool) or (isinstance(item, list) and isinstance(entry, str)):
                    raise ValueError("token ids must be JSON integers")
        if (
            items
            and any(isinstance(i, str) for i in items)
            and not all(isinstance(i, str) for i in items)
        ):
            raise ValueError("input mixes texts and token ids")
        return value


class Embedding(BaseModel):
    """One embedding of the answer."""

    model_config = ConfigDict(extra="allow")

    object: str = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    """What an embeddings call was billed."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    """The answer of POST /v1/embeddings."""

    model_config = ConfigDict(extra="allow")

    object: str = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


class InputText(Strict):
    """A text part of a Responses input message."""

    type: Literal["input_text", "output_text"]
    text: StrictStr
    annotations: list[dict[str, object]] | None = None


class InputImage(Strict):
    """An image part of a Responses input message (by URL or data URL)."""

    type: Literal["input_image"]
    image_url: StrictStr = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class InputMessage(Strict):
    """A message item of a Responses input."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: (
        StrictStr
        | Annotated[
            list[InputText | InputImage],  # a plain union: see common.anthropic_schemas
            Field(min_length=1, max_length=512),
        ]
    )
    id: str | None = None
    status: str | None = None


class FunctionCallItem(Strict):
    """A function call the model made earlier, sent back as input."""

    type: Literal["function_call"]
    call_id: StrictStr = Field(min_length=1, max_length=256)
    name: StrictStr = Field(min_length=1, max_length=256)
    arguments: StrictStr
    id: str | None = None
    status: str | None = None


class FunctionCallOutput(Strict):
    """The output of a function call, sent back as input."""

    type: Literal["function_call_output"]
    call_id: StrictStr = Field(min_length=1, max_length=256)
    output: StrictStr
    id: str | None = None
    status: str | None = None


class FunctionTool(Strict):
    """A function the model may call (the only tool type served: others are billed outside
    tokens or need state the broker does not keep)."""

    type: Literal["function"]
    name: StrictStr = Field(min_length=1, max_length=64)
    description: StrictStr | None = None
    parameters: dict[str, object] | None = None
    strict: StrictBool | None = None


class NamedFunction(Strict):
    """tool_choice naming one function."""

    type: Literal["function"]
    name: StrictStr = Field(min_length=1, max_length=64)


class PlainFormat(Strict):
    """The answer as plain text (the default) or any JSON object."""

    type: Literal["text", "json_object"]


class SchemaFormat(Strict):
    """The answer as JSON following a schema."""

    type: Literal["json_schema"]
    name: StrictStr = Field(min_length=1, max_length=64)
    schema_: dict[str, object] = Field(alias="schema")
    description: StrictStr | None = None
    strict: StrictBool | None = None


class TextOptions(Strict):
    """The `text` field of a Responses request."""

    format: PlainFormat | SchemaFormat | None = None


class Reasoning(Strict):
    """Reasoning options (the effort only)."""

    effort: Literal["minimal", "low", "medium", "high"] | None = None


class ResponsesRequest(Strict):
    """POST /v1/responses: OpenAI's Responses API, served statelessly (nothing is stored, so
    `previous_response_id` is refused)."""

    model: str = Field(min_length=1, max_length=128)
    input: (
        Annotated[StrictStr, Field(min_length=1)]
        | Annotated[
            list[InputMessage | FunctionCallItem | FunctionCallOutput],
            Field(min_length=1, max_length=4096),
        ]
    )
    instructions: StrictStr | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: StrictBool | None = False
    store: StrictBool | None = None
    previous_response_id: None = Field(
        default=None, description="not supported: this broker is stateless (must be null)"
    )
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunction | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextOptions | None = None
    reasoning: Reasoning | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("max_output_tokens", "temperature", "top_p", mode="before")
    @classmethod
    def _numbers_only(cls, value: object) -> object:
        return _no_coercion(value)

    @field_validator("previous_response_id", mode="before")
    @classmethod
    def _stateless(cls, value: object) -> object:
        if value is not None:
            raise ValueError(
                "not supported: this broker keeps no responses; send the whole conversation "
                "in 'input'"
            )
        return value


class ResponsesUsage(BaseModel):
    """What a Responses call was charged."""

    model_config = ConfigDict(extra="allow")

    input_tokens: int
    output_tokens: int
    total_tokens: int


class ResponseObject(BaseModel):
    """The answer of POST /v1/responses (a `response` object)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str = "response"
    created_at: int
    status: str
    model: str
    output: list[dict[str, Any]]
    usage: ResponsesUsage

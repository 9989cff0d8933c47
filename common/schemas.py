"""The HTTP contract: pydantic models every function validates with and OpenAPI is built from."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator


def _no_coercion(value: object) -> object:
    """JSON numbers only: lax mode would turn true into 1 and "16" into 16."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number")
    return value


class Strict(BaseModel):
    """Request bodies reject unknown fields, so typos fail loudly."""

    model_config = ConfigDict(extra="forbid")


class TokenRequest(Strict):
    """POST /api/v1/auth/token: exchange a project API key for tokens."""

    # Documented here, checked (with its own message) by the handler: PROJECT_ID_PATTERN.
    project_id: str = Field(
        min_length=1,
        max_length=128,
        json_schema_extra={"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,127}$"},
    )
    api_key: str = Field(min_length=1, max_length=512)


class RefreshRequest(Strict):
    """POST /api/v1/auth/refresh: rotate a refresh token."""

    refresh_token: str = Field(min_length=1, max_length=8192)


class RevokeRequest(Strict):
    """POST /api/v1/auth/revoke: revoke a refresh token's session (or one access token)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["refresh_token"],
                    "properties": {"refresh_token": {"type": "string"}},
                },
                {"required": ["token"], "properties": {"token": {"type": "string"}}},
            ]
        },
    )

    refresh_token: str | None = Field(default=None, min_length=1, max_length=8192)
    token: str | None = Field(default=None, min_length=1, max_length=8192)

    @model_validator(mode="after")
    def _one_token(self) -> RevokeRequest:
        if (self.refresh_token is None) == (self.token is None):
            raise ValueError("give exactly one of refresh_token or token")
        return self

    @property
    def value(self) -> str:
        """The token to revoke."""
        return self.refresh_token or self.token or ""


class TokenResponse(BaseModel):
    """The token pair (the spec's response, plus refresh_expires_in)."""

    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    token_type: str = "Bearer"
    scopes: list[str]


class RevokeResponse(BaseModel):
    """Revocation outcome."""

    revoked: bool


# --- chat (the spec's invoke API and the OpenAI-compatible API) ---------------------------

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ContentPart(BaseModel):
    """One part of a multi-part message (text, image_url, input_audio, ...)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1, max_length=64)
    text: str | None = None


class ChatMessage(BaseModel):
    """A chat message in OpenAI's shape (extra fields such as tool_calls pass through)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "if": {
                "properties": {"role": {"enum": ["system", "developer", "user"]}},
                "required": ["role"],
            },
            "then": {
                "required": ["content"],
                "properties": {"content": {"not": {"type": "null"}}},
            },
        },
    )

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None and self.role in ("system", "developer", "user"):
            raise ValueError(f"a {self.role} message needs content")
        return self


class ChatParameters(BaseModel):
    """Generation parameters (OpenAI's names); unknown ones are forwarded to the upstream."""

    model_config = ConfigDict(extra="allow")

    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=8)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    user: str | None = Field(default=None, max_length=256)

    @field_validator(
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        mode="before",
    )
    @classmethod
    def _numbers_only(cls, value: object) -> object:
        return _no_coercion(value)


class InvokeRequest(Strict):
    """POST /api/v1/llm/invoke: the spec's body."""

    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    parameters: ChatParameters = Field(default_factory=ChatParameters)
    stream: StrictBool = False


class StreamOptions(BaseModel):
    """OpenAI's stream_options."""

    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None


class ChatCompletionRequest(ChatParameters):
    """POST /v1/chat/completions: OpenAI's body (parameters at the top level)."""

    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None


class Usage(BaseModel):
    """Token counts of a call."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class InvokeMessage(BaseModel):
    """The assistant's message."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | None = None


class InvokeChoice(BaseModel):
    """One choice of the answer."""

    model_config = ConfigDict(extra="allow")

    index: int = 0
    message: InvokeMessage
    finish_reason: str | None = None


class InvokeResponse(BaseModel):
    """The spec's response (plus cost_usd, an exact decimal string)."""

    choices: list[InvokeChoice]
    usage: Usage
    model: str
    request_id: str
    cost_usd: str
    cached: bool = False


class ChatCompletionMessage(BaseModel):
    """The assistant message in an OpenAI chat.completion."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | None = None


class ChatCompletionChoice(BaseModel):
    """One choice of an OpenAI chat.completion."""

    model_config = ConfigDict(extra="allow")

    index: int
    message: ChatCompletionMessage
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    """OpenAI's chat.completion object (as relayed from the upstream)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One model of GET /v1/models."""

    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """GET /v1/models."""

    object: str = "list"
    data: list[ModelCard]


class HealthServices(BaseModel):
    """Each dependency's state: healthy, unhealthy, not_configured."""

    database: str
    redis: str
    openai: str


class HealthResponse(BaseModel):
    """GET /health."""

    model_config = ConfigDict(extra="allow")

    status: Literal["healthy", "degraded", "unhealthy"]
    timestamp: str
    services: HealthServices
    version: str


class DetailedHealthResponse(HealthResponse):
    """GET /health/detailed."""

    checks: dict[str, dict[str, object]]
    pools: dict[str, dict[str, int]]
    schema_: dict[str, int | None] = Field(alias="schema")
    uptime_seconds: float


class ReadyResponse(BaseModel):
    """GET /ready (200: ready; 503: not_ready with reasons)."""

    status: Literal["ready", "not_ready"]
    reasons: list[str] | None = None


class LiveResponse(BaseModel):
    """GET /live."""

    status: Literal["alive"]


class BudgetReport(BaseModel):
    """The project's budget for the current month (USD as exact strings)."""

    month: str
    monthly_usd: str
    used_usd: str
    reserved_usd: str
    remaining_usd: str


class ProjectMetrics(BaseModel):
    """GET /metrics: the spec's per-project figures, exact from the ledger."""

    model_config = ConfigDict(extra="allow")

    total_requests: int
    successful_requests: int
    failed_requests: int
    average_latency_ms: int
    total_cost_usd: float
    total_cost_usd_exact: str
    models_usage: dict[str, int]
    project_id: str
    budget: BudgetReport

"""The HTTP contract: pydantic models every function validates with and OpenAPI is built from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Request bodies reject unknown fields, so typos fail loudly."""

    model_config = ConfigDict(extra="forbid")


class TokenRequest(Strict):
    """POST /api/v1/auth/token: exchange a project API key for tokens."""

    project_id: str = Field(min_length=1, max_length=128)
    api_key: str = Field(min_length=1, max_length=512)


class RefreshRequest(Strict):
    """POST /api/v1/auth/refresh: rotate a refresh token."""

    refresh_token: str = Field(min_length=1, max_length=8192)


class RevokeRequest(Strict):
    """POST /api/v1/auth/revoke: revoke a refresh token's session (or one access token)."""

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

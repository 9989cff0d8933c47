"""What both clients share: configuration, request bodies, and answers turned into objects."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from bradax.errors import APIConnectionError, APITimeoutError, BradaxError, error_from_body
from bradax.models import InvokeResponse, MessagesInput, TokenPair, normalize_messages

__version__ = "0.1.0"

DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
"""LLM calls are slow: two minutes to answer, ten seconds to connect."""

TOKEN_PATH = "/api/v1/auth/token"
REFRESH_PATH = "/api/v1/auth/refresh"
REVOKE_PATH = "/api/v1/auth/revoke"
INVOKE_PATH = "/api/v1/llm/invoke"
USER_AGENT = f"bradax-sdk-python/{__version__}"


@dataclass(frozen=True)
class Config:
    """Where the broker is and who we are."""

    base_url: str
    project_id: str
    api_key: str

    @classmethod
    def resolve(cls, base_url: str | None, project_id: str | None, api_key: str | None) -> Config:
        """Arguments first, then BRADAX_BASE_URL / BRADAX_PROJECT_ID / BRADAX_API_KEY."""
        values = {
            "base_url": base_url or os.environ.get("BRADAX_BASE_URL"),
            "project_id": project_id or os.environ.get("BRADAX_PROJECT_ID"),
            "api_key": api_key or os.environ.get("BRADAX_API_KEY"),
        }
        missing = [f"{k} (BRADAX_{k.upper()})" for k, v in values.items() if not v]
        if missing:
            raise ValueError(f"bradax: missing {', '.join(missing)}")
        return cls(
            str(values["base_url"]).rstrip("/"),
            str(values["project_id"]),
            str(values["api_key"]),
        )

    @property
    def openai_base_url(self) -> str:
        """The broker's OpenAI-compatible API."""
        return f"{self.base_url}/v1"


def default_headers(extra: Mapping[str, str] | None) -> dict[str, str]:
    """Headers every request carries."""
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    headers.update(extra or {})
    return headers


def invoke_body(
    model: str, messages: MessagesInput, parameters: Mapping[str, Any], stream: bool
) -> dict[str, Any]:
    """The body of POST /api/v1/llm/invoke (parameters set to None are left out)."""
    return {
        "model": model,
        "messages": normalize_messages(messages),
        "parameters": {k: v for k, v in parameters.items() if v is not None},
        "stream": stream,
    }


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


def connection_error(exc: httpx.TransportError) -> APIConnectionError:
    """The SDK error for an httpx transport failure; `sent` is False for connect failures."""
    sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(message, sent=sent)
    return APIConnectionError(message, sent=sent)


def request_id(response: httpx.Response) -> str | None:
    """The answer's X-Request-ID."""
    value = response.headers.get("x-request-id")
    return str(value) if value else None


def response_error(response: httpx.Response) -> BradaxError:
    """The typed error of a read, failed answer."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = {"error": {"message": response.text[:500] or response.reason_phrase}}
    return error_from_body(response.status_code, body, response.headers, request_id(response))


def parse_tokens(response: httpx.Response) -> TokenPair:
    """A token endpoint's answer."""
    return TokenPair.model_validate_json(response.content)


def parse_invoke(response: httpx.Response) -> InvokeResponse:
    """An invoke answer; `replayed` from the Idempotent-Replayed header."""
    result = InvokeResponse.model_validate_json(response.content)
    replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
    if replayed:
        result = result.model_copy(update={"replayed": True})
    return result

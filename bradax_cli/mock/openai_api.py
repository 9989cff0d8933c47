"""What every OpenAI endpoint of the mock shares: the Bearer key check and `GET /v1/models`."""

from __future__ import annotations

import hmac
from typing import Any, Final

import orjson
from aiohttp import web

from bradax_cli.mock.config import MockConfig
from bradax_cli.mock.http import JSON_CT, Refused, Route, error, read_json_object
from bradax_cli.mock.state import MockState

_MODEL_CREATED: Final = 1_700_000_000


async def intake(state: MockState, request: web.Request) -> dict[str, Any] | web.StreamResponse:
    """A counted request's JSON body, or the answer that refused it (key, slow or bad body),
    recorded in the stats."""
    state.requests += 1
    denied = auth_error(state.config, request)
    if denied is not None:
        state.record(request, None, False, "401")
        return denied
    try:
        return await read_json_object(request, state.body_timeout)
    except Refused as refused:
        state.record(request, None, False, refused.outcome)
        return refused.response


def auth_error(config: MockConfig, request: web.Request) -> web.Response | None:
    """The 401 for a request without the configured Bearer key, or None (also when no key is
    configured)."""
    if config.api_key is None:
        return None
    got = request.headers.get("Authorization")
    if got is None:
        return error(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    if not hmac.compare_digest(got.encode(), f"Bearer {config.api_key}".encode()):
        return error(401, "Incorrect API key provided.", code="invalid_api_key")
    return None


class Models:
    """`GET /v1/models`: the configured models (the body is rebuilt when the config changes)."""

    def __init__(self, state: MockState) -> None:
        self.state = state
        self._for: MockConfig | None = None
        self._body = b""

    async def handle(self, request: web.Request) -> web.Response:
        """GET /v1/models."""
        config = self.state.config
        denied = auth_error(config, request)
        if denied is not None:
            return denied
        if self._for is not config:
            self._for, self._body = config, _models_body(config)
        return web.Response(body=self._body, content_type=JSON_CT)


def _models_body(config: MockConfig) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": _MODEL_CREATED, "owned_by": "mock"}
                for m in config.models
            ],
        }
    )


def routes(state: MockState) -> list[Route]:
    """The routes of the OpenAI model list."""
    return [("GET", "/v1/models", Models(state).handle)]

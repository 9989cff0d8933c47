"""OpenAI embeddings (`POST /v1/embeddings`), with usage callers can assert.

* prompt_tokens = over the inputs, the whitespace-separated words of a text (at least 1) or
  the length of a token-id list; completion_tokens = 0.
* each embedding has `dimensions` (default 8) deterministic floats; `encoding_format` base64
  packs them as little-endian float32.
* the same switches as chat (latency, 429/500/hang/redirect) apply; a cut drops the
  connection after the request is counted (billed).

Embedding models are the configured models plus EMBEDDING_MODELS.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Final

import orjson
from aiohttp import web

from bradax_cli.mock import faults
from bradax_cli.mock.behaviours import ABSENT, HONEST
from bradax_cli.mock.config import is_int
from bradax_cli.mock.http import JSON_CT, Route, abort, error
from bradax_cli.mock.openai_api import intake
from bradax_cli.mock.state import MockState

PATH: Final = "/v1/embeddings"
EMBEDDING_MODELS: Final = frozenset({"text-embedding-3-small", "text-embedding-3-large"})
DEFAULT_DIMENSIONS: Final = 8


def input_tokens(value: object) -> int | None:
    """The tokens the mock bills for an `input`, or None when it is not a valid one."""
    if isinstance(value, str):
        return max(1, len(value.split())) if value else None
    if not isinstance(value, list) or not value:
        return None
    if all(is_int(v) for v in value):
        return len(value)
    total = 0
    for item in value:
        counted = input_tokens(item) if isinstance(item, str | list) else None
        if counted is None or (isinstance(item, list) and not all(is_int(v) for v in item)):
            return None
        total += counted
    return total


def _count(value: Any) -> int:
    if isinstance(value, str) or all(is_int(v) for v in value):
        return 1
    return len(value)


class Embeddings:
    """The embeddings endpoint over one mock's state."""

    def __init__(self, state: MockState) -> None:
        self.state = state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/embeddings."""
        state = self.state
        body = await intake(state, request)
        if not isinstance(body, dict):
            return body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            state.record(request, model, False, "400")
            return error(400, "you must provide a model parameter", param="model")
        if model not in state.models and model not in EMBEDDING_MODELS:
            state.record(request, model, False, "404")
            return error(404, f"The model `{model}` does not exist.", code="model_not_found")
        prompt = input_tokens(body.get("input"))
        dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
        if prompt is None or not is_int(dimensions) or dimensions < 1:
            state.record(request, model, False, "400")
            return error(400, "'input' or 'dimensions' is invalid.", param="input")
        state.last_body = body
        act = state.next_behaviour()
        faulted = await faults.before_answer(
            state, request, act, lambda outcome: state.record(request, model, False, outcome)
        )
        if faulted is not None:
            return faulted
        if act.cut_after >= 0:
            state.record(request, model, False, "cut", prompt, 0)
            abort(request)
            return web.Response()
        state.record(request, model, False, "ok", prompt, 0)
        vector = [round(0.001 * (i + 1), 6) for i in range(dimensions)]
        packed: list[float] | str = vector
        if body.get("encoding_format") == "base64":
            packed = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data = [
            {"object": "embedding", "index": i, "embedding": packed}
            for i in range(_count(body["input"]))
        ]
        usage: object = {"prompt_tokens": prompt, "total_tokens": prompt}
        payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if act.usage is not HONEST:
            usage = act.usage
        if act.usage != ABSENT:
            payload["usage"] = usage
        return web.Response(body=orjson.dumps(payload), content_type=JSON_CT)


def routes(state: MockState) -> list[Route]:
    """The routes of the embeddings protocol."""
    return [("POST", PATH, Embeddings(state).handle)]

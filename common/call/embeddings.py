"""The embeddings face (`POST /v1/embeddings`, OpenAI's format).

An embeddings call is a call like any other: the same credentials, policy (allowed models),
PII screen (the inputs are in the forwarded JSON), idempotency, admission and ledger. It is
billed per input token at the model's input price; nothing is generated, so its completion
bound is 0 and the worst case reserved is the body's size in tokens. Never streamed.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from common import bounds
from common.call.model import Api, Call, Context
from common.face_schemas import EmbeddingsRequest
from common.http import JSONResponse, validation_error
from common.llm import Completion, StreamCall


class EmbeddingsFace:
    """OpenAI embeddings, forwarded as they are (the model alias put back)."""

    api: Api = "embeddings"

    def parse(self, raw: bytes) -> Call:
        """Validate an embeddings body."""
        try:
            request = EmbeddingsRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error(exc) from None
        params = request.model_dump(exclude_none=True, exclude={"model"})
        return Call("embeddings", request.model, [], params, False, False, len(raw), "embeddings")

    def render(
        self, ctx: Context, result: Completion, cost: Decimal, charge: bounds.Charge
    ) -> Response:
        """The upstream's list; usage replaced by the charge when it was not verifiable."""
        data: dict[str, Any] = {**result.data, "model": ctx.call.model}
        if charge.unverified is not None:
            data["usage"] = {"prompt_tokens": charge.prompt, "total_tokens": charge.prompt}
        return JSONResponse(data)

    def render_cached(self, call: Call, request_id: str, data: dict[str, Any]) -> Response:
        """A cached list under the alias asked for."""
        return JSONResponse({**data, "model": call.model})

    def stream_adapter(self, ctx: Context, stream: StreamCall) -> None:
        """Never streamed."""
        return None

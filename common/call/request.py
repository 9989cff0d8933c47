"""The request step: a call under its project's policy becomes the body sent upstream.

Allowed models and the served catalog decide the upstream chain; every output-token field
must fit the project's cap (a call without one gets the cap, so every cost is bounded);
streams always ask for usage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common import bounds
from common.call.model import Call, Operation
from common.errors import BadRequest, ModelNotAllowed, NotFound
from common.llm import ModelCatalog, Upstream
from common.projects import Project
from common.wire import dumps

if TYPE_CHECKING:
    from starlette.requests import Request


def upstream_chain(
    catalog: ModelCatalog, project: Project, model: str, operation: Operation = "chat"
) -> list[Upstream]:
    """The model's upstream and fallbacks; 403 if the project may not use it, 404 if unserved,
    400 for a chat on a model priced for embeddings (no output price: generation unbounded)."""
    if model not in project.allowed_models:
        allowed = ", ".join(project.allowed_models) or "none"
        raise ModelNotAllowed(
            f"model '{model}' is not allowed for this project; allowed models: {allowed}",
            param="model",
        )
    if catalog.get(model) is None:
        raise NotFound(
            f"model '{model}' is not served by this broker", code="model_not_found", param="model"
        )
    chain = catalog.chain(model)
    if operation == "chat" and any(
        u.price.output_per_1m == 0 < u.price.input_per_1m for u in chain
    ):
        raise BadRequest(
            f"model '{model}' is priced for embeddings only (no output price)",
            code="model_not_supported",
            param="model",
        )
    return chain


def upstream_body(project: Project, call: Call) -> dict[str, Any]:
    """The upstream body: params, the token cap enforced, usage asked for in streams."""
    body: dict[str, Any] = dict(call.params)
    if call.operation == "embeddings":
        # Billed per input token only: the body's size bounds it, nothing is generated.
        body["model"] = call.model
        return body
    bounds.refuse_unbounded(body)
    limit = project.max_tokens_per_request
    # Every output-token field must fit the cap: the upstream obeys any one of them.
    for name in bounds.OUTPUT_FIELDS:
        requested = bounds.output_cap({name: body.get(name)})
        if requested is not None and requested > limit:
            raise BadRequest(
                f"{name} {requested} exceeds this project's limit of {limit}",
                code="max_tokens_exceeded",
                param=name,
            )
    if call.max_tokens is None:
        body["max_completion_tokens" if _reasoning(call.model) else "max_tokens"] = limit
    body["model"] = call.model
    body["messages"] = call.messages
    if call.stream:
        body["stream"] = True
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    return body


# Client headers that belong to a provider's protocol and reach upstreams of that provider.
FORWARDED_HEADERS = (b"anthropic-version", b"anthropic-beta")


def forwarded(request: Request) -> dict[str, str]:
    """The provider headers of a client request (to be sent on unchanged; one pass over the
    raw headers, which are lower-case in ASGI)."""
    found: dict[str, str] = {}
    for name, value in request.headers.raw:
        if name in FORWARDED_HEADERS:
            found[name.decode()] = value.decode("latin-1")
    return found


def fingerprint(call: Call, body: dict[str, Any]) -> str:
    """The identity of a request for idempotency (taken before any redaction)."""
    return hashlib.sha256(dumps([call.api, body], sort_keys=True)).hexdigest()


def payload(body: dict[str, Any]) -> Callable[[Upstream], dict[str, Any]]:
    """The chat body for each upstream of the chain (its own model name)."""

    def build(upstream: Upstream) -> dict[str, Any]:
        if upstream.model == body["model"]:
            return body
        return {**body, "model": upstream.model}

    return build


def _reasoning(model: str) -> bool:
    return model.startswith(("o1", "o3", "o4", "gpt-5"))

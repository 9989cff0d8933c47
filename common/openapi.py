"""OpenAPI 3.1 documents built from the same pydantic models the functions validate with.

Each route may carry an `Operation`; `document()` turns a function's operations into its
OpenAPI document, and `merge()` joins the four functions' documents into the broker's.
Every error a route can answer is listed with its schema (the spec's error shape, or
OpenAI's on /v1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from common.settings import VERSION

REF = "#/components/schemas/{model}"

ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
            },
            "additionalProperties": True,
        }
    },
}
OPENAI_ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
ANTHROPIC_ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
STATUS_TEXT = {
    400: "Invalid request",
    401: "Missing, invalid, expired or revoked credentials",
    402: "Monthly budget exhausted",
    403: "Not allowed (scope, model, suspended project)",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict (idempotent call in progress)",
    413: "Body too large",
    415: "Body is not JSON",
    422: "Personal data in the prompt, or in a blocked answer; a personal-data check over budget",
    429: "Rate limited (Retry-After)",
    500: "Internal error (quote the request id)",
    502: "Upstream failed",
    503: "A dependency is unavailable (fail closed)",
    504: "Upstream timed out",
}
# Every route can answer these: routing and the generic 500.
ALWAYS = (404, 405, 500)


@dataclass(frozen=True)
class Operation:
    """What one route accepts and answers, for the OpenAPI document."""

    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | dict[str, Any] | None = None
    errors: Sequence[int] = ()
    auth: bool = False
    stream: bool = False
    content_type: str = "application/json"
    # (name, description) or (name, description, JSON schema); a plain string by default
    query: Sequence[tuple[str, str] | tuple[str, str, dict[str, Any]]] = ()
    openai_errors: bool = False
    anthropic_errors: bool = False
    # (name, description) of each `{name}` segment of the path
    path_params: Sequence[tuple[str, str]] = ()
    tags: Sequence[str] = field(default_factory=tuple)


def _schema(model: type[BaseModel], components: dict[str, Any], mode: str) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": REF.format(model=model.__name__)}


def operation_object(
    op: Operation, method: str, components: dict[str, Any], tag: str
) -> dict[str, Any]:
    """The OpenAPI operation object for one route."""
    out: dict[str, Any] = {
        "summary": op.summary,
        "tags": list(op.tags) or [tag],
        "operationId": f"{tag}_{method}_{op.summary.lower().replace(' ', '_')}"[:100],
    }
    if op.auth:
        out["security"] = [{"bearer": []}]
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
            "description": description,
        }
        for name, description in op.path_params
    ]
    if op.query:
        parameters += [
            {
                "name": item[0],
                "in": "query",
                "required": False,
                "schema": item[2] if len(item) > 2 else {"type": "string"},
                "description": item[1],
            }
            for item in op.query
        ]
    if parameters:
        out["parameters"] = parameters
    if op.request is not None:
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": _schema(op.request, components, "validation")}
            },
        }
    ok: dict[str, Any] = {
        "description": "OK",
        "headers": {"X-Request-ID": {"schema": {"type": "string"}}},
    }
    content: dict[str, Any] = {}
    if isinstance(op.response, dict):
        content[op.content_type] = {"schema": op.response}
    elif op.response is not None:
        content[op.content_type] = {"schema": _schema(op.response, components, "serialization")}
    else:
        content[op.content_type] = {"schema": {}}
    if op.stream:
        # OpenAPI 3.1 media-type schemas of event streams describe one event (3.2: itemSchema).
        content["text/event-stream"] = {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {"type": "string"},
                    "event": {"type": "string"},
                    "id": {"type": "string"},
                    "retry": {"type": "integer"},
                },
            }
        }
    ok["content"] = content
    responses: dict[str, Any] = {"200": ok}
    error_schema = "OpenAIError" if op.openai_errors else "Error"
    if op.anthropic_errors:
        error_schema = "AnthropicError"
    for status in sorted(set(op.errors) | set(ALWAYS)):
        responses[str(status)] = {
            "description": STATUS_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": REF.format(model=error_schema)}}},
        }
    out["responses"] = responses
    return out


def document(
    title: str, operations: Iterable[tuple[str, Sequence[str], Operation]], tag: str
) -> dict[str, Any]:
    """An OpenAPI 3.1 document for (path, methods, operation) triples."""
    components: dict[str, Any] = {
        "Error": ERROR_BODY,
        "OpenAIError": OPENAI_ERROR_BODY,
        "AnthropicError": ANTHROPIC_ERROR_BODY,
    }
    paths: dict[str, Any] = {}
    for path, methods, op in operations:
        for method in methods:
            paths.setdefault(path, {})[method.lower()] = operation_object(
                op, method.lower(), components, tag
            )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": VERSION},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or bx_ API key"}
            },
        },
    }


def merge(title: str, documents: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One document holding every path and schema of the given documents."""
    merged = document(title, [], "bradax")
    for doc in documents:
        merged["paths"].update(doc["paths"])
        merged["components"]["schemas"].update(doc["components"]["schemas"])
    merged["paths"] = dict(sorted(merged["paths"].items()))
    merged["components"]["schemas"] = dict(sorted(merged["components"]["schemas"].items()))
    return merged

"""The contract: OpenAPI 3.1 documents built from the validating models, served and committed."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from openapi_spec_validator import validate

from bradax_cli import openapi_doc
from bradax_cli.routes import RouteTable
from common.http import ANTHROPIC_PATHS

OWN_DOCS = {
    "auth_token": "/api/v1/auth/openapi.json",
    "llm_invoke": "/api/v1/llm/openapi.json",
    "health": "/health/openapi.json",
    "metrics": "/metrics/openapi.json",
}


def test_the_committed_document_is_current() -> None:
    """docs/openapi.json is exactly what `bradax openapi` generates from the code."""
    assert openapi_doc.DEFAULT_OUTPUT.read_bytes() == openapi_doc.render()


def test_the_merged_document_is_valid_openapi_31() -> None:
    """The merged document validates as OpenAPI 3.1 and documents every served route."""
    document = openapi_doc.merged()
    validate(document)
    assert document["openapi"] == "3.1.0"
    served = {
        path
        for app in openapi_doc.function_apps().values()
        for path in app.paths
        if not path.endswith("openapi.json")
    }
    assert set(document["paths"]) == served


def test_every_operation_documents_its_errors() -> None:
    """Each operation lists 404, 405 and 500 and the error schema of its API."""
    document = openapi_doc.merged()
    for path, item in document["paths"].items():
        for operation in item.values():
            responses = operation["responses"]
            assert {"404", "405", "500"} <= set(responses), path
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    expected = "OpenAIError" if path.startswith("/v1/") else "Error"
                    if path in ANTHROPIC_PATHS:
                        expected = "AnthropicError"
                    assert ref == f"#/components/schemas/{expected}", (path, status)


def test_the_routes_of_every_documented_path_exist() -> None:
    """Every documented path is routed to a function by the route table."""
    table = RouteTable.load()
    for path in openapi_doc.merged()["paths"]:
        assert table.match(path) is not None, path


@pytest.mark.parametrize("function", sorted(OWN_DOCS))
async def test_each_function_serves_its_own_document(
    client: httpx2.AsyncClient, function: str
) -> None:
    """Each function answers its OpenAPI document on its own path."""
    reply = await client.get(OWN_DOCS[function])
    assert reply.status_code == 200
    document: dict[str, Any] = reply.json()
    validate(document)
    table = RouteTable.load()
    assert document["paths"]
    assert {table.match(path) for path in document["paths"]} == {function}

"""Tests for common.pii_payload: every string of a JSON payload, redacted to the same shape."""

from __future__ import annotations

import base64
import copy
import time
from typing import Any

import orjson
import pytest

from common.pii_payload import Budget, ScanAborted, Unscannable, screen

CPF = "529.982.247-25"


def data_url(mime: str, payload: bytes) -> str:
    """A base64 data URL."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def request_body() -> dict[str, Any]:
    """An upstream body with personal data in every kind of field."""
    return {
        "model": "gpt-4.1-mini",
        "messages": [
            {"role": "system", "content": f"Cliente {CPF}"},
            {
                "role": "user",
                "name": "cliente_52998224725",
                "content": [
                    {"type": "text", "text": "tel (21) 3456-7890"},
                    {
                        "type": "image_url",
                        "image_url": {"url": data_url("text/plain", b"CPF 52998224725")},
                    },
                    {
                        "type": "file",
                        "file": {"file_data": data_url("text/csv", b"nome;cpf\nana;52998224725")},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "refusal", "refusal": f"nao {CPF}"}],
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {
                            "name": "f",
                            "arguments": '{"cpf": "\\u0035\\u00329982247-25"}',
                        },
                    }
                ],
                "function_call": {"name": "g", "arguments": '{"n": 52998224725}'},
            },
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": f"exemplo {CPF}",
                    "parameters": {
                        "type": "object",
                        "properties": {"cpf": {"type": "string", "description": CPF}},
                    },
                },
            }
        ],
        "user": "ana@example.com",
        "metadata": {"cliente": CPF},
        "prediction": {"type": "content", "content": f"CPF {CPF}"},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": {"examples": [CPF]}},
        },
        "stop": [CPF],
        "seed": 52998224725,
        "max_tokens": 100,
    }


def test_every_field_is_scanned() -> None:
    """Scanning reports the kinds found anywhere in the body and leaves it untouched."""
    body = request_body()
    snapshot = copy.deepcopy(body)
    result = screen(body, redact=False, keep=frozenset({"model"}))
    assert result.kinds == {"cpf", "phone", "email"}
    assert result.value is body
    assert body == snapshot


def test_redaction_keeps_the_shape_and_valid_json() -> None:
    """Redaction replaces the data in every field; JSON strings stay JSON, names stay names."""
    body = request_body()
    out = screen(body, redact=True, keep=frozenset({"model"})).value
    text = orjson.dumps({k: v for k, v in out.items() if k != "seed"}).decode()
    assert "52998224725" not in text.replace(".", "").replace("-", "")  # a seed is a number
    messages = out["messages"]
    assert messages[0]["content"] == "Cliente [CPF]"
    assert messages[1]["name"] == "cliente_CPF"
    parts = messages[1]["content"]
    assert parts[0]["text"] == "tel [PHONE]"
    image = parts[1]["image_url"]["url"]
    assert image.startswith("data:text/plain;base64,")
    assert base64.b64decode(image.partition(",")[2]) == b"CPF [CPF]"
    file_data = parts[2]["file"]["file_data"]
    assert base64.b64decode(file_data.partition(",")[2]) == b"nome;cpf\nana;[CPF]"
    assert messages[2]["content"][0]["refusal"] == "nao [CPF]"
    assert orjson.loads(messages[2]["tool_calls"][0]["function"]["arguments"]) == {"cpf": "[CPF]"}
    assert orjson.loads(messages[2]["function_call"]["arguments"]) == {"n": "[CPF]"}
    function = out["tools"][0]["function"]
    assert function["description"] == "exemplo [CPF]"
    assert function["parameters"]["properties"]["cpf"]["description"] == "[CPF]"
    assert out["user"] == "[EMAIL]"
    assert out["metadata"] == {"cliente": "[CPF]"}
    assert out["prediction"]["content"] == "CPF [CPF]"
    assert out["response_format"]["json_schema"]["schema"]["examples"] == ["[CPF]"]
    assert out["stop"] == ["[CPF]"]
    assert (out["seed"], out["max_tokens"], out["model"]) == (52998224725, 100, "gpt-4.1-mini")


def test_binary_attachments_pass_or_are_refused() -> None:
    """Binary data cannot be read: it passes and is counted, or is refused when asked."""
    png = data_url("image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png}}]}
        ]
    }
    result = screen(body, redact=True)
    assert result.value == body
    assert result.unscannable == 1
    with pytest.raises(Unscannable):
        screen(body, redact=True, block_binary=True)


def test_dict_keys_are_scanned_without_collisions() -> None:
    """Personal data used as an object key is redacted; two redacted keys do not collide."""
    out = screen({"m": {CPF: 1, "111.444.777-35": 2}}, redact=True).value
    assert out == {"m": {"[CPF]": 1, "[CPF]_": 2}}


def test_invalid_numbers_pass_untouched() -> None:
    """Numbers failing their check digits are left alone everywhere."""
    body = {
        "messages": [{"role": "user", "content": "529.982.247-26"}],
        "user": "4111 1111 1111 1112",
    }
    result = screen(body, redact=True)
    assert result.kinds == set()
    assert result.value == body


def test_budget_stops_the_scan() -> None:
    """A payload beyond the character cap, or past the deadline, aborts the scan."""
    body = {"messages": [{"role": "user", "content": "x" * 5000}]}
    with pytest.raises(ScanAborted):
        screen(body, redact=False, budget=Budget(time.monotonic() + 10, max_chars=4000))
    with pytest.raises(ScanAborted):
        screen(body, redact=False, budget=Budget(time.monotonic() - 1, max_chars=10**9))


def test_base64_fields_cannot_hide_text() -> None:
    """A `data` field that is not strict base64, or spells a CPF in its alphabet, is scanned."""
    out = screen({"m": {"data": "cliente 529.982.247-25 ok"}}, redact=True)
    assert out.value == {"m": {"data": "cliente [CPF] ok"}}
    spelled = "52998224725AAAAA"  # valid base64 too
    assert screen({"m": {"data": spelled}}, redact=False).kinds == {"cpf"}


def test_latin1_and_utf16_text_files_are_scanned() -> None:
    """Text attachments in Latin-1 or UTF-16 are decoded, redacted and re-encoded the same way."""
    latin = data_url("text/csv", "nome;cpf\nJoão;529.982.247-25".encode("latin-1"))
    utf16 = data_url("text/plain", "CPF 529.982.247-25".encode("utf-16"))
    out = screen({"a": latin, "b": utf16}, redact=True).value
    assert base64.b64decode(out["a"].partition(",")[2]).decode("latin-1") == "nome;cpf\nJoão;[CPF]"
    assert base64.b64decode(out["b"].partition(",")[2]).decode("utf-16") == "CPF [CPF]"


def test_budget_is_checked_inside_one_long_text() -> None:
    """A single long text whose scan outlives the deadline is aborted part-way, not finished."""
    dense = "CPF 529.982.247-25, cartão 4111 1111 1111 1111, tel (11) 91234-5678. " * 16_000
    with pytest.raises(ScanAborted):
        screen(dense, redact=True, budget=Budget(time.monotonic() + 0.01, max_chars=10**9))

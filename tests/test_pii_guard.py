"""The LGPD gate over HTTP (common.pii_guard): evasions, every field, answers, cost, fail closed."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import orjson
import pytest

from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, create_tenant, ledger_rows

MODEL = "gpt-4.1-nano"
CPF = "529.982.247-25"


@pytest.fixture
def upstream(settings: Settings, configure: Any, mock: MockUpstream) -> Settings:
    """Settings in force with the mock upstream configured."""
    current: Settings = configure(openai_api_key="k", openai_base_url=mock.url)
    return current


@pytest.fixture
async def http(upstream: Settings, router: Any) -> Any:
    """An in-process client of the broker."""
    transport = httpx2.ASGITransport(app=router, client=("10.1.2.3", 4000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30) as c:
        yield c


async def tenant(settings: Settings, name: str, **fields: Any) -> Tenant:
    """A project with an API key (for the OpenAI-compatible API)."""
    return await create_tenant(settings, name, **fields)


def script(mock: MockUpstream, **reply: Any) -> None:
    """Make the mock answer with exactly this text (and/or refusal, tool arguments)."""
    httpx2.post(mock.root + "/_mock/reply", json=reply, timeout=5).raise_for_status()


def received(mock: MockUpstream) -> dict[str, Any]:
    """The last chat body the mock received."""
    reply = httpx2.get(mock.root + "/_mock/last_request", timeout=5)
    reply.raise_for_status()
    body: dict[str, Any] = reply.json()
    return body


async def chat(http: Any, who: Tenant, **body: Any) -> httpx2.Response:
    """POST /v1/chat/completions with the tenant's API key."""
    payload = {"model": MODEL, "max_tokens": 200, **body}
    payload.setdefault("messages", [{"role": "user", "content": "oi"}])
    response: httpx2.Response = await http.post(
        "/v1/chat/completions", json=payload, headers=who.key_auth
    )
    return response


def user(text: str) -> list[dict[str, Any]]:
    """One user message."""
    return [{"role": "user", "content": text}]


# -- evasions -------------------------------------------------------------------------------

EVASIONS = {
    "fullwidth_digits": ("CPF ５２９.９８２.２４７-２５ ok", "CPF [CPF] ok"),
    "arabic_indic_digits": ("CPF ٥٢٩.٩٨٢.٢٤٧-٢٥ ok", "CPF [CPF] ok"),
    "zero_width": ("CPF 529\u200b982\u200d247\u200c25 ok", "CPF [CPF] ok"),
    "soft_hyphens": ("CPF 5\u00ad2\u00ad9.982.247-25 ok", "CPF [CPF] ok"),
    "glued_to_word": ("CPF529.982.247-25ok", "CPF[CPF]ok"),
    "spaces_between_groups": ("CPF 529 982 247 25 ok", "CPF [CPF] ok"),
    "hyphens_between_groups": ("CPF 529-982-247-25 ok", "CPF [CPF] ok"),
    "unicode_dashes": ("CPF 529\u2013982\u2013247\u201425 ok", "CPF [CPF] ok"),
    "card_with_dots": ("cartão 4111.1111.1111.1111 ok", "cartão [CREDIT_CARD] ok"),
    "fullwidth_at": ("e-mail ana＠example.com ok", "e-mail [EMAIL] ok"),
    "lookalike_letters": ("e-mail аna@exаmple.cοm ok", "e-mail [EMAIL] ok"),  # Cyrillic, Greek
}


@pytest.mark.parametrize("name", sorted(EVASIONS))
async def test_evasions_are_blocked(
    upstream: Settings, http: Any, mock: MockUpstream, name: str
) -> None:
    """Each evasive writing of personal data is refused in block mode; the upstream sees nothing."""
    who = await tenant(upstream, "proj_block", compliance_rules=("pii_detection",))
    reply = await chat(http, who, messages=user(EVASIONS[name][0]))
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["code"] == "pii_detected"
    assert mock.stats()["requests"] == 0


@pytest.mark.parametrize("name", sorted(EVASIONS))
async def test_evasions_are_redacted(
    upstream: Settings, http: Any, mock: MockUpstream, name: str
) -> None:
    """Each evasive writing is redacted in place: the upstream receives the labelled text."""
    who = await tenant(
        upstream, "proj_redact", compliance_rules=("pii_detection",), pii_action="redact"
    )
    text, expected = EVASIONS[name]
    reply = await chat(http, who, messages=user(text))
    assert reply.status_code == 200, reply.text
    assert received(mock)["messages"] == user(expected)


@pytest.mark.parametrize("action", ["block", "redact"])
async def test_invalid_check_digits_pass(
    upstream: Settings, http: Any, mock: MockUpstream, action: str
) -> None:
    """Numbers that fail their check digits reach the upstream verbatim in both modes."""
    who = await tenant(
        upstream, "proj_invalid", compliance_rules=("pii_detection",), pii_action=action
    )
    text = "CPF 529.982.247-26, CNPJ 11.222.333/0001-82, cartão 4111 1111 1111 1112, CEP 00123-456"
    reply = await chat(http, who, messages=user(text), user="529.982.247-26")
    assert reply.status_code == 200, reply.text
    body = received(mock)
    assert body["messages"] == user(text)
    assert body["user"] == "529.982.247-26"


# -- every field that reaches the upstream --------------------------------------------------


def text_file(content: str) -> str:
    """A text file as a base64 data URL."""
    return "data:text/plain;base64," + base64.b64encode(content.encode()).decode()


def _tool_call(arguments: str) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}


FIELDS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], Any]]] = {
    "content": ({"messages": user(f"CPF {CPF}")}, lambda b: b["messages"][0]["content"]),
    "text_part": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": CPF}]}]},
        lambda b: b["messages"][0]["content"][0]["text"],
    ),
    "refusal_part": (
        {
            "messages": [
                *user("oi"),
                {"role": "assistant", "content": [{"type": "refusal", "refusal": CPF}]},
                *user("e agora?"),
            ]
        },
        lambda b: b["messages"][1]["content"][0]["refusal"],
    ),
    "name": (
        {"messages": [{"role": "user", "content": "oi", "name": "ana_52998224725"}]},
        lambda b: b["messages"][0]["name"],
    ),
    "tool_call_arguments": (
        {
            "messages": [
                *user("oi"),
                {"role": "assistant", "tool_calls": [_tool_call(f'{{"cpf": "{CPF}"}}')]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
            ]
        },
        lambda b: orjson.loads(b["messages"][1]["tool_calls"][0]["function"]["arguments"]),
    ),
    "function_call_arguments": (
        {
            "messages": [
                *user("oi"),
                {"role": "assistant", "function_call": {"name": "f", "arguments": f'["{CPF}"]'}},
                {"role": "function", "name": "f", "content": "ok"},
            ]
        },
        lambda b: orjson.loads(b["messages"][1]["function_call"]["arguments"]),
    ),
    "tool_result": (
        {
            "messages": [
                *user("oi"),
                {"role": "assistant", "tool_calls": [_tool_call("{}")]},
                {"role": "tool", "tool_call_id": "call_1", "content": f"cliente {CPF}"},
            ]
        },
        lambda b: b["messages"][2]["content"],
    ),
    "text_file_data_url": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "leia"},
                        {"type": "file", "file": {"file_data": text_file(f"cpf;{CPF}")}},
                    ],
                }
            ]
        },
        lambda b: base64.b64decode(
            b["messages"][0]["content"][1]["file"]["file_data"].partition(",")[2]
        ).decode(),
    ),
    "image_url_text_payload": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": text_file(CPF)}}],
                }
            ]
        },
        lambda b: base64.b64decode(
            b["messages"][0]["content"][0]["image_url"]["url"].partition(",")[2]
        ).decode(),
    ),
    "tool_description": (
        {
            "messages": user("oi"),
            "tools": [{"type": "function", "function": {"name": "f", "description": CPF}}],
        },
        lambda b: b["tools"][0]["function"]["description"],
    ),
    "tool_schema": (
        {
            "messages": user("oi"),
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"x": {"default": CPF}}},
                    },
                }
            ],
        },
        lambda b: b["tools"][0]["function"]["parameters"]["properties"]["x"]["default"],
    ),
    "user": ({"messages": user("oi"), "user": "ana@example.com"}, lambda b: b["user"]),
    "metadata": ({"messages": user("oi"), "metadata": {"cliente": CPF}}, lambda b: b["metadata"]),
    "prediction": (
        {"messages": user("oi"), "prediction": {"type": "content", "content": CPF}},
        lambda b: b["prediction"]["content"],
    ),
    "response_format": (
        {
            "messages": user("oi"),
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": {"description": CPF}},
            },
        },
        lambda b: b["response_format"]["json_schema"]["schema"]["description"],
    ),
    "stop": ({"messages": user("oi"), "stop": [CPF]}, lambda b: b["stop"]),
}

REDACTED = {
    "name": "ana_CPF",
    "tool_call_arguments": {"cpf": "[CPF]"},
    "function_call_arguments": ["[CPF]"],
    "tool_result": "cliente [CPF]",
    "text_file_data_url": "cpf;[CPF]",
    "user": "[EMAIL]",
    "metadata": {"cliente": "[CPF]"},
    "stop": ["[CPF]"],
    "content": "CPF [CPF]",
}


@pytest.mark.parametrize("name", sorted(FIELDS))
async def test_every_field_is_blocked(
    upstream: Settings, http: Any, mock: MockUpstream, name: str
) -> None:
    """Personal data in any field of the request is refused in block mode."""
    who = await tenant(upstream, "proj_fields_b", compliance_rules=("pii_detection",))
    reply = await chat(http, who, **FIELDS[name][0])
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["code"] == "pii_detected"
    assert mock.stats()["requests"] == 0


@pytest.mark.parametrize("name", sorted(FIELDS))
async def test_every_field_is_redacted(
    upstream: Settings, http: Any, mock: MockUpstream, name: str
) -> None:
    """Personal data in any field is redacted; the upstream body keeps its shape and JSON."""
    who = await tenant(
        upstream, "proj_fields_r", compliance_rules=("pii_detection",), pii_action="redact"
    )
    body, read = FIELDS[name]
    reply = await chat(http, who, **body)
    assert reply.status_code == 200, reply.text
    assert read(received(mock)) == REDACTED.get(name, "[CPF]")


PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\xff\xfe").decode()


@pytest.mark.parametrize("policy", ["pass", "block"])
async def test_binary_attachments_pass_or_are_refused(
    settings: Settings, configure: Any, router: Any, mock: MockUpstream, policy: str
) -> None:
    """Binary attachments cannot be scanned: they pass by default, or get 422 when refused."""
    current = configure(openai_api_key="k", openai_base_url=mock.url, pii_binary_attachments=policy)
    who = await tenant(
        current, "proj_bin", compliance_rules=("pii_detection",), pii_action="redact"
    )
    parts = [{"type": "text", "text": "veja"}, {"type": "image_url", "image_url": {"url": PNG}}]
    transport = httpx2.ASGITransport(app=router, client=("10.1.2.5", 4000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://broker") as c:
        reply = await chat(c, who, messages=[{"role": "user", "content": parts}])
    if policy == "pass":
        assert reply.status_code == 200, reply.text
        assert received(mock)["messages"][0]["content"] == parts
    else:
        assert reply.status_code == 422
        assert reply.json()["error"]["code"] == "pii_unscannable_attachment"
        assert mock.stats()["requests"] == 0


async def test_spec_api_parameters_are_redacted(
    upstream: Settings, http: Any, mock: MockUpstream
) -> None:
    """The spec's invoke API scans its parameters too (user, stop)."""
    from tests.conftest import login

    who = await login(
        http,
        await tenant(
            upstream, "proj_spec", compliance_rules=("pii_detection",), pii_action="redact"
        ),
    )
    reply = await http.post(
        "/api/v1/llm/invoke",
        headers=who.auth,
        json={
            "model": MODEL,
            "messages": user(f"CPF {CPF}"),
            "parameters": {"user": CPF, "stop": [CPF], "max_tokens": 5},
        },
    )
    assert reply.status_code == 200, reply.text
    body = received(mock)
    assert (body["messages"], body["user"], body["stop"]) == (user("CPF [CPF]"), "[CPF]", ["[CPF]"])


async def test_idempotency_fingerprint_is_over_the_request_as_sent(
    upstream: Settings, http: Any, mock: MockUpstream
) -> None:
    """Two prompts differing only in their CPF, with one Idempotency-Key, are not a replay."""
    who = await tenant(
        upstream, "proj_idem", compliance_rules=("pii_detection",), pii_action="redact"
    )
    headers = {**who.key_auth, "Idempotency-Key": "k-1"}
    first = {"model": MODEL, "messages": user(f"CPF {CPF}"), "max_tokens": 5}
    second = {"model": MODEL, "messages": user("CPF 111.444.777-35"), "max_tokens": 5}
    one = await http.post("/v1/chat/completions", json=first, headers=headers)
    assert one.status_code == 200, one.text
    again = await http.post("/v1/chat/completions", json=first, headers=headers)
    assert again.headers.get("idempotent-replayed") == "true"
    other = await http.post("/v1/chat/completions", json=second, headers=headers)
    assert other.status_code == 400
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert mock.stats()["requests"] == 1


# -- answers --------------------------------------------------------------------------------


def without_ids(raw: bytes) -> bytes:
    """The answer without its ids and timestamps, whose random digits may spell "529"."""
    return re.sub(rb'"(id|created|request_id)":("[^"]*"|[0-9]+)', b"", raw)


ANSWER = f"O CPF do cliente é {CPF} e o e-mail ana@example.com."


async def test_json_answer_is_redacted_under_lgpd(
    upstream: Settings, http: Any, mock: MockUpstream
) -> None:
    """A project under lgpd gets answers redacted by default, said in a header, field and ledger."""
    who = await tenant(upstream, "proj_lgpd", compliance_rules=("lgpd",))
    script(mock, text=ANSWER, tool_arguments=f'{{"cpf": "{CPF}"}}')
    reply = await chat(http, who)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    message = data["choices"][0]["message"]
    assert message["content"] == "O CPF do cliente é [CPF] e o e-mail [EMAIL]."
    assert orjson.loads(message["tool_calls"][0]["function"]["arguments"]) == {"cpf": "[CPF]"}
    assert data["bradax"] == {"pii": {"action": "redacted", "kinds": ["cpf", "email"]}}
    assert reply.headers["x-bradax-pii-redacted"] == "cpf,email"
    [row] = await ledger_rows(upstream, "proj_lgpd")
    assert (row["status"], row["error_code"]) == ("success", "output_pii_redacted")


async def test_json_answer_is_blocked_and_still_metered(
    upstream: Settings, http: Any, mock: MockUpstream
) -> None:
    """With output_pii_action=block the answer is withheld (422) and the call is still charged."""
    who = await tenant(
        upstream, "proj_oblock", compliance_rules=("lgpd",), output_pii_action="block"
    )
    script(mock, text=ANSWER)
    reply = await chat(http, who)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["code"] == "output_pii_detected"
    assert "(cpf, email)" in error["message"]
    assert b"529" not in without_ids(reply.content)
    [row] = await ledger_rows(upstream, "proj_oblock")
    assert (row["status"], row["http_status"], row["error_code"]) == (
        "pii_blocked",
        422,
        "output_pii_detected",
    )
    assert row["cost_usd"] > 0
    assert row["completion_tokens"] > 0


async def test_answers_pass_without_lgpd_or_when_off(
    upstream: Settings, http: Any, mock: MockUpstream
) -> None:
    """Without lgpd (or with output_pii_action=off) answers are not scanned."""
    plain = await tenant(upstream, "proj_plain")
    off = await tenant(upstream, "proj_off", compliance_rules=("lgpd",), output_pii_action="off")
    script(mock, text=ANSWER)
    for who in (plain, off):
        reply = await chat(http, who)
        assert reply.json()["choices"][0]["message"]["content"] == ANSWER


async def test_scanned_answers_are_not_cached(
    upstream: Settings, http: Any, mock: MockUpstream
) -> None:
    """A project whose answers are scanned never serves them from the response cache."""
    who = await tenant(upstream, "proj_cache", cache_enabled=True, output_pii_action="redact")
    script(mock, text=ANSWER)
    for _ in range(2):
        reply = await chat(http, who, temperature=0)
        assert reply.status_code == 200
        assert "x-bradax-cache" not in reply.headers
    assert mock.stats()["requests"] == 2


async def test_spec_api_answer_is_redacted(
    upstream: Settings, http: Any, mock: MockUpstream
) -> None:
    """The spec's invoke API relays the redacted answer too."""
    from tests.conftest import login

    who = await login(http, await tenant(upstream, "proj_spec_out", compliance_rules=("lgpd",)))
    script(mock, text=ANSWER)
    reply = await http.post(
        "/api/v1/llm/invoke", headers=who.auth, json={"model": MODEL, "messages": user("oi")}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == (
        "O CPF do cliente é [CPF] e o e-mail [EMAIL]."
    )


async def test_streamed_answer_is_redacted(
    upstream: Settings, http: Any, mock: MockUpstream
) -> None:
    """A streamed answer reaches the OpenAI SDK redacted, with a final notice and a ledger mark."""
    who = await tenant(upstream, "proj_stream", compliance_rules=("lgpd",))
    script(mock, text=ANSWER * 3, chunk_chars=2)
    client = openai.AsyncOpenAI(
        base_url="http://broker/v1", api_key=who.api_key, http_client=http, max_retries=0
    )
    stream = await client.chat.completions.create(
        model=MODEL, messages=user("oi"), stream=True, stream_options={"include_usage": True}
    )
    text, notices = "", []
    async for event in stream:
        extra = (event.model_extra or {}).get("bradax")
        if extra:
            notices.append(extra)
        if event.choices:
            text += event.choices[0].delta.content or ""
    assert text == "O CPF do cliente é [CPF] e o e-mail [EMAIL]." * 3
    assert notices == [{"pii": {"action": "redacted", "kinds": ["cpf", "email"]}}]
    [row] = await ledger_rows(upstream, "proj_stream")
    assert (row["status"], row["error_code"], row["streamed"]) == (
        "success",
        "output_pii_redacted",
        True,
    )


async def test_streamed_answer_is_blocked_and_still_metered(
    upstream: Settings, http: Any, mock: MockUpstream
) -> None:
    """In block mode the stream stops with an error event before the data, and is metered."""
    who = await tenant(
        upstream, "proj_sblock", compliance_rules=("lgpd",), output_pii_action="block"
    )
    script(
        mock, text="Um texto inicial sem dados pessoais, bem longo. " * 4 + ANSWER, chunk_chars=3
    )
    raw = b""
    async with http.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": MODEL, "messages": user("oi"), "stream": True},
        headers=who.key_auth,
    ) as reply:
        assert reply.status_code == 200
        async for part in reply.aiter_bytes():
            raw += part
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices") or ())
    assert text.startswith("Um texto inicial sem dados pessoais")
    assert "529" not in text
    # Nowhere in the stream either (its ids and timestamps may hold those digits by chance).
    assert b"529" not in without_ids(raw)
    error = events[-1]["error"]
    assert (error["code"], error["pii_kinds"]) == ("output_pii_detected", ["cpf"])
    client = openai.AsyncOpenAI(
        base_url="http://broker/v1", api_key=who.api_key, http_client=http, max_retries=0
    )
    with pytest.raises(openai.APIError, match="personal data"):
        async for _ in await client.chat.completions.create(
            model=MODEL, messages=user("oi"), stream=True
        ):
            pass
    rows = await ledger_rows(upstream, "proj_sblock")
    assert [(r["status"], r["error_code"]) for r in rows] == [
        ("pii_blocked", "output_pii_detected")
    ] * 2
    assert all(r["cost_usd"] > 0 and r["completion_tokens"] > 0 for r in rows)


# -- cost ----------------------------------------------------------------------------------


async def test_live_answers_while_large_prompts_are_scanned(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> None:
    """/live answers within 100 ms while four 1 MiB prompts are being scanned."""
    current = configure(
        openai_api_key="k",
        openai_base_url=mock.url,
        max_body_bytes=2 * 1_048_576,
        pii_scan_timeout_seconds=30,
    )
    who = await tenant(
        current,
        "proj_big",
        compliance_rules=("pii_detection",),
        pii_action="redact",
        budget_monthly_usd="1000",
    )
    line = "2025-07-27 14:30:59 pedido 2025-000123 cliente 529.982.247-25 valor R$ 1.234,56\n"
    prompt = (line * (1_048_576 // len(line)))[:1_048_576]
    transport = httpx2.ASGITransport(app=router, client=("10.1.2.4", 4000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=60) as c:
        calls = [
            asyncio.ensure_future(chat(c, who, messages=user(prompt), max_tokens=1))
            for _ in range(4)
        ]
        latencies: list[float] = []
        while not all(call.done() for call in calls):
            # Measured from before a short sleep: a loop blocked by a scan shows as lateness.
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            live = await c.get("/live")
            latencies.append(time.perf_counter() - started - 0.01)
            assert live.status_code == 200
        replies = [call.result() for call in calls]
    assert [r.status_code for r in replies] == [200] * 4
    assert len(latencies) >= 5, "the scans finished before /live could be measured"
    assert max(latencies) < 0.1, sorted(latencies)[-5:]

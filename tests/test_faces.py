"""API faces beyond chat: models.retrieve, embeddings (and the faces added since), each
driven by the official SDK against the broker over the bundled mock, ledgered exactly."""

from __future__ import annotations

import base64
import struct
from decimal import Decimal
from typing import Any

import httpx2
import openai
import orjson
import pytest

from common.pricing import LIST_PRICES
from common.settings import Settings
from tests.conftest import MockUpstream, Tenant, create_tenant, ledger_rows, login

MILLION = Decimal(1_000_000)
CPF = "529.982.247-25"
EMBED = "text-embedding-3-small"
CHAT_MODELS = ("gpt-4.1-nano", "gpt-4.1-mini", "gpt-4o-mini")


def list_price(model: str, prompt: int, completion: int) -> Decimal:
    """What the upstream bills for these tokens at list price."""
    per_in, per_out = LIST_PRICES[model]
    return (prompt * per_in + completion * per_out) / MILLION


@pytest.fixture
async def broker(
    settings: Settings, configure: Any, mock: MockUpstream, router: Any
) -> tuple[httpx2.AsyncClient, Tenant, Settings]:
    """The broker in-process over the mock upstream, with one project logged in."""
    current = configure(openai_api_key="mock-key", openai_base_url=mock.url, openai_max_retries=0)
    transport = httpx2.ASGITransport(app=router, client=("10.9.8.7", 1234))
    http = httpx2.AsyncClient(transport=transport, base_url="http://broker", timeout=30)
    tenant = await create_tenant(current, allowed_models=(*CHAT_MODELS, EMBED))
    return http, await login(http, tenant), current


def sdk(http: httpx2.AsyncClient, tenant: Tenant) -> openai.AsyncOpenAI:
    """The official async client on the broker's /v1 with the project's API key."""
    return openai.AsyncOpenAI(
        base_url="http://broker/v1", api_key=tenant.api_key, http_client=http, max_retries=0
    )


def billed(mock: MockUpstream, model: str) -> list[tuple[str, int, int, Decimal]]:
    """(request id, prompt, completion, list price) of every call the mock billed."""
    return [
        (
            c["request_id"],
            c["prompt_tokens"],
            c["completion_tokens"],
            list_price(model, c["prompt_tokens"], c["completion_tokens"]),
        )
        for c in mock.stats()["calls"]
        if c["outcome"] in ("ok", "cut", "disconnected")
    ]


def ledgered(rows: list[dict[str, Any]]) -> list[tuple[str, int, int, Decimal]]:
    """(request id, prompt, completion, cost) of ledger rows."""
    return [
        (r["request_id"], r["prompt_tokens"], r["completion_tokens"], r["cost_usd"]) for r in rows
    ]


async def test_models_retrieve_answers_allowed_models_only(broker: Any) -> None:
    """models.retrieve answers an allowed, served model and a 404 (OpenAI's shape) otherwise."""
    http, tenant, _ = broker
    client = sdk(http, tenant)
    card = await client.models.retrieve("gpt-4.1-mini")
    assert (card.id, card.object, card.owned_by) == ("gpt-4.1-mini", "model", "bradax")
    for model in ("gpt-4.1", "no-such-model", "a/b"):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve(model)
        assert caught.value.code == "model_not_found"
    reply = await http.get("/v1/models/gpt-4.1-nano")
    assert reply.status_code == 401
    assert set(reply.json()["error"]) >= {"message", "type", "code"}


async def test_embeddings_are_billed_per_input_token(broker: Any, mock: MockUpstream) -> None:
    """embeddings.create (string, list, dimensions, float and base64) is ledgered at the
    input price for exactly the tokens the mock billed, never free."""
    http, tenant, settings = broker
    client = sdk(http, tenant)
    one = await client.embeddings.create(model=EMBED, input="seguro de vida barato")
    assert one.model == EMBED
    assert len(one.data) == 1
    assert len(one.data[0].embedding) == 8
    assert one.usage.prompt_tokens == 4
    many = await client.embeddings.create(
        model=EMBED, input=["um", "dois tres"], dimensions=3, encoding_format="float"
    )
    assert [len(d.embedding) for d in many.data] == [3, 3]
    assert many.usage.prompt_tokens == 3
    raw = await http.post(
        "/v1/embeddings",
        json={"model": EMBED, "input": [[1, 2, 3]], "dimensions": 2, "encoding_format": "base64"},
        headers=tenant.key_auth,
    )
    assert raw.status_code == 200, raw.text
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert len(struct.unpack("<2f", packed)) == 2
    assert Decimal(raw.headers["x-bradax-cost-usd"]) == list_price(EMBED, 3, 0)
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock, EMBED)
    assert all(r["cost_usd"] > 0 and r["status"] == "success" for r in rows)
    assert [r["model"] for r in rows] == [EMBED] * 3


async def test_embeddings_bodies_are_validated(broker: Any, mock: MockUpstream) -> None:
    """Bad embeddings bodies get a 400 naming the field, and never reach the upstream."""
    http, tenant, _ = broker
    for body in (
        {"model": EMBED},
        {"model": EMBED, "input": ""},
        {"model": EMBED, "input": []},
        {"model": EMBED, "input": "x", "dimensions": 0},
        {"model": EMBED, "input": "x", "encoding_format": "int8"},
        {"model": EMBED, "input": "x", "max_tokens": 5},
        {"model": EMBED, "input": [1, "a"]},
    ):
        reply = await http.post("/v1/embeddings", json=body, headers=tenant.key_auth)
        assert reply.status_code == 400, (body, reply.text)
        assert reply.json()["error"]["type"] == "invalid_request_error"
    assert mock.stats()["requests"] == 0


async def test_embeddings_inputs_are_screened_for_personal_data(
    broker: Any, mock: MockUpstream
) -> None:
    """A CPF in an embeddings input is refused (block) or redacted before the upstream."""
    http, _, settings = broker
    block = await login(
        http,
        await create_tenant(
            settings, "proj_emb_block", allowed_models=(EMBED,), compliance_rules=("pii_detection",)
        ),
    )
    reply = await http.post(
        "/v1/embeddings",
        json={"model": EMBED, "input": ["ok", f"cpf {CPF}"]},
        headers=block.key_auth,
    )
    assert reply.status_code == 422, reply.text
    assert mock.stats()["requests"] == 0
    redact = await login(
        http,
        await create_tenant(
            settings,
            "proj_emb_redact",
            allowed_models=(EMBED,),
            compliance_rules=("pii_detection",),
            pii_action="redact",
        ),
    )
    reply = await http.post(
        "/v1/embeddings", json={"model": EMBED, "input": f"cpf {CPF}"}, headers=redact.key_auth
    )
    assert reply.status_code == 200, reply.text
    sent = httpx2.get(mock.root + "/_mock/last_request").json()
    assert CPF not in sent["input"]
    assert sent["input"].startswith("cpf ")


async def test_chat_on_an_embeddings_model_is_refused(broker: Any, mock: MockUpstream) -> None:
    """A chat call naming a model priced for embeddings only is a 400 (its output is unpriced)."""
    http, tenant, _ = broker
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": EMBED, "messages": [{"role": "user", "content": "hi"}]},
        headers=tenant.key_auth,
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "model_not_supported"
    assert mock.stats()["requests"] == 0


async def test_responses_create_is_translated_and_metered(broker: Any, mock: MockUpstream) -> None:
    """responses.create (instructions, string input, max_output_tokens) answers a response whose
    usage and ledger row are exactly what the mock billed for the chat call it became."""
    http, tenant, settings = broker
    client = sdk(http, tenant)
    answer = await client.responses.create(
        model="gpt-4.1-nano",
        instructions="Seja breve",
        input="Explique seguros de vida",
        max_output_tokens=5,
        temperature=0,
    )
    assert answer.output_text == "w0 w1 w2 w3 w4"
    assert answer.status == "incomplete"
    assert answer.incomplete_details is not None
    assert answer.incomplete_details.reason == "max_output_tokens"
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (17, 5)
    sent = httpx2.get(mock.root + "/_mock/last_request").json()
    assert sent["messages"] == [
        {"role": "system", "content": "Seja breve"},
        {"role": "user", "content": "Explique seguros de vida"},
    ]
    assert (sent["max_completion_tokens"], sent["temperature"]) == (5, 0)
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock, "gpt-4.1-nano")
    assert rows[0]["cost_usd"] == list_price("gpt-4.1-nano", 17, 5)


async def test_responses_items_and_tools_map_to_chat(broker: Any, mock: MockUpstream) -> None:
    """Input items (messages with parts, function calls and their outputs) and function tools
    become the chat messages and tools the upstream receives; tool calls come back as items."""
    http, tenant, _ = broker
    client = sdk(http, tenant)
    mock_reply = {"text": "", "tool_arguments": '{"q": "vida"}'}
    httpx2.post(mock.root + "/_mock/reply", json=mock_reply).raise_for_status()
    answer = await client.responses.create(
        model="gpt-4.1-nano",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "procure"}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "nada"},
        ],
        tools=[{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "lookup"},
    )
    sent = httpx2.get(mock.root + "/_mock/last_request").json()
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "procure"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "nada"},
    ]
    assert sent["tools"] == [
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    calls = [item for item in answer.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_mock", "lookup", '{"q": "vida"}')
    ]


async def test_responses_stream_events_and_usage(broker: Any, mock: MockUpstream) -> None:
    """responses.create(stream=True) emits created, text deltas and completed with the usage
    the ledger holds, which is what the mock billed."""
    http, tenant, settings = broker
    client = sdk(http, tenant)
    stream = await client.responses.create(
        model="gpt-4.1-nano", input="Explique seguros de vida", max_output_tokens=4, stream=True
    )
    kinds: list[str] = []
    text = ""
    usage = None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type in ("response.completed", "response.incomplete"):
            usage = event.response.usage
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds
    assert kinds[-1] == "response.incomplete"  # max_output_tokens cut the reply
    assert text == "w0 w1 w2 w3"
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (11, 4)
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock, "gpt-4.1-nano")
    assert [(r["status"], r["streamed"]) for r in rows] == [("success", True)]


async def test_responses_stream_helper_completes(broker: Any, mock: MockUpstream) -> None:
    """The SDK's responses.stream helper accumulates the events into the final response."""
    http, tenant, settings = broker
    client = sdk(http, tenant)
    async with client.responses.stream(
        model="gpt-4.1-nano", input="Explique seguros de vida"
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.output_text == " ".join(f"w{i}" for i in range(12))
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 12)
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock, "gpt-4.1-nano")


async def test_responses_cut_stream_fails_and_is_charged_at_its_bound(
    broker: Any, mock: MockUpstream
) -> None:
    """A Responses stream the upstream cuts ends in response.failed and is charged its bound."""
    http, tenant, settings = broker
    httpx2.post(mock.root + "/_mock/enqueue", json={"cut_after_chunks": 2}).raise_for_status()
    async with http.stream(
        "POST",
        "/v1/responses",
        json={"model": "gpt-4.1-nano", "input": "oi", "max_output_tokens": 10, "stream": True},
        headers=tenant.key_auth,
    ) as reply:
        events = [line async for line in reply.aiter_lines() if line.startswith("event: ")]
    assert events[0] == "event: response.created"
    assert events[-1] == "event: response.failed"
    rows = await ledger_rows(settings)
    assert [(r["status"], r["completion_tokens"]) for r in rows] == [("cut", 10)]
    assert rows[0]["cost_usd"] > billed(mock, "gpt-4.1-nano")[0][3]


async def test_responses_refuses_what_it_cannot_serve(broker: Any, mock: MockUpstream) -> None:
    """previous_response_id, built-in tools and unknown fields are 400s naming the field."""
    http, tenant, _ = broker
    client = sdk(http, tenant)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(
            model="gpt-4.1-nano", input="oi", previous_response_id="resp_123"
        )
    assert caught.value.param == "previous_response_id"
    assert "keeps no responses" in caught.value.message
    for extra in (
        {"tools": [{"type": "web_search"}]},
        {"background": True},
        {"input": []},
        {"max_output_tokens": 0},
    ):
        body = {"model": "gpt-4.1-nano", "input": "oi", **extra}
        reply = await http.post("/v1/responses", json=body, headers=tenant.key_auth)
        assert reply.status_code == 400, (extra, reply.text)
    assert mock.stats()["requests"] == 0


async def test_model_ids_with_odd_characters_get_json_404s(broker: Any) -> None:
    """A model id holding a newline or other odd characters is a JSON 404, never plain text."""
    http, tenant, _ = broker
    for path in ("/v1/models/a%0Ab", "/v1/models/%C3%A4%0D", "/v1/models/x/y%00"):
        reply = await http.get(path, headers=tenant.key_auth)
        assert reply.status_code == 404, path
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["error"]["code"] == "model_not_found"


CHAT = [{"role": "user", "content": "Explique seguros de vida"}]
# (path, body, streamed) of one call in each face, plain and streamed.
FACE_CALLS = {
    "invoke": ("/api/v1/llm/invoke", {"model": "gpt-4.1-nano", "messages": CHAT}),
    "chat": ("/v1/chat/completions", {"model": "gpt-4.1-nano", "messages": CHAT}),
    "responses": ("/v1/responses", {"model": "gpt-4.1-nano", "input": "Explique seguros"}),
    "embeddings": ("/v1/embeddings", {"model": EMBED, "input": ["um dois", "tres"]}),
    "messages": (
        "/v1/messages",
        {"model": "gpt-4.1-nano", "max_tokens": 20, "system": "curto", "messages": CHAT},
    ),
}
STREAMED_FACES = ("invoke", "chat", "responses", "messages")


def face_headers(face: str, tenant: Tenant) -> dict[str, str]:
    """The credential header each face's clients send."""
    if face == "invoke":
        return tenant.auth
    if face == "messages":
        return {"x-api-key": tenant.api_key}
    return tenant.key_auth


@pytest.mark.parametrize(
    ("face", "stream"),
    [(face, False) for face in FACE_CALLS] + [(face, True) for face in STREAMED_FACES],
)
async def test_every_face_is_ledgered_as_the_mock_billed(
    broker: Any, mock: MockUpstream, face: str, stream: bool
) -> None:
    """Each face, plain and streamed, is ledgered with the tokens the mock billed and their
    list price to the nano-dollar, never at $0."""
    http, tenant, settings = broker
    path, body = FACE_CALLS[face]
    headers = face_headers(face, tenant)
    if stream:
        async with http.stream(
            "POST", path, json={**body, "stream": True}, headers=headers
        ) as reply:
            assert reply.status_code == 200
            _ = [line async for line in reply.aiter_lines()]
    else:
        reply = await http.post(path, json=body, headers=headers)
        assert reply.status_code == 200, reply.text
    model = body["model"]
    rows = await ledger_rows(settings)
    assert ledgered(rows) == billed(mock, model)
    assert len(rows) == 1
    assert rows[0]["cost_usd"] > 0
    assert (rows[0]["status"], rows[0]["streamed"]) == ("success", stream)


@pytest.mark.parametrize("face", list(FACE_CALLS))
async def test_a_project_over_budget_gets_402_from_every_face(
    broker: Any, mock: MockUpstream, face: str
) -> None:
    """A project whose budget cannot cover a call's worst case gets a 402 in the face's error
    shape (OpenAI's on /v1, so the SDK raises its status error), and the upstream is not
    called."""
    http, _, settings = broker
    poor = await login(
        http,
        await create_tenant(
            settings,
            "proj_poor",
            budget_monthly_usd="0",
            allowed_models=(*CHAT_MODELS, EMBED),
        ),
    )
    path, body = FACE_CALLS[face]
    reply = await http.post(path, json=body, headers=face_headers(face, poor))
    assert reply.status_code == 402, reply.text
    error = reply.json()["error"]
    if face == "invoke":
        assert error["code"] == "budget_exceeded"
        assert "request_id" in error
    elif face == "messages":
        assert reply.json()["type"] == "error"
        assert (error["type"], error["code"]) == ("billing_error", "budget_exceeded")
    else:
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "budget_exceeded"
    assert mock.stats()["requests"] == 0
    if face not in ("invoke", "messages"):  # the anthropic SDK: tests/test_anthropic_face.py
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk_call(sdk(http, poor), face)
        assert caught.value.status_code == 402


async def sdk_call(client: openai.AsyncOpenAI, face: str) -> object:
    """One call of `face` through the official SDK."""
    if face == "chat":
        return await client.chat.completions.create(
            model="gpt-4.1-nano", messages=[{"role": "user", "content": "oi"}]
        )
    if face == "responses":
        return await client.responses.create(model="gpt-4.1-nano", input="oi")
    return await client.embeddings.create(model=EMBED, input="oi")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("face", ["responses", "messages"])
async def test_translated_faces_report_the_bound_when_usage_lies(
    broker: Any, mock: MockUpstream, face: str, stream: bool
) -> None:
    """When the upstream's usage is absent, the translated faces report and ledger the call's
    bound (what it is charged), never the missing claim or zero."""
    http, tenant, settings = broker
    httpx2.post(mock.root + "/_mock/enqueue", json={"usage": "absent"}).raise_for_status()
    path, body = FACE_CALLS[face]
    body = {**body, "stream": stream}
    if face == "responses":
        body["max_output_tokens"] = 20
    async with http.stream("POST", path, json=body, headers=face_headers(face, tenant)) as reply:
        assert reply.status_code == 200
        raw = b"".join([part async for part in reply.aiter_bytes()])
    rows = await ledger_rows(settings)
    assert [(r["status"], r["completion_tokens"]) for r in rows] == [("usage_unverified", 20)]
    prompt = rows[0]["prompt_tokens"]
    if stream:
        last = [line for line in raw.split(b"\n") if line.startswith(b"data: ")][
            -2 if face == "messages" else -1
        ]
        usage = orjson.loads(last[6:])
        usage = usage["response"]["usage"] if face == "responses" else usage["usage"]
    else:
        usage = orjson.loads(raw)["usage"]
    fields = ("input_tokens", "output_tokens")
    assert tuple(usage[f] for f in fields) == (prompt, 20)


@pytest.mark.parametrize("face", ["responses", "messages"])
async def test_personal_data_in_translated_answers_is_redacted(
    broker: Any, mock: MockUpstream, face: str
) -> None:
    """A CPF in the upstream's answer is redacted in the translated faces, plain and streamed."""
    http, _, settings = broker
    tenant = await login(
        http,
        await create_tenant(
            settings, f"proj_out_{face}", allowed_models=CHAT_MODELS, output_pii_action="redact"
        ),
    )
    path, body = FACE_CALLS[face]
    for stream in (False, True):
        script = {"text": f"o cpf e {CPF} ok"}
        httpx2.post(mock.root + "/_mock/reply", json=script).raise_for_status()
        async with http.stream(
            "POST", path, json={**body, "stream": stream}, headers=face_headers(face, tenant)
        ) as reply:
            assert reply.status_code == 200
            raw = b"".join([part async for part in reply.aiter_bytes()])
        assert CPF.encode() not in raw
        assert b"o cpf e" in raw


async def test_every_answer_without_an_upstream_call_states_the_overhead(broker: Any) -> None:
    """GET /v1/models, GET /v1/models/{id} and count_tokens (answered without an upstream)
    carry X-Bradax-Overhead-Ms, on success and on refusal alike."""
    http, tenant, _ = broker
    auth = {"Authorization": f"Bearer {tenant.api_key}"}
    count = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "oi"}]}
    answers = [
        await http.get("/v1/models", headers=auth),
        await http.get("/v1/models/gpt-4.1-mini", headers=auth),
        await http.get("/v1/models/no-such-model", headers=auth),
        await http.post("/v1/messages/count_tokens", json=count, headers=auth),
    ]
    assert [a.status_code for a in answers] == [200, 200, 404, 200]
    for answer in answers:
        assert 0 < float(answer.headers["x-bradax-overhead-ms"]) < 10_000

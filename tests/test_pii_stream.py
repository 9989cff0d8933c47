"""Tests for common.pii_stream: streamed answers redacted or blocked with a bounded tail."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from common.pii_stream import HOLD, StreamFilter

DONE = b"data: [DONE]\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    """One chat.completion.chunk SSE event."""
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def pieces(text: str, size: int) -> list[str]:
    """The text cut in pieces of `size` characters."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def run(action: str, events: list[bytes]) -> tuple[list[dict[str, Any]], StreamFilter]:
    """Feed the events; the relayed data payloads (decoded) and the filter."""
    guard = StreamFilter(action)  # type: ignore[arg-type]
    out: list[bytes] = []
    for event in events:
        out.extend(guard.feed(event))
    payloads = []
    for event in out:
        data = event.removeprefix(b"data: ").strip()
        payloads.append({"done": True} if data == b"[DONE]" else orjson.loads(data))
    return payloads, guard


def content(payloads: list[dict[str, Any]], name: str = "content") -> str:
    """The concatenated delta text the client received."""
    return "".join(
        c["delta"].get(name) or "" for p in payloads for c in p.get("choices") or () if "delta" in c
    )


ANSWER = "Claro! O CPF 529.982.247-25 e o e-mail ana@example.com estão no cadastro. " * 3


@pytest.mark.parametrize("size", [1, 2, 5, 40])
def test_redacted_across_chunk_boundaries(size: int) -> None:
    """Personal data split over chunks of any size is redacted; the rest arrives intact."""
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in pieces(ANSWER, size)]
    events += [chunk({}, "stop"), DONE]
    payloads, guard = run("redact", events)
    assert content(payloads) == ANSWER.replace("529.982.247-25", "[CPF]").replace(
        "ana@example.com", "[EMAIL]"
    )
    assert guard.kinds == {"cpf", "email"}
    notice = payloads[-2]
    assert notice["choices"] == []
    assert notice["bradax"] == {"pii": {"action": "redacted", "kinds": ["cpf", "email"]}}
    assert payloads[-1] == {"done": True}


def test_evasive_writings_are_redacted_in_streams() -> None:
    """Full-width digits and zero-width characters split over chunks are still redacted."""
    text = "ok ５２９.９８２.２４７-２５ e 529\u200b982\u200b247\u00ad25 fim " + "x" * 100
    events = [chunk({"content": p}) for p in pieces(text, 3)] + [DONE]
    payloads, _ = run("redact", events)
    assert content(payloads) == "ok [CPF] e [CPF] fim " + "x" * 100


def test_the_tail_held_back_is_bounded() -> None:
    """Text is relayed as it comes, never more than HOLD characters behind the upstream."""
    guard = StreamFilter("redact")
    sent, relayed = 0, 0
    for piece in pieces("palavra " * 200, 4):
        sent += len(piece)
        for event in guard.feed(chunk({"content": piece})):
            relayed += len(content([orjson.loads(event.removeprefix(b"data: "))]))
        assert sent - relayed <= HOLD + 4
    assert relayed > 0


def test_block_stops_the_stream_before_the_data() -> None:
    """In block mode the first finding ends the stream with an error event; no digit leaks."""
    events = [chunk({"content": p}) for p in pieces("Texto longo sem nada. " * 10 + ANSWER, 3)]
    payloads, guard = run("block", [*events, DONE])
    assert guard.blocked
    received = content(payloads)
    assert "529" not in received
    assert "Texto longo" in received
    error = payloads[-1]["error"]
    assert (error["code"], error["pii_kinds"]) == ("output_pii_detected", ["cpf"])
    assert guard.feed(chunk({"content": "more"})) == []


def test_tool_call_arguments_and_refusals_are_redacted() -> None:
    """Streamed tool-call arguments stay valid JSON after redaction; refusals are redacted."""
    arguments = '{"cpf": "529.982.247-25", "nome": "Ana"}'
    events = [
        chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": ""}}]})
    ]
    events += [
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
        for p in pieces(arguments, 4)
    ]
    events += [chunk({"refusal": "nao posso: 111.444.777-35"}), chunk({}, "tool_calls"), DONE]
    payloads, _ = run("redact", events)
    joined = "".join(
        call["function"].get("arguments") or ""
        for p in payloads
        for c in p.get("choices") or ()
        for call in c["delta"].get("tool_calls") or ()
    )
    assert orjson.loads(joined) == {"cpf": "[CPF]", "nome": "Ana"}
    assert content(payloads, "refusal") == "nao posso: [CPF]"


def test_a_cut_stream_is_flushed_by_finish() -> None:
    """When the upstream ends without [DONE], finish() relays the held tail, redacted."""
    guard = StreamFilter("redact")
    relayed = [
        e for p in pieces("CPF 529.982.247-25", 2) for e in guard.feed(chunk({"content": p}))
    ]
    relayed += guard.finish()
    payloads = [orjson.loads(e.removeprefix(b"data: ")) for e in relayed]
    assert content(payloads) == "CPF [CPF]"


def test_invalid_numbers_stream_unchanged_and_other_events_pass() -> None:
    """Invalid check digits pass; usage chunks and unparsable events are relayed as they are."""
    usage = b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":1}}\n\n'
    odd = b": keep-alive\n\n"
    events = [chunk({"content": "CPF 529.982.247-26 ok"}), usage, odd, chunk({}, "stop"), DONE]
    guard = StreamFilter("redact")
    out = [e for event in events for e in guard.feed(event)]
    assert usage in out
    assert odd in out
    payloads = [orjson.loads(e.removeprefix(b"data: ")) for e in out if e.startswith(b"data: {")]
    assert content(payloads) == "CPF 529.982.247-26 ok"
    assert not guard.kinds


def test_every_text_of_a_delta_is_scanned_and_logprobs_are_dropped() -> None:
    """Other delta strings, legacy function_call arguments and audio transcripts are redacted."""
    events = [
        chunk({"reasoning_content": "pensando em 529.982.247-25"}),
        chunk({"function_call": {"name": "f", "arguments": '{"c": "111.444.777-35"}'}}),
        chunk({"audio": {"id": "a", "transcript": "ligue (11) 91234-5678"}}),
        chunk({}, "stop"),
        DONE,
    ]
    with_logprobs = orjson.loads(chunk({"content": "oi"})[6:])
    with_logprobs["choices"][0]["logprobs"] = {"content": [{"token": "529", "logprob": -1.0}]}
    events.insert(0, b"data: " + orjson.dumps(with_logprobs) + b"\n\n")
    payloads, guard = run("redact", events)
    deltas = [c["delta"] for p in payloads for c in p.get("choices") or ()]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "pensando em [CPF]"
    arguments = "".join((d.get("function_call") or {}).get("arguments") or "" for d in deltas)
    assert orjson.loads(arguments) == {"c": "[CPF]"}
    transcript = "".join((d.get("audio") or {}).get("transcript") or "" for d in deltas)
    assert transcript == "ligue [PHONE]"
    assert all(c.get("logprobs") is None for p in payloads for c in p.get("choices") or ())
    assert guard.kinds == {"cpf", "phone"}


def test_multi_line_data_events_are_scanned() -> None:
    """A payload split over several data lines is joined, scanned and relayed redacted."""
    whole = chunk({"content": "CPF 529.982.247-25 fim"}).decode().removeprefix("data: ").strip()
    cut = whole.index('"content"')
    event = f"data: {whole[:cut]}\ndata: {whole[cut:]}\n\n".encode()
    payloads, _ = run("redact", [event, DONE])
    assert content(payloads) == "CPF [CPF] fim"


@pytest.mark.parametrize("action", ["redact", "block"])
def test_other_json_events_are_scanned(action: str) -> None:
    """An error event (or any JSON event without choices) carrying personal data is handled."""
    error = b'data: {"error": {"message": "bad input 529.982.247-25"}}\n\n'
    payloads, guard = run(action, [error])
    if action == "redact":
        assert payloads == [{"error": {"message": "bad input [CPF]"}}]
    else:
        assert guard.blocked
        assert payloads[0]["error"]["code"] == "output_pii_detected"

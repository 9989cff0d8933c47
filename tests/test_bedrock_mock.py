"""The mock's Bedrock Converse API, driven by boto3 itself (its request validation, SigV4
signing, JSON and event-stream parsing) and by raw HTTP where boto3 would not misbehave; and
the broker's event-stream framing over what the mock's encoder writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from unittest import mock as mock_lib

import aiohttp
import boto3
import botocore.config
import botocore.exceptions
import httpx2
import orjson
import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from bradax_cli.mock.bedrock_wire import event, exception, frame
from common.bedrock_stream import EventStreamReader
from tests.conftest import MockUpstream

MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"
ACCESS = "AKIDMOCKTEST0000"
SECRET = "mock-secret-access-key-0123456789"


@pytest.fixture
def bedrock(mock: MockUpstream) -> Iterator[MockUpstream]:
    """The mock, knowing the Bedrock model and verifying SigV4 with the test credentials."""
    mock.configure(models=[MODEL], aws_access_key_id=ACCESS, aws_secret_access_key=SECRET)
    yield mock
    mock.reset()


def client(mock: MockUpstream, secret: str = SECRET) -> Any:
    """A boto3 bedrock-runtime client on the mock (no retries, no other endpoint)."""
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=mock.root,
        region_name="eu-west-1",
        aws_access_key_id=ACCESS,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def test_frames_decode_with_botocore() -> None:
    """The mock's encoder writes what botocore's decoder reads (headers, payload, CRCs)."""
    buffer = EventStreamBuffer()
    buffer.add_data(event("messageStop", {"stopReason": "end_turn"}))
    buffer.add_data(exception("throttlingException", "slow down"))
    first, second = list(buffer)
    assert first.headers == {
        ":event-type": "messageStop",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert orjson.loads(first.payload) == {"stopReason": "end_turn"}
    assert second.headers[":exception-type"] == "throttlingException"
    broken = bytearray(frame({":event-type": "x"}, b"{}"))
    broken[-5] ^= 0xFF
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(broken))
    with pytest.raises(ChecksumMismatch):
        next(buffer)


def test_converse_answers_what_boto3_parses(bedrock: MockUpstream) -> None:
    """converse: a signed request verified by the mock, an answer boto3 parses, its usage
    the mock's arithmetic (3 + (4 + 2) system + (4 + 2) user)."""
    answer = client(bedrock).converse(
        modelId=MODEL,
        system=[{"text": "Seja breve"}],
        messages=[{"role": "user", "content": [{"text": "Explique seguros"}]}],
        inferenceConfig={"maxTokens": 4},
    )
    assert answer["output"]["message"]["content"] == [{"text": "w0 w1 w2 w3"}]
    assert answer["stopReason"] == "max_tokens"
    assert answer["usage"] == {"inputTokens": 15, "outputTokens": 4, "totalTokens": 19}
    call = bedrock.stats()["calls"][-1]
    assert (call["protocol"], call["prompt_tokens"], call["completion_tokens"]) == (
        "bedrock",
        15,
        4,
    )
    seen = httpx2.get(bedrock.root + "/_mock/last_headers").json()
    assert "authorization" not in seen
    assert seen["authorization-scope"].endswith("/eu-west-1/bedrock/aws4_request")


def test_converse_stream_is_an_event_stream_boto3_reads(bedrock: MockUpstream) -> None:
    """converse_stream: messageStart, text deltas, a toolUse block, messageStop, metadata
    with the cache tokens outside inputTokens."""
    httpx2.post(
        bedrock.root + "/_mock/reply", json={"text": "ola", "tool_arguments": '{"q": 1}'}
    ).raise_for_status()
    bedrock.enqueue({"cache": {"read": 3, "write": 2}})
    reply = client(bedrock).converse_stream(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": "oi"}]}]
    )
    events = list(reply["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[3]["contentBlockStart"]["start"]["toolUse"]["name"] == "lookup"
    pieces = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events[4:7])
    assert pieces == '{"q": 1}'
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"
    # prompt 3 + 4 + 1 = 8: 3 read, 2 written, 3 fresh; completion: the 4 pieces
    assert events[-1]["metadata"]["usage"] == {
        "inputTokens": 3,
        "outputTokens": 4,
        "totalTokens": 12,
        "cacheReadInputTokens": 3,
        "cacheWriteInputTokens": 2,
    }
    call = bedrock.stats()["calls"][-1]
    assert (call["cache_read_tokens"], call["cache_write_tokens"]) == (3, 2)


def test_a_bad_signature_and_a_throttle_are_aws_errors(bedrock: MockUpstream) -> None:
    """A signature made with the wrong secret is a 403 InvalidSignatureException; a queued
    429 is a ThrottlingException boto3 recognises."""
    messages = [{"role": "user", "content": [{"text": "oi"}]}]
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client(bedrock, secret="not-the-secret").converse(modelId=MODEL, messages=messages)
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    bedrock.enqueue({"status": 429})
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client(bedrock).converse(modelId=MODEL, messages=messages)
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_bodies_are_validated_as_converse_does(bedrock: MockUpstream) -> None:
    """Unknown models, turns that do not alternate, blank text and unknown fields are 400
    ValidationExceptions naming the type in the body and the header; no auth is a 403."""
    url = f"{bedrock.root}/model/{MODEL}/converse"
    user = {"role": "user", "content": [{"text": "oi"}]}
    bedrock.configure(aws_secret_access_key=None)  # any signature is accepted
    auth = {"Authorization": "AWS4-HMAC-SHA256 Credential=x/1/r/bedrock/aws4_request"}
    for path, body in (
        (f"{bedrock.root}/model/other.model-v1:0/converse", {"messages": [user]}),
        (url, {"messages": [user, user]}),
        (url, {"messages": [{"role": "user", "content": [{"text": " "}]}]}),
        (url, {"messages": [user], "temperature": 1}),
    ):
        reply = httpx2.post(path, json=body, headers=auth)
        assert reply.status_code == 400, body
        assert reply.json()["__type"] == "ValidationException"
        assert reply.headers["x-amzn-errortype"].startswith("ValidationException:")
    reply = httpx2.post(url, json={"messages": [user]})
    assert reply.status_code == 403
    assert bedrock.stats()["requests"] == 5


def test_a_cut_stream_stops_inside_a_message(bedrock: MockUpstream) -> None:
    """cut_after_chunks sends that many deltas, then half a message, then drops the
    connection: what arrived decodes up to the half message."""
    bedrock.configure(aws_secret_access_key=None)
    bedrock.enqueue({"cut_after_chunks": 2})
    url = f"{bedrock.root}/model/{MODEL}/converse-stream"
    body = {"messages": [{"role": "user", "content": [{"text": "oi"}]}]}
    pieces: list[bytes] = []

    def read() -> None:
        with httpx2.stream("POST", url, json=body, headers={"Authorization": "Bearer k"}) as reply:
            assert reply.headers["content-type"] == "application/vnd.amazon.eventstream"
            pieces.extend(reply.iter_raw())

    with pytest.raises(httpx2.HTTPError):
        read()
    raw = b"".join(pieces)
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    assert [m.headers[":event-type"] for m in buffer] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
    ]
    assert bedrock.stats()["calls"][-1]["outcome"] == "cut"


def _content(pieces: list[bytes]) -> aiohttp.StreamReader:
    """An aiohttp body that has received `pieces`, then its end."""
    protocol = mock_lib.Mock(_reading_paused=False)
    content = aiohttp.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    for piece in pieces:
        content.feed_data(piece)
    content.feed_eof()
    return content


async def _framed(pieces: list[bytes], max_event: int = 4096, max_total: int = 1 << 20) -> Any:
    reader = EventStreamReader(_content(pieces), 5.0, max_event, max_total)
    return [message async for message in reader.events()], reader.end


async def test_the_broker_frames_messages_by_their_prelude() -> None:
    """Messages split anywhere are framed whole; a partial one at the end is dropped; one
    over max_event or a stream over max_total is oversize; a prelude too short is lost."""
    one = event("messageStart", {"role": "assistant"})
    two = event("messageStop", {"stopReason": "end_turn"})
    data = one + two
    framed, end = await _framed([data[i : i + 1] for i in range(len(data))])
    assert (framed, end) == ([one, two], "eof")
    framed, end = await _framed([one, two[:20]])
    assert (framed, end) == ([one], "eof")
    big = event("contentBlockDelta", {"p": "x" * 5000})
    assert await _framed([one, big]) == ([one], "oversize")
    # (all of it has arrived: aiohttp hands it out as one chunk, over the limit as a whole)
    assert await _framed([one, two], max_total=len(one) + 5) == ([], "oversize")
    assert await _framed([one, b"\x00\x00\x00\x08" + bytes(12)]) == ([one], "lost")

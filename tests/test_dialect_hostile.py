"""Odd and hostile input to the native dialects: upstream answers and streams that must not
under-charge the call or crash the broker, and client bodies that must be refused with a 400
before admission, never fail with a 500 or reach the provider unlike the screen read them.
The dialects are fed real bytes; the end-to-end test runs over the mock's Gemini protocol."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from common.catalog import Upstream
from common.gemini_dialect import GEMINI
from common.pricing import Price
from common.wire import DONE

PRICE = Price(Decimal(1), Decimal(5))
ANTHROPIC_UP = Upstream("c", "http://up.test/v1", None, "claude-x", PRICE, dialect="anthropic")
BEDROCK_UP = Upstream("b", "http://up.test", "br-" + "k" * 30, "nova", PRICE, dialect="bedrock")
GEMINI_UP = Upstream("g", "http://up.test/v1beta", None, "gemini-2.5-flash", PRICE, "gemini")
# Tool input nested as deep as orjson reads (1024 levels in all): too deep to write back.
DEEP = "[" * 1015 + "]" * 1015


@dataclass
class Tally:
    """What the broker's StreamCall keeps for a stream (the StreamTally protocol)."""

    strip_usage: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache_read: int = 0
    cache_write: int = 0
    usage_invalid: bool = False
    produced: int = 0
    done: bool = False


def gemini_chunk(parts: list[dict[str, Any]], finish: str | None = None, **extra: Any) -> bytes:
    """One Gemini stream chunk as Google frames it."""
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
    if finish:
        candidate["finishReason"] = finish
    return b"data: " + orjson.dumps({"candidates": [candidate], **extra}) + b"\r\n\r\n"


def test_a_gemini_stream_whose_end_has_no_usage_is_not_charged_an_earlier_count() -> None:
    """Usage rides on every Gemini chunk, the one at the end being final: a finish chunk without
    usage leaves the stream without its final usage (charged at the bound), never with the
    partial count an earlier chunk gave."""
    translator = GEMINI.translator(GEMINI_UP)
    tally = Tally()
    partial = {"promptTokenCount": 7, "candidatesTokenCount": 1}
    list(translator.feed(gemini_chunk([{"text": "a"}], usageMetadata=partial), tally))
    out = list(translator.feed(gemini_chunk([{"text": "b"}], "STOP"), tally))
    assert out[-1] == DONE
    assert not any(b'"usage"' in event for event in out)
    assert (tally.done, tally.prompt_tokens, tally.completion_tokens) == (True, None, None)
    assert tally.usage_invalid is False

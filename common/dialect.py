"""What an upstream dialect is: how one wire protocol is spoken to and read back.

The retry loop (`common.llm`), the breaker, the size limits (`common.sse`) and the error
mapping (`common.upstream_errors`) are the same for every upstream. Every API face hands the
upstream step one lingua franca, an OpenAI chat-completions body, and reads back a chat
completion or chat chunks. What differs between wire protocols is only what a `Dialect`
does: check that a body's features map to it, build the wire request (endpoint, headers with
the key or a signature, body), read an answer, an error body and a stream's events, each
translated to the chat shapes. A new dialect is a new module implementing this Protocol,
registered in `common.llm.DIALECTS`; an `Upstream` names the one it speaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from common import sse
from common.catalog import Upstream
from common.errors import BadRequest


def unsupported(param: str, what: str, provider: str) -> BadRequest:
    """The 400 for a chat feature at `param` a provider's protocol cannot carry (`what`: the
    feature, or why it cannot be carried)."""
    return BadRequest(
        f"'{param}' is not supported by this model's upstream ({provider}): {what}",
        code="parameter_not_supported",
        param=param,
    )


@dataclass(frozen=True)
class WireRequest:
    """One HTTP request to an upstream (always a POST)."""

    url: str
    headers: dict[str, str]
    data: bytes


@dataclass(frozen=True)
class Answer:
    """A 200's body as read by a dialect: `data` is a chat completion; token counts are the
    upstream's claim (None: no usable usage; `usage_invalid` when it carried one that is
    not). `cache_read` / `cache_write` are the prompt tokens read from / written to the
    provider's prompt cache (part of `prompt_tokens`). `body` is the chat completion as
    bytes when it is not the upstream's own body (a translated dialect)."""

    data: dict[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_invalid: bool
    cache_read: int = 0
    cache_write: int = 0
    body: bytes | None = None


class StreamTally(Protocol):
    """What a dialect keeps up to date while a stream's events go by."""

    strip_usage: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    cache_read: int
    cache_write: int
    usage_invalid: bool
    produced: int
    done: bool


class EventReader(Protocol):
    """A stream's framed events, bounded; `end` says why they stopped (common.sse's ends)."""

    end: str | None

    def events(self) -> AsyncIterator[bytes]:
        """The raw events as they arrive."""
        ...


class Translator(Protocol):
    """One stream's events turned into chat-completion chunk events (`data: {...}\\n\\n`)."""

    def feed(self, event: bytes, tally: StreamTally) -> Iterable[bytes]:
        """The chat events for one upstream event (none: swallowed); tracks usage, the end
        (`tally.done`) and the produced chunks in `tally`."""
        ...


class Dialect(Protocol):
    """One upstream wire protocol."""

    # request() may block (an AWS credential lookup or refresh): it runs in a worker thread.
    blocking: bool

    def check(self, upstream: Upstream, body: dict[str, Any]) -> None:
        """BadRequest naming the first feature of a chat body this protocol cannot carry
        (asked before admission, for every upstream of the chain)."""
        ...

    def prompt_overhead(self, body: dict[str, Any]) -> int:
        """Prompt tokens the provider bills beyond the body's own (a hidden system prompt)."""
        ...

    def request(
        self,
        upstream: Upstream,
        body: dict[str, Any],
        request_id: str,
        forward: Mapping[str, str],
    ) -> WireRequest:
        """The wire request for a chat body (`body["model"]` is the upstream's model name;
        `forward`: client headers meant for this provider, e.g. anthropic-version)."""
        ...

    def answer(self, upstream: Upstream, body: bytes) -> Answer:
        """A 200's body; UpstreamBadResponse (`common.upstream_errors.malformed`) if unusable."""
        ...

    def error_tokens(self, body: bytes) -> Iterable[object]:
        """The error code and type an error body names, preferred first (filtered later)."""
        ...

    def retry_delay(self, body: bytes) -> float | None:
        """Seconds an error body asks the caller to wait, when the protocol says it there
        rather than in Retry-After (None: it does not)."""
        ...

    def reader(
        self, content: aiohttp.StreamReader, idle: float, max_event: int, max_total: int
    ) -> EventReader:
        """What frames a streamed answer into events (server-sent events for most)."""
        ...

    def translator(self, upstream: Upstream) -> Translator:
        """A new stream's event translator."""
        ...


class SSEFraming:
    """What most dialects share: answers streamed as server-sent events, requests built
    without blocking, and no wait named in error bodies (Retry-After says it, if anything)."""

    blocking = False

    def retry_delay(self, body: bytes) -> float | None:
        """None: the wait is in Retry-After, if anywhere."""
        return None

    def reader(
        self, content: aiohttp.StreamReader, idle: float, max_event: int, max_total: int
    ) -> EventReader:
        """Server-sent events."""
        return sse.SSEReader(content, idle, max_event, max_total)

"""The OpenAI chat-completions dialect (OpenAI, Azure OpenAI and compatible servers).

Only what the broker needs is read: a 200 must be a JSON object with a `choices` list,
and its `usage` is a claim (`common.bounds.read_usage`); an error body may name
`error.code` / `error.type`; stream events are `data:` lines of chunks, ending in
`data: [DONE]`, and the usage they claim is the stream's only at [DONE] (usage shown before
may be partial: a stream cut before its end has none, and is charged at its bound). The chat
body is the wire body: nothing is translated. Cached prompt tokens
(`usage.prompt_tokens_details.cached_tokens`) are read as cache reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from common.bounds import read_usage
from common.catalog import Upstream
from common.dialect import Answer, SSEFraming, StreamTally, Translator, WireRequest
from common.upstream_errors import answer_object, malformed
from common.wire import dumps, error_object, without_cache_hints

# The key of a prompt-cache breakpoint, as it appears in a body that has one.
CACHE_HINT = b'"cache_control"'


def cached_tokens(usage: object, prompt: int) -> int:
    """The cached prompt tokens an OpenAI usage object names (0 if none or not plausible)."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if isinstance(cached, int) and not isinstance(cached, bool) and 0 <= cached <= prompt:
        return cached
    return 0


class OpenAIDialect(SSEFraming):
    """The `Dialect` of OpenAI-compatible chat completions."""

    path = "/chat/completions"

    def check(self, upstream: Upstream, body: dict[str, Any]) -> None:
        """Every chat feature is the upstream's own to accept or refuse."""

    def prompt_overhead(self, body: dict[str, Any]) -> int:
        """None: what OpenAI bills is in the body."""
        return 0

    def request(
        self,
        upstream: Upstream,
        body: dict[str, Any],
        request_id: str,
        forward: Mapping[str, str],
    ) -> WireRequest:
        """The body as built, posted to `<base_url><path>` with the route's query (prompt-cache
        breakpoints a Messages client set are Anthropic's: not sent)."""
        data = dumps(body)
        if CACHE_HINT in data:
            data = dumps(without_cache_hints(body))
        return WireRequest(self.url(upstream), self.headers(upstream, request_id), data)

    def url(self, upstream: Upstream) -> str:
        """`<base_url><path>`, with the route's query (Azure's api-version)."""
        if upstream.query:
            return f"{upstream.base_url}{self.path}?{urlencode(upstream.query)}"
        return f"{upstream.base_url}{self.path}"

    def headers(self, upstream: Upstream, request_id: str) -> dict[str, str]:
        """JSON, our request id, and the key as a bearer token or an Azure `api-key`."""
        headers = {
            "Content-Type": "application/json",
            "X-Request-ID": request_id,
            "User-Agent": "bradax/1.0",
        }
        if upstream.api_key:
            if upstream.key_header == "api-key":
                headers["api-key"] = upstream.api_key
            else:
                headers["Authorization"] = f"Bearer {upstream.api_key}"
        return headers

    def answer(self, upstream: Upstream, body: bytes) -> Answer:
        """A chat completion; UpstreamBadResponse when the body is not one."""
        data = answer_object(upstream, body, "a chat completion")
        if not isinstance(data.get("choices"), list):
            raise malformed(upstream, "upstream answer is not a chat completion", "shape")
        # Usage is a claim: unreadable or implausible usage leaves the answer usable and the
        # call charged at its bound (common.bounds.verify), never free.
        usage = data.get("usage")
        counts = read_usage(usage)
        if counts is None:
            return Answer(data, None, None, usage is not None)
        prompt, completion = counts
        return Answer(data, prompt, completion, False, cached_tokens(usage, prompt))

    def error_tokens(self, body: bytes) -> Iterable[object]:
        """`error.code`, then `error.type`, of an OpenAI error body."""
        error = error_object(body)
        return (error.get("code"), error.get("type")) if error is not None else ()

    def translator(self, upstream: Upstream) -> Translator:
        """Chat chunks are relayed as they are, read on the way (one per stream)."""
        return _Relay(self)

    def tally(self, event: bytes, tally: StreamTally, seen: Seen) -> bool:
        """Track usage (`seen` until [DONE], then the tally's), done and produced; False for
        a usage-only chunk the client did not ask for."""
        for raw in event.splitlines():
            if not raw.startswith(b"data:"):
                continue
            payload = raw[5:].strip()
            if payload == b"[DONE]":
                tally.prompt_tokens, tally.completion_tokens = seen.prompt, seen.completion
                tally.cache_read = seen.cache_read
                tally.done = True
                return True
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return True
            if not isinstance(chunk, dict):
                return True
            usage = chunk.get("usage")
            if usage is not None:
                counts = read_usage(usage)
                if counts is None:
                    tally.usage_invalid = True
                elif any(counts) or seen.prompt is None:
                    # The last non-zero usage wins: a trailing zero chunk cannot erase it.
                    seen.prompt, seen.completion = counts
                    seen.cache_read = cached_tokens(usage, counts[0])
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
                    tally.produced += 1
            if tally.strip_usage and usage and not chunk.get("choices"):
                return False
        return True


@dataclass
class Seen:
    """The usage a stream's chunks claimed so far (the stream's once [DONE] is read)."""

    prompt: int | None = None
    completion: int | None = None
    cache_read: int = 0


class _Relay:
    """The OpenAI translator: each event as it came (but a usage chunk nobody asked for)."""

    def __init__(self, dialect: OpenAIDialect) -> None:
        self.dialect = dialect
        self.seen = Seen()

    def feed(self, event: bytes, tally: StreamTally) -> Iterable[bytes]:
        try:
            keep = self.dialect.tally(event, tally, self.seen)
        except (AttributeError, TypeError, ValueError):
            keep = True  # an odd chunk is relayed as it came; it is not ours to read
        return (event,) if keep else ()


class OpenAIEmbeddingsDialect(OpenAIDialect):
    """OpenAI embeddings (`<base_url>/embeddings`): billed per input token, nothing generated."""

    path = "/embeddings"

    def answer(self, upstream: Upstream, body: bytes) -> Answer:
        """An embeddings list; its usage names input tokens only (completion 0)."""
        data = answer_object(upstream, body, "an embeddings list")
        if not isinstance(data.get("data"), list):
            raise malformed(upstream, "upstream answer is not an embeddings list", "shape")
        usage = data.get("usage")
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0:
            return Answer(data, prompt, 0, False)
        return Answer(data, None, None, usage is not None)


OPENAI = OpenAIDialect()
OPENAI_EMBEDDINGS = OpenAIEmbeddingsDialect()

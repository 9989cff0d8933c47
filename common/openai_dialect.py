"""The OpenAI chat-completions dialect (OpenAI, Azure OpenAI and compatible servers).

Only what the broker needs is read: a 200 must be a JSON object with a `choices` list,
and its `usage` is a claim (`common.bounds.read_usage`); an error body may name
`error.code` / `error.type`; stream events are `data:` lines of chunks, ending in
`data: [DONE]`. The request body is forwarded as the bytes the broker built.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlencode

import orjson

from common.bounds import read_usage
from common.catalog import Upstream
from common.dialect import Answer, StreamTally
from common.upstream_errors import malformed


class OpenAIDialect:
    """The `Dialect` of OpenAI-compatible chat completions."""

    def url(self, upstream: Upstream) -> str:
        """`<base_url>/chat/completions`, with the route's query (Azure's api-version)."""
        if upstream.query:
            return f"{upstream.base_url}/chat/completions?{urlencode(upstream.query)}"
        return f"{upstream.base_url}/chat/completions"

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
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise malformed(upstream, "upstream answered malformed JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise malformed(upstream, "upstream answer is not a chat completion", "shape")
        # Usage is a claim: unreadable or implausible usage leaves the answer usable and the
        # call charged at its bound (common.bounds.verify), never free.
        usage = data.get("usage")
        counts = read_usage(usage)
        prompt, completion = counts if counts is not None else (None, None)
        return Answer(data, prompt, completion, counts is None and usage is not None)

    def error_tokens(self, body: bytes) -> Iterable[object]:
        """`error.code`, then `error.type`, of an OpenAI error body."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return ()
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            return ()
        return (error.get("code"), error.get("type"))

    def tally(self, event: bytes, tally: StreamTally) -> bool:
        """Track usage/done/produced; False for a usage-only chunk the client did not ask for."""
        for raw in event.splitlines():
            if not raw.startswith(b"data:"):
                continue
            payload = raw[5:].strip()
            if payload == b"[DONE]":
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
                elif any(counts) or tally.prompt_tokens is None:
                    # The last non-zero usage wins: a trailing zero chunk cannot erase it.
                    tally.prompt_tokens, tally.completion_tokens = counts
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
                    tally.produced += 1
            if tally.strip_usage and usage and not chunk.get("choices"):
                return False
        return True


class OpenAIEmbeddingsDialect(OpenAIDialect):
    """OpenAI embeddings (`<base_url>/embeddings`): billed per input token, nothing generated."""

    def url(self, upstream: Upstream) -> str:
        """`<base_url>/embeddings`, with the route's query."""
        if upstream.query:
            return f"{upstream.base_url}/embeddings?{urlencode(upstream.query)}"
        return f"{upstream.base_url}/embeddings"

    def answer(self, upstream: Upstream, body: bytes) -> Answer:
        """An embeddings list; its usage names input tokens only (completion 0)."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise malformed(upstream, "upstream answered malformed JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise malformed(upstream, "upstream answer is not an embeddings list", "shape")
        usage = data.get("usage")
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0:
            return Answer(data, prompt, 0, False)
        return Answer(data, None, None, usage is not None)


OPENAI = OpenAIDialect()
OPENAI_EMBEDDINGS = OpenAIEmbeddingsDialect()

"""What a successful upstream call gives back: a `Completion`, or an open `StreamCall`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from common import sse
from common.catalog import Upstream
from common.dialect import Dialect
from common.upstream_errors import echo_probe, echoes


@dataclass
class Completion:
    """A successful non-streamed answer; token counts are the upstream's claim (None: the
    answer carried no usable usage, `usage_invalid` when it carried one that is not)."""

    upstream: Upstream
    body: bytes
    data: dict[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int
    usage_invalid: bool = False
    cache_read: int = 0  # of the prompt tokens, read from the provider's prompt cache
    cache_write: int = 0  # of the prompt tokens, written to it


@dataclass
class StreamCall:
    """An open upstream stream: iterate `events()`; usage and produced chunks are tracked.

    `finish` ends as completed (the dialect read the end: nothing after it is waited for),
    cut, timeout, oversize (an event over `max_event` bytes or the stream over `max_total`
    bytes) or unusable (an event echoing our key, never relayed).
    """

    upstream: Upstream
    response: aiohttp.ClientResponse
    attempts: int
    idle_timeout: float
    strip_usage: bool
    dialect: Dialect
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache_read: int = 0
    cache_write: int = 0
    usage_invalid: bool = False
    produced: int = 0
    done: bool = False
    finish: str | None = field(default=None)
    max_event: int = 1024 * 1024
    max_total: int = 64 * 1024 * 1024

    async def events(self) -> AsyncIterator[bytes]:
        """Chat-chunk SSE events as raw bytes (each ending in a blank line), as they arrive
        (translated by the dialect from its own events)."""
        reader = self.dialect.reader(
            self.response.content, self.idle_timeout, self.max_event, self.max_total
        )
        translator = self.dialect.translator(self.upstream)
        secret = echo_probe(self.upstream)
        async for event in reader.events():
            if secret is not None and echoes(secret, event):
                self.finish = "unusable"
                return
            try:
                translated = list(translator.feed(event, self))
            except (AttributeError, KeyError, TypeError, ValueError):
                translated = []  # an event the dialect cannot read carries nothing we relay
            for out in translated:
                yield out
            if self.done:
                # The end is read: an upstream that does not hang up is not waited for.
                self.finish = "completed"
                return
        if reader.end == sse.EOF_END:
            self.finish = "completed" if self.done else "cut"
        elif reader.end == sse.LOST:
            self.finish = "cut"
        else:
            self.finish = reader.end

    def close(self) -> None:
        """Drop the upstream connection (stops generation we would pay for)."""
        self.response.close()

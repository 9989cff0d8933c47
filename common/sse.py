"""Reading an upstream's body within limits: server-sent events, and whole bodies.

An upstream decides how much it sends; we decide how much we read. `SSEReader` frames a
`text/event-stream` into events (each ending in a blank line) as they arrive, and stops
at the first of: the end of the body, a lost connection, `idle_timeout` seconds without a
byte, an event over `max_event` bytes or a stream over `max_total` bytes; `end` says which.
`read_at_most` reads a whole body, giving up as soon as it (or its Content-Length) is over
the limit. `ChunkReader` is the bounded chunk loop under SSEReader, for other framings (AWS
event streams). Nothing here reads what the events say: that is the dialect's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

# How a ChunkReader (an SSEReader, an event-stream reader) stopped.
EOF_END = "eof"  # the upstream ended the body
LOST = "lost"  # the connection failed (what had arrived was still read)
TIMEOUT = "timeout"  # no byte for idle_timeout seconds
OVERSIZE = "oversize"  # an event over max_event, or the stream over max_total


class ChunkReader:
    """An upstream body's chunks as they arrive, bounded; `end` says why they stopped.

    The loop every stream framing shares (server-sent events here, AWS event streams in
    `common.bedrock_stream`): a subclass frames `chunks()` into events of at most
    `max_event` bytes and sets `end` to OVERSIZE when one is longer."""

    def __init__(
        self,
        content: aiohttp.StreamReader,
        idle_timeout: float,
        max_event: int,
        max_total: int,
    ) -> None:
        self._content = content
        self._idle = idle_timeout
        self.max_event = max_event
        self.max_total = max_total
        self.end: str | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Chunks as they arrive until the body ends (EOF_END), the connection is lost (LOST,
        after what had arrived), no byte comes for idle_timeout (TIMEOUT) or the stream goes
        over max_total (OVERSIZE); `end` is set before the generator finishes."""
        content = self._content
        total = 0
        while True:
            lost = False
            try:
                chunk = await asyncio.wait_for(content.readany(), self._idle)
            except TimeoutError:
                self.end = TIMEOUT
                return
            except (aiohttp.ClientError, OSError):
                # A connection lost right after its last bytes: aiohttp refuses to hand out
                # what it already buffered, but those chunks were produced (and billed).
                chunk = _buffered(content)
                lost = True
            if not chunk and not lost:
                self.end = EOF_END
                return
            total += len(chunk)
            if total > self.max_total:
                self.end = OVERSIZE
                return
            if lost:
                self.end = LOST
            if chunk:
                yield chunk
            if lost:
                return


class SSEReader(ChunkReader):
    """The events of one upstream stream, framed and bounded; `end` says why they stopped."""

    async def events(self) -> AsyncIterator[bytes]:
        """SSE events as raw bytes (each ending in a blank line), as they arrive."""
        buffer: list[bytes] = []
        size = 0
        async for line in self._lines():
            if line in (b"\n", b"\r\n"):
                if buffer:
                    event = b"".join(buffer) + b"\n"
                    buffer.clear()
                    size = 0
                    yield event
                continue
            size += len(line)
            if size > self.max_event:
                self.end = OVERSIZE
                return
            buffer.append(line)

    async def _lines(self) -> AsyncIterator[bytes]:
        """Lines as they arrive (each ending in \\n but maybe the last), at most max_event long."""
        pending = bytearray()
        async for chunk in self.chunks():
            scan = len(pending)
            pending += chunk
            start = 0
            while (end := pending.find(b"\n", scan)) != -1:
                yield bytes(pending[start : end + 1])
                start = scan = end + 1
            del pending[:start]
            if len(pending) > self.max_event:
                self.end = OVERSIZE
                return
        if pending and self.end in (EOF_END, LOST):
            yield bytes(pending)


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """Bytes aiohttp received but had not handed out when the connection failed."""
    chunks = getattr(content, "_buffer", None) or ()
    offset = int(getattr(content, "_buffer_offset", 0) or 0)
    data = b"".join(bytes(chunk) for chunk in chunks)
    return data[offset:]


async def read_at_most(reply: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None as soon as it (or its Content-Length) exceeds `limit` bytes."""
    declared = reply.content_length
    if declared is not None and declared > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in reply.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)

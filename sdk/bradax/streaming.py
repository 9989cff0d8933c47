"""Streamed answers: Server-Sent Events of chat.completion.chunk objects, as typed deltas.

The broker relays the upstream's events and ends with `data: [DONE]`. When the upstream
fails mid-way it sends `data: {"error": {...}}` instead and no [DONE]: iterating then raises
the typed error (an `UpstreamError`) after the deltas that did arrive. A stream that stops
without either raises `UpstreamError` too (code stream_incomplete).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Generator
from types import TracebackType
from typing import Any, Self

import httpx

from bradax._http import connection_error, request_id
from bradax.errors import BradaxError, UpstreamError, error_from_body
from bradax.models import StreamDelta, Usage

__all__ = ["AsyncChatStream", "ChatStream", "SSEDecoder"]


class SSEDecoder:
    """Turns the lines of an event stream into the data of each event."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Take one line (without its newline); return an event's data when one completes."""
        line = line.rstrip("\r")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return None

    def flush(self) -> str | None:
        """The data of an event left unterminated at the end of the stream, if any."""
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data.clear()
        return data


class _StreamState:
    """What the events said so far: deltas out, usage and [DONE] tracked, errors raised."""

    def __init__(self, request_id: str | None) -> None:
        self.request_id = request_id
        self.done = False
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.parts: list[str] = []

    def handle(self, data: str) -> list[StreamDelta]:
        if data == "[DONE]":
            self.done = True
            return []
        try:
            chunk: Any = json.loads(data)
        except json.JSONDecodeError:
            return []
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk:
            raise error_from_body(None, chunk, None, self.request_id)
        self.model = chunk.get("model") or self.model
        deltas: list[StreamDelta] = []
        for choice in chunk.get("choices") or ():
            raw = choice.get("delta") or {}
            content = raw.get("content") or ""
            finish = choice.get("finish_reason")
            if content and choice.get("index", 0) == 0:
                self.parts.append(content)
            if finish and choice.get("index", 0) == 0:
                self.finish_reason = finish
            deltas.append(
                StreamDelta(
                    index=choice.get("index", 0),
                    content=content,
                    role=raw.get("role"),
                    finish_reason=finish,
                    model=self.model,
                    raw=raw,
                )
            )
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage.model_validate(usage)
            deltas.append(StreamDelta(usage=self.usage, model=self.model))
        return deltas

    def end(self) -> None:
        if not self.done:
            raise UpstreamError(
                "the stream ended before [DONE]",
                code="stream_incomplete",
                request_id=self.request_id,
            )

    def lost(self, exc: httpx.TransportError) -> BradaxError:
        error = connection_error(exc)
        error.request_id = self.request_id
        return error


class _StreamInfo:
    _state: _StreamState

    @property
    def request_id(self) -> str | None:
        """The broker's request id for this call (X-Request-ID)."""
        return self._state.request_id

    @property
    def text(self) -> str:
        """The text of choice 0 received so far."""
        return "".join(self._state.parts)

    @property
    def usage(self) -> Usage | None:
        """Token counts (sent with the final event)."""
        return self._state.usage

    @property
    def finish_reason(self) -> str | None:
        """Why choice 0 stopped (stop, length, ...), once known."""
        return self._state.finish_reason

    @property
    def completed(self) -> bool:
        """True once [DONE] arrived."""
        return self._state.done


class ChatStream(_StreamInfo):
    """An iterator of `StreamDelta`; `close()` it (or use `with`) if you stop early."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._state = _StreamState(request_id(response))
        self._iterator = self._deltas()

    def _deltas(self) -> Generator[StreamDelta, None, None]:
        decoder = SSEDecoder()
        try:
            for line in self._response.iter_lines():
                data = decoder.feed(line)
                if data is not None:
                    yield from self._state.handle(data)
            data = decoder.flush()
            if data is not None:
                yield from self._state.handle(data)
        except httpx.TransportError as exc:
            raise self._state.lost(exc) from exc
        finally:
            self._response.close()
        self._state.end()

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> StreamDelta:
        return next(self._iterator)

    def close(self) -> None:
        """Stop reading and release the connection (the broker stops the upstream too)."""
        self._iterator.close()
        self._response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncChatStream(_StreamInfo):
    """An async iterator of `StreamDelta`; `aclose()` it (or `async with`) if you stop early."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._state = _StreamState(request_id(response))
        self._iterator = self._deltas()

    async def _deltas(self) -> AsyncGenerator[StreamDelta, None]:
        decoder = SSEDecoder()
        try:
            async for line in self._response.aiter_lines():
                data = decoder.feed(line)
                if data is not None:
                    for delta in self._state.handle(data):
                        yield delta
            data = decoder.flush()
            if data is not None:
                for delta in self._state.handle(data):
                    yield delta
        except httpx.TransportError as exc:
            raise self._state.lost(exc) from exc
        finally:
            await self._response.aclose()
        self._state.end()

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> StreamDelta:
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        """Stop reading and release the connection (the broker stops the upstream too)."""
        await self._iterator.aclose()
        await self._response.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

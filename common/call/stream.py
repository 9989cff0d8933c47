"""Streamed answers: relay the upstream's SSE events as they arrive, settle however it ends.

The outcome is "completed" ([DONE] seen), "cut" (upstream ended early), "timeout" (the
upstream went silent), "oversize"/"unusable" (the upstream broke its limits), "pii_blocked"
(the answer held personal data the project blocks) or "client_disconnected". Settling runs
in its own task, so a cancelled request cannot skip it; a long stream keeps its reservation
(and intent) alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from starlette.responses import Response

from common.background import keep
from common.call.model import Context, Outcome
from common.call.settle import Settler
from common.errors import ServiceUnavailable
from common.llm import StreamCall
from common.logs import request_id_var
from common.pii_guard import INLINE_BYTES
from common.pii_stream import StreamFilter


class StreamAdapter(Protocol):
    """Turns the upstream's chat events into a face's own stream format."""

    def feed(self, part: bytes) -> list[bytes]:
        """What to send the client for a piece of the (filtered) upstream stream."""
        ...

    def tail(self, outcome: str) -> list[bytes]:
        """The closing events of a stream that ended `outcome` (not completed)."""
        ...


def stream_outcome(
    settler: Settler, ctx: Context, stream: StreamCall, how: str, guard: StreamFilter | None
) -> Outcome:
    """How a stream that ended `how` is ledgered and charged (its usage checked first)."""
    # Without a usable usage chunk (an upstream cut, a lie) the call is charged at its bound.
    charge = settler.charge(ctx, stream)
    status = {"completed": "success"}.get(how, how)
    http = 200 if how == "completed" else 499 if how == "client_disconnected" else 502
    error = None if how == "completed" else f"stream_{how}"
    if how == "pii_blocked":
        http, error = 200, "output_pii_detected"
    elif guard is not None and guard.kinds and how == "completed":
        error = "output_pii_redacted"
    if charge.unverified is not None and how == "completed":
        status, error = "usage_unverified", f"usage_{charge.unverified}"
    return Outcome.charged(stream.upstream, charge, status, http, error, streamed=True)


class MeteredStream(Response):
    """The SSE answer of a streamed call (see the module docstring)."""

    media_type = "text/event-stream"
    EXTEND_EVERY = 30.0

    def __init__(
        self,
        stream: StreamCall,
        finish: Callable[[str], Awaitable[Any]],
        extend: Callable[[], Awaitable[None]],
        headers: dict[str, str],
        guard: StreamFilter | None = None,
        first_event: Callable[[], None] | None = None,
        adapter: StreamAdapter | None = None,
    ) -> None:
        # No body and no Content-Length: Response.__init__ would add one for b"".
        super().__init__(content=None, status_code=200, headers=headers)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.stream = stream
        self.guard = guard
        self.adapter = adapter
        self.finish = finish
        self.extend = extend
        self.first_event = first_event  # called once, when the first event has been sent

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        outcome = "client_disconnected"
        request_id = dict(self.raw_headers).get(b"x-request-id", b"").decode() or None
        token = request_id_var.set(request_id)
        pump = asyncio.ensure_future(self._pump(send))
        listener = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({pump, listener}, return_when=asyncio.FIRST_COMPLETED)
            if pump in done and pump.exception() is None:
                outcome = pump.result()
        finally:
            for task in (pump, listener):
                task.cancel()
            self.stream.close()
            settle = keep(self.finish(outcome))
            request_id_var.reset(token)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(settle)

    async def _relay(self, send: Any, part: bytes) -> None:
        for out in (part,) if self.adapter is None else self.adapter.feed(part):
            await send({"type": "http.response.body", "body": out, "more_body": True})

    async def _pump(self, send: Any) -> str:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        last_extend = time.monotonic()
        guard = self.guard
        first_event = self.first_event
        async for event in self.stream.events():
            if first_event is not None:
                first_event()
                first_event = None
            if guard is None:
                await self._relay(send, event)
            else:
                # Personal data in the answer: relay what no finding can still reach.
                if len(event) <= INLINE_BYTES:
                    relayed = guard.feed(event)
                else:
                    relayed = await asyncio.to_thread(guard.feed, event)
                for part in relayed:
                    await self._relay(send, part)
                if guard.blocked:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return "pii_blocked"
            if time.monotonic() - last_extend > self.EXTEND_EVERY:
                last_extend = time.monotonic()
                with contextlib.suppress(ServiceUnavailable):
                    await self.extend()
        if guard is not None and not self.stream.done:
            for part in guard.finish():  # a stream cut short: flush what was held
                await self._relay(send, part)
            if guard.blocked:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return "pii_blocked"
        outcome = self.stream.finish or "cut"
        if outcome != "completed" and self.adapter is not None:
            for part in self.adapter.tail(outcome):
                await send({"type": "http.response.body", "body": part, "more_body": True})
        elif outcome != "completed":
            error = {
                "error": {
                    "message": f"upstream stream ended early ({outcome})",
                    "type": "upstream_error",
                    "code": f"upstream_stream_{outcome}",
                }
            }
            tail = b"data: " + orjson.dumps(error) + b"\n\n"
            await send({"type": "http.response.body", "body": tail, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return outcome


async def _wait_disconnect(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return

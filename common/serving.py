"""Deadlines for slow and idle clients on the broker's HTTP servers (uvicorn underneath).

uvicorn bounds only the idle time between two requests (`timeout_keep_alive`): a connection
that never sends a byte, or trickles a request head one byte at a time, or sends half a body
and stalls, is held open forever, each costing a socket and memory. `guarded_protocol` wraps
uvicorn's HTTP protocol (httptools when installed, h11 otherwise) with two deadlines:

* the head of each request must be complete within HEADER_TIMEOUT_SECONDS of the connection
  opening (first request) or of its first byte (later requests; the wait between two
  requests is the keep-alive timeout), and be at most MAX_HEADER_BYTES (408 / 431);
* its body must be complete within BODY_TIMEOUT_SECONDS after the head (408).

Once a request is fully received no deadline applies: a long answer or stream is the
upstream's business (OPENAI_TIMEOUT), not the client's. `uvicorn_options()` adds the idle
keep-alive timeout and the connection cap (MAX_CONNECTIONS, 503 beyond) and is what
`bradax serve` / `bradax dev` and the function images (`common.function_server`) run with.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

from common.settings import Settings

_CLOSE_HEAD = b"content-type: application/json\r\nconnection: close\r\ncontent-length: "


@dataclass(frozen=True)
class ServerLimits:
    """How long and how much a client may take to send a request, and how many may connect."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: int = 5
    max_header_bytes: int = 32 * 1024
    max_connections: int = 2048

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        """The limits the settings ask for."""
        return cls(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            keepalive_timeout=settings.keepalive_timeout_seconds,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
        )


def _base_protocol() -> type[asyncio.Protocol]:
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - the images and dev installs have httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


def _error(status: int, reason: str, code: str, message: str) -> bytes:
    body = f'{{"error":{{"code":"{code}","message":"{message}"}}}}'.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\n".encode()
        + _CLOSE_HEAD
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


REQUEST_TIMEOUT = _error(
    408, "Request Timeout", "request_timeout", "the request was not received in time"
)
HEADERS_TOO_LARGE = _error(
    431,
    "Request Header Fields Too Large",
    "headers_too_large",
    "the request head exceeds the size limit",
)


class _Guard:
    """Mixin over a uvicorn HTTP protocol: head and body deadlines, head size cap."""

    # Attributes of the uvicorn protocol this mixin is combined with.
    transport: asyncio.Transport
    cycle: Any
    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._deadline: asyncio.TimerHandle | None = None
        # head -> body -> app (no deadline) -> head ...; drain: an answered request's unread body
        self._phase = "head"
        self._head_bytes = 0
        self._known_cycle: Any = None

    # -- protocol hooks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._await_head(arm=True)  # uvicorn has no timer at all before a first request

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._phase == "head":
            self._head_bytes += len(data)
            if self._deadline is None:  # the first byte of a request after a keep-alive wait
                self._arm(self._limits.header_timeout, self._head_late)
        super().data_received(data)  # type: ignore[misc]
        cycle = self.cycle
        if cycle is not None and cycle is not self._known_cycle:
            self._known_cycle = cycle  # a new request's head is complete
            if cycle.more_body and not cycle.response_complete:
                self._phase = "body"
                self._arm(self._limits.body_timeout, self._body_late)
            else:
                self._phase = "app"
                self._disarm()
        elif self._phase == "body" and cycle is not None and not cycle.more_body:
            self._phase = "app"
            self._disarm()
        if self._phase == "head" and self._head_bytes > self._limits.max_header_bytes:
            self._refuse(HEADERS_TOO_LARGE)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return  # a pipelined request is being served
        if cycle is not None and cycle.more_body and not cycle.disconnected:
            # Answered before its body arrived (a 413, a 401): the rest is read and dropped,
            # not counted as the next head, and must arrive within the body deadline.
            self._phase = "drain"
            self._arm(self._limits.body_timeout, self._drain_late)
        else:
            # Idle until the next request is uvicorn's keep-alive timeout; that request's head
            # gets its deadline from its first byte.
            self._await_head(arm=False)

    # -- deadlines ---------------------------------------------------------------------

    def _await_head(self, *, arm: bool) -> None:
        self._phase = "head"
        self._head_bytes = 0
        if arm:
            self._arm(self._limits.header_timeout, self._head_late)
        else:
            self._disarm()

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = asyncio.get_running_loop().call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_late(self) -> None:
        self._deadline = None
        if self._phase != "head" or self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(REQUEST_TIMEOUT)
        else:
            self.transport.close()  # idle before a request: nothing to answer

    def _body_late(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self._phase != "body" or self.transport.is_closing() or cycle is None:
            return
        # The app is waiting for the rest of the body: it sees a disconnect, and anything it
        # sends from now on is dropped by uvicorn.
        started = cycle.response_started
        cycle.disconnected = True
        cycle.message_event.set()
        if started:
            self.transport.close()
        else:
            self._refuse(REQUEST_TIMEOUT)

    def _drain_late(self) -> None:
        self._deadline = None
        if self._phase == "drain" and not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        self._phase = "closed"
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


_GUARDED: dict[type[asyncio.Protocol], Any] = {}


def guarded_class(base: type[asyncio.Protocol]) -> Any:
    """`base` (a uvicorn HTTP protocol class) with the head/body deadlines."""
    found = _GUARDED.get(base)
    if found is None:
        found = _GUARDED[base] = type(f"Guarded{base.__name__}", (_Guard, base), {})
    return found


def guarded_protocol(*args: Any, limits: ServerLimits, **kwargs: Any) -> asyncio.Protocol:
    """A guarded uvicorn HTTP protocol instance (httptools when installed, h11 otherwise)."""
    protocol: asyncio.Protocol = guarded_class(_base_protocol())(*args, limits=limits, **kwargs)
    return protocol


def protocol_factory(limits: ServerLimits) -> Any:
    """What uvicorn's `http` option takes to build guarded connections under `limits`."""
    return functools.partial(guarded_protocol, limits=limits)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run / Config options for slow, idle and too many clients."""
    limits = ServerLimits.from_settings(settings)
    return {
        "http": protocol_factory(limits),
        "timeout_keep_alive": limits.keepalive_timeout,
        "limit_concurrency": limits.max_connections,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
    }

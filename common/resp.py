"""A pipelined Redis connection for the hot path: hiredis' C parser over one asyncio socket.

Every governed call makes two script calls (admit, settle). Through redis-py each costs about
150 µs of CPU (connection checkout, argument encoding, response callbacks); here many
concurrent calls share one connection, commands are packed in one bytes join and replies are
parsed by hiredis, for a fraction of that. Only non-blocking commands belong here (a blocking
one would stall every caller behind it); everything else uses redis-py.

Failures: a refused/closed connection or a reply slower than the timeout fails every command
in flight with `RespConnectionError` (the stream of replies can no longer be trusted) and the
next command reconnects. Error replies raise redis-py's `ResponseError`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ResponseError


class RespConnectionError(ConnectionError):
    """The connection failed, closed or timed out; commands in flight are lost."""


def pack(args: tuple[Any, ...]) -> bytes:
    """RESP encoding of one command."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: Any = None  # asyncio's or uvloop's transport
        self.closed = False
        self._outgoing: list[bytes] = []

    def send(self, data: bytes) -> None:
        """Queue a packed command; everything queued in one loop turn goes in one write."""
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(data)

    def _flush(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RespConnectionError(f"protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self.waiters:
                self.fail(RespConnectionError("unexpected reply"))
                return
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(ResponseError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RespConnectionError("connection to redis lost"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class RespClient:
    """One multiplexed connection to the Redis of a redis:// / rediss:// / unix:// URL."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._url = urlsplit(url)
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        url = self._url
        if url.scheme == "unix":
            _, protocol = await asyncio.wait_for(
                loop.create_unix_connection(_Protocol, url.path), self._timeout
            )
        else:
            context = ssl.create_default_context() if url.scheme == "rediss" else None
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    _Protocol, url.hostname or "127.0.0.1", url.port or 6379, ssl=context
                ),
                self._timeout,
            )
        setup: list[tuple[Any, ...]] = []
        if url.password:
            user = unquote(url.username) if url.username else None
            password = unquote(url.password)
            setup.append(("AUTH", user, password) if user else ("AUTH", password))
        db = _database(url.path if url.scheme != "unix" else "", url.query)
        if db:
            setup.append(("SELECT", db))
        for command in setup:
            await self._send(protocol, command)
        return protocol

    async def _get(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            protocol = self._protocol
            if protocol is None or protocol.closed:
                try:
                    protocol = await self._connect()
                except (OSError, TimeoutError) as exc:
                    raise RespConnectionError(f"cannot connect to redis: {exc}") from exc
                self._protocol = protocol
        return protocol

    async def _send(self, protocol: _Protocol, args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        protocol.waiters.append(waiter)
        protocol.send(pack(args))
        timer = loop.call_later(self._timeout, _expire, protocol, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply (bytes, int, list or None)."""
        return await self._send(await self._get(), args)

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send commands back to back on the connection (nothing can come between them, as
        ASKING needs); replies in order, an error reply as its ResponseError, not raised."""
        protocol = await self._get()
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[Any]] = []
        for args in commands:
            waiter: asyncio.Future[Any] = loop.create_future()
            protocol.waiters.append(waiter)
            protocol.send(pack(args))
            waiters.append(waiter)
        timer = loop.call_later(self._timeout, _expire, protocol, waiters[-1])
        try:
            replies = list(await asyncio.gather(*waiters, return_exceptions=True))
        finally:
            timer.cancel()
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
                raise reply
        return replies

    def close(self) -> None:
        """Close the connection; commands in flight fail."""
        if self._protocol is not None:
            self._protocol.fail(RespConnectionError("client closed"))
            self._protocol = None


def _expire(protocol: _Protocol, waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        # Replies arrive in order: one overdue reply makes every later one suspect.
        protocol.fail(RespConnectionError("redis did not answer in time"))


def _database(path: str, query: str) -> int:
    for pair in query.split("&"):
        if pair.startswith("db="):
            return int(pair[3:])
    stripped = path.strip("/")
    return int(stripped) if stripped.isdigit() else 0

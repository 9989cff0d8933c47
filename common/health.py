"""Dependency checks behind /health, /health/detailed and /ready.

Each check has its own short timeout (about 1 s), so a hung Redis or PostgreSQL never hangs
a probe. The upstream is checked without spending money (GET /models), cached briefly;
a missing OPENAI_API_KEY reads "not_configured". The probe is a plain HTTP/1.1 GET over
asyncio streams (stdlib), so the health function loads no HTTP client library: it reads the
status line only (at most STATUS_LINE_LIMIT bytes), never follows a redirect and is
cancelled whole by its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from common import migrate
from common.db import Database
from common.errors import StoreUnsupported
from common.redis import RedisStore
from common.settings import Settings

HEALTHY, DEGRADED, UNHEALTHY, NOT_CONFIGURED = "healthy", "degraded", "unhealthy", "not_configured"
# The most of an upstream's answer the probe reads: its status line.
STATUS_LINE_LIMIT = 8192
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9]{2})(?: |\r?\n)")


@dataclass
class Check:
    """The outcome of one dependency check."""

    status: str
    latency_ms: float
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON form for /health/detailed."""
        out: dict[str, Any] = {"status": self.status, "latency_ms": round(self.latency_ms, 2)}
        if self.error:
            out["error"] = self.error
        out.update(self.info)
        return out


async def timed(
    probe: Callable[[], Awaitable[dict[str, Any] | None]], timeout: float, what: str
) -> Check:
    """Run `probe` under `timeout`; a timeout or error is an unhealthy Check, never a raise."""
    started = time.perf_counter()
    try:
        info = await asyncio.wait_for(probe(), timeout)
    except TimeoutError:
        return Check(UNHEALTHY, _ms(started), f"{what} did not answer within {timeout:g}s")
    except StoreUnsupported as exc:
        return Check(UNHEALTHY, _ms(started), exc.message)
    except Exception as exc:  # a probe must never raise: its failure is the answer
        return Check(UNHEALTHY, _ms(started), f"{what} unreachable ({type(exc).__name__})")
    return Check(HEALTHY, _ms(started), info=info or {})


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class UpstreamProbe:
    """GET {base}/models with the configured key, result cached for `ttl` seconds."""

    def __init__(self, settings: Settings, *, ttl: float = 30.0) -> None:
        self._settings = settings
        self._ttl = ttl
        self._cached: tuple[float, Check] | None = None

    async def check(self, timeout: float) -> Check:
        """The upstream's state: healthy, unhealthy (with why) or not_configured."""
        if self._settings.openai_api_key is None:
            return Check(NOT_CONFIGURED, 0.0, "OPENAI_API_KEY is not set")
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self._ttl:
            return self._cached[1]
        result = await timed(self._get_models, timeout, "upstream")
        self._cached = (now, result)
        return result

    async def _get_models(self) -> dict[str, Any]:
        key = self._settings.openai_api_key
        assert key is not None
        headers = {"Authorization": f"Bearer {key.get_secret_value()}"}
        # A 3xx is an error like any other: our key never follows a redirect to another origin.
        status = await http_get_status(f"{self._settings.openai_base_url}/models", headers)
        if status != 200:
            raise UpstreamStatusError(status)
        return {}


async def http_get_status(url: str, headers: Mapping[str, str]) -> int:
    """The status an http(s) GET of `url` answers, reading nothing past the status line.

    Raises OSError (connection, TLS) or MalformedAnswer (not an HTTP/1.x status line, or one
    longer than STATUS_LINE_LIMIT); ValueError for a header that would split the request.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    fields = {"Host": parts.netloc.rpartition("@")[2], **headers}
    if any(c in text for item in fields.items() for text in item for c in "\r\n\0"):
        raise ValueError("header with a line break")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = "".join([f"GET {target} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in fields.items())])
    request += "Accept: application/json\r\nConnection: close\r\n\r\n"
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    reader, writer = await asyncio.open_connection(
        parts.hostname,
        parts.port or (443 if tls else 80),
        ssl=tls,
        limit=STATUS_LINE_LIMIT,
    )
    try:
        writer.write(request.encode("latin-1"))
        await writer.drain()
        try:
            line = await reader.readline()
        except ValueError as exc:  # over the limit before a line end
            raise MalformedAnswer("status line too long") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    match = _STATUS_LINE.match(line)
    if match is None:
        raise MalformedAnswer("not an HTTP/1.x status line")
    return int(match.group(1))


class MalformedAnswer(Exception):
    """The upstream's answer does not start with an HTTP/1.x status line."""


class UpstreamStatusError(Exception):
    """The upstream answered GET /models with an error status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


async def check_database(db: Database, timeout: float) -> Check:
    """SELECT 1 and the schema version, within `timeout`."""

    async def probe() -> dict[str, Any]:
        async with db.connection() as conn:
            await conn.fetchval("SELECT 1")
            version = await migrate.current_version(conn)
        return {"schema_version": version}

    return await timed(probe, timeout, "database")


async def check_redis(redis: RedisStore, timeout: float) -> Check:
    """PING within `timeout`; a server outside the supported contract is unhealthy."""

    async def probe() -> dict[str, Any]:
        await redis.call("PING")
        return {"server": redis.server}

    return await timed(probe, timeout, "redis")


def overall(database: Check, redis: Check, upstream: Check) -> str:
    """healthy; degraded when only the upstream is not healthy; unhealthy when a store is down."""
    if database.status != HEALTHY or redis.status != HEALTHY:
        return UNHEALTHY
    if upstream.status != HEALTHY:
        return DEGRADED
    return HEALTHY

"""Lazy per-process singletons (pools, clients, the telemetry sink), built on first use.

Functions-framework has no start-up hook, so nothing is opened at import: each `Lazy`
builds its object the first time a request needs it. `configure(settings)` swaps the
settings (tests, `bradax dev`) and drops every singleton; `aclose()` closes them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Generic, TypeVar

from common.background import keep
from common.db import Database
from common.redis import RedisStore
from common.settings import Settings, clear_settings_cache, get_settings
from common.telemetry import Telemetry

T = TypeVar("T")

_registry: list[Lazy[object]] = []
_override: Settings | None = None


class Lazy(Generic[T]):
    """An object built by `factory` on first `get()` and forgotten by `reset()`."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        _registry.append(self)  # type: ignore[arg-type]

    def get(self) -> T:
        """The object, built now if needed."""
        if self._value is None:
            self._value = self._factory()
        return self._value

    @property
    def built(self) -> bool:
        """True once the object exists."""
        return self._value is not None

    def reset(self) -> T | None:
        """Forget the object; returns it so the caller may close it."""
        value, self._value = self._value, None
        return value


def settings() -> Settings:
    """The settings in force: the configured override, else the environment's."""
    return _override if _override is not None else get_settings()


db: Lazy[Database] = Lazy(lambda: Database(settings()))
redis: Lazy[RedisStore] = Lazy(lambda: RedisStore(settings()))
# Every function counts requests, so the sink lives here rather than among the services
# (whose imports, jwt and the ledger among them, not every function needs).
telemetry: Lazy[Telemetry] = Lazy(
    lambda: Telemetry(
        redis.get,
        enabled=settings().metrics_enabled,
        pool_stats=lambda: db.get().stats() if db.built else {},
    )
)


def configure(new: Settings | None) -> None:
    """Use `new` settings from now on (None: back to the environment) and drop singletons:
    those already built are closed in the background when an event loop runs (a dropped
    drainer or telemetry loop must not go on working for the old settings)."""
    global _override
    _override = new
    clear_settings_cache()
    dropped = [value for item in reversed(_registry) if (value := item.reset()) is not None]
    if not dropped:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop: nothing of theirs is running either
    keep(_close(dropped))


def clear_caches() -> None:
    """Forget every singleton without closing it (use `aclose` to close)."""
    for item in _registry:
        item.reset()


async def aclose() -> None:
    """Close and forget every singleton (last built first) that has `close`/`aclose`."""
    await _close([value for item in reversed(_registry) if (value := item.reset()) is not None])


async def _close(values: list[object]) -> None:
    """Close each of `values` that has `aclose`/`close`, in order."""
    for value in values:
        closer = getattr(value, "aclose", None) or getattr(value, "close", None)
        if closer is not None:
            result = closer()
            if inspect.isawaitable(result):
                await result

"""Background work: loops (ledger drainer, metrics flusher) stopped reliably, and one-off
tasks kept alive until they finish (asyncio holds only weak references to tasks)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

_KEPT: set[asyncio.Future[Any]] = set()


def keep(work: Awaitable[Any]) -> asyncio.Future[Any]:
    """Run `work` as a task that cannot be garbage-collected before it is done."""
    task = asyncio.ensure_future(work)
    _KEPT.add(task)
    task.add_done_callback(_KEPT.discard)
    return task


async def stop_task(task: asyncio.Task[Any], patience: float = 3.0) -> None:
    """Cancel a background loop and wait for it, cancelling again if a library swallowed it."""
    deadline = asyncio.get_running_loop().time() + patience
    while not task.done() and asyncio.get_running_loop().time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved

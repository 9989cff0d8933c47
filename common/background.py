"""Background loops (ledger drainer, metrics flusher): stopping them reliably."""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_task(task: asyncio.Task[Any], patience: float = 3.0) -> None:
    """Cancel a background loop and wait for it, cancelling again if a library swallowed it."""
    deadline = asyncio.get_running_loop().time() + patience
    while not task.done() and asyncio.get_running_loop().time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved

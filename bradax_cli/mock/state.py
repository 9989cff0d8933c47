"""The mock's state: the config in force, the one-shot queue, the scripted reply, and the stats
served by `/_mock/stats` (counters, token sums of what the mock would bill, recent calls)."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import replace
from typing import Any, Final

from aiohttp import web

from bradax_cli.mock.behaviours import Behaviour, decide
from bradax_cli.mock.config import MockConfig, check_config
from bradax_cli.mock.script import Script

MAX_CALLS: Final = 100_000
"""How many per-call records `/_mock/stats` keeps (the token sums cover every call)."""


class MockState:
    """Config, queue, script and stats of one mock server; `reset` restores the start."""

    def __init__(self, config: MockConfig, body_timeout: float) -> None:
        """Raises `BadConfig` when `config` cannot be applied."""
        check_config(config)
        self.body_timeout = body_timeout
        self.initial = replace(config, models=tuple(config.models))
        self.shutting_down = asyncio.Event()
        self.apply(replace(self.initial))
        self.reset()

    def apply(self, config: MockConfig, *, keep_rng: bool = False) -> None:
        """Put `config` in force (checked by the caller); a new random sequence from its seed
        unless `keep_rng`."""
        self.config = config
        if not keep_rng:
            self.rng = random.Random(config.seed)
        self.models = frozenset(config.models)

    def restart(self) -> None:
        """Back to the start config, with an empty queue, no script and zeroed stats."""
        self.apply(replace(self.initial))
        self.reset()

    def reset(self) -> None:
        """Empty the queue, drop the script and zero the stats."""
        self.queue: deque[Behaviour] = deque()
        self.requests = 0
        self.by_outcome: dict[str, int] = {}
        self.prompt_total = 0
        self.completion_total = 0
        self.calls: deque[dict[str, Any]] = deque(maxlen=MAX_CALLS)
        # The messages of the last chat request, as received (lets tests see redaction).
        self.last_messages: list[Any] | None = None
        # Requests that reached /_mock/elsewhere (where `redirect` points).
        self.elsewhere = {"hits": 0, "with_authorization": 0}
        self.last_body: dict[str, Any] | None = None
        # The headers of the last chat request (credentials left out): lets tests see
        # what the broker sends along, such as a trace's traceparent.
        self.last_headers: dict[str, str] = {}
        self.script: Script | None = None

    def next_behaviour(self) -> Behaviour:
        """What to do with the next request: queued one-shot first, else the config's rates."""
        return decide(self.config, self.rng, self.queue)

    def record(
        self,
        request: web.Request,
        model: object,
        stream: bool,
        outcome: str,
        prompt: int = 0,
        completion: int = 0,
        cache: tuple[int, int] = (0, 0),
        *,
        protocol: str = "openai",
    ) -> None:
        """Count one call under `outcome`, with the tokens the mock would bill for it
        (`prompt` includes the `cache` (read, write) tokens)."""
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1
        self.prompt_total += prompt
        self.completion_total += completion
        self.calls.append(
            {
                "request_id": request.headers.get("X-Request-ID"),
                "model": model if isinstance(model, str) else None,
                "stream": stream,
                "outcome": outcome,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cache_read_tokens": cache[0],
                "cache_write_tokens": cache[1],
                "protocol": protocol,
            }
        )

    def stats(self) -> dict[str, Any]:
        """The JSON body of `/_mock/stats`."""
        return {
            "requests": self.requests,
            "by_outcome": self.by_outcome,
            "prompt_tokens": self.prompt_total,
            "completion_tokens": self.completion_total,
            "queued": len(self.queue),
            "calls": list(self.calls),
            "last_messages": self.last_messages,
            "elsewhere": self.elsewhere,
        }

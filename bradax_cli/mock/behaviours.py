"""What the mock does with one request: one-shot behaviours from `/_mock/enqueue`, else the
random rates of the config.

One-shot keys: `status`, `retry_after`, `hang`, `cut_after_chunks`, `latency_ms`, and the
hostile ones `redirect`, `echo_headers`, `oversize_bytes`, `malformed`, `usage` (reported
verbatim instead of the real usage, "absent" leaves it out) and `trailing_zero_usage`; and
`cache` ({"read": n, "write": m}): that many of the prompt tokens are reported (and billed)
as prompt-cache reads and writes, in each protocol's own usage fields; `chunk_delay_ms`: a
pause before each streamed chunk (a model still generating); `linger_ms`: a stream's
connection held open that long after its last event (an upstream that does not hang up);
`stream_error` (an error type
of the protocol, e.g. Bedrock's "throttlingException"): a stream sends that error event
after `cut_after_chunks` pieces (default 1), then ends without its usage.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, Final

from bradax_cli.mock.config import BadConfig, MockConfig, is_int, is_number

QUEUE_KEYS: Final = frozenset(
    {
        "status",
        "retry_after",
        "hang",
        "cut_after_chunks",
        "latency_ms",
        "redirect",
        "echo_headers",
        "oversize_bytes",
        "malformed",
        "usage",
        "trailing_zero_usage",
        "cache",
        "chunk_delay_ms",
        "linger_ms",
        "stream_error",
    }
)
ABSENT: Final = "absent"
"""The `usage` value that leaves the usage object out of an answer."""
HONEST: Final = object()
"""The `usage` marker for "report the real usage"."""


class Behaviour:
    """What to do with one request (decided before the latency sleep)."""

    __slots__ = (
        "cache",
        "chunk_delay",
        "cut_after",
        "echo_headers",
        "hang",
        "latency_ms",
        "linger",
        "malformed",
        "oversize",
        "redirect",
        "retry_after",
        "status",
        "stream_error",
        "usage",
        "zero_tail",
    )

    def __init__(
        self,
        latency_ms: float,
        status: int = 0,
        retry_after: float | None = None,
        hang: bool = False,
        cut_after: int = -1,
    ) -> None:
        self.latency_ms = latency_ms
        self.status = status
        self.retry_after = retry_after
        self.hang = hang
        self.cut_after = cut_after
        self.redirect: str | bool = False
        self.echo_headers = False
        self.oversize = 0
        self.malformed = False
        self.usage: object = HONEST
        self.zero_tail = False
        self.cache: tuple[int, int] = (0, 0)  # (read, write) prompt tokens, capped by the prompt
        self.chunk_delay = 0.0  # seconds before each streamed chunk
        self.linger = 0.0  # seconds a stream's connection stays open after its last event
        self.stream_error: str | None = None  # an error event sent mid-stream

    def report_usage(self, payload: dict[str, Any], key: str) -> None:
        """Put the usage this behaviour reports in `payload[key]` instead of the real one
        there (`absent`: none at all; the honest marker: leave the real one)."""
        if self.usage == ABSENT:
            payload.pop(key, None)
        elif self.usage is not HONEST:
            payload[key] = self.usage

    @property
    def error_at(self) -> int:
        """After how many pieces a stream sends its `stream_error` (-1: it sends none)."""
        if not self.stream_error:
            return -1
        return self.cut_after if self.cut_after >= 0 else 1

    def cache_split(self, prompt: int) -> tuple[int, int]:
        """The (read, write) cache tokens of a prompt of `prompt` tokens (never beyond it)."""
        read = min(self.cache[0], prompt)
        return read, min(self.cache[1], prompt - read)


def decide(cfg: MockConfig, rng: random.Random, queue: deque[Behaviour]) -> Behaviour:
    """The next one-shot behaviour (its -1 fields filled from `cfg`), else one drawn from the
    config's rates with `rng`."""
    if queue:
        item = queue.popleft()
        if item.latency_ms < 0:
            item.latency_ms = cfg.latency_ms
        if item.retry_after == -1:
            item.retry_after = cfg.retry_after
        return item
    if cfg.fail_rate_429 + cfg.fail_rate_500 + cfg.hang_rate + cfg.cut_rate > 0:
        r = rng.random()
        edge = cfg.fail_rate_429
        if r < edge:
            return Behaviour(cfg.latency_ms, status=429, retry_after=cfg.retry_after)
        edge += cfg.fail_rate_500
        if r < edge:
            return Behaviour(cfg.latency_ms, status=500)
        edge += cfg.hang_rate
        if r < edge:
            return Behaviour(cfg.latency_ms, hang=True)
        edge += cfg.cut_rate
        if r < edge:
            return Behaviour(cfg.latency_ms, cut_after=cfg.cut_after_chunks)
    return Behaviour(cfg.latency_ms)


def parse_behaviour(item: object) -> Behaviour:
    """One `/_mock/enqueue` item -> behaviour; latency/retry_after -1 mean "from config".

    Raises `BadConfig` for an unknown key or a value of the wrong type or range."""
    if not isinstance(item, dict):
        raise BadConfig("each behaviour must be a JSON object")
    unknown = sorted(set(item) - QUEUE_KEYS)
    if unknown:
        raise BadConfig(f"unknown behaviour keys: {', '.join(unknown)}")
    latency = item.get("latency_ms", -1)
    if not is_number(latency) or (latency < 0 and "latency_ms" in item):
        raise BadConfig("latency_ms must be a number >= 0")
    act = Behaviour(float(latency), retry_after=-1)
    if "status" in item:
        status = item["status"]
        if not is_int(status) or not 400 <= status <= 599:
            raise BadConfig("status must be an integer in 400..599")
        act.status = status
    if "retry_after" in item:
        retry = item["retry_after"]
        if retry is not None and (not is_number(retry) or retry < 0):
            raise BadConfig("retry_after must be a number >= 0 or null")
        act.retry_after = retry
    if "hang" in item:
        if not isinstance(item["hang"], bool):
            raise BadConfig("hang must be a boolean")
        act.hang = item["hang"]
    if "cut_after_chunks" in item:
        cut = item["cut_after_chunks"]
        if not is_int(cut) or cut < 0:
            raise BadConfig("cut_after_chunks must be an integer >= 0")
        act.cut_after = cut
    if "redirect" in item:
        target = item["redirect"]
        if not isinstance(target, bool | str) or target == "":
            raise BadConfig("redirect must be true or a URL")
        act.redirect = target
    for flag in ("echo_headers", "malformed"):
        if flag in item:
            if not isinstance(item[flag], bool):
                raise BadConfig(f"{flag} must be a boolean")
            setattr(act, flag, item[flag])
    if "oversize_bytes" in item:
        size = item["oversize_bytes"]
        if not is_int(size) or size < 0:
            raise BadConfig("oversize_bytes must be an integer >= 0")
        act.oversize = size
    if "usage" in item:
        act.usage = item["usage"]
    for key, attribute in (("chunk_delay_ms", "chunk_delay"), ("linger_ms", "linger")):
        if key in item:
            delay = item[key]
            if not is_number(delay) or delay < 0:
                raise BadConfig(f"{key} must be a number >= 0")
            setattr(act, attribute, float(delay) / 1000)
    if "cache" in item:
        cache = item["cache"]
        if not isinstance(cache, dict) or set(cache) - {"read", "write"}:
            raise BadConfig('cache must be an object with "read" and "write" counts')
        read, write = cache.get("read", 0), cache.get("write", 0)
        if not (is_int(read) and is_int(write) and read >= 0 and write >= 0):
            raise BadConfig("cache read and write must be integers >= 0")
        act.cache = (read, write)
    if "stream_error" in item:
        kind = item["stream_error"]
        if not isinstance(kind, str) or not kind:
            raise BadConfig("stream_error must be an error type name")
        act.stream_error = kind
    if "trailing_zero_usage" in item:
        if not isinstance(item["trailing_zero_usage"], bool):
            raise BadConfig("trailing_zero_usage must be a boolean")
        act.zero_tail = item["trailing_zero_usage"]
    return act

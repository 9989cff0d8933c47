"""What an upstream dialect is: how one wire protocol is spoken to and read back.

The retry loop (`common.llm`), the breaker, the size limits (`common.sse`) and the error
mapping (`common.upstream_errors`) are the same for every upstream. What differs between
wire protocols (OpenAI chat completions, and later others) is only what a `Dialect` does:
where to post, which headers carry the key, how to read an answer, an error body and a
stream event. A new dialect is a new module implementing this Protocol, registered in
`common.llm.DIALECTS`; an `Upstream` names the one it speaks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from common.catalog import Upstream


@dataclass(frozen=True)
class Answer:
    """A 200's body as read by a dialect; token counts are the upstream's claim (None: no
    usable usage; `usage_invalid` when it carried one that is not)."""

    data: dict[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_invalid: bool


class StreamTally(Protocol):
    """What a dialect keeps up to date while a stream's events go by."""

    strip_usage: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_invalid: bool
    produced: int
    done: bool


class Dialect(Protocol):
    """One upstream wire protocol."""

    def url(self, upstream: Upstream) -> str:
        """The endpoint a call is posted to."""
        ...

    def headers(self, upstream: Upstream, request_id: str) -> dict[str, str]:
        """The request headers, the upstream's key included."""
        ...

    def answer(self, upstream: Upstream, body: bytes) -> Answer:
        """A 200's body; UpstreamBadResponse (`common.upstream_errors.malformed`) if unusable."""
        ...

    def error_tokens(self, body: bytes) -> Iterable[object]:
        """The error code and type an error body names, preferred first (filtered later)."""
        ...

    def tally(self, event: bytes, tally: StreamTally) -> bool:
        """Track usage, end and produced chunks from one event; False: swallow the event."""
        ...

"""The values the call pipeline's steps pass each other: the call, its context, its outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Literal

from common import bounds
from common.auth import Principal
from common.llm import Upstream
from common.projects import Project
from common.quota import Admission, BudgetClaim

Api = Literal["invoke", "openai", "embeddings", "responses", "anthropic"]
# What the upstream is asked to do (a dialect speaks each operation at its own endpoint).
Operation = Literal["chat", "embeddings"]


@dataclass
class Call:
    """A validated chat request, normalised from any API face."""

    api: Api
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    stream: bool
    client_usage: bool
    size: int = 0  # bytes of the body as received
    operation: Operation = "chat"

    @property
    def max_tokens(self) -> int | None:
        """The largest completion cap the client asked for in any output-token field."""
        return bounds.output_cap(self.params)


@dataclass
class Plan:
    """A call ready for admission: its project, upstream chain and the body to forward."""

    request_id: str
    principal: Principal
    project: Project
    call: Call
    chain: list[Upstream]
    body: dict[str, Any]  # screened: what the upstream will receive
    fingerprint: str  # of the request as the client sent it ("" without Idempotency-Key)
    idempotency_key: str | None
    cache_key: str | None = None


@dataclass
class Context:
    """Everything known about one admitted call, for settling it."""

    request_id: str
    principal: Principal
    project: Project
    call: Call
    chain: list[Upstream]
    month: str
    created_ms: int
    claim: BudgetClaim | None
    admission: Admission
    started: float = dataclass_field(default_factory=time.perf_counter)
    # The most prompt tokens each upstream of the chain can bill (by alias); completions.
    prompt_bounds: dict[str, int] = dataclass_field(default_factory=dict)
    completion_bound: int = 0
    settled: bool = False

    def bound(self, upstream: Upstream | None) -> tuple[int, int]:
        """The (prompt, completion) bound of the call on `upstream` (None: the first one,
        which is whose price a call settled without an upstream is charged at)."""
        alias = (upstream or self.chain[0]).alias
        return self.prompt_bounds.get(alias, 0), self.completion_bound

    def charge(
        self, upstream: Upstream, claim: tuple[int | None, int | None], invalid: bool
    ) -> bounds.Charge:
        """What the call is charged for an upstream's usage claim: the claim if it is
        plausible within the call's bound on `upstream`, else the bound (common.bounds)."""
        prompt, completion = claim
        counts = (prompt, completion) if prompt is not None and completion is not None else None
        return bounds.verify(counts, *self.bound(upstream), invalid=invalid)

    def chain_upstream(self, alias: str) -> Upstream | None:
        """The upstream of this call's chain serving `alias`, if any."""
        return next((u for u in self.chain if u.alias == alias), None)


@dataclass(frozen=True)
class Outcome:
    """How an admitted call ended: what it is charged and how it is ledgered."""

    upstream: Upstream | None  # who answered (None: no upstream answer)
    prompt_tokens: int
    completion_tokens: int
    status: str  # ledger status: success, usage_unverified, upstream_error, cancelled, ...
    http_status: int
    error: str | None = None
    streamed: bool = False
    cached: bool = False

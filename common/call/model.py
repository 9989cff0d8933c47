"""The values the call pipeline's steps pass each other: the call, its context, its outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Literal, Protocol

from common import bounds
from common.auth import Principal
from common.llm import Upstream
from common.projects import Project
from common.quota import Admission, BudgetClaim

Api = Literal["invoke", "openai", "embeddings", "responses", "anthropic"]
# What the upstream is asked to do (a dialect speaks each operation at its own endpoint).
Operation = Literal["chat", "embeddings"]


class Claim(Protocol):
    """What an upstream answered and says it billed (a Completion, a StreamCall)."""

    upstream: Upstream
    prompt_tokens: int | None
    completion_tokens: int | None
    cache_read: int
    cache_write: int
    usage_invalid: bool


def dearest(chain: list[Upstream], prompt_bounds: dict[str, int], completion: int) -> Upstream:
    """The upstream of `chain` whose bound (its prompt bound by alias, `completion`) costs the
    most, the first of them on a tie."""
    return max(chain, key=lambda u: u.price.bound(prompt_bounds.get(u.alias, 0), completion))


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
    # Client headers for the provider's own protocol (anthropic-version, anthropic-beta)
    forward: dict[str, str] = dataclass_field(default_factory=dict)

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
    # Prompt tokens each upstream bills beyond the body (a provider's hidden prompt), by alias
    overheads: dict[str, int] = dataclass_field(default_factory=dict)


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

    def dearest(self) -> Upstream:
        """The upstream of the chain on which the call can cost the most (whose worst case
        admission reserved): what a call that may have been billed by any of them, without
        saying which (a timeout across fallbacks, a client gone), is charged at."""
        return dearest(self.chain, self.prompt_bounds, self.completion_bound)

    def bound(self, upstream: Upstream | None) -> tuple[int, int]:
        """The (prompt, completion) bound of the call on `upstream` (None: the dearest one)."""
        alias = (upstream or self.dearest()).alias
        return self.prompt_bounds.get(alias, 0), self.completion_bound

    def at_bound(self, upstream: Upstream | None) -> bounds.Charge:
        """The call charged at its bound on `upstream` (None: the dearest of the chain), every
        prompt token at the dearest prompt price the route has (a cache write may cost more)."""
        used = upstream or self.dearest()
        prompt, completion = self.bound(used)
        return bounds.Charge(prompt, completion, None, *used.price.worst_split(prompt))

    def charge(self, claim: Claim) -> bounds.Charge:
        """What the call is charged for an upstream's usage claim: the claim if it is
        plausible within the call's bound on its upstream, else the bound (common.bounds)."""
        prompt, completion = claim.prompt_tokens, claim.completion_tokens
        counts = (prompt, completion) if prompt is not None and completion is not None else None
        charge = bounds.verify(counts, *self.bound(claim.upstream), invalid=claim.usage_invalid)
        read, write = claim.cache_read, claim.cache_write
        if charge.unverified is None:
            if not read and not write:
                return charge
            if read + write <= charge.prompt:
                return bounds.Charge(charge.prompt, charge.completion, None, read, write)
            charge = bounds.Charge(*self.bound(claim.upstream), "implausible")
        split = claim.upstream.price.worst_split(charge.prompt)
        return bounds.Charge(charge.prompt, charge.completion, charge.unverified, *split)

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
    cache_read: int = 0  # of prompt_tokens, read from the provider's prompt cache
    cache_write: int = 0  # of prompt_tokens, written to it

    @classmethod
    def charged(
        cls,
        upstream: Upstream | None,
        charge: bounds.Charge,
        status: str,
        http_status: int,
        error: str | None = None,
        *,
        streamed: bool = False,
    ) -> Outcome:
        """An outcome charged `charge`."""
        return cls(
            upstream,
            charge.prompt,
            charge.completion,
            status,
            http_status,
            error,
            streamed,
            cache_read=charge.cache_read,
            cache_write=charge.cache_write,
        )

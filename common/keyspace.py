"""Every Redis key bradax uses, spelled here and only here.

    per project     bx:b / bx:bres / bx:bamt / bx:borph / bx:bsoft :{<project>}:<month>
                    bx:deny:proj:{<project>}, bx:idem:{<project>}:<sha256>,
                    bx:cache:{<project>}:<api>:<sha256>, rate limits bx:rl:p|ps:{<project>}:...
    per credential  bx:deny:key|fam|jti:{<project>}:<key id | family | token id>
    per client IP   bx:rl:ip:<ip>:..., bx:rl:auth:ip:<ip>:..., bx:rl:authfail:...
                    bx:intent / bx:intent:due :{<project>} (intents of calls in flight),
                    bx:ledger:{<project>} (the project's ledger outbox stream)
    broker-wide     bx:audit (stream), bx:projects (projects with intents or ledger records),
                    bx:m:counters, bx:m:gauge:<instance>, bx:m:instances

Every key a project owns carries the project's hash tag `{<project>}`: on a Redis Cluster
they all live in one hash slot, so a project's admission and settlement can each stay one
atomic script. Modules ask this one for names; none spells a key itself.
"""

from __future__ import annotations

import hashlib

AUDIT_STREAM = "bx:audit"
METRICS_COUNTERS = "bx:m:counters"
GAUGE_PREFIX = "bx:m:gauge:"
# Live broker instances: instance -> when it last flushed its gauges, in ms (zset).
INSTANCES = "bx:m:instances"
# The projects that may hold intents or ledger records (a set): where the reconciler and
# the drainers look.
PROJECTS = "bx:projects"


def gauge(instance: str) -> str:
    """One broker instance's gauges (a hash with a TTL)."""
    return GAUGE_PREFIX + instance


def rate_limit(scope: str, window: int, bucket: int) -> str:
    """A fixed-window counter: `scope` names what is counted (e.g. p:<project>, ip:<ip>)."""
    return f"bx:rl:{scope}:{window}:{bucket}"


def limit_scope(kind: str, *parts: str) -> str:
    """The scope of a rate limit: client IP (ip), token issuing (auth:ip), failed
    credentials (authfail:ip, authfail:proj:<project>:ip)."""
    return ":".join((kind, *parts))


def failure_scope(ip: str, project_id: str | None = None) -> str:
    """A failed-credential counter of a client IP (and project): tagged by the IP, so both
    counters of an attempt share one cluster slot and one script counts them."""
    if project_id is None:
        return f"authfail:ip:{{{ip}}}"
    return f"authfail:proj:{project_id}:ip:{{{ip}}}"


def project_scope(kind: str, project_id: str) -> str:
    """The scope of a project's own limit, in the project's slot: hourly (p), burst (ps)."""
    return f"{kind}:{tag(project_id)}"


def tag(project_id: str) -> str:
    """A project's hash tag: every key holding it maps to the same cluster slot."""
    return "{" + project_id + "}"


def deny_project(project_id: str) -> str:
    """Set while the project is suspended."""
    return f"bx:deny:proj:{tag(project_id)}"


def deny_key(project_id: str, key_id: str) -> str:
    """Set once the API key is revoked (outlives its tokens)."""
    return f"bx:deny:key:{tag(project_id)}:{key_id}"


def deny_family(project_id: str, family: str) -> str:
    """Set once a login's token family is revoked."""
    return f"bx:deny:fam:{tag(project_id)}:{family}"


def deny_token(project_id: str, jti: str) -> str:
    """Set once one access token is revoked."""
    return f"bx:deny:jti:{tag(project_id)}:{jti}"


def budget(project_id: str, month: str) -> tuple[str, str, str]:
    """A project's month: budget hash (spent, reserved), reservation zset, amounts hash."""
    base = f"{tag(project_id)}:{month}"
    return f"bx:b:{base}", f"bx:bres:{base}", f"bx:bamt:{base}"


def budget_orphans(project_id: str, month: str) -> str:
    """Costs settled while the month's spend was missing (kept for its rebuild)."""
    return f"bx:borph:{tag(project_id)}:{month}"


def budget_soft(project_id: str, month: str) -> str:
    """Set once the month crossed BUDGET_SOFT_THRESHOLD (warn once)."""
    return f"bx:bsoft:{tag(project_id)}:{month}"


def ledger_stream(project_id: str) -> str:
    """A project's ledger outbox: usage records settled, not yet in PostgreSQL (a stream)."""
    return f"bx:ledger:{tag(project_id)}"


def intents(project_id: str) -> tuple[str, str]:
    """A project's calls in flight: request id -> intent (hash), -> due time in ms (zset)."""
    return f"bx:intent:{tag(project_id)}", f"bx:intent:due:{tag(project_id)}"


def idempotency(project_id: str, key: str) -> str:
    """A project's Idempotency-Key (hashed: clients choose it)."""
    return f"bx:idem:{tag(project_id)}:{hashlib.sha256(key.encode()).hexdigest()}"


def response_cache(project_id: str, api: str, digest: str) -> str:
    """A cached answer of a project for one exact request body."""
    return f"bx:cache:{tag(project_id)}:{api}:{digest}"

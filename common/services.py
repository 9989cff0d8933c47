"""The shared services the functions build lazily from `deps` (one instance per process).

The ledger's workers are in common/ledger_workers.py, for the functions that write usage.
"""

from __future__ import annotations

from common import deps
from common.apikeys import ApiKeyStore
from common.audit import AuditTrail
from common.auth import Authenticator
from common.projects import PolicyCache, ProjectStore
from common.quota import Governor
from common.sessions import FailureGate, SessionService
from common.tokens import TokenService

tokens: deps.Lazy[TokenService] = deps.Lazy(lambda: TokenService(deps.settings()))
authenticator: deps.Lazy[Authenticator] = deps.Lazy(
    lambda: Authenticator(
        tokens.get(),
        ApiKeyStore(deps.db.get()),
        deps.redis.get(),
        key_cache_seconds=deps.settings().policy_cache_seconds,
        stale_for=deps.settings().policy_stale_seconds,
    )
)
governor: deps.Lazy[Governor] = deps.Lazy(
    lambda: Governor(
        deps.redis.get(),
        deps.db.get(),
        soft_threshold=deps.settings().budget_soft_threshold,
        count=lambda fields: deps.telemetry.get().add(fields),
    )
)
audit: deps.Lazy[AuditTrail] = deps.Lazy(
    lambda: AuditTrail(deps.db.get(), deps.settings().audit_logging_enabled)
)
policies: deps.Lazy[PolicyCache] = deps.Lazy(
    lambda: PolicyCache(
        ProjectStore(deps.db.get()),
        deps.settings().policy_cache_seconds,
        stale_for=deps.settings().policy_stale_seconds,
    )
)
sessions: deps.Lazy[SessionService] = deps.Lazy(
    lambda: SessionService(
        deps.settings(), deps.db.get(), deps.redis.get(), tokens.get(), audit.get()
    )
)
failures: deps.Lazy[FailureGate] = deps.Lazy(lambda: FailureGate(deps.redis.get(), deps.settings()))

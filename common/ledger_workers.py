"""The process' ledger workers, built lazily from `deps`: the drainer that copies usage
records from Redis to PostgreSQL and the keeper of settlements awaiting the database.

Apart from common/services.py so that a function that writes no usage (auth_token) does not
load the ledger.
"""

from __future__ import annotations

from common import deps, services
from common.ledger import Drainer, PendingSettles

drainer: deps.Lazy[Drainer] = deps.Lazy(
    lambda: Drainer(
        deps.redis.get(),
        deps.db.get(),
        audit_enabled=deps.settings().audit_logging_enabled,
        reconcile=services.governor.get().reconcile,
    )
)
pending_settles: deps.Lazy[PendingSettles] = deps.Lazy(
    lambda: PendingSettles(deps.db.get(), audit_enabled=deps.settings().audit_logging_enabled)
)

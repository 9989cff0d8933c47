"""Refused calls: each one is an audit row (why, never what was asked) and a log line.

A call refused before admission reached no upstream and costs nothing; its reason is queued
to the audit stream (written into the hash chain by the drainer) so refusals add no
PostgreSQL write to the answer.
"""

from __future__ import annotations

from common.audit import AuditEvent, AuditTrail
from common.auth import Principal
from common.errors import BrokerError, ServiceUnavailable
from common.logs import get_logger, log_outcome, mask_project
from common.redis import RedisStore


class Refusals:
    """Records refusals of the invoke path."""

    def __init__(self, audit: AuditTrail, redis: RedisStore) -> None:
        self.audit = audit
        self.redis = redis

    async def record(self, request_id: str, principal: Principal | None, exc: BrokerError) -> None:
        """Audit and log one refusal (not an outage: that is no decision about the call)."""
        if isinstance(exc, ServiceUnavailable):
            return
        project = principal.project_id if principal else None
        event = AuditEvent(
            "invoke",
            "denied",
            project,
            f"key:{principal.key_id}" if principal else None,
            request_id,
            exc.code,
            {"status": exc.status},
        )
        try:
            await self.audit.queue(self.redis, event)
        except ServiceUnavailable:
            get_logger().warning("audit of a denial dropped: redis unreachable")
        log_outcome("LLM request denied", status=exc.code, project_token=mask_project(project))

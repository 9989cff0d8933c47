"""The settle step: an admitted call's money, ledger record and metrics, exactly once.

One Redis script releases the reservation, adds the cost, appends the usage record and the
call's counters; if Redis cannot be told, the record goes straight to PostgreSQL and the
settle is retried (common.ledger.PendingSettles). The usage an upstream reports is checked
against the call's bound first (common.bounds.verify): a claim that is missing or not
plausible is charged at the bound.
"""

from __future__ import annotations

import time
from decimal import Decimal

from common import bounds
from common.call.model import Claim, Context, Outcome
from common.errors import ServiceUnavailable
from common.ledger import PendingSettles
from common.logs import get_logger, log_outcome, mask_project
from common.quota import Governor, UsageRecord, to_nano
from common.settings import Settings
from common.telemetry import Telemetry, field
from common.tracing import settled, step


class Settler:
    """Settles admitted calls."""

    def __init__(
        self,
        settings: Settings,
        governor: Governor,
        telemetry: Telemetry,
        pending: PendingSettles,
    ) -> None:
        self.settings = settings
        self.governor = governor
        self.telemetry = telemetry
        self.pending = pending

    def charge(self, ctx: Context, claim: Claim) -> bounds.Charge:
        """What the call is charged for the upstream's usage claim (counted if replaced)."""
        charge = ctx.charge(claim)
        if charge.unverified is not None:
            self.telemetry.incr(
                "usage_unverified_total", model=ctx.call.model, reason=charge.unverified
            )
            get_logger().warning(
                "upstream usage not verifiable; call charged at its bound",
                project_token=mask_project(ctx.project.id),
                model=ctx.call.model,
                reason=charge.unverified,
            )
        return charge

    async def settle(self, ctx: Context, outcome: Outcome) -> Decimal:
        """Ledger and charge the call (a second settle of it is a no-op); returns its cost."""
        if ctx.settled:
            return Decimal(0)
        ctx.settled = True
        used = outcome.upstream or ctx.dearest()
        prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
        cost = Decimal(0)
        if not outcome.cached:
            cost = used.price.cost(prompt, completion, outcome.cache_read, outcome.cache_write)
        latency = int((time.perf_counter() - ctx.started) * 1000)
        record = UsageRecord(
            request_id=ctx.request_id,
            project_id=ctx.project.id,
            key_id=ctx.principal.key_id,
            model=ctx.call.model,
            upstream_model=used.model if outcome.upstream else None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
            cache_read_tokens=outcome.cache_read,
            cache_write_tokens=outcome.cache_write,
            latency_ms=latency,
            status=outcome.status,
            http_status=outcome.http_status,
            error_code=outcome.error,
            streamed=outcome.streamed,
            cached=outcome.cached,
            budget_month=ctx.month,
            created_at_ms=ctx.created_ms,
        )
        metrics: dict[str, int] = {}
        if not outcome.cached and self.settings.metrics_enabled:
            model = ctx.call.model
            metrics = {
                field("openai_requests_total", model=model, status=outcome.status): 1,
                field("openai_cost_nano_total", model=model): to_nano(cost),
                field("openai_tokens_total", model=model, kind="prompt"): prompt,
                field("openai_tokens_total", model=model, kind="completion"): completion,
            }

        async def settle() -> None:
            done = await self.governor.settle(
                ctx.claim,
                request_id=ctx.request_id,
                project_id=ctx.project.id,
                month=ctx.month,
                actual=cost,
                record=record,
                metrics=metrics,
            )
            if done.soft_threshold_crossed:
                self.telemetry.incr("budget_soft_threshold_total", project=ctx.project.id)
                get_logger().warning(
                    "project crossed its soft budget threshold",
                    project_token=mask_project(ctx.project.id),
                    threshold=str(self.settings.budget_soft_threshold),
                )

        with step("settle"):
            try:
                await settle()
            except (ServiceUnavailable, OSError):
                self.pending.add(settle, record)
        settled(
            self.telemetry,
            ctx.call.model,
            outcome.upstream,
            prompt,
            completion,
            cost,
            outcome.cached,
        )
        log_outcome(
            "LLM request completed" if outcome.status == "success" else "LLM request ended",
            project_token=mask_project(ctx.project.id),
            model=ctx.call.model,
            tokens_used=prompt + completion,
            cost_usd=str(cost),
            latency_ms=latency,
            status=outcome.status,
            streamed=outcome.streamed,
            cached=outcome.cached,
        )
        return cost

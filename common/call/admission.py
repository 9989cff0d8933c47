"""The admission step: limits and the worst case reserved, in one atomic Redis script.

The worst case covers everything the upstream can bill for the body as forwarded
(common.bounds), over the model and its fallbacks; the admission also leaves the call's
intent (its ledger row at the bound), so a call whose instance dies is still ledgered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request

from common import bounds, keyspace
from common.call.model import Context, Plan, dearest
from common.errors import BadRequest, BudgetExceeded, RateLimited
from common.http import client_ip
from common.llm import Upstream
from common.quota import (
    Admission,
    BudgetClaim,
    Governor,
    Limit,
    budget_month,
    intent_record,
    to_nano,
)
from common.settings import Settings
from common.telemetry import Telemetry
from common.wire import dumps


class Admitter:
    """Builds a call's limits and budget claim and asks the governor to admit it."""

    def __init__(self, settings: Settings, governor: Governor, telemetry: Telemetry) -> None:
        self.settings = settings
        self.governor = governor
        self.telemetry = telemetry

    async def admit(self, request: Request, plan: Plan, now: float) -> Context:
        """Reserve the call's worst case; RateLimited / BudgetExceeded / Unauthorized / 503."""
        created_ms = int(now * 1000)
        month = budget_month(datetime.fromtimestamp(now, UTC))
        prompt_bounds, completion_bound = call_bounds(plan.body, plan.chain, plan.overheads)
        worst_upstream = dearest(plan.chain, prompt_bounds, completion_bound)
        worst_alias = worst_upstream.alias
        worst = worst_upstream.price.bound(prompt_bounds[worst_alias], completion_bound)
        intent = intent_record(
            request_id=plan.request_id,
            project_id=plan.project.id,
            key_id=plan.principal.key_id,
            model=plan.call.model,
            prompt_tokens=prompt_bounds[worst_alias],
            completion_tokens=completion_bound,
            cost_usd=worst,
            streamed=plan.call.stream,
            budget_month=month,
            created_at_ms=created_ms,
        )
        claim = BudgetClaim(
            plan.project.id,
            month,
            plan.request_id,
            to_nano(worst),
            to_nano(plan.project.budget_monthly_usd),
            created_ms + int(self.settings.reservation_ttl * 1000),
            intent,
        )
        admission = await self._admit(request, plan, claim, created_ms)
        ctx = _context(plan, month, created_ms, claim, admission)
        ctx.prompt_bounds, ctx.completion_bound = prompt_bounds, completion_bound
        return ctx

    async def admit_cached(self, request: Request, plan: Plan, now: float) -> Context:
        """Admit a call answered from the cache: limits count, nothing is reserved."""
        created_ms = int(now * 1000)
        admission = await self._admit(request, plan, None, created_ms)
        month = budget_month(datetime.fromtimestamp(now, UTC))
        return _context(plan, month, created_ms, None, admission)

    async def _admit(
        self, request: Request, plan: Plan, claim: BudgetClaim | None, now_ms: int
    ) -> Admission:
        project = plan.project
        try:
            return await self.governor.admit(
                now_ms=now_ms,
                deny=plan.principal.deny(),
                limits=self._limits(request, plan),
                budget=claim,
            )
        except RateLimited as exc:
            name = str(exc.details.get("limit_name", ""))
            self.telemetry.incr("rate_limit_denials_total", limit=name)
            raise
        except BudgetExceeded:
            self.telemetry.incr("budget_denials_total", project=project.id)
            raise

    def _limits(self, request: Request, plan: Plan) -> list[Limit]:
        settings, project = self.settings, plan.project
        if not settings.rate_limiting_enabled:
            return []
        limits = [
            Limit(
                "max_requests_per_hour",
                keyspace.project_scope("p", project.id),
                project.max_requests_per_hour,
                3600,
            )
        ]
        if project.max_requests_per_second:
            limits.append(
                Limit(
                    "max_requests_per_second",
                    keyspace.project_scope("ps", project.id),
                    project.max_requests_per_second,
                    1,
                )
            )
        if settings.rate_limit_ip_per_hour:
            ip = client_ip(request, settings.trusted_proxies)
            limits.append(
                Limit(
                    "ip_per_hour",
                    keyspace.limit_scope("ip", ip),
                    settings.rate_limit_ip_per_hour,
                    3600,
                )
            )
        return limits


def _context(
    plan: Plan, month: str, created_ms: int, claim: BudgetClaim | None, admission: Admission
) -> Context:
    return Context(
        plan.request_id,
        plan.principal,
        plan.project,
        plan.call,
        plan.chain,
        month,
        created_ms,
        claim,
        admission,
    )


def call_bounds(
    body: dict[str, Any], chain: list[Upstream], overheads: dict[str, int] | None = None
) -> tuple[dict[str, int], int]:
    """Each upstream's prompt bound (by alias) and the completion bound of the body
    (`overheads`: the prompt tokens each upstream bills beyond the body, by alias)."""
    overheads = overheads or {}
    size = len(dumps(body))
    own = len(orjson.dumps(body["model"]))
    found = bounds.media(body.get("messages") or ())
    prompts = {
        u.alias: bounds.prompt_bound(size - own + len(orjson.dumps(u.model)), found, u.model)
        + overheads.get(u.alias, 0)
        for u in chain
    }
    completion = bounds.completion_bound(body)
    if max(prompts.values()) + completion > bounds.INT32:
        raise BadRequest("the request is too large to bound its cost", code="request_too_large")
    return prompts, completion

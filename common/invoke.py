"""The governed call path shared by every API face: the call pipeline, top to bottom.

    face.parse -> credentials -> request (policy, body) -> screen (PII) -> replay
    (idempotency, cache) -> admission (bound, limits, reservation, intent: one Redis round
    trip) -> upstream (retries, fallback, breaker) -> settle (money, ledger record, metrics:
    one Redis round trip) -> face.render

Nothing reaches the upstream ungoverned: every check happens before the call, and every
call that reached the upstream is settled exactly once (request id) whatever happens to
the client. A refusal before admission is audited (common.call.refusals); after admission,
the call's outcome is its ledger row. The steps live in common.call.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from common.audit import AuditTrail
from common.auth import Authenticator, Principal
from common.background import keep
from common.call import anthropic_count
from common.call import request as req
from common.call.admission import Admitter
from common.call.credentials import Credentials
from common.call.faces import FACES, Face
from common.call.model import Api, Call, Context, Outcome, Plan
from common.call.refusals import Refusals
from common.call.replay import IdempotencyStore, ResponseCache
from common.call.screen import screen_answer
from common.call.settle import Settler
from common.call.stream import MeteredStream, stream_outcome
from common.call.upstream import UpstreamStep
from common.errors import (
    BrokerError,
    NotFound,
    ProjectSuspended,
    ServiceUnavailable,
    Unauthorized,
    UpstreamError,
)
from common.http import JSONResponse, read_json_body
from common.ledger import Drainer, PendingSettles
from common.llm import UpstreamClient
from common.pii_guard import PIIGuard
from common.projects import PolicyCache, Project
from common.quota import Governor
from common.redis import RedisStore
from common.sessions import FailureGate
from common.settings import Settings
from common.telemetry import Telemetry
from common.tracing import OVERHEAD_HEADER, CallTrace, Tracing, current, error_type, step

# Whether /v1/messages/count_tokens counted at the upstream or estimated.
COUNT_HEADER = "X-Bradax-Token-Count"


def _all_overhead(
    handler: Callable[[Invoker, Request], Awaitable[Response]],
) -> Callable[[Invoker, Request], Awaitable[Response]]:
    """X-Bradax-Overhead-Ms on an endpoint that calls no upstream: all its time is ours."""

    @functools.wraps(handler)
    async def timed(self: Invoker, request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await handler(self, request)
        except BrokerError as exc:
            exc.headers[OVERHEAD_HEADER] = f"{(time.perf_counter() - started) * 1000:.3f}"
            raise
        response.headers[OVERHEAD_HEADER] = f"{(time.perf_counter() - started) * 1000:.3f}"
        return response

    return timed


class Invoker:
    """Runs the call pipeline; one instance per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        authenticator: Authenticator,
        policies: PolicyCache,
        governor: Governor,
        client: UpstreamClient,
        redis: RedisStore,
        telemetry: Telemetry,
        drainer: Drainer,
        pending: PendingSettles,
        failures: FailureGate,
        audit: AuditTrail,
        tracing: Tracing | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.auth = authenticator
        self.policies = policies
        self.client = client
        self.telemetry = telemetry
        self.drainer = drainer
        self.clock = clock
        self.governor = governor
        self.credentials = Credentials(settings, authenticator, failures, clock)
        self.pii = PIIGuard(settings, telemetry)
        self.idempotency = IdempotencyStore(redis, int(settings.reservation_ttl) + 60)
        self.cache = ResponseCache(redis, settings.redis_cache_ttl)
        self.admitter = Admitter(settings, governor, telemetry)
        self.settler = Settler(settings, governor, telemetry, pending)
        self.upstream = UpstreamStep(client, self.settler)
        self.refusals = Refusals(audit, redis)
        self.tracing = tracing or Tracing.off()

    async def handle(self, request: Request, api: Api) -> Response:
        """Serve one chat call of the `api` face: every answer, refusals included, says what
        the broker itself took (X-Bradax-Overhead-Ms); the call is one trace when traced."""
        trace = CallTrace(
            self.tracing,
            self.telemetry,
            api,
            request.method,
            request.scope["path"],
            request.headers,
            request.state.request_id,
        )
        token = current.set(trace)
        try:
            response = await self._handle(request, api, trace)
        except BrokerError as exc:
            exc.headers[OVERHEAD_HEADER] = trace.overhead_header()
            trace.end(exc.status, exc.code)
            raise
        except BaseException as exc:
            trace.end(500 if isinstance(exc, Exception) else 499, error_type(exc))
            raise
        finally:
            current.reset(token)
            for reason, count in self.tracing.take_drops().items():
                self.telemetry.incr("trace_spans_dropped_total", count, reason=reason)
        response.headers[OVERHEAD_HEADER] = trace.overhead_header()
        if not isinstance(response, MeteredStream):
            trace.end(response.status_code)  # a stream's span ends with the stream
        return response

    async def _handle(self, request: Request, api: Api, trace: CallTrace) -> Response:
        self.drainer.ensure_started()
        face = FACES[api]
        principal: Principal | None = None
        try:
            with step("authenticate"):
                principal = await self.credentials.verify(
                    request, api_key_allowed=api != "invoke", x_api_key=api == "anthropic"
                )
            call = face.parse(await read_json_body(request, self.settings.max_body_bytes))
            call.forward = req.forwarded(request)
            plan = await self._plan(request, principal, call)
            trace.planned(plan.project.id, call.model, call.max_tokens, call.stream)
            answered = await self._replay(plan)
            if answered is not None:
                return answered
        except BrokerError as exc:
            await self._refused(request, principal, exc)
            raise
        try:
            return await self._run(request, face, plan, trace)
        except BaseException:
            if plan.idempotency_key:
                await self.idempotency.abort(plan.project, plan.idempotency_key)
            raise

    @_all_overhead
    async def models(self, request: Request) -> Response:
        """GET /v1/models: the models this project may use."""
        principal = await self.credentials.verify(request, api_key_allowed=True)
        await self.auth.check_revocation(principal)
        project = await self._project(principal)
        allowed = [m for m in project.allowed_models if self.client.catalog.get(m) is not None]
        return JSONResponse({"object": "list", "data": [_model_card(m) for m in allowed]})

    @_all_overhead
    async def model(self, request: Request) -> Response:
        """GET /v1/models/{model}: one model this project may use, else 404 (not 403: a
        model the project may not use does not exist for it)."""
        principal = await self.credentials.verify(request, api_key_allowed=True)
        await self.auth.check_revocation(principal)
        project = await self._project(principal)
        model: str = request.path_params["model"]
        if model not in project.allowed_models or self.client.catalog.get(model) is None:
            raise NotFound(f"the model '{model}' does not exist", code="model_not_found")
        return JSONResponse(_model_card(model))

    @_all_overhead
    async def count_tokens(self, request: Request) -> Response:
        """POST /v1/messages/count_tokens: an estimate of a Messages request's input tokens
        (no upstream call, not billed; see common.call.anthropic_count)."""
        principal = await self.credentials.verify(request, api_key_allowed=True, x_api_key=True)
        await self.auth.check_revocation(principal)
        project = await self._project(principal)
        raw = await read_json_body(request, self.settings.max_body_bytes)
        counted = anthropic_count.parse(raw)
        upstream = req.upstream_chain(self.client.catalog, project, counted.model)[0]
        if upstream.dialect == "anthropic":
            body = anthropic_count.chat_body(counted)
            self.client.check([upstream], body, "chat")
            with step("screen"):
                body = await self.pii.request(project, body, len(raw))
            try:
                with step("upstream"):
                    result = await self.client.complete(
                        [upstream],
                        req.payload(body),
                        request.state.request_id,
                        self.client.deadline(),
                        operation="count_tokens",
                        forward=req.forwarded(request),
                    )
                return JSONResponse(
                    {"input_tokens": result.prompt_tokens}, headers={COUNT_HEADER: "upstream"}
                )
            except (UpstreamError, ServiceUnavailable):
                pass  # the count is advisory: an estimate serves while the upstream cannot
        tokens = anthropic_count.estimate(counted)
        return JSONResponse({"input_tokens": tokens}, headers={COUNT_HEADER: "estimate"})

    # -- before admission: refusals are audited --------------------------------------------

    async def _plan(self, request: Request, principal: Principal, call: Call) -> Plan:
        project = await self._project(principal)
        chain = req.upstream_chain(self.client.catalog, project, call.model, call.operation)
        body = req.upstream_body(project, call)
        self.client.check(chain, body, call.operation)  # every feature maps to every upstream
        key = request.headers.get("idempotency-key")
        fingerprint = req.fingerprint(call, body) if key else ""  # as sent, before redaction
        with step("screen"):
            body = await self.pii.request(project, body, call.size)
        request_id: str = request.state.request_id
        plan = Plan(request_id, principal, project, call, chain, body, fingerprint, key)
        plan.overheads = {
            u.alias: self.client.prompt_overhead(u, body, call.operation) for u in chain
        }
        return plan

    async def _replay(self, plan: Plan) -> Response | None:
        """A stored answer for a retried Idempotency-Key (no upstream call, no charge)."""
        if not plan.idempotency_key:
            return None
        replay = await self.idempotency.begin(
            plan.project, plan.idempotency_key, plan.call, plan.fingerprint
        )
        if replay is not None:
            await self.auth.check_revocation(plan.principal)
        return replay

    async def _refused(
        self, request: Request, principal: Principal | None, exc: BrokerError
    ) -> None:
        if principal is not None and not isinstance(exc, Unauthorized | ServiceUnavailable):
            # Admission checks the deny-list; an answer given before it must not tell a
            # revoked credential anything (allowed models, body errors): check now.
            await self.auth.check_revocation(principal)
        await self.refusals.record(request.state.request_id, principal, exc)

    async def _project(self, principal: Principal) -> Project:
        project = await self.policies.get(principal.project_id)
        if project is None:
            raise Unauthorized("project no longer exists", code="revoked")
        if not project.active:
            raise ProjectSuspended(f"project {project.id} is suspended")
        return project

    # -- admission, then the upstream: outcomes are ledgered -------------------------------

    async def _run(self, request: Request, face: Face, plan: Plan, trace: CallTrace) -> Response:
        plan.cache_key = self.cache.key(plan.project, plan.call, plan.body)
        cached = await self.cache.get(plan.cache_key) if plan.cache_key else None
        try:
            with step("admit"):
                if cached is not None:
                    ctx = await self.admitter.admit_cached(request, plan, self.clock())
                else:
                    ctx = await self.admitter.admit(request, plan, self.clock())
        except BrokerError as exc:
            trace.set("bradax.admission", exc.code)
            await self._refused(request, plan.principal, exc)
            raise
        trace.set("bradax.admission", "admitted")
        if cached is not None:
            response = await self._serve_cached(face, ctx, cached)
        elif plan.call.stream:
            return await self._stream(face, ctx, plan, trace)
        else:
            response = await self._complete(face, ctx, plan, trace)
        if plan.idempotency_key:
            await self.idempotency.end(
                plan.project, plan.idempotency_key, plan.fingerprint, response, plan.request_id
            )
        return response

    async def _complete(self, face: Face, ctx: Context, plan: Plan, trace: CallTrace) -> Response:
        result = await self.upstream.complete(ctx, plan.body)
        trace.finish_reasons(result.data)
        charge = self.settler.charge(ctx, result)
        with step("screen answer"):
            result, kinds = await screen_answer(self.pii, self.settler, ctx, result, charge)
        status, error = "success", "output_pii_redacted" if kinds else None
        if charge.unverified is not None:
            status, error = "usage_unverified", f"usage_{charge.unverified}"
        outcome = Outcome.charged(result.upstream, charge, status, 200, error)
        cost = await self.settler.settle(ctx, outcome)
        if plan.cache_key is not None and charge.unverified is None:
            keep(self.cache.put(plan.cache_key, result))
        response = face.render(ctx, result, cost, charge)
        response.headers.update({"X-Bradax-Cost-USD": str(cost), **ctx.admission.headers()})
        if kinds:
            response.headers["X-Bradax-PII-Redacted"] = ",".join(sorted(kinds))
        return response

    async def _stream(self, face: Face, ctx: Context, plan: Plan, trace: CallTrace) -> Response:
        stream = await self.upstream.open_stream(ctx, plan.body)
        headers = {
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Request-ID": ctx.request_id,
            **ctx.admission.headers(),
        }
        action = self.pii.answer_action(ctx.project)
        guard = self.pii.stream_filter(action) if action is not None else None

        async def finish(how: str) -> None:
            current.set(trace)  # this runs in a task of its own, after handle() returned
            await self.settler.settle(ctx, stream_outcome(self.settler, ctx, stream, how, guard))
            trace.set("bradax.stream.outcome", how)
            trace.end(200)

        async def extend() -> None:
            if ctx.claim is not None:
                until = int(self.clock() * 1000 + self.settings.reservation_ttl * 1000)
                await self.governor.extend(ctx.claim, until)

        adapter = face.stream_adapter(ctx, stream)
        return MeteredStream(stream, finish, extend, headers, guard, trace.first_event, adapter)

    async def _serve_cached(self, face: Face, ctx: Context, data: dict[str, object]) -> Response:
        await self.settler.settle(ctx, Outcome(None, 0, 0, "success", 200, cached=True))
        self.telemetry.incr("cache_hits_total")
        response = face.render_cached(ctx.call, ctx.request_id, data)
        headers = {"X-Bradax-Cache": "HIT", "X-Bradax-Cost-USD": "0", **ctx.admission.headers()}
        response.headers.update(headers)
        return response


def _model_card(model: str) -> dict[str, object]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "bradax"}

"""The governed call path shared by the spec's invoke API and the OpenAI-compatible API.

    authenticate -> parse -> project policy (status, allowed models, token cap, PII rules)
    -> idempotency / response cache -> admit (deny-list, limits, budget reservation: one
    Redis round trip) -> upstream (retries, fallback, breaker) -> settle (release, spend,
    ledger record, metrics: one Redis round trip) -> answer

Nothing reaches the upstream ungoverned: every check happens before the call, and every
call that reached the upstream is settled exactly once (request id) whatever happens to
the client. The worst-case cost reserved up front (common.bounds) covers everything the
upstream can bill for the forwarded body; the upstream's usage is checked against it, and a
claim that is missing or not plausible is charged at the bound. The admission also leaves an
intent in Redis, so a call whose instance dies is settled at its bound by any reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from common import bounds, keyspace
from common.apikeys import looks_like_key
from common.audit import STREAM as AUDIT_STREAM
from common.audit import AuditEvent
from common.auth import Authenticator, Principal
from common.errors import (
    BadRequest,
    BrokerError,
    BudgetExceeded,
    Conflict,
    ModelNotAllowed,
    NotFound,
    PIIDetected,
    ProjectSuspended,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UpstreamBadResponse,
    UpstreamTimeout,
)
from common.http import JSONResponse, client_ip, read_json_body, validation_error
from common.ledger import Drainer, PendingSettles
from common.llm import Completion, StreamCall, Upstream, UpstreamClient
from common.logs import get_logger, log_outcome, mask_project, request_id_var
from common.pii_guard import INLINE_BYTES, PIIGuard
from common.pii_stream import StreamFilter
from common.projects import PolicyCache, Project
from common.quota import (
    Admission,
    BudgetClaim,
    Governor,
    Limit,
    UsageRecord,
    budget_month,
    intent_record,
    to_nano,
)
from common.redis import RedisStore
from common.schemas import ChatCompletionRequest, InvokeRequest
from common.sessions import FailureGate
from common.settings import Settings
from common.telemetry import Telemetry, field

Api = Literal["invoke", "openai"]
SCOPE = "invoke_llm"
IDEMPOTENCY_TTL = 86_400
LGPD_IDEMPOTENCY_TTL = 600
_FORWARD_EXCLUDE = {"model", "messages", "stream", "stream_options", "parameters"}
# The spec API's stream flag is its top-level field; inside `parameters` it would reach the
# upstream unseen by the broker.
_SPEC_PARAMS_REFUSED = ("stream", "stream_options")


@dataclass
class Call:
    """A validated chat request, normalised from either API."""

    api: Api
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    stream: bool
    client_usage: bool
    size: int = 0  # bytes of the body as received

    @property
    def max_tokens(self) -> int | None:
        """The largest completion cap the client asked for in any output-token field."""
        return bounds.output_cap(self.params)


def parse_call(raw: bytes, api: Api) -> Call:
    """Validate a body of either API; BadRequest names the first invalid field."""
    try:
        if api == "invoke":
            spec = InvokeRequest.model_validate_json(raw)
            params = spec.parameters.model_dump(exclude_none=True)
            for name in _SPEC_PARAMS_REFUSED:
                if name in params:
                    raise BadRequest(
                        f"parameters.{name} is not accepted; use the top-level 'stream' field",
                        param=f"parameters.{name}",
                    )
            stream, client_usage = spec.stream, True
            model, messages = spec.model, spec.messages
        else:
            oai = ChatCompletionRequest.model_validate_json(raw)
            params = oai.model_dump(exclude_none=True, exclude=_FORWARD_EXCLUDE)
            stream = bool(oai.stream)
            client_usage = bool(oai.stream_options and oai.stream_options.include_usage)
            model, messages = oai.model, oai.messages
    except ValidationError as exc:
        raise validation_error(exc) from None
    dumped = [m.model_dump(exclude_none=True) for m in messages]
    return Call(api, model, dumped, params, stream, client_usage, len(raw))


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


class Invoker:
    """Runs the governed call path; one instance per process."""

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.auth = authenticator
        self.policies = policies
        self.governor = governor
        self.client = client
        self.redis = redis
        self.telemetry = telemetry
        self.drainer = drainer
        self.pending = pending
        self.failures = failures
        self.clock = clock
        self.pii = PIIGuard(settings, telemetry)
        self._background: set[asyncio.Task[Any]] = set()

    # -- entry points ------------------------------------------------------------------

    async def handle(self, request: Request, api: Api) -> Response:
        """Serve one chat call of either API."""
        self.drainer.ensure_started()
        request_id: str = request.state.request_id
        principal: Principal | None = None
        try:
            header = request.headers.get("authorization")
            if api == "openai":
                principal = await self._api_credential(request, header)
            else:
                principal = self.auth.verify_token(header, SCOPE)
            await self.auth.ensure_key_usable(principal)
            raw = await read_json_body(request, self.settings.max_body_bytes)
            call = parse_call(raw, api)
            return await self._governed(request, request_id, principal, call)
        except BrokerError as exc:
            if getattr(request.state, "admitted", False):
                raise  # an admitted call's outcome is in the ledger and its audit row
            if principal is not None and not isinstance(exc, Unauthorized | ServiceUnavailable):
                # Admission checks the deny-list; an answer given before it must not tell a
                # revoked credential anything (allowed models, body errors): check now.
                await self.auth.check_revocation(principal)
            await self._deny(request_id, principal, exc)
            raise

    async def _api_credential(self, request: Request, header: str | None) -> Principal:
        """A token or API key; failed API-key guesses count against the client IP."""
        if not header or not looks_like_key(header.partition(" ")[2].strip()):
            return await self.auth.verify_credential(header, SCOPE)
        if self.auth.knows_key(header):
            return await self.auth.verify_credential(header, SCOPE)  # verified moments ago
        ip = client_ip(request, self.settings.trusted_proxies)
        slot = await self.failures.take(ip, None, int(self.clock() * 1000))
        try:
            principal = await self.auth.verify_credential(header, SCOPE)
        except Unauthorized:
            raise  # the slot stays taken: a failed guess
        except BaseException:
            await self.failures.refund(slot)
            raise
        await self.failures.refund(slot)
        return principal

    async def models(self, request: Request) -> Response:
        """GET /v1/models: the models this project may use."""
        principal = await self._api_credential(request, request.headers.get("authorization"))
        await self.auth.ensure_key_usable(principal)
        await self.auth.check_revocation(principal)
        project = await self._project(principal)
        allowed = [m for m in project.allowed_models if self.client.catalog.get(m) is not None]
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "bradax"} for m in allowed]
        return JSONResponse({"object": "list", "data": data})

    # -- the governed path --------------------------------------------------------------

    async def _governed(
        self, request: Request, request_id: str, principal: Principal, call: Call
    ) -> Response:
        project = await self._project(principal)
        chain = self._chain(project, call.model)
        body = self._body(project, call, call.messages)
        idem_key = request.headers.get("idempotency-key")
        # Over the request as the client sent it: redaction must not merge two requests.
        fingerprint = ""
        if idem_key:
            fingerprint = hashlib.sha256(_dumps([call.api, body], sort_keys=True)).hexdigest()
        body = await self.pii.request(project, body, call.size)
        now = self.clock()
        created_ms = int(now * 1000)
        month = budget_month(datetime.fromtimestamp(now, UTC))
        if idem_key:
            replay = await self._idempotency_begin(project, idem_key, call, fingerprint)
            if replay is not None:
                await self.auth.check_revocation(principal)
                return replay
        try:
            cache_key = self._cache_key(project, call, body)
            if cache_key is not None:
                cached = await self._cache_get(cache_key)
                if cached is not None:
                    admission = await self._admit(request, principal, project, None, created_ms)
                    request.state.admitted = True
                    response = await self._serve_cached(
                        request_id, principal, project, call, month, created_ms, cached, admission
                    )
                    return await self._idempotency_end(
                        project, idem_key, fingerprint, response, request_id
                    )
            prompt_bounds, completion_bound = _bounds(body, chain)
            costs = {u.alias: u.price.cost(prompt_bounds[u.alias], completion_bound) for u in chain}
            worst_alias = max(costs, key=lambda alias: costs[alias])
            worst = costs[worst_alias]
            intent = intent_record(
                request_id=request_id,
                project_id=project.id,
                key_id=principal.key_id,
                model=call.model,
                prompt_tokens=prompt_bounds[worst_alias],
                completion_tokens=completion_bound,
                cost_usd=worst,
                streamed=call.stream,
                budget_month=month,
                created_at_ms=created_ms,
            )
            claim = BudgetClaim(
                project.id,
                month,
                request_id,
                to_nano(worst),
                to_nano(project.budget_monthly_usd),
                created_ms + int(self.settings.reservation_ttl * 1000),
                intent,
            )
            admission = await self._admit(request, principal, project, claim, created_ms)
            request.state.admitted = True
            ctx = Context(
                request_id, principal, project, call, chain, month, created_ms, claim, admission
            )
            ctx.prompt_bounds, ctx.completion_bound = prompt_bounds, completion_bound
            if call.stream:
                return await self._stream(ctx, body)
            response = await self._complete(ctx, body, cache_key)
            return await self._idempotency_end(project, idem_key, fingerprint, response, request_id)
        except BaseException:
            if idem_key:
                await self._idempotency_abort(project, idem_key)
            raise

    async def _project(self, principal: Principal) -> Project:
        project = await self.policies.get(principal.project_id)
        if project is None:
            raise Unauthorized("project no longer exists", code="revoked")
        if not project.active:
            raise ProjectSuspended(f"project {project.id} is suspended")
        return project

    def _chain(self, project: Project, model: str) -> list[Upstream]:
        if model not in project.allowed_models:
            allowed = ", ".join(project.allowed_models) or "none"
            raise ModelNotAllowed(
                f"model '{model}' is not allowed for this project; allowed models: {allowed}",
                param="model",
            )
        if self.client.catalog.get(model) is None:
            raise NotFound(
                f"model '{model}' is not served by this broker",
                code="model_not_found",
                param="model",
            )
        return self.client.catalog.chain(model)

    def _body(self, project: Project, call: Call, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The upstream body: params, the token cap enforced, usage asked for in streams."""
        body: dict[str, Any] = dict(call.params)
        bounds.refuse_unbounded(body)
        limit = project.max_tokens_per_request
        # Every output-token field must fit the cap: the upstream obeys any one of them.
        for name in bounds.OUTPUT_FIELDS:
            requested = bounds.output_cap({name: body.get(name)})
            if requested is not None and requested > limit:
                raise BadRequest(
                    f"{name} {requested} exceeds this project's limit of {limit}",
                    code="max_tokens_exceeded",
                    param=name,
                )
        requested = call.max_tokens
        if requested is None:
            field_name = "max_completion_tokens" if _reasoning(call.model) else "max_tokens"
            body[field_name] = limit
        body["model"] = call.model
        body["messages"] = messages
        if call.stream:
            body["stream"] = True
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        return body

    async def _admit(
        self,
        request: Request,
        principal: Principal,
        project: Project,
        claim: BudgetClaim | None,
        now_ms: int,
    ) -> Admission:
        settings = self.settings
        limits: list[Limit] = []
        if settings.rate_limiting_enabled:
            limits.append(
                Limit(
                    "max_requests_per_hour",
                    keyspace.limit_scope("p", project.id),
                    project.max_requests_per_hour,
                    3600,
                )
            )
            if project.max_requests_per_second:
                limits.append(
                    Limit(
                        "max_requests_per_second",
                        keyspace.limit_scope("ps", project.id),
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
        try:
            return await self.governor.admit(
                now_ms=now_ms, deny=principal.deny(), limits=limits, budget=claim
            )
        except RateLimited as exc:
            self.telemetry.incr(
                "rate_limit_denials_total", limit=str(exc.details.get("limit_name", ""))
            )
            raise
        except BudgetExceeded:
            self.telemetry.incr("budget_denials_total", project=project.id)
            raise

    # -- upstream calls -----------------------------------------------------------------

    def _payload(self, body: dict[str, Any]) -> Callable[[Upstream], bytes]:
        def build(upstream: Upstream) -> bytes:
            if upstream.model == body["model"]:
                return _dumps(body)
            return _dumps({**body, "model": upstream.model})

        return build

    async def _complete(
        self, ctx: Context, body: dict[str, Any], cache_key: str | None
    ) -> Response:
        deadline = self.client.deadline()
        try:
            result = await self.client.complete(
                ctx.chain, self._payload(body), ctx.request_id, deadline
            )
        except UpstreamBadResponse as exc:
            # The upstream answered 200, so it may have billed the call: charge it at its bound.
            answered = self.client.catalog.get(exc.upstream_alias)
            prompt, completion = ctx.bound(answered)
            await self._settle(
                ctx, answered, prompt, completion, "upstream_bad_response", exc.status,
                f"upstream_{exc.reason}", False,
            )  # fmt: skip
            raise
        except BrokerError as exc:
            # A timed-out call may still be generating (and billing) upstream, and an answer
            # the upstream billed but we cannot use was billed: both are charged at the bound.
            prompt, completion = ctx.bound(None) if _billed(exc) else (0, 0)
            await self._settle(
                ctx, None, prompt, completion, "upstream_error", exc.status, exc.code, False
            )
            raise
        except asyncio.CancelledError:
            # The request may be with the upstream, which finishes (and bills) it anyway.
            prompt, completion = ctx.bound(None)
            await self._settle(
                ctx, None, prompt, completion, "cancelled", 499, "client_disconnected", False
            )
            raise
        except Exception:
            # A bug of ours after admission: release the reservation, record what happened.
            await self._settle(ctx, None, 0, 0, "internal_error", 500, "internal_error", False)
            raise
        claim = None
        if result.prompt_tokens is not None and result.completion_tokens is not None:
            claim = (result.prompt_tokens, result.completion_tokens)
        charge = bounds.verify(claim, *ctx.bound(result.upstream), invalid=result.usage_invalid)
        status = "success"
        if charge.unverified is not None:
            status = "usage_unverified"
            self._unverified(ctx, charge.unverified)
        result, kinds = await self._screen_answer(ctx, result, charge)
        cost = await self._settle(
            ctx,
            result.upstream,
            charge.prompt,
            charge.completion,
            status,
            200,
            f"usage_{charge.unverified}"
            if charge.unverified
            else ("output_pii_redacted" if kinds else None),
            False,
        )
        if cache_key is not None and charge.unverified is None:
            self._spawn(self._cache_put(cache_key, result))
        response = self._render(ctx, result, cost, charge)
        if kinds:
            response.headers["X-Bradax-PII-Redacted"] = ",".join(sorted(kinds))
        return response

    async def _screen_answer(
        self, ctx: Context, result: Completion, charge: bounds.Charge
    ) -> tuple[Completion, set[str]]:
        """The answer under the project's output rule; a blocked answer is settled (at what the
        call is charged), then 422."""
        action = self.pii.answer_action(ctx.project)
        if action is None:
            return result, set()
        tokens = (charge.prompt, charge.completion)
        try:
            data, kinds = await self.pii.answer(action, result.data, len(result.body))
        except PIIDetected as exc:
            await self._settle(ctx, result.upstream, *tokens, "pii_blocked", 422, exc.code, False)
            raise
        except BaseException:
            await self._settle(
                ctx, result.upstream, *tokens, "cancelled", 499, "client_disconnected", False
            )
            raise
        if kinds and action == "block":
            code = "output_pii_detected"
            await self._settle(ctx, result.upstream, *tokens, "pii_blocked", 422, code, False)
            found = ", ".join(sorted(kinds))
            raise PIIDetected(
                f"the answer contains personal data ({found}) and was withheld",
                code=code,
                details={"pii_kinds": sorted(kinds)},
            )
        if kinds:
            notice = {"pii": {"action": "redacted", "kinds": sorted(kinds)}}
            data = {**data, "bradax": notice}
            result = dataclasses.replace(result, data=data, body=_dumps(data))
        return result, kinds

    def _unverified(self, ctx: Context, reason: str) -> None:
        """Count and log (once per call) a usage claim that was replaced by the bound."""
        self.telemetry.incr("usage_unverified_total", model=ctx.call.model, reason=reason)
        get_logger().warning(
            "upstream usage not verifiable; call charged at its bound",
            project_token=mask_project(ctx.project.id),
            model=ctx.call.model,
            reason=reason,
        )

    def _render(
        self, ctx: Context, result: Completion, cost: Decimal, charge: bounds.Charge
    ) -> Response:
        headers = {"X-Bradax-Cost-USD": str(cost), **ctx.admission.headers()}
        if ctx.call.api == "openai":
            if charge.unverified is not None:
                # The upstream's claim is not relayed: the client sees what it was charged.
                usage = {
                    "prompt_tokens": charge.prompt,
                    "completion_tokens": charge.completion,
                    "total_tokens": charge.prompt + charge.completion,
                }
                data = {**result.data, "model": ctx.call.model, "usage": usage}
                return JSONResponse(data, headers=headers)
            if result.upstream.model == ctx.call.model and result.data.get("model"):
                return Response(result.body, headers=headers, media_type="application/json")
            return JSONResponse({**result.data, "model": ctx.call.model}, headers=headers)
        return JSONResponse(
            spec_body(
                result.data,
                ctx.call.model,
                ctx.request_id,
                cost,
                cached=False,
                tokens=(charge.prompt, charge.completion),
            ),
            headers=headers,
        )

    async def _stream(self, ctx: Context, body: dict[str, Any]) -> Response:
        deadline = self.client.deadline()
        try:
            stream = await self.client.open_stream(
                ctx.chain,
                self._payload(body),
                ctx.request_id,
                deadline,
                strip_usage=not ctx.call.client_usage,
            )
        except BrokerError as exc:
            prompt, completion = ctx.bound(None) if _billed(exc) else (0, 0)
            await self._settle(
                ctx, None, prompt, completion, "upstream_error", exc.status, exc.code, True
            )
            raise
        except asyncio.CancelledError:
            prompt, completion = ctx.bound(None)
            await self._settle(
                ctx, None, prompt, completion, "cancelled", 499, "client_disconnected", True
            )
            raise
        except Exception:
            # A bug of ours after admission: release the reservation, record what happened.
            await self._settle(ctx, None, 0, 0, "internal_error", 500, "internal_error", True)
            raise
        headers = {
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Request-ID": ctx.request_id,
            **ctx.admission.headers(),
        }
        action = self.pii.answer_action(ctx.project)
        guard = self.pii.stream_filter(action) if action is not None else None
        return MeteredStream(
            stream,
            lambda outcome: self._finish_stream(ctx, stream, outcome, guard),
            self._extend(ctx),
            headers,
            guard,
        )

    def _extend(self, ctx: Context) -> Callable[[], Awaitable[None]]:
        async def extend() -> None:
            if ctx.claim is not None:
                until = int(self.clock() * 1000 + self.settings.reservation_ttl * 1000)
                await self.governor.extend(ctx.claim, until)

        return extend

    async def _finish_stream(
        self, ctx: Context, stream: StreamCall, outcome: str, guard: StreamFilter | None = None
    ) -> None:
        claim = None
        if stream.prompt_tokens is not None and stream.completion_tokens is not None:
            claim = (stream.prompt_tokens, stream.completion_tokens)
        # Without a usable usage chunk (an upstream cut, a lie) the call is charged at its bound.
        charge = bounds.verify(claim, *ctx.bound(stream.upstream), invalid=stream.usage_invalid)
        status = {"completed": "success"}.get(outcome, outcome)
        http = 200 if outcome == "completed" else 499 if outcome == "client_disconnected" else 502
        error = None if outcome == "completed" else f"stream_{outcome}"
        if outcome == "pii_blocked":
            http, error = 200, "output_pii_detected"
        elif guard is not None and guard.kinds and outcome == "completed":
            error = "output_pii_redacted"
        if charge.unverified is not None:
            self._unverified(ctx, charge.unverified)
            if outcome == "completed":
                status, error = "usage_unverified", f"usage_{charge.unverified}"
        await self._settle(
            ctx, stream.upstream, charge.prompt, charge.completion, status, http, error, True
        )

    # -- settling -----------------------------------------------------------------------

    async def _settle(
        self,
        ctx: Context,
        upstream: Upstream | None,
        prompt: int,
        completion: int,
        status: str,
        http_status: int,
        error: str | None,
        streamed: bool,
        cached: bool = False,
    ) -> Decimal:
        if ctx.settled:
            return Decimal(0)
        ctx.settled = True
        used = upstream or ctx.chain[0]
        cost = Decimal(0) if cached else used.price.cost(prompt, completion)
        latency = int((time.perf_counter() - ctx.started) * 1000)
        record = UsageRecord(
            request_id=ctx.request_id,
            project_id=ctx.project.id,
            key_id=ctx.principal.key_id,
            model=ctx.call.model,
            upstream_model=used.model if upstream else None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
            latency_ms=latency,
            status=status,
            http_status=http_status,
            error_code=error,
            streamed=streamed,
            cached=cached,
            budget_month=ctx.month,
            created_at_ms=ctx.created_ms,
        )
        metrics: dict[str, int] = {}
        if not cached:
            model = ctx.call.model
            metrics = {
                field("openai_requests_total", model=model, status=status): 1,
                field("openai_cost_nano_total", model=model): to_nano(cost),
                field("openai_tokens_total", model=model, kind="prompt"): prompt,
                field("openai_tokens_total", model=model, kind="completion"): completion,
            }
        if not self.settings.metrics_enabled:
            metrics = {}

        async def settle() -> None:
            outcome = await self.governor.settle(
                ctx.claim,
                request_id=ctx.request_id,
                project_id=ctx.project.id,
                month=ctx.month,
                actual=cost,
                record=record,
                metrics=metrics,
            )
            if outcome.soft_threshold_crossed:
                self.telemetry.incr("budget_soft_threshold_total", project=ctx.project.id)
                get_logger().warning(
                    "project crossed its soft budget threshold",
                    project_token=mask_project(ctx.project.id),
                    threshold=str(self.settings.budget_soft_threshold),
                )

        try:
            await settle()
        except (ServiceUnavailable, OSError):
            self.pending.add(settle, record)
        log_outcome(
            "LLM request completed" if status == "success" else "LLM request ended",
            project_token=mask_project(ctx.project.id),
            model=ctx.call.model,
            tokens_used=prompt + completion,
            cost_usd=str(cost),
            latency_ms=latency,
            status=status,
            streamed=streamed,
            cached=cached,
        )
        return cost

    # -- denials ------------------------------------------------------------------------

    async def _deny(self, request_id: str, principal: Principal | None, exc: BrokerError) -> None:
        if not self.settings.audit_logging_enabled or isinstance(exc, ServiceUnavailable):
            return
        event = AuditEvent(
            "invoke",
            "denied",
            principal.project_id if principal else None,
            f"key:{principal.key_id}" if principal else None,
            request_id,
            exc.code,
            {"status": exc.status},
        )
        try:
            await self.redis.call("XADD", AUDIT_STREAM, "*", *_flat(event.to_stream()))
        except ServiceUnavailable:
            get_logger().warning("audit of a denial dropped: redis unreachable")
        log_outcome(
            "LLM request denied",
            status=exc.code,
            project_token=mask_project(principal.project_id if principal else None),
        )

    # -- idempotency and response cache -------------------------------------------------

    async def _idempotency_begin(
        self, project: Project, key: str, call: Call, fingerprint: str
    ) -> Response | None:
        if call.stream:
            raise BadRequest(
                "Idempotency-Key is not supported with stream=true", code="idempotency_unsupported"
            )
        if len(key) > 255:
            raise BadRequest("Idempotency-Key is longer than 255 characters")
        redis_key = _idem_key(project.id, key)
        claim = orjson.dumps({"state": "pending", "fp": fingerprint})
        created = await self.redis.call(
            "SET", redis_key, claim, "NX", "EX", int(self.settings.reservation_ttl) + 60
        )
        if created:
            return None
        stored = await self.redis.call("GET", redis_key)
        if stored is None:
            raise Conflict(
                "a request with this Idempotency-Key just finished; retry", code="idempotency_retry"
            )
        record = orjson.loads(stored)
        if record.get("fp") != fingerprint:
            raise BadRequest(
                "Idempotency-Key was already used with a different request body",
                code="idempotency_key_reused",
            )
        if record.get("state") != "done":
            raise Conflict(
                "a request with this Idempotency-Key is still in progress",
                code="idempotency_in_progress",
            )
        headers = dict(record.get("headers") or {})
        headers["Idempotent-Replayed"] = "true"
        return Response(
            record["body"].encode(),
            status_code=int(record["status"]),
            headers=headers,
            media_type="application/json",
        )

    async def _idempotency_end(
        self,
        project: Project,
        key: str | None,
        fingerprint: str,
        response: Response,
        request_id: str,
    ) -> Response:
        if not key:
            return response
        keep = {k: v for k, v in response.headers.items() if k.lower().startswith("x-bradax")}
        keep["X-Request-ID"] = request_id  # a replay answers with the original call's id
        record = {
            "state": "done",
            "fp": fingerprint,
            "status": response.status_code,
            "headers": keep,
            "body": bytes(response.body).decode(),
        }
        # Under LGPD the stored answer lives only as long as a client retry plausibly needs it.
        ttl = LGPD_IDEMPOTENCY_TTL if "lgpd" in project.compliance_rules else IDEMPOTENCY_TTL
        await self.redis.call("SET", _idem_key(project.id, key), orjson.dumps(record), "EX", ttl)
        return response

    async def _idempotency_abort(self, project: Project, key: str) -> None:
        try:
            stored = await self.redis.call("GET", _idem_key(project.id, key))
            if stored is not None and orjson.loads(stored).get("state") == "pending":
                await self.redis.call("DEL", _idem_key(project.id, key))
        except ServiceUnavailable:
            pass  # the pending marker expires on its own

    def _cache_key(self, project: Project, call: Call, body: dict[str, Any]) -> str | None:
        if (
            not project.cache_enabled
            or "lgpd" in project.compliance_rules  # answers are not kept under LGPD
            or project.answer_pii_action != "off"  # nor answers that must be scanned
            or call.stream
            or self.settings.redis_cache_ttl <= 0
            or body.get("temperature") != 0
            or (body.get("n") or 1) != 1
        ):
            return None
        digest = hashlib.sha256(_dumps(body, sort_keys=True)).hexdigest()
        return keyspace.response_cache(project.id, call.api, digest)

    async def _cache_get(self, key: str) -> dict[str, Any] | None:
        raw = await self.redis.call("GET", key)
        if raw is None:
            return None
        data: dict[str, Any] = orjson.loads(raw)
        return data

    async def _cache_put(self, key: str, result: Completion) -> None:
        with contextlib.suppress(ServiceUnavailable):
            await self.redis.call("SET", key, result.body, "EX", self.settings.redis_cache_ttl)

    async def _serve_cached(
        self,
        request_id: str,
        principal: Principal,
        project: Project,
        call: Call,
        month: str,
        created_ms: int,
        data: dict[str, Any],
        admission: Admission,
    ) -> Response:
        ctx = Context(
            request_id,
            principal,
            project,
            call,
            self.client.catalog.chain(call.model),
            month,
            created_ms,
            None,
            admission,
        )
        await self._settle(ctx, None, 0, 0, "success", 200, None, False, cached=True)
        headers = {"X-Bradax-Cache": "HIT", "X-Bradax-Cost-USD": "0", **admission.headers()}
        self.telemetry.incr("cache_hits_total")
        if call.api == "openai":
            return JSONResponse({**data, "model": call.model}, headers=headers)
        return JSONResponse(
            spec_body(data, call.model, request_id, Decimal(0), cached=True), headers=headers
        )

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def spec_body(
    data: dict[str, Any],
    model: str,
    request_id: str,
    cost: Decimal,
    *,
    cached: bool,
    tokens: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The spec's invoke response built from an OpenAI chat.completion object; `tokens`
    are what the call was charged (else the answer's own usage, if it is usable)."""
    if tokens is None:
        tokens = bounds.read_usage(data.get("usage")) or (0, 0)
    prompt, completion = tokens
    choices = []
    for index, choice in enumerate(data.get("choices") or ()):
        message = choice.get("message") or {}
        entry = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("tool_calls"):
            entry["tool_calls"] = message["tool_calls"]
        choices.append(
            {
                "index": choice.get("index", index),
                "message": entry,
                "finish_reason": choice.get("finish_reason"),
            }
        )
    return {
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        "model": model,
        "request_id": request_id,
        "cost_usd": str(cost),
        "cached": cached,
    }


def _billed(exc: BrokerError) -> bool:
    """May the upstream have billed a call that ended in `exc`? (a timeout, or an error
    class that says so with `upstream_billed = True`)"""
    return isinstance(exc, UpstreamTimeout) or bool(getattr(exc, "upstream_billed", False))


def _bounds(body: dict[str, Any], chain: list[Upstream]) -> tuple[dict[str, int], int]:
    """Each upstream's prompt bound (by alias) and the completion bound of the body."""
    size = len(_dumps(body))
    own = len(orjson.dumps(body["model"]))
    found = bounds.media(body["messages"])
    prompts = {
        u.alias: bounds.prompt_bound(size - own + len(orjson.dumps(u.model)), found, u.model)
        for u in chain
    }
    completion = bounds.completion_bound(body)
    if max(prompts.values()) + completion > bounds.INT32:
        raise BadRequest("the request is too large to bound its cost", code="request_too_large")
    return prompts, completion


def _dumps(value: Any, sort_keys: bool = False) -> bytes:
    """orjson, or the standard library for integers beyond 64 bits (valid JSON all the same)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except TypeError:
        import json

        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
        return text.encode()


def _reasoning(model: str) -> bool:
    return model.startswith(("o1", "o3", "o4", "gpt-5"))


def _idem_key(project_id: str, key: str) -> str:
    return keyspace.idempotency(project_id, key)


def _flat(fields: dict[str, bytes]) -> list[Any]:
    flat: list[Any] = []
    for key, value in fields.items():
        flat.extend((key, value))
    return flat


class MeteredStream(Response):
    """Relays upstream SSE events as they arrive and settles the call however it ends.

    The outcome is "completed" ([DONE] seen), "cut" (upstream ended early), "timeout" (the
    upstream went silent), or "client_disconnected". Settling runs in its own task, so a
    cancelled request cannot skip it.
    """

    media_type = "text/event-stream"
    EXTEND_EVERY = 30.0

    def __init__(
        self,
        stream: StreamCall,
        finish: Callable[[str], Awaitable[None]],
        extend: Callable[[], Awaitable[None]],
        headers: dict[str, str],
        guard: StreamFilter | None = None,
    ) -> None:
        self.stream = stream
        self.guard = guard
        self.finish = finish
        self.extend = extend
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        outcome = "client_disconnected"
        request_id = dict(self.raw_headers).get(b"x-request-id", b"").decode() or None
        token = request_id_var.set(request_id)
        pump = asyncio.ensure_future(self._pump(send))
        listener = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({pump, listener}, return_when=asyncio.FIRST_COMPLETED)
            if pump in done and pump.exception() is None:
                outcome = pump.result()
        finally:
            for task in (pump, listener):
                task.cancel()
            self.stream.close()
            settle = asyncio.ensure_future(self.finish(outcome))
            _KEEP.add(settle)
            settle.add_done_callback(_KEEP.discard)
            request_id_var.reset(token)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(settle)

    async def _pump(self, send: Any) -> str:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        last_extend = time.monotonic()
        guard = self.guard
        async for event in self.stream.events():
            if guard is None:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            else:
                # Personal data in the answer: relay what no finding can still reach.
                if len(event) <= INLINE_BYTES:
                    relayed = guard.feed(event)
                else:
                    relayed = await asyncio.to_thread(guard.feed, event)
                for part in relayed:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                if guard.blocked:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return "pii_blocked"
            if time.monotonic() - last_extend > self.EXTEND_EVERY:
                last_extend = time.monotonic()
                with contextlib.suppress(ServiceUnavailable):
                    await self.extend()
        if guard is not None and not self.stream.done:
            for part in guard.finish():  # a stream cut short: flush what was held
                await send({"type": "http.response.body", "body": part, "more_body": True})
            if guard.blocked:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return "pii_blocked"
        outcome = self.stream.finish or "cut"
        if outcome != "completed":
            error = {
                "error": {
                    "message": f"upstream stream ended early ({outcome})",
                    "type": "upstream_error",
                    "code": f"upstream_stream_{outcome}",
                }
            }
            tail = b"data: " + orjson.dumps(error) + b"\n\n"
            await send({"type": "http.response.body", "body": tail, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return outcome


_KEEP: set[asyncio.Future[Any]] = set()


async def _wait_disconnect(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return

"""The replay step: answers given again without a second upstream call or charge.

`IdempotencyStore`: a retried non-streaming call with the same Idempotency-Key and the same
request (as the client sent it) gets the first answer; a different request under the key is
refused. `ResponseCache`: exact-match answers at temperature 0 for projects that allow it
(never under LGPD, never answers that must be scanned).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import orjson
from starlette.responses import Response

from common import keyspace
from common.call.model import Call
from common.errors import BadRequest, Conflict, ServiceUnavailable
from common.llm import Completion
from common.projects import Project
from common.redis import RedisStore
from common.wire import dumps

IDEMPOTENCY_TTL = 86_400
LGPD_IDEMPOTENCY_TTL = 600
MAX_KEY_LENGTH = 255


class IdempotencyStore:
    """Idempotency-Key records: pending while the first call runs, then its answer."""

    def __init__(self, redis: RedisStore, pending_ttl: int) -> None:
        self._redis = redis
        self._pending_ttl = pending_ttl

    async def begin(
        self, project: Project, key: str, call: Call, fingerprint: str
    ) -> Response | None:
        """Claim the key (None: go ahead), or the stored answer; 400/409 otherwise."""
        if call.stream:
            raise BadRequest(
                "Idempotency-Key is not supported with stream=true", code="idempotency_unsupported"
            )
        if len(key) > MAX_KEY_LENGTH:
            raise BadRequest(f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters")
        name = keyspace.idempotency(project.id, key)
        claim = orjson.dumps({"state": "pending", "fp": fingerprint})
        if await self._redis.call("SET", name, claim, "NX", "EX", self._pending_ttl):
            return None
        stored = await self._redis.call("GET", name)
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

    async def end(
        self, project: Project, key: str, fingerprint: str, response: Response, request_id: str
    ) -> None:
        """Keep the answer for replays (10 minutes under LGPD, 24 h otherwise)."""
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
        name = keyspace.idempotency(project.id, key)
        await self._redis.call("SET", name, orjson.dumps(record), "EX", ttl)

    async def abort(self, project: Project, key: str) -> None:
        """Release a pending claim (the call failed before answering)."""
        name = keyspace.idempotency(project.id, key)
        try:
            stored = await self._redis.call("GET", name)
            if stored is not None and orjson.loads(stored).get("state") == "pending":
                await self._redis.call("DEL", name)
        except ServiceUnavailable:
            pass  # the pending marker expires on its own


class ResponseCache:
    """Exact-match cached answers, REDIS_CACHE_TTL seconds."""

    def __init__(self, redis: RedisStore, ttl: int) -> None:
        self._redis = redis
        self._ttl = ttl

    def key(self, project: Project, call: Call, body: dict[str, Any]) -> str | None:
        """The cache key of this call, or None when its answer must not be cached."""
        if (
            not project.cache_enabled
            or "lgpd" in project.compliance_rules  # answers are not kept under LGPD
            or project.answer_pii_action != "off"  # nor answers that must be scanned
            or call.stream
            or self._ttl <= 0
            or body.get("temperature") != 0
            or (body.get("n") or 1) != 1
        ):
            return None
        # The provider headers a client sent (a beta feature) can change the answer too.
        identity = [body, call.forward] if call.forward else body
        digest = hashlib.sha256(dumps(identity, sort_keys=True)).hexdigest()
        return keyspace.response_cache(project.id, call.api, digest)

    async def get(self, key: str) -> dict[str, Any] | None:
        """The cached chat.completion, or None."""
        raw = await self._redis.call("GET", key)
        if raw is None:
            return None
        data: dict[str, Any] = orjson.loads(raw)
        return data

    async def put(self, key: str, result: Completion) -> None:
        """Keep an answer (a Redis outage only loses the cache entry)."""
        with contextlib.suppress(ServiceUnavailable):
            await self._redis.call("SET", key, result.body, "EX", self._ttl)

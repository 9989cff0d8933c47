"""Usage records: one ledger row as it travels from a settle, through the Redis outbox, to
PostgreSQL; checked against the ledger's column ranges before it enters the outbox. Money is
Decimal USD here and integer nano-dollars (rounded up) in Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, Decimal
from typing import Any

import orjson

from common.bounds import INT32

NANO = Decimal(1_000_000_000)
# NUMERIC(24, 12): below 10^12 USD.
MAX_COST = Decimal(10) ** 12 - 1
RECONCILED = "reconciled"


def to_nano(amount: Decimal) -> int:
    """USD -> integer nano-dollars, rounded up (never under-count spend)."""
    return int((amount * NANO).to_integral_value(rounding=ROUND_CEILING))


def from_nano(nano: int) -> Decimal:
    """Integer nano-dollars -> USD."""
    return Decimal(nano) / NANO


@dataclass
class UsageRecord:
    """One ledger row, as it travels through the ledger stream."""

    request_id: str
    project_id: str
    key_id: str | None
    model: str
    upstream_model: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    latency_ms: int
    status: str
    http_status: int
    error_code: str | None
    streamed: bool
    cached: bool
    budget_month: str
    created_at_ms: int
    # of prompt_tokens: read from / written to the provider's prompt cache (priced apart)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def to_json(self) -> bytes:
        """The record as it travels in the ledger stream."""
        return orjson.dumps(
            [
                self.request_id,
                self.project_id,
                self.key_id,
                self.model,
                self.upstream_model,
                self.prompt_tokens,
                self.completion_tokens,
                str(self.cost_usd),
                self.latency_ms,
                self.status,
                self.http_status,
                self.error_code,
                self.streamed,
                self.cached,
                self.budget_month,
                self.created_at_ms,
                self.cache_read_tokens,
                self.cache_write_tokens,
            ]
        )

    @classmethod
    def from_json(cls, raw: bytes) -> UsageRecord:
        """Inverse of to_json()."""
        values = orjson.loads(raw)
        record = cls(*values)
        record.cost_usd = Decimal(values[7])
        return record

    def problems(self) -> list[str]:
        """Why PostgreSQL would refuse this row (empty: it fits the ledger's columns)."""
        found: list[str] = []
        texts: dict[str, object] = {
            "request_id": self.request_id,
            "project_id": self.project_id,
            "model": self.model,
            "status": self.status,
            "budget_month": self.budget_month,
        }
        for name, text in texts.items():
            if not isinstance(text, str) or not text or "\x00" in text:
                found.append(f"{name} is not a text")
        optional: dict[str, object] = {
            "key_id": self.key_id,
            "upstream_model": self.upstream_model,
            "error_code": self.error_code,
        }
        for name, text in optional.items():
            if text is not None and (not isinstance(text, str) or "\x00" in text):
                found.append(f"{name} is not a text")
        counts: dict[str, object] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": self.latency_ms,
            "http_status": self.http_status,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
        }
        for name, count in counts.items():
            if not _count(count):
                found.append(f"{name} is not an integer in [0, 2^31)")
        if not found and self.prompt_tokens + self.completion_tokens > INT32:
            found.append("total_tokens is beyond 2^31")
        if not found and self.cache_read_tokens + self.cache_write_tokens > self.prompt_tokens:
            found.append("cache tokens exceed prompt_tokens")
        if not _amount(self.cost_usd):
            found.append("cost_usd is not an amount in [0, 10^12)")
        if not isinstance(self.budget_month, str) or len(self.budget_month) != 6:
            found.append("budget_month is not YYYYMM")
        if not _count(self.created_at_ms, 2**48) or self.created_at_ms == 0:
            found.append("created_at_ms is not a time")
        if not isinstance(self.streamed, bool) or not isinstance(self.cached, bool):
            found.append("streamed and cached must be booleans")
        return found

    def fitted(self) -> UsageRecord:
        """The record forced into the ledger's domain (counts into [0, 2^31), texts without
        NUL, the cost into [0, 10^12)); InvalidRecord if it still does not fit."""
        changes: dict[str, Any] = {}
        for name in (
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "http_status",
            "cache_read_tokens",
            "cache_write_tokens",
        ):
            value = getattr(self, name)
            if _integer(value) and not _count(value):
                changes[name] = min(max(value, 0), INT32)
        for name in ("request_id", "project_id", "model", "status"):
            value = getattr(self, name)
            if isinstance(value, str) and "\x00" in value:
                changes[name] = value.replace("\x00", "")
        for name in ("key_id", "upstream_model", "error_code"):
            value = getattr(self, name)
            if isinstance(value, str) and "\x00" in value:
                changes[name] = value.replace("\x00", "")
        fixed = replace(self, **changes) if changes else self
        prompt, completion = fixed.prompt_tokens, fixed.completion_tokens
        if _integer(prompt) and _integer(completion) and prompt + completion > INT32:
            fixed = replace(fixed, completion_tokens=INT32 - prompt)
        read, write = fixed.cache_read_tokens, fixed.cache_write_tokens
        if _integer(read) and _integer(write) and _integer(prompt) and read + write > prompt:
            fixed = replace(fixed, cache_read_tokens=0, cache_write_tokens=0)
        cost = fixed.cost_usd
        if isinstance(cost, Decimal) and cost.is_finite() and not _amount(cost):
            fixed = replace(fixed, cost_usd=min(max(cost, Decimal(0)), MAX_COST))
        problems = fixed.problems()
        if problems:
            raise InvalidRecord("; ".join(problems))
        return fixed


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: object, top: int = INT32) -> bool:
    return _integer(value) and 0 <= value <= top  # type: ignore[operator]


def _amount(value: object) -> bool:
    return isinstance(value, Decimal) and value.is_finite() and 0 <= value <= MAX_COST


def intent_record(
    *,
    request_id: str,
    project_id: str,
    key_id: str | None,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: Decimal,
    streamed: bool,
    budget_month: str,
    created_at_ms: int,
) -> UsageRecord:
    """The ledger row of an admitted call charged at its bound, should its instance die."""
    return UsageRecord(
        request_id=request_id,
        project_id=project_id,
        key_id=key_id,
        model=model,
        upstream_model=None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost_usd,
        latency_ms=0,
        status=RECONCILED,
        http_status=0,
        error_code="instance_lost",
        streamed=streamed,
        cached=False,
        budget_month=budget_month,
        created_at_ms=created_at_ms,
    )


class InvalidRecord(ValueError):
    """A usage record that does not fit the ledger (it never enters the outbox)."""

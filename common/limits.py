"""What the governor decides on: limits, deny-list entries, budget months, admissions.

Values only (no Redis calls); `common.quota` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from common import keyspace


def budget_month(now: datetime) -> str:
    """The budget period a moment belongs to: YYYYMM in UTC."""
    now = now.astimezone(UTC)
    return f"{now.year:04d}{now.month:02d}"


def month_end(now: datetime) -> datetime:
    """The first instant of the next month (UTC)."""
    now = now.astimezone(UTC)
    if now.month == 12:
        return datetime(now.year + 1, 1, 1, tzinfo=UTC)
    return datetime(now.year, now.month + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Limit:
    """A fixed-window counter: at most `limit` hits per `window` seconds."""

    name: str
    scope: str
    limit: int
    window: int

    def key(self, now_s: int) -> str:
        """The counter's Redis key for the window holding now_s."""
        return keyspace.rate_limit(self.scope, self.window, now_s // self.window)


@dataclass(frozen=True)
class DenyKey:
    """A deny-list entry to check; `reason` is what the client is told if it exists."""

    key: str
    reason: str


def deny_keys(project_id: str, key_id: str, jti: str | None, family: str | None) -> list[DenyKey]:
    """The deny-list entries that revoke a credential: project, key, token family, token."""
    keys = [
        DenyKey(keyspace.deny_project(project_id), "project is suspended"),
        DenyKey(keyspace.deny_key(project_id, key_id), "credential has been revoked"),
    ]
    if family:
        keys.append(DenyKey(keyspace.deny_family(project_id, family), "token has been revoked"))
    if jti:
        keys.append(DenyKey(keyspace.deny_token(project_id, jti), "token has been revoked"))
    return keys


@dataclass(frozen=True)
class Admission:
    """A granted call and the figures of its tightest limit (for X-RateLimit-* headers)."""

    limit: int | None = None
    remaining: int | None = None
    reset: int | None = None

    def headers(self) -> dict[str, str]:
        """X-RateLimit-* headers, when a limit applied."""
        if self.limit is None:
            return {}
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining or 0)),
            "X-RateLimit-Reset": str(self.reset),
        }

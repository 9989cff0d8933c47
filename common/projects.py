"""Projects and their governance fields: the PostgreSQL store and a short-lived policy cache.

A project's policy (status, budget, limits, models, compliance rules) is read on every call,
so functions keep it in memory for POLICY_CACHE_SECONDS (default 5 s). Suspension also
takes effect immediately through the Redis deny-list; the cache bounds it when Redis
could not be told.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.cache import AsyncTTLCache
from common.db import Database
from common.errors import BadRequest, Conflict, NotFound

COMPLIANCE_RULES = ("lgpd", "pii_detection")
PROJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,127}$"


class ProjectFields(BaseModel):
    """The editable governance fields of a project (all optional, for updates)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    division: str | None = Field(default=None, max_length=100)
    team: str | None = Field(default=None, max_length=100)
    budget_monthly_usd: Decimal | None = Field(default=None, ge=0, max_digits=14, decimal_places=4)
    max_tokens_per_request: int | None = Field(default=None, gt=0, le=10_000_000)
    max_requests_per_hour: int | None = Field(default=None, ge=0, le=2**31 - 1)
    max_requests_per_second: int | None = Field(default=None, ge=0, le=2**31 - 1)
    allowed_models: tuple[str, ...] | None = None
    compliance_rules: tuple[str, ...] | None = None
    pii_action: Literal["block", "redact"] | None = None
    output_pii_action: Literal["redact", "block", "off"] | None = None
    cache_enabled: bool | None = None

    @field_validator("compliance_rules")
    @classmethod
    def _known_rules(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            unknown = sorted(set(value) - set(COMPLIANCE_RULES))
            if unknown:
                raise ValueError(
                    f"unknown compliance rule(s) {', '.join(unknown)}; "
                    f"known: {', '.join(COMPLIANCE_RULES)}"
                )
        return value


class Project(BaseModel):
    """A project as stored: identity, governance fields and status."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    division: str
    team: str
    budget_monthly_usd: Decimal
    max_tokens_per_request: int
    max_requests_per_hour: int
    max_requests_per_second: int
    allowed_models: tuple[str, ...]
    compliance_rules: tuple[str, ...]
    pii_action: Literal["block", "redact"]
    # None: the default, redact under lgpd and off otherwise (see `answer_pii_action`)
    output_pii_action: Literal["redact", "block", "off"] | None = None
    cache_enabled: bool
    status: Literal["active", "suspended"]
    created_at: datetime
    updated_at: datetime

    @property
    def active(self) -> bool:
        """True unless suspended."""
        return self.status == "active"

    @property
    def answer_pii_action(self) -> Literal["redact", "block", "off"]:
        """What is done with personal data in answers: the setting, else redact under lgpd."""
        if self.output_pii_action is not None:
            return self.output_pii_action
        return "redact" if "lgpd" in self.compliance_rules else "off"

    def public(self) -> dict[str, Any]:
        """JSON-ready view (money as a string, to keep it exact)."""
        data = self.model_dump(mode="json")
        data["budget_monthly_usd"] = str(self.budget_monthly_usd)
        data["output_pii_action_effective"] = self.answer_pii_action
        return data


_COLUMNS = (
    "id, name, division, team, budget_monthly_usd, max_tokens_per_request, "
    "max_requests_per_hour, max_requests_per_second, allowed_models, compliance_rules, "
    "pii_action, output_pii_action, cache_enabled, status, created_at, updated_at"
)
_JSON_FIELDS = ("allowed_models", "compliance_rules")


def _from_row(row: asyncpg.Record) -> Project:
    data = dict(row)
    for name in _JSON_FIELDS:
        value = data[name]
        data[name] = tuple(orjson.loads(value) if isinstance(value, str | bytes) else value)
    return Project.model_validate(data)


class ProjectStore:
    """CRUD over the projects table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, project_id: str) -> Project | None:
        """The project, or None."""
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM projects WHERE id = $1", project_id)
        return _from_row(row) if row else None

    async def require(self, project_id: str) -> Project:
        """The project; raises NotFound."""
        project = await self.get(project_id)
        if project is None:
            raise NotFound(f"project {project_id} does not exist")
        return project

    async def list(self) -> list[Project]:
        """Every project, by id."""
        rows = await self._db.fetch(f"SELECT {_COLUMNS} FROM projects ORDER BY id")
        return [_from_row(row) for row in rows]

    async def create(
        self, project_id: str, fields: ProjectFields, conn: asyncpg.Connection | None = None
    ) -> Project:
        """Insert a project (defaults for unset fields); raises Conflict if the id exists."""
        if not re.match(PROJECT_ID_PATTERN, project_id):
            raise BadRequest(
                "project id must be 3-128 characters of letters, digits, '_', '.', '-'"
            )
        values = fields.model_dump(exclude_none=True)
        if "name" not in values:
            raise BadRequest("a project needs a name")
        columns = ["id", *values]
        args = [project_id, *(_to_db(k, v) for k, v in values.items())]
        placeholders = ", ".join(f"${i}" for i in range(1, len(args) + 1))
        query = (
            f"INSERT INTO projects ({', '.join(columns)}) VALUES ({placeholders}) "
            f"RETURNING {_COLUMNS}"
        )
        try:
            if conn is not None:
                row = await conn.fetchrow(query, *args)
            else:
                row = await self._db.fetchrow(query, *args)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"project {project_id} already exists") from None
        assert row is not None
        return _from_row(row)

    async def update(
        self, project_id: str, fields: ProjectFields, conn: asyncpg.Connection | None = None
    ) -> Project:
        """Change the given fields (in the caller's transaction with `conn`); raises NotFound."""
        values = fields.model_dump(exclude_none=True)
        sets = "".join(f"{name} = ${i}, " for i, name in enumerate(values, start=2))
        row = await (conn or self._db).fetchrow(
            f"UPDATE projects SET {sets}updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
            project_id,
            *(_to_db(k, v) for k, v in values.items()),
        )
        if row is None:
            raise NotFound(f"project {project_id} does not exist")
        return _from_row(row)

    async def set_status(
        self, project_id: str, status: str, conn: asyncpg.Connection | None = None
    ) -> Project:
        """Suspend or resume (in the caller's transaction with `conn`); raises NotFound."""
        row = await (conn or self._db).fetchrow(
            f"UPDATE projects SET status = $2, updated_at = now() WHERE id = $1 "
            f"RETURNING {_COLUMNS}",
            project_id,
            status,
        )
        if row is None:
            raise NotFound(f"project {project_id} does not exist")
        return _from_row(row)


def _to_db(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        return orjson.dumps(list(value)).decode()
    return value


class PolicyCache:
    """Projects kept in memory for `ttl` seconds (misses too), single-flight, stale on outage."""

    def __init__(
        self,
        store: ProjectStore,
        ttl: float,
        *,
        stale_for: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._cache: AsyncTTLCache[str, Project | None] = AsyncTTLCache(
            store.get, ttl=ttl, stale_for=stale_for, clock=clock
        )

    async def get(self, project_id: str) -> Project | None:
        """The project as of at most `ttl` seconds ago."""
        return await self._cache.get(project_id)

    async def all(self) -> list[Project]:
        """Every project (not cached: used by the metrics scrape)."""
        return await self._store.list()

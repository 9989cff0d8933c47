-- bradax schema: projects and their governance, API keys, refresh tokens,
-- the usage ledger and the hash-chained audit trail. Money is NUMERIC, never float.

CREATE TABLE projects (
    id                      TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{2,127}$'),
    name                    TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    division                TEXT NOT NULL DEFAULT '',
    team                    TEXT NOT NULL DEFAULT '',
    budget_monthly_usd      NUMERIC(14, 4) NOT NULL DEFAULT 0 CHECK (budget_monthly_usd >= 0),
    max_tokens_per_request  INTEGER NOT NULL DEFAULT 4096 CHECK (max_tokens_per_request > 0),
    max_requests_per_hour   INTEGER NOT NULL DEFAULT 100 CHECK (max_requests_per_hour >= 0),
    max_requests_per_second INTEGER NOT NULL DEFAULT 10 CHECK (max_requests_per_second >= 0),
    allowed_models          JSONB NOT NULL DEFAULT '[]'::jsonb,
    compliance_rules        JSONB NOT NULL DEFAULT '[]'::jsonb,
    pii_action              TEXT NOT NULL DEFAULT 'block' CHECK (pii_action IN ('block', 'redact')),
    cache_enabled           BOOLEAN NOT NULL DEFAULT false,
    status                  TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id       TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name         TEXT NOT NULL DEFAULT '',
    secret_hash  BYTEA NOT NULL,
    scopes       TEXT[] NOT NULL,
    status       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    replaced_by  TEXT
);
CREATE INDEX api_keys_project ON api_keys (project_id);

CREATE TABLE refresh_tokens (
    jti        TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key_id     TEXT NOT NULL,
    scopes     TEXT[] NOT NULL,
    issued_at  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);

CREATE TABLE usage_ledger (
    request_id        TEXT PRIMARY KEY,
    project_id        TEXT NOT NULL,
    key_id            TEXT,
    model             TEXT NOT NULL,
    upstream_model    TEXT,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens INTEGER NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    total_tokens      INTEGER NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    cost_usd          NUMERIC(24, 12) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    latency_ms        INTEGER NOT NULL DEFAULT 0,
    status            TEXT NOT NULL,
    http_status       INTEGER NOT NULL,
    error_code        TEXT,
    streamed          BOOLEAN NOT NULL DEFAULT false,
    cached            BOOLEAN NOT NULL DEFAULT false,
    budget_month      CHAR(6) NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX usage_ledger_project_time ON usage_ledger (project_id, created_at);
CREATE INDEX usage_ledger_project_month ON usage_ledger (project_id, budget_month);

-- Append-only, hash-chained: hash = sha256(prev_hash || canonical(row)), computed by the
-- writer under an advisory lock; `bradax audit verify` recomputes the chain.
CREATE TABLE audit_log (
    id          BIGINT PRIMARY KEY,
    occurred_at TIMESTAMPTZ NOT NULL,
    event       TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    project_id  TEXT,
    actor       TEXT,
    request_id  TEXT,
    reason      TEXT,
    details     TEXT NOT NULL DEFAULT '{}',
    prev_hash   BYTEA NOT NULL,
    hash        BYTEA NOT NULL
);
CREATE INDEX audit_log_project ON audit_log (project_id, occurred_at);

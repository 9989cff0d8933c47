-- usage_ledger partitioned by budget month (LIST, one partition per YYYYMM: usage_ledger_YYYYMM).
--
-- A partitioned table's primary key must hold the partition key, so the key becomes
-- (request_id, budget_month). It still makes a request id's row unique: every record of a
-- request (the settled one, the reconciler's intent at its bound, a deferred settle's direct
-- write) carries the budget month fixed at admission, so a duplicate always lands in the same
-- partition and ON CONFLICT (request_id, budget_month) DO NOTHING skips it.
--
-- The existing table is converted in this migration's transaction: renamed, copied into the
-- new partitions (one per month it holds, plus the current and the next month), dropped.
-- Writers wait on its lock meanwhile and retry their batch afterwards; nothing is lost or
-- counted twice (the rollup triggers are created after the copy, on the new table).
-- The writer creates a month's partition before its first row (usage_ledger_partition), and
-- the drainer keeps the next month's ready.

ALTER TABLE usage_ledger RENAME TO usage_ledger_unpartitioned;
ALTER TABLE usage_ledger_unpartitioned RENAME CONSTRAINT usage_ledger_pkey
    TO usage_ledger_unpartitioned_pkey;
DROP INDEX usage_ledger_project_time;
DROP INDEX usage_ledger_project_month;

CREATE TABLE usage_ledger (
    request_id        TEXT NOT NULL,
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
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, budget_month)
) PARTITION BY LIST (budget_month);
CREATE INDEX usage_ledger_project_time ON usage_ledger (project_id, created_at);
CREATE INDEX usage_ledger_project_month ON usage_ledger (project_id, budget_month);

-- Create the partition of a budget month if it is missing; true if this call created it.
-- Serialised by a transaction lock so concurrent writers do not race on the catalog.
-- SECURITY DEFINER: a runtime role that does not own usage_ledger may still create the
-- partitions (as the owner, the role that ran the migrations; in its schema), nothing else.
CREATE FUNCTION usage_ledger_partition(month TEXT) RETURNS BOOLEAN LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF month !~ '^[0-9]{4}(0[1-9]|1[0-2])$' THEN
        RAISE EXCEPTION 'budget month % is not YYYYMM', month USING ERRCODE = '22023';
    END IF;
    IF to_regclass('usage_ledger_' || month) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('usage_ledger_partition'));
    IF to_regclass('usage_ledger_' || month) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF usage_ledger FOR VALUES IN (%L)',
        'usage_ledger_' || month,
        month
    );
    RETURN true;
END
$$;

SELECT usage_ledger_partition(month)
FROM (
    SELECT DISTINCT budget_month::TEXT AS month FROM usage_ledger_unpartitioned
    UNION SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')
    UNION SELECT to_char((now() AT TIME ZONE 'UTC') + interval '1 month', 'YYYYMM')
) AS months
ORDER BY month;

INSERT INTO usage_ledger (
    request_id, project_id, key_id, model, upstream_model, prompt_tokens, completion_tokens,
    total_tokens, cost_usd, latency_ms, status, http_status, error_code, streamed, cached,
    budget_month, created_at, recorded_at
)
SELECT request_id, project_id, key_id, model, upstream_model, prompt_tokens, completion_tokens,
       total_tokens, cost_usd, latency_ms, status, http_status, error_code, streamed, cached,
       budget_month, created_at, recorded_at
FROM usage_ledger_unpartitioned;

DROP TABLE usage_ledger_unpartitioned;

-- The rollup triggers of 0004, on the new table (the copied rows are in the rollup already).
CREATE TRIGGER usage_hourly_insert AFTER INSERT ON usage_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_apply();
CREATE TRIGGER usage_hourly_update AFTER UPDATE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_apply();
CREATE TRIGGER usage_hourly_delete AFTER DELETE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_apply();

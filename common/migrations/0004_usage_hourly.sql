-- Hourly rollup of the usage ledger: one row per (project, UTC hour, model, budget month)
-- with the sums GET /metrics and the budget rebuild need, so neither scans raw rows.
--
-- The ledger writer (common/ledger.py `write`, used by the drainer and the deferred
-- settles) adds the rows it actually inserted (INSERT ... ON CONFLICT DO NOTHING RETURNING)
-- in the same transaction, after all its ledger rows: a duplicate adds nothing, and a batch
-- rolled back (then dead-lettered row by row) leaves nothing. It marks its transaction
-- with bradax.rollup_kept so the trigger below does not count those rows a second time.
-- Any other change to the ledger (an operator re-inserting a fixed dead letter, a
-- correction, a deletion) is applied by the statement-level triggers, from the transition
-- tables, in the transaction of that change.
-- Groups are applied in key order (byte order, as the writer sorts them), so concurrent
-- writers lock rollup rows in one order and cannot deadlock on them.

CREATE TABLE usage_hourly (
    project_id        TEXT NOT NULL,
    hour              TIMESTAMPTZ NOT NULL,
    model             TEXT NOT NULL,
    budget_month      CHAR(6) NOT NULL,
    requests          BIGINT NOT NULL DEFAULT 0,
    successful        BIGINT NOT NULL DEFAULT 0,
    failed            BIGINT NOT NULL DEFAULT 0,
    cached            BIGINT NOT NULL DEFAULT 0,
    -- requests not served from the cache: the latency average is latency_ms_sum / timed
    timed             BIGINT NOT NULL DEFAULT 0,
    latency_ms_sum    BIGINT NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd          NUMERIC(30, 12) NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, hour, model, budget_month)
);
CREATE INDEX usage_hourly_project_month ON usage_hourly (project_id, budget_month);

CREATE FUNCTION usage_hourly_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND current_setting('bradax.rollup_kept', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO usage_hourly AS h (
            project_id, hour, model, budget_month, requests, successful, failed, cached,
            timed, latency_ms_sum, prompt_tokens, completion_tokens, cost_usd
        )
        SELECT project_id, date_trunc('hour', created_at, 'UTC'), model, budget_month,
               -count(*),
               -count(*) FILTER (WHERE status IN ('success', 'usage_unverified')),
               -count(*) FILTER (WHERE status NOT IN ('success', 'usage_unverified')),
               -count(*) FILTER (WHERE cached),
               -count(*) FILTER (WHERE NOT cached),
               -coalesce(sum(latency_ms) FILTER (WHERE NOT cached), 0),
               -sum(prompt_tokens), -sum(completion_tokens), -sum(cost_usd)
        FROM old_rows
        GROUP BY 1, 2, 3, 4
        ORDER BY project_id COLLATE "C", 2, model COLLATE "C", budget_month
        ON CONFLICT (project_id, hour, model, budget_month) DO UPDATE SET
            requests = h.requests + EXCLUDED.requests,
            successful = h.successful + EXCLUDED.successful,
            failed = h.failed + EXCLUDED.failed,
            cached = h.cached + EXCLUDED.cached,
            timed = h.timed + EXCLUDED.timed,
            latency_ms_sum = h.latency_ms_sum + EXCLUDED.latency_ms_sum,
            prompt_tokens = h.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = h.completion_tokens + EXCLUDED.completion_tokens,
            cost_usd = h.cost_usd + EXCLUDED.cost_usd;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO usage_hourly AS h (
            project_id, hour, model, budget_month, requests, successful, failed, cached,
            timed, latency_ms_sum, prompt_tokens, completion_tokens, cost_usd
        )
        SELECT project_id, date_trunc('hour', created_at, 'UTC'), model, budget_month,
               count(*),
               count(*) FILTER (WHERE status IN ('success', 'usage_unverified')),
               count(*) FILTER (WHERE status NOT IN ('success', 'usage_unverified')),
               count(*) FILTER (WHERE cached),
               count(*) FILTER (WHERE NOT cached),
               coalesce(sum(latency_ms) FILTER (WHERE NOT cached), 0),
               sum(prompt_tokens), sum(completion_tokens), sum(cost_usd)
        FROM new_rows
        GROUP BY 1, 2, 3, 4
        ORDER BY project_id COLLATE "C", 2, model COLLATE "C", budget_month
        ON CONFLICT (project_id, hour, model, budget_month) DO UPDATE SET
            requests = h.requests + EXCLUDED.requests,
            successful = h.successful + EXCLUDED.successful,
            failed = h.failed + EXCLUDED.failed,
            cached = h.cached + EXCLUDED.cached,
            timed = h.timed + EXCLUDED.timed,
            latency_ms_sum = h.latency_ms_sum + EXCLUDED.latency_ms_sum,
            prompt_tokens = h.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = h.completion_tokens + EXCLUDED.completion_tokens,
            cost_usd = h.cost_usd + EXCLUDED.cost_usd;
    END IF;
    RETURN NULL;
END
$$;

-- The triggers first: they lock usage_ledger against writers until this migration commits,
-- so every row is counted once, by the backfill or by a trigger.
CREATE TRIGGER usage_hourly_insert AFTER INSERT ON usage_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_apply();
CREATE TRIGGER usage_hourly_update AFTER UPDATE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_apply();
CREATE TRIGGER usage_hourly_delete AFTER DELETE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_apply();

INSERT INTO usage_hourly (
    project_id, hour, model, budget_month, requests, successful, failed, cached,
    timed, latency_ms_sum, prompt_tokens, completion_tokens, cost_usd
)
SELECT project_id, date_trunc('hour', created_at, 'UTC'), model, budget_month,
       count(*),
       count(*) FILTER (WHERE status IN ('success', 'usage_unverified')),
       count(*) FILTER (WHERE status NOT IN ('success', 'usage_unverified')),
       count(*) FILTER (WHERE cached),
       count(*) FILTER (WHERE NOT cached),
       coalesce(sum(latency_ms) FILTER (WHERE NOT cached), 0),
       sum(prompt_tokens), sum(completion_tokens), sum(cost_usd)
FROM usage_ledger
GROUP BY 1, 2, 3, 4;

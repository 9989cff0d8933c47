-- Ledger records PostgreSQL refused (or that could not be read), kept with the reason so the
-- drainer never stops on one bad row. Nothing is lost: each entry is the record as it was in
-- the ledger stream; an operator can fix it and insert it into usage_ledger.
CREATE TABLE ledger_dead_letters (
    stream_id  TEXT PRIMARY KEY,
    request_id TEXT,
    record     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    failed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_dead_letters_request ON ledger_dead_letters (request_id);

-- What the broker does with personal data in a project's answers: redact, block or off.
-- NULL means the default: redact for projects under 'lgpd', off for the others.
ALTER TABLE projects
    ADD COLUMN output_pii_action TEXT
    CHECK (output_pii_action IS NULL OR output_pii_action IN ('redact', 'block', 'off'));

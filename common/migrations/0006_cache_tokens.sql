-- Prompt tokens read from and written to a provider's prompt cache, priced apart from the
-- rest of the prompt (Anthropic, Bedrock, Gemini and OpenAI report them): part of
-- prompt_tokens, never more than it.
ALTER TABLE usage_ledger
    ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0),
    ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0);
ALTER TABLE usage_ledger
    ADD CONSTRAINT usage_ledger_cache_within_prompt
    CHECK (cache_read_tokens + cache_write_tokens <= prompt_tokens);

-- Content: per-bot LLM API keys, duplicate refusals that generate_replies redrafts, and post length
-- as X counts it.

-- A bot's own key for the LLM (its llm_base_url, or the global one), Fernet-encrypted with
-- TOKEN_ENCRYPTION_KEY like the OAuth tokens. Write-only through the API.
ALTER TABLE bots ADD COLUMN llm_api_key_enc bytea;

-- Why a `failed` reply failed when a new draft can fix it: X refused a fresh post as duplicate
-- content (the same text went out before, e.g. to another mention). generate_replies redrafts
-- such a reply with a hint to vary the text, at most a few times (redraft_count).
ALTER TABLE post_replies
    ADD COLUMN failure_kind text CHECK (failure_kind IN ('duplicate_content')),
    ADD COLUMN redraft_count integer NOT NULL DEFAULT 0 CHECK (redraft_count >= 0);

-- X counts 280 *weighted* characters: a link costs 23 whatever its length and an emoji sequence 2, so
-- a valid post can hold far more than 280 code points. The row check is a sanity bound only;
-- xbot.post_text decides what is a valid post.
ALTER TABLE post_replies DROP CONSTRAINT post_replies_text_check;
ALTER TABLE post_replies ADD CONSTRAINT post_replies_text_length CHECK (length(text) <= 10000);

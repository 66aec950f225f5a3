-- Reply policy (issue 13): who a bot answers, how often, what it may say, and what it costs.

-- One policy per bot, validated by xbot.reply_policy.ReplyPolicy; no row = the defaults.
CREATE TABLE bot_reply_policies (
    bot_id      text PRIMARY KEY REFERENCES bots (id) ON DELETE CASCADE,
    policy      jsonb NOT NULL CHECK (jsonb_typeof(policy) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Authors who sent an opt-out word ("stop"): the bot never answers them again (remembered).
CREATE TABLE bot_opted_out_authors (
    bot_id      text NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    x_user_id   text NOT NULL,
    word        text NOT NULL,
    x_post_id   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, x_user_id)
);

-- Why a mention is not answered, as a short code for counting (the text is in skipped_reason).
-- NULL with a skipped_reason = the backlog policy of pull_mentions (older rows).
ALTER TABLE pulled_posts ADD COLUMN skipped_code text;
CREATE INDEX pulled_posts_skipped ON pulled_posts (bot_id, skipped_code) WHERE skipped_reason IS NOT NULL;

-- A draft the output filter refused (link, foreign @mention, cashtag, banned word) is kept with
-- the reason in error_message and never posted.
ALTER TABLE post_replies DROP CONSTRAINT post_replies_status_check;
ALTER TABLE post_replies ADD CONSTRAINT post_replies_status_check
    CHECK (status IN ('pending_approval', 'approved', 'rejected', 'posting', 'posted', 'dry_run',
                      'failed', 'rejected_by_filter'));

-- Tokens spent on a draft (openai `usage`, gate call included) and the X spend estimated for it.
ALTER TABLE post_replies
    ADD COLUMN tokens_in integer CHECK (tokens_in >= 0),
    ADD COLUMN tokens_out integer CHECK (tokens_out >= 0),
    ADD COLUMN x_cost_usd numeric(12, 6) CHECK (x_cost_usd >= 0);

-- Every LLM token a bot spent per UTC day (drafts, gate calls, failed drafts): the daily budget.
CREATE TABLE bot_llm_usage (
    bot_id      text NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    day         date NOT NULL,
    tokens_in   bigint NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
    tokens_out  bigint NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
    calls       integer NOT NULL DEFAULT 0 CHECK (calls >= 0),
    PRIMARY KEY (bot_id, day)
);

-- What the caps count, per mention: today's drafts of a bot, and its drafts per author and per
-- conversation (through pulled_posts).
CREATE INDEX post_replies_bot_created ON post_replies (bot_id, created_at);
CREATE INDEX pulled_posts_bot_author ON pulled_posts (bot_id, author_x_user_id);
CREATE INDEX pulled_posts_bot_conversation ON pulled_posts (bot_id, conversation_id);

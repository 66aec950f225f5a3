-- Quota ledger: X's 24-hour and app-wide windows and usage caps next to the per-bot endpoint
-- windows of rate_limit_tracking; slots reserved before a request so concurrent attempts cannot
-- both spend the last one; the backlog policy's skipped mentions.

-- The per-bot endpoint window (`x-rate-limit-*`) stays in rate_limit_tracking. In-flight
-- reservations count against it until `reserved_until`, after which a crashed reserver's slots
-- are forgotten. `app_key` names the X app (X_CLIENT_ID) the bot last spoke through, so the
-- app-wide windows that also bind this bot can be found without the worker's settings.
ALTER TABLE rate_limit_tracking
    ADD COLUMN reserved        integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    ADD COLUMN reserved_until  timestamptz,
    ADD COLUMN app_key         text;

CREATE TABLE quota_windows (
    scope           text NOT NULL CHECK (scope IN ('bot', 'app')),
    -- The bot id (scope bot) or the X app's client id (scope app): app windows are shared.
    owner           text NOT NULL,
    endpoint        text NOT NULL,
    window_kind     text NOT NULL CHECK (window_kind IN ('15m', '24h', 'month')),
    -- NULL when X did not say (a usage cap, or an app window inferred from a 429).
    limit_total     integer CHECK (limit_total >= 0),
    remaining       integer NOT NULL CHECK (remaining >= 0),
    reset_at        timestamptz NOT NULL,
    reserved        integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    reserved_until  timestamptz,
    -- Where the numbers come from: x-user-limit-24hour, x-app-limit-24hour (headers), usage-capped
    -- (X's problem), 429 (a refusal while every window X described had room).
    source          text NOT NULL,
    -- X's words when it answered with a usage-capped problem (or why the window is closed).
    reason          text,
    bot_id          text REFERENCES bots (id) ON DELETE CASCADE,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, owner, endpoint, window_kind),
    CONSTRAINT owner_matches_scope CHECK (
        (scope = 'bot' AND bot_id = owner) OR (scope = 'app' AND bot_id IS NULL)
    )
);
CREATE INDEX quota_windows_bot ON quota_windows (bot_id) WHERE bot_id IS NOT NULL;

-- Mentions the backlog policy chose not to answer (too old), kept so an operator can see why.
ALTER TABLE pulled_posts ADD COLUMN skipped_reason text;

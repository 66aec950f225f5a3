-- Discord webhook URLs encrypted at rest, and an outbox for the notifications sent to them.

-- The webhook URL's last path segment is a bearer secret: stored Fernet-encrypted (the key,
-- TOKEN_ENCRYPTION_KEY, never reaches the database), with a masked form for the API to show.
-- Existing plain values are encrypted and cleared by the API and the worker at start
-- (`xbot.bots.encrypt_plain_webhook_urls`); the plain column is no longer written.
ALTER TABLE bots
    ADD COLUMN discord_webhook_url_enc  bytea,
    ADD COLUMN discord_webhook_url_hint text;

-- One row per notification: enqueued once (unique per kind and reply), sent by whichever worker
-- claims it (FOR UPDATE SKIP LOCKED), retried with backoff, then `sent` or `failed` with a reason.
CREATE TABLE notification_outbox (
    id               bigserial PRIMARY KEY,
    bot_id           text NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('discord_reply')),
    reply_id         bigint NOT NULL REFERENCES post_replies (id) ON DELETE CASCADE,
    -- The webhook's JSON body. The URL is read from the bot at send time, never copied here.
    payload          jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    -- Every try, and the tries that failed (5xx, network): the bound applies to the latter.
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    failures         integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, reply_id)
);
CREATE INDEX notification_outbox_due ON notification_outbox (bot_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX notification_outbox_bot ON notification_outbox (bot_id, id DESC);

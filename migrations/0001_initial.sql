-- Initial schema: bots, tokens, task definitions and executions, logs, rate limits,
-- pulled posts, X users, replies and app settings.

CREATE TABLE bots (
    id                  text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    x_user_id           text,
    x_username          text,
    persona_prompt      text NOT NULL DEFAULT '',
    plan_tier           text NOT NULL DEFAULT 'basic'
                        CHECK (plan_tier IN ('free', 'basic', 'pro', 'enterprise')),
    dry_run             boolean NOT NULL DEFAULT false,
    approval_required   boolean NOT NULL DEFAULT false,
    discord_webhook_url text,
    llm_model           text,
    llm_base_url        text,
    llm_temperature     double precision CHECK (llm_temperature BETWEEN 0 AND 2),
    llm_max_tokens      integer CHECK (llm_max_tokens > 0),
    -- Cursor for pull_mentions: the newest mention id already stored.
    mentions_since_id   text,
    auth_state          text NOT NULL DEFAULT 'ok'
                        CHECK (auth_state IN ('ok', 'needs_reauthorization')),
    -- What the operator asked for; the API heals a workflow that should run but does not.
    scheduler_enabled   boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- OAuth 2.0 user tokens, encrypted at rest (Fernet, key from TOKEN_ENCRYPTION_KEY).
CREATE TABLE bot_tokens (
    bot_id              text PRIMARY KEY REFERENCES bots (id) ON DELETE CASCADE,
    access_token_enc    bytea NOT NULL,
    refresh_token_enc   bytea,
    expires_at          timestamptz,
    scope               text,
    -- Grows on every refresh so a concurrent refresher can tell it lost the race.
    version             integer NOT NULL DEFAULT 1,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bot_banned_users (
    bot_id      text NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    x_user_id   text NOT NULL,
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, x_user_id)
);

CREATE TABLE bot_task_definitions (
    id                        bigserial PRIMARY KEY,
    bot_id                    text NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    task_type                 text NOT NULL CHECK (task_type ~ '^[a-z][a-z0-9_]{0,63}$'),
    name                      text,
    interval_minutes          integer CHECK (interval_minutes > 0),
    interval_seconds          integer CHECK (interval_seconds > 0),
    cron_expression           text CHECK (length(cron_expression) BETWEEN 1 AND 200),
    jitter_seconds            integer NOT NULL DEFAULT 0 CHECK (jitter_seconds >= 0),
    priority                  integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    dependencies              bigint[] NOT NULL DEFAULT '{}',
    max_retries               integer NOT NULL DEFAULT 3 CHECK (max_retries BETWEEN 0 AND 100),
    retry_delay_minutes       double precision NOT NULL DEFAULT 1 CHECK (retry_delay_minutes > 0),
    retry_backoff_coefficient double precision NOT NULL DEFAULT 2
                              CHECK (retry_backoff_coefficient BETWEEN 1 AND 10),
    max_retry_delay_minutes   double precision NOT NULL DEFAULT 60 CHECK (max_retry_delay_minutes > 0),
    timeout_seconds           integer NOT NULL DEFAULT 300 CHECK (timeout_seconds BETWEEN 1 AND 86400),
    error_threshold           integer NOT NULL DEFAULT 5 CHECK (error_threshold > 0),
    consecutive_failures      integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    rate_limit_endpoint       text,
    min_rate_limit_remaining  integer NOT NULL DEFAULT 0 CHECK (min_rate_limit_remaining >= 0),
    lock_key                  text CHECK (length(lock_key) BETWEEN 1 AND 200),
    allow_overlap             boolean NOT NULL DEFAULT false,
    is_active                 boolean NOT NULL DEFAULT true,
    is_paused                 boolean NOT NULL DEFAULT false,
    next_planned_run_at       timestamptz,
    last_successful_run_at    timestamptz,
    config                    jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(config) = 'object'),
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    -- Exactly one way of saying when it runs.
    CONSTRAINT one_schedule CHECK (num_nonnulls(interval_minutes, interval_seconds, cron_expression) = 1)
);
CREATE INDEX bot_task_definitions_bot_active ON bot_task_definitions (bot_id) WHERE is_active;

CREATE TABLE bot_task_executions (
    id                    bigserial PRIMARY KEY,
    bot_id                text NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    task_definition_id    bigint REFERENCES bot_task_definitions (id) ON DELETE SET NULL,
    task_type             text NOT NULL,
    status                text NOT NULL
                          CHECK (status IN ('started', 'retrying', 'completed', 'failed', 'cancelled', 'skipped')),
    due_at                timestamptz,
    started_at            timestamptz NOT NULL DEFAULT now(),
    completed_at          timestamptz,
    duration_ms           integer CHECK (duration_ms >= 0),
    attempt_number        integer NOT NULL DEFAULT 1 CHECK (attempt_number >= 1),
    rate_limit_remaining  integer,
    worker_id             text,
    -- workflow id / run id / activity id / attempt: one row per Temporal activity attempt.
    execution_key         text UNIQUE,
    result_data           jsonb,
    error_message         text,
    error_stack           text
);
CREATE INDEX bot_task_executions_bot_started ON bot_task_executions (bot_id, started_at DESC, id DESC);
CREATE INDEX bot_task_executions_definition ON bot_task_executions (task_definition_id, started_at DESC);
CREATE INDEX bot_task_executions_open ON bot_task_executions (bot_id) WHERE status = 'started';

CREATE TABLE logs (
    id                  bigserial PRIMARY KEY,
    bot_id              text REFERENCES bots (id) ON DELETE CASCADE,
    level               text NOT NULL CHECK (level IN ('debug', 'info', 'warn', 'error')),
    content             text NOT NULL,
    context             jsonb,
    task_execution_id   bigint REFERENCES bot_task_executions (id) ON DELETE SET NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX logs_bot_created ON logs (bot_id, created_at DESC, id DESC);

CREATE TABLE rate_limit_tracking (
    bot_id        text NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    endpoint      text NOT NULL,
    limit_total   integer NOT NULL CHECK (limit_total >= 0),
    remaining     integer NOT NULL CHECK (remaining >= 0),
    reset_at      timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, endpoint)
);

CREATE TABLE x_users (
    x_user_id           text PRIMARY KEY,
    username            text NOT NULL,
    name                text,
    description         text,
    profile_image_url   text,
    verified            boolean,
    protected           boolean,
    followers_count     integer,
    following_count     integer,
    tweet_count         integer,
    raw                 jsonb,
    -- NULL until a full profile refresh (user_fetch) stored it.
    fetched_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX x_users_fetched ON x_users (fetched_at NULLS FIRST);

CREATE TABLE pulled_posts (
    id                    bigserial PRIMARY KEY,
    bot_id                text NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    x_post_id             text NOT NULL,
    author_x_user_id      text,
    conversation_id       text,
    in_reply_to_post_id   text,
    kind                  text NOT NULL DEFAULT 'mention' CHECK (kind IN ('mention', 'context', 'own')),
    text                  text NOT NULL,
    posted_at             timestamptz,
    raw                   jsonb,
    pulled_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bot_id, x_post_id)
);
CREATE INDEX pulled_posts_bot_kind ON pulled_posts (bot_id, kind, id);

CREATE TABLE post_replies (
    id                      bigserial PRIMARY KEY,
    bot_id                  text NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    pulled_post_id          bigint NOT NULL REFERENCES pulled_posts (id) ON DELETE CASCADE,
    in_reply_to_x_post_id   text NOT NULL,
    status                  text NOT NULL
                            CHECK (status IN ('pending_approval', 'approved', 'rejected', 'posting',
                                              'posted', 'dry_run', 'failed')),
    text                    text CHECK (length(text) <= 280),
    llm_model               text,
    error_message           text,
    -- Intent recorded before the X call, result after: see "Exactly once" in the README.
    post_intent_at          timestamptz,
    posted_x_post_id        text,
    posted_at               timestamptz,
    discord_notified_at     timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bot_id, pulled_post_id)
);
CREATE INDEX post_replies_bot_status ON post_replies (bot_id, status, id);

CREATE TABLE app_settings (
    key         text PRIMARY KEY,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO app_settings (key, value) VALUES ('scheduler-new-task-lead-seconds', '60'::jsonb);

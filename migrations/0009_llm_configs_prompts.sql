-- Stored LLM configurations and prompt templates, chosen per task definition
-- (`config.llm_config_id`, `config.prompt_id`, `config.vision_config`), and images of mentions.

-- An OpenAI-compatible endpoint and model. `base_url` NULL: OPENAI_BASE_URL. The API key is
-- Fernet-encrypted with TOKEN_ENCRYPTION_KEY like the bots' llm_api_key, and never returned.
CREATE TABLE llm_configs (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    base_url     text CHECK (length(base_url) <= 2000),
    model        text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    temperature  double precision CHECK (temperature >= 0 AND temperature <= 2),
    max_tokens   integer CHECK (max_tokens BETWEEN 1 AND 100000),
    api_key_enc  bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- A system text with named placeholders ({persona}, {author}, {thread}, {mention},
-- {image_descriptions}); `version` grows on every edit of the text.
CREATE TABLE prompt_templates (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    system_text  text NOT NULL CHECK (length(system_text) BETWEEN 1 AND 20000),
    version      integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Which template (and version) and which stored configuration wrote a draft (the model is the
-- existing llm_model). No foreign keys: the record outlives a template or configuration deleted later.
ALTER TABLE post_replies
    ADD COLUMN prompt_template_id bigint,
    ADD COLUMN prompt_version integer,
    ADD COLUMN llm_config_id bigint;

-- Images of a post as X sent them (`includes.media` of its `attachments.media_keys`: media_key,
-- type, url, preview_image_url, alt_text), and what the vision model said about them: stored once,
-- so a retried task does not pay for the same description twice. `vision_error`: why they could not
-- be described (the reply was then written from the text alone).
ALTER TABLE pulled_posts
    ADD COLUMN media jsonb,
    ADD COLUMN image_description text,
    ADD COLUMN image_description_model text,
    ADD COLUMN vision_error text,
    ADD COLUMN described_at timestamptz;

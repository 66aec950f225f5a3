-- Connecting a bot's X account from the dashboard (OAuth 2.0 Authorization Code with PKCE).

-- One row per started authorization: the `state` is the callback's only credential, so only its
-- SHA-256 is stored; the PKCE code verifier is Fernet-encrypted (TOKEN_ENCRYPTION_KEY). A row is
-- deleted when its callback arrives (single use) and refused after `expires_at` (10 minutes).
CREATE TABLE oauth_connect_requests (
    state_hash        bytea PRIMARY KEY CHECK (length(state_hash) = 32),
    bot_id            text NOT NULL REFERENCES bots (id) ON DELETE CASCADE,
    code_verifier_enc bytea NOT NULL,
    redirect_uri      text NOT NULL,
    scopes            text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL
);

CREATE INDEX oauth_connect_requests_expires ON oauth_connect_requests (expires_at);

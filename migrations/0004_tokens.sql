-- Token refresh that cannot lose the new pair (xbot/tokens.py).
-- refresh_state: 'in_flight' while one refresher holds the lease and talks to X; 'answer_lost' when a
-- refresh request left but its answer never arrived, so the stored refresh token may be spent at X.
ALTER TABLE bot_tokens
    ADD COLUMN refresh_state       text NOT NULL DEFAULT 'idle'
                                   CHECK (refresh_state IN ('idle', 'in_flight', 'answer_lost')),
    -- Which refresher claimed the row last: a save retried after an unclear commit recognises its own.
    ADD COLUMN refresh_claim       uuid,
    ADD COLUMN refresh_lease_until timestamptz,
    -- What went wrong with the last refresh, for operators; never a token.
    ADD COLUMN refresh_note        text;

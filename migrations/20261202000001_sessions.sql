-- One row per login or registration. Tokens name their session (`sid`);
-- a change of password, or of email to another address, revokes the
-- user's other sessions. Rows older than the token lifetime are deleted
-- at the user's next login.
CREATE TABLE sessions (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE INDEX sessions_user ON sessions (user_id);
-- What every replica loads when it starts listening: the revoked sessions
-- young enough to have live tokens.
CREATE INDEX sessions_revoked ON sessions (created_at) WHERE revoked_at IS NOT NULL;

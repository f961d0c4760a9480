-- Signed-in writes sent with an Idempotency-Key (src/domain/idempotent.rs).
-- A row is written in its write's own transaction, with the answer, so it
-- exists exactly when the write committed; a retry with the same key finds
-- it and gets the answer again. Rows older than IDEMPOTENCY_KEY_RETENTION
-- are taken over by a new call with their key and deleted when their user
-- next writes with a key.
CREATE TABLE idempotency_keys (
    user_id        bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    rpc            text        NOT NULL,
    key            text        NOT NULL,
    -- SHA-256 of the request message: a key sent again with another
    -- request is refused, not answered with the first one's answer.
    request_digest bytea       NOT NULL,
    -- The answer message (protobuf), whatever protocol asked: a retry over
    -- another protocol gets the same answer in its own.
    answer         bytea       NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, rpc, key)
);

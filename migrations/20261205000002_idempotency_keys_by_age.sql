-- Expired keys are deleted oldest first, a few by each keyed write, apart
-- from the write's own transaction (src/domain/idempotent.rs); this index
-- finds them without a scan. (request_digest is an HMAC-SHA-256 keyed by
-- the token secret: a request may hold a new password.)
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

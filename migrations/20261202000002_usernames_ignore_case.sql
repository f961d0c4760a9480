-- User names are unique without regard to case, as emails already are:
-- `Jake` and `jake` would otherwise be two people a reader cannot tell
-- apart. Profile lookups stay exact (users_username_key).
--
-- Existing names that differ only in case from an older account's are
-- renamed: the oldest account keeps its name, each younger twin gets
-- "<name>-<its id>" (longer still in the unlikely case that is taken too),
-- and the migration raises a WARNING per rename naming both, so the
-- operator can tell the people concerned. Nothing else is changed: their
-- articles, comments and follows stay theirs.
DO $$
DECLARE
    twin record;
    renamed text;
BEGIN
    FOR twin IN
        SELECT id, username FROM (
            SELECT id, username, row_number() OVER (PARTITION BY lower(username) ORDER BY id) AS rank
            FROM users
        ) ranked
        WHERE rank > 1
        ORDER BY id
    LOOP
        renamed := twin.username || '-' || twin.id;
        WHILE EXISTS (SELECT 1 FROM users WHERE lower(username) = lower(renamed)) LOOP
            renamed := renamed || '-' || twin.id;
        END LOOP;
        UPDATE users SET username = renamed WHERE id = twin.id;
        RAISE WARNING 'user % was named "%", which differs only in case from an older account''s; renamed to "%"',
            twin.id, twin.username, renamed;
    END LOOP;
END
$$;

CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));

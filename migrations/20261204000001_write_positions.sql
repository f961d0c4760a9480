-- Each writer's last commit position, for read-your-writes on read
-- replicas (src/postgres/replicas.rs), read and written on the primary
-- only. Unlogged: none of it goes to the WAL or the replicas. A crash of
-- the primary empties it; a writer's reads may then come from a replica
-- that has not replayed their last writes before the crash, within
-- READ_MAX_LAG.
CREATE UNLOGGED TABLE write_positions (
    user_id bigint PRIMARY KEY,
    lsn bigint NOT NULL
);

-- A heartbeat the read replicas' pollers commit on the primary at most once
-- per poll interval (src/postgres/replicas.rs says why).
CREATE TABLE read_heartbeat (
    id int PRIMARY KEY CHECK (id = 1),
    at timestamptz NOT NULL
);
INSERT INTO read_heartbeat VALUES (1, '-infinity');

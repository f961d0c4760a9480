-- Fewer NOTIFYs on the write path. PostgreSQL serialises the commits of
-- every transaction that sent a NOTIFY on one lock, held across the WAL
-- flush: one per favorite, comment or follow cost those writes their group
-- commit.

-- Workers are woken by the process that enqueued, after its commit: its
-- own workers in memory, the other replicas' by one coalesced NOTIFY at a
-- time (see src/postgres/signal.rs). Jobs enqueued any other way are found
-- by the workers' poll.
DROP TRIGGER jobs_wake ON jobs;
DROP FUNCTION jobs_wake();

-- One NOTIFY per statement that inserted notifications, naming every
-- recipient (comma-separated, a few hundred per payload to stay under the
-- 8000-byte limit), instead of one per row.
DROP TRIGGER notifications_wake ON notifications;
CREATE OR REPLACE FUNCTION notifications_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('conduit_notifications', string_agg(rid::text, ','))
    FROM (SELECT rid, (row_number() OVER (ORDER BY rid) - 1) / 300 AS chunk
          FROM (SELECT DISTINCT recipient_id AS rid FROM inserted) AS d) AS c
    GROUP BY chunk;
    RETURN NULL;
END $$;
CREATE TRIGGER notifications_wake AFTER INSERT ON notifications REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION notifications_wake();

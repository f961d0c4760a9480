-- The job queue and the notifications it produces.

-- Work done after a write, outside the request: enqueued by the writing
-- transaction itself (so only committed writes have jobs), claimed by
-- workers under a lease. A job that succeeds is deleted in the transaction
-- that does its work; one that fails too often stays as 'dead'.
CREATE TABLE jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL DEFAULT '{}',
    state        text        NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'dead')),
    -- Attempts started, this one included while running.
    attempts     integer     NOT NULL DEFAULT 0,
    -- This job's own limit of attempts; NULL: the workers' JOB_MAX_ATTEMPTS.
    max_attempts integer     CHECK (max_attempts > 0),
    -- Queued: not before this time (retries back off). Running: the lease's end.
    run_at       timestamptz NOT NULL DEFAULT now(),
    locked_by    text,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
)
-- Every job is inserted, updated and deleted: vacuum after every few
-- thousand dead rows, not a fraction of the table, or claims slow down
-- scanning dead index entries (a third of the throughput, measured).
WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000, autovacuum_vacuum_cost_delay = 0);
-- Workers claim the oldest due jobs; expired leases are found by the same time column.
CREATE INDEX jobs_queued_idx ON jobs (run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_running_idx ON jobs (run_at) WHERE state = 'running';
CREATE INDEX jobs_dead_idx ON jobs (id) WHERE state = 'dead';

-- Wakes the workers when the enqueuing transaction commits (NOTIFY is
-- delivered at commit, and only then); once per statement that inserted
-- anything (a repeated follow inserts no job and wakes no one).
CREATE FUNCTION jobs_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('conduit_jobs', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_wake AFTER INSERT ON jobs REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_wake();

-- Each user's notifications are numbered 1, 2, 3… in commit order: the
-- counter row is locked by the inserting transaction until it commits, so
-- a reader that has seen number n has seen every number below it. That is
-- what lets a watch stream resume after n without gaps.
CREATE TABLE notification_counters (
    user_id  bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    last_seq bigint NOT NULL
);

CREATE TABLE notifications (
    recipient_id bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seq          bigint      NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('follow', 'favorite', 'comment', 'article')),
    actor_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    article_id   bigint      REFERENCES articles (id) ON DELETE CASCADE,
    comment_id   integer     REFERENCES comments (id) ON DELETE CASCADE,
    -- The job that made it: a job's work commits once, so a recipient never
    -- gets two notifications from one job.
    job_id       bigint      NOT NULL,
    read_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (recipient_id, seq),
    UNIQUE (recipient_id, job_id)
);
CREATE INDEX notifications_unread_idx ON notifications (recipient_id, seq) WHERE read_at IS NULL;
CREATE INDEX notifications_actor_idx ON notifications (actor_id);
CREATE INDEX notifications_article_idx ON notifications (article_id) WHERE article_id IS NOT NULL;
CREATE INDEX notifications_comment_idx ON notifications (comment_id) WHERE comment_id IS NOT NULL;

-- Tells every replica's watchers whose notifications changed, at commit.
CREATE FUNCTION notifications_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('conduit_notifications', NEW.recipient_id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER notifications_wake AFTER INSERT ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_wake();

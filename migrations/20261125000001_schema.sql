-- The Conduit schema. Counts that lists show or page by (favorites of an
-- article, articles of an author or a tag, favorites of a user, all articles)
-- are kept on the row they describe so that reads never aggregate; the
-- triggers at the end keep them exact inside the writing transaction.

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text        NOT NULL,
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    bio           text        NOT NULL DEFAULT '',
    image         text        NOT NULL DEFAULT '',
    -- Articles written and favorited: the totals of `?author=` and `?favorited=`.
    articles_count  integer   NOT NULL DEFAULT 0,
    favorites_count integer   NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Names are compared exactly; emails without regard to case. The constraint
-- names are what the service turns into "has already been taken" errors.
CREATE UNIQUE INDEX users_username_key ON users (username);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE follows (
    follower_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    followee_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (follower_id, followee_id),
    CHECK (follower_id <> followee_id)
);

CREATE TABLE articles (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- "C" collation: plain byte order, so `slug LIKE 'x-%'` can use the index.
    slug            text        COLLATE "C" NOT NULL,
    title           text        NOT NULL,
    description     text        NOT NULL,
    body            text        NOT NULL,
    -- The tags as the author gave them, in order; `article_tags` indexes them.
    tag_list        text[]      NOT NULL DEFAULT '{}',
    author_id       bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    favorites_count integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX articles_slug_key ON articles (slug);
-- Every list is newest first; id breaks ties between equal timestamps.
CREATE INDEX articles_created_idx ON articles (created_at DESC, id DESC);
CREATE INDEX articles_author_created_idx ON articles (author_id, created_at DESC, id DESC);

CREATE TABLE tags (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text    NOT NULL UNIQUE,
    -- Articles carrying the tag: the total of `?tag=`; 0 hides it from /tags.
    article_count integer NOT NULL DEFAULT 0
);

-- One row: how many articles exist, the total of the unfiltered list.
CREATE TABLE article_totals (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    count    bigint  NOT NULL
);
INSERT INTO article_totals (count) VALUES (0);

-- `created_at` repeats the article's (which never changes) so that a page
-- of `?tag=` is a range of one index, newest first, however common the tag.
CREATE TABLE article_tags (
    tag_id     bigint      NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
    article_id bigint      NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tag_id, article_id)
);
CREATE INDEX article_tags_article_idx ON article_tags (article_id);
CREATE INDEX article_tags_page_idx ON article_tags (tag_id, created_at DESC, article_id DESC);

-- `article_created_at` repeats the article's, for the same reason as in
-- article_tags: a page of `?favorited=` is a range of one index.
CREATE TABLE favorites (
    user_id            bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    article_id         bigint      NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    article_created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, article_id)
);
CREATE INDEX favorites_article_idx ON favorites (article_id);
CREATE INDEX favorites_page_idx ON favorites (user_id, article_created_at DESC, article_id DESC);

CREATE TABLE comments (
    id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    article_id bigint      NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    author_id  bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX comments_article_idx ON comments (article_id, id);

-- Deletes cascading from a deleted article find no article row to update,
-- which is fine: the row is gone with its count.
CREATE FUNCTION favorites_count_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE articles SET favorites_count = favorites_count + 1 WHERE id = NEW.article_id;
        UPDATE users SET favorites_count = favorites_count + 1 WHERE id = NEW.user_id;
    ELSE
        UPDATE articles SET favorites_count = favorites_count - 1 WHERE id = OLD.article_id;
        UPDATE users SET favorites_count = favorites_count - 1 WHERE id = OLD.user_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER favorites_count_sync AFTER INSERT OR DELETE ON favorites
    FOR EACH ROW EXECUTE FUNCTION favorites_count_sync();

CREATE FUNCTION articles_count_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users SET articles_count = articles_count + 1 WHERE id = NEW.author_id;
        UPDATE article_totals SET count = count + 1;
    ELSE
        UPDATE users SET articles_count = articles_count - 1 WHERE id = OLD.author_id;
        UPDATE article_totals SET count = count - 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER articles_count_sync AFTER INSERT OR DELETE ON articles
    FOR EACH ROW EXECUTE FUNCTION articles_count_sync();

CREATE FUNCTION tag_count_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE tags SET article_count = article_count + 1 WHERE id = NEW.tag_id;
    ELSE
        UPDATE tags SET article_count = article_count - 1 WHERE id = OLD.tag_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tag_count_sync AFTER INSERT OR DELETE ON article_tags
    FOR EACH ROW EXECUTE FUNCTION tag_count_sync();

-- article_tags.created_at and favorites.article_created_at copy the
-- article's publication time; it must never change under them.
CREATE FUNCTION articles_created_at_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'articles.created_at cannot change';
END $$;
CREATE TRIGGER articles_created_at_fixed BEFORE UPDATE OF created_at ON articles
    FOR EACH ROW WHEN (OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION articles_created_at_fixed();

-- A user's biography and picture are NULL when unset (RealWorld v2 shows
-- them as null); '' is no longer a second spelling of "none".
ALTER TABLE users
    ALTER COLUMN bio DROP NOT NULL,
    ALTER COLUMN bio DROP DEFAULT,
    ALTER COLUMN image DROP NOT NULL,
    ALTER COLUMN image DROP DEFAULT;
UPDATE users SET bio = NULLIF(bio, ''), image = NULLIF(image, '') WHERE bio = '' OR image = '';
ALTER TABLE users
    ADD CONSTRAINT users_bio_not_empty CHECK (bio <> ''),
    ADD CONSTRAINT users_image_not_empty CHECK (image <> '');

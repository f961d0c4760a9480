//! Users in Postgres.

use sqlx::{PgConnection, PgPool};

use crate::domain::error::{ConduitError, ConduitResult, FieldError};

/// A user row as the account calls need it.
#[derive(Debug)]
pub(crate) struct UserRow {
    /// Id.
    pub(crate) id: i64,
    /// User name.
    pub(crate) username: String,
    /// Email address as given.
    pub(crate) email: String,
    /// argon2id PHC string.
    pub(crate) password_hash: String,
    /// Biography.
    pub(crate) bio: Option<String>,
    /// Picture URL.
    pub(crate) image: Option<String>,
}

/// Turns a unique violation into the field error of the value taken.
fn taken(e: sqlx::Error) -> ConduitError {
    if let sqlx::Error::Database(db) = &e {
        match db.constraint() {
            Some("users_username_key" | "users_username_lower_key") => {
                return ConduitError::Taken(vec![FieldError::new("user.username", "has already been taken")]);
            }
            Some("users_email_key") => {
                return ConduitError::Taken(vec![FieldError::new("user.email", "has already been taken")]);
            }
            _ => {}
        }
    }
    e.into()
}

/// The user with this email, compared without regard to case.
pub(crate) async fn by_email(db: &PgPool, email: &str) -> ConduitResult<Option<UserRow>> {
    Ok(sqlx::query_as!(
        UserRow,
        "SELECT id, username, email, password_hash, bio, image FROM users WHERE lower(email) = lower($1)",
        email
    )
    .fetch_optional(db)
    .await?)
}

/// The user with this id.
pub(crate) async fn by_id(db: &PgPool, id: i64) -> ConduitResult<Option<UserRow>> {
    Ok(sqlx::query_as!(UserRow, "SELECT id, username, email, password_hash, bio, image FROM users WHERE id = $1", id)
        .fetch_optional(db)
        .await?)
}

/// Fails with every unique value of these that another user has (both
/// compared without regard to case).
pub(crate) async fn ensure_free(
    db: &PgPool,
    username: Option<&str>,
    email: Option<&str>,
    except: Option<i64>,
) -> ConduitResult<()> {
    let row = sqlx::query!(
        r#"SELECT
             EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($1) AND id IS DISTINCT FROM $3) AS "username!",
             EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($2) AND id IS DISTINCT FROM $3) AS "email!""#,
        username,
        email,
        except
    )
    .fetch_one(db)
    .await?;
    let mut errors = Vec::new();
    if row.username {
        errors.push(FieldError::new("user.username", "has already been taken"));
    }
    if row.email {
        errors.push(FieldError::new("user.email", "has already been taken"));
    }
    if errors.is_empty() { Ok(()) } else { Err(ConduitError::Taken(errors)) }
}

/// Creates a user. A race lost to another registration still reports the
/// value taken, from the unique index.
pub(crate) async fn insert(
    db: &mut PgConnection,
    username: &str,
    email: &str,
    password_hash: &str,
) -> ConduitResult<UserRow> {
    sqlx::query_as!(
        UserRow,
        "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3)
         RETURNING id, username, email, password_hash, bio, image",
        username,
        email,
        password_hash
    )
    .fetch_one(db)
    .await
    .map_err(taken)
}

/// The changes of an account; `None` keeps a value.
#[derive(Debug, Default)]
pub(crate) struct UserChanges {
    /// New email.
    pub(crate) email: Option<String>,
    /// New user name.
    pub(crate) username: Option<String>,
    /// New password hash.
    pub(crate) password_hash: Option<String>,
    /// New biography; `Some("")` clears it.
    pub(crate) bio: Option<String>,
    /// New picture URL; `Some("")` clears it.
    pub(crate) image: Option<String>,
}

/// A user after an update, and whether the update changed how they sign
/// in (the password, or the email to another address).
#[derive(Debug)]
pub(crate) struct Updated {
    /// The user as updated.
    pub(crate) row: UserRow,
    /// Whether other sessions must end.
    pub(crate) credentials_changed: bool,
}

/// Applies changes to a user; `None` when the user is gone.
pub(crate) async fn update(db: &mut PgConnection, id: i64, changes: UserChanges) -> ConduitResult<Option<Updated>> {
    let row = sqlx::query!(
        r#"UPDATE users SET
             email = COALESCE($2, users.email),
             username = COALESCE($3, users.username),
             password_hash = COALESCE($4, users.password_hash),
             bio = CASE WHEN $5::text IS NULL THEN users.bio ELSE NULLIF($5, '') END,
             image = CASE WHEN $6::text IS NULL THEN users.image ELSE NULLIF($6, '') END,
             updated_at = now()
         FROM (SELECT email FROM users WHERE id = $1 FOR UPDATE) AS before
         WHERE users.id = $1
         RETURNING users.id, users.username, users.email, users.password_hash, users.bio, users.image,
                   ($4::text IS NOT NULL OR lower(before.email) <> lower(users.email)) AS "credentials_changed!""#,
        id,
        changes.email,
        changes.username,
        changes.password_hash,
        changes.bio,
        changes.image
    )
    .fetch_optional(db)
    .await
    .map_err(taken)?;
    Ok(row.map(|r| Updated {
        row: UserRow {
            id: r.id,
            username: r.username,
            email: r.email,
            password_hash: r.password_hash,
            bio: r.bio,
            image: r.image,
        },
        credentials_changed: r.credentials_changed,
    }))
}

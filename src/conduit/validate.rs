//! Input rules shared by the services; limits are the ones documented in the
//! proto files. Each check records the field's path and what is wrong with it
//! (`can't be blank`); the field's name is not repeated in the message.

use super::error::{ConduitError, ConduitResult, FieldError};

/// Longest user name.
pub const USERNAME_MAX: usize = 64;
/// Longest email address (RFC 5321 path limit).
pub const EMAIL_MAX: usize = 254;
/// Longest password; argon2 would accept more, but there is no use in it.
pub const PASSWORD_MAX: usize = 128;
/// Shortest new password.
pub const PASSWORD_MIN: usize = 8;
/// Longest biography.
pub const BIO_MAX: usize = 4096;
/// Longest image URL.
pub const IMAGE_MAX: usize = 2048;
/// Longest article title.
pub const TITLE_MAX: usize = 256;
/// Longest article description.
pub const DESCRIPTION_MAX: usize = 1024;
/// Longest article body.
pub const BODY_MAX: usize = 65_536;
/// Longest tag.
pub const TAG_MAX: usize = 64;
/// Most tags on one article.
pub const TAGS_MAX: usize = 32;
/// Longest comment.
pub const COMMENT_MAX: usize = 16_384;
/// Largest page.
pub const LIMIT_MAX: i32 = 100;
/// Page size when none is asked for.
pub const LIMIT_DEFAULT: i32 = 20;

/// Collects field errors; `finish` fails if there are any.
#[derive(Debug, Default)]
pub struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    /// No errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an error.
    pub fn fail(&mut self, field: &str, message: String) {
        self.errors.push(FieldError::new(field, message));
    }

    /// A required text: present, not blank, at most `max` characters.
    pub fn required(&mut self, field: &str, value: &str, max: usize) -> &mut Self {
        if value.trim().is_empty() {
            self.fail(field, "can't be blank".into());
        } else {
            self.max(field, value, max);
        }
        self
    }

    /// An optional text of at most `max` characters, without NUL characters
    /// (Postgres text cannot hold them).
    pub fn max(&mut self, field: &str, value: &str, max: usize) -> &mut Self {
        if value.contains('\0') {
            self.fail(field, "must not contain NUL characters".into());
        } else if value.chars().count() > max {
            self.fail(field, format!("is too long (maximum is {max} characters)"));
        }
        self
    }

    /// A user name: required, short, no whitespace or '/' (it is a URL segment).
    pub fn username(&mut self, field: &str, value: &str) -> &mut Self {
        if value.trim().is_empty() {
            self.fail(field, "can't be blank".into());
        } else if value.chars().any(|c| c.is_whitespace() || c == '/') {
            self.fail(field, "must not contain spaces or '/'".into());
        } else {
            self.max(field, value, USERNAME_MAX);
        }
        self
    }

    /// An email address of the form `name@domain`.
    pub fn email(&mut self, field: &str, value: &str) -> &mut Self {
        if value.trim().is_empty() {
            self.fail(field, "can't be blank".into());
            return self;
        }
        let valid = match value.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !value.chars().any(char::is_whitespace)
            }
            None => false,
        };
        if valid {
            self.max(field, value, EMAIL_MAX);
        } else {
            self.fail(field, "is invalid".into());
        }
        self
    }

    /// A password: required, at most [`PASSWORD_MAX`] characters.
    pub fn password(&mut self, field: &str, value: &str) -> &mut Self {
        if value.is_empty() {
            self.fail(field, "can't be blank".into());
        } else {
            self.max(field, value, PASSWORD_MAX);
        }
        self
    }

    /// A new password: [`PASSWORD_MIN`] to [`PASSWORD_MAX`] characters.
    pub fn new_password(&mut self, field: &str, value: &str) -> &mut Self {
        if !value.is_empty() && value.chars().count() < PASSWORD_MIN {
            self.fail(field, format!("is too short (minimum is {PASSWORD_MIN} characters)"));
            return self;
        }
        self.password(field, value)
    }

    /// Fails with all recorded errors, if any.
    pub fn finish(&mut self) -> ConduitResult<()> {
        if self.errors.is_empty() { Ok(()) } else { Err(ConduitError::Invalid(std::mem::take(&mut self.errors))) }
    }
}

/// Tags as stored: trimmed, blanks dropped, duplicates dropped, order kept.
/// Stops at the first tag past [`TAGS_MAX`], so a huge list costs no more
/// than a full one.
pub fn tags(field: &str, given: &[String], check: &mut Check) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for tag in given {
        let tag = tag.trim();
        if tag.is_empty() || !seen.insert(tag) {
            continue;
        }
        if out.len() == TAGS_MAX {
            check.fail(field, format!("has too many tags (maximum is {TAGS_MAX})"));
            break;
        }
        if tag.contains('\0') {
            check.fail(field, "must not contain NUL characters".into());
        } else if tag.chars().count() > TAG_MAX {
            check.fail(field, format!("has a tag longer than {TAG_MAX} characters: {tag:?}"));
        }
        out.push(tag.to_owned());
    }
    out
}

/// A page: `limit` 1..=100 (default 20) and `offset` >= 0 (default 0).
pub fn page(limit: Option<i32>, offset: Option<i32>) -> ConduitResult<(i64, i64)> {
    let mut check = Check::new();
    let limit = limit.unwrap_or(LIMIT_DEFAULT);
    let offset = offset.unwrap_or(0);
    if !(1..=LIMIT_MAX).contains(&limit) {
        check.fail("limit", format!("must be between 1 and {LIMIT_MAX}"));
    }
    if offset < 0 {
        check.fail("offset", "must be 0 or more".into());
    }
    check.finish()?;
    Ok((i64::from(limit), i64::from(offset)))
}

/// A URL slug of a title: lowercase ASCII letters and digits joined by single
/// hyphens; other letters are kept lowercased, punctuation dropped.
pub fn slugify(title: &str) -> String {
    let mut slug = String::with_capacity(title.len());
    let mut hyphen = false;
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            if hyphen && !slug.is_empty() {
                slug.push('-');
            }
            hyphen = false;
            slug.push(c);
        } else {
            hyphen = true;
        }
    }
    if slug.is_empty() { "article".to_owned() } else { slug }
}

/// Slugs an article may not have because a literal route shadows them:
/// `GET /api/articles/feed` is the feed, so an article titled "Feed" gets
/// `feed-2`.
pub const RESERVED_SLUGS: &[&str] = &["feed"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_titles() {
        for (title, slug) in [
            ("How to train your dragon", "how-to-train-your-dragon"),
            ("  Hello, World!  ", "hello-world"),
            ("Rust 2024 — édition", "rust-2024-édition"),
            ("a/b?c#d", "a-b-c-d"),
            ("!!!", "article"),
        ] {
            assert_eq!(slugify(title), slug);
        }
    }

    #[test]
    fn tags_are_trimmed_deduplicated_and_ordered() {
        let mut check = Check::new();
        let given: Vec<String> = ["b", "a", " b ", "", "c"].map(String::from).to_vec();
        assert_eq!(tags("article.tagList", &given, &mut check), ["b", "a", "c"]);
        assert!(check.finish().is_ok());

        let many: Vec<String> = (0..100_000).map(|i| format!("t{i}")).collect();
        assert_eq!(tags("article.tagList", &many, &mut check).len(), TAGS_MAX);
        assert!(check.finish().is_err(), "too many tags");
        let nul = vec!["a\0b".to_owned()];
        tags("article.tagList", &nul, &mut check);
        assert!(check.finish().is_err(), "NUL in a tag");
    }

    #[test]
    fn texts_must_not_hold_nul() {
        let mut check = Check::new();
        check.required("article.title", "a\0b", TITLE_MAX);
        assert!(check.finish().is_err());
    }

    #[test]
    fn pages_are_bounded() {
        assert_eq!(page(None, None).unwrap(), (20, 0));
        assert_eq!(page(Some(100), Some(5)).unwrap(), (100, 5));
        for (limit, offset) in [(Some(0), None), (Some(101), None), (None, Some(-1))] {
            assert!(page(limit, offset).is_err());
        }
    }

    #[test]
    fn emails_need_a_shape() {
        for (email, ok) in
            [("a@b.c", true), ("a@b", true), ("ab.c", false), ("a@", false), ("@b", false), ("a b@c", false)]
        {
            let mut check = Check::new();
            check.email("user.email", email);
            assert_eq!(check.finish().is_ok(), ok, "{email}");
        }
    }
}

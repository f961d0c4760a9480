//! Domain input rules the protos cannot state: blank text, NUL characters
//! (PostgreSQL text cannot hold them), user names that are URL segments
//! and cannot pass for someone else's,
//! tag normalisation and slugs. Lengths, counts, ranges and required fields
//! are declared in the protos (`buf.validate`) and checked before a service
//! method runs. Each check records the field's path and what is wrong, after
//! the field's name (`can't be blank`).

use super::error::{ConduitError, ConduitResult, FieldError};

/// Page size when none is asked for (the proto bounds it to 1..=100).
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

    /// A text without NUL characters.
    pub fn text(&mut self, field: &str, value: &str) -> &mut Self {
        if value.contains('\0') {
            self.fail(field, "must not contain NUL characters".into());
        }
        self
    }

    /// A required text: not only whitespace, without NUL characters.
    pub fn required(&mut self, field: &str, value: &str) -> &mut Self {
        if !value.is_empty() && value.trim().is_empty() {
            self.fail(field, "can't be blank".into());
            return self;
        }
        self.text(field, value)
    }

    /// A user name: a URL segment, so no whitespace or '/' and not only
    /// dots (`.` and `..` are path steps, not names); and a name readers
    /// can tell apart from another, so no control or invisible formatting
    /// characters (bidirectional overrides, zero-width spaces and joiners).
    /// (The proto vocabulary has only regular expressions for this, which
    /// neither OpenAPI's ECMAScript patterns nor the test generators read
    /// alike for Unicode classes, so the rule lives here.)
    pub fn username(&mut self, field: &str, value: &str) -> &mut Self {
        if value.chars().any(|c| c.is_whitespace() || c == '/') {
            self.fail(field, "must not contain spaces or '/'".into());
            return self;
        }
        // NUL has its own message, from `text`.
        if value.chars().any(|c| (c.is_control() && c != '\0') || is_invisible(c)) {
            self.fail(field, "must not contain control or invisible formatting characters".into());
            return self;
        }
        if !value.is_empty() && value.chars().all(|c| c == '.') {
            self.fail(field, "must not be only dots".into());
            return self;
        }
        self.text(field, value)
    }

    /// Fails with all recorded errors, if any.
    pub fn finish(&mut self) -> ConduitResult<()> {
        if self.errors.is_empty() { Ok(()) } else { Err(ConduitError::Invalid(std::mem::take(&mut self.errors))) }
    }
}

/// Unicode's format characters (general category Cf, Unicode 15.1: soft
/// hyphen, bidirectional marks, overrides and isolates, zero-width space,
/// joiners, word joiner, byte-order mark, tags...) and the Hangul fillers,
/// which render as nothing.
fn is_invisible(c: char) -> bool {
    const RANGES: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x115F, 0x1160),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0x3164, 0x3164),
        (0xFEFF, 0xFEFF),
        (0xFFA0, 0xFFA0),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let c = c as u32;
    RANGES.iter().any(|&(low, high)| (low..=high).contains(&c))
}

/// A lookup key from the path or the query (a slug, a user name, a tag):
/// stored text cannot hold NUL, so a key with one is the caller's mistake,
/// named by its field, rather than a search for a row that cannot exist.
pub fn lookup_key(field: &str, value: &str) -> ConduitResult<()> {
    Check::new().text(field, value).finish()
}

/// The filters of an article list or export: each a lookup key.
pub fn list_filters(tag: Option<&str>, author: Option<&str>, favorited: Option<&str>) -> ConduitResult<()> {
    let mut check = Check::new();
    for (field, value) in [("tag", tag), ("author", author), ("favorited", favorited)] {
        check.text(field, value.unwrap_or_default());
    }
    check.finish()
}

/// Tags as stored: trimmed, blanks dropped, duplicates dropped, order kept
/// (the proto bounds their number and length).
pub fn tags(field: &str, given: &[String], check: &mut Check) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for tag in given {
        let tag = tag.trim();
        if tag.is_empty() || !seen.insert(tag) {
            continue;
        }
        if tag.contains('\0') {
            check.fail(field, "must not contain NUL characters".into());
        }
        out.push(tag.to_owned());
    }
    out
}

/// A page: `limit` (default [`LIMIT_DEFAULT`]) and `offset` (default 0),
/// already bounded by the proto.
pub fn page(limit: Option<i32>, offset: Option<i32>) -> (i64, i64) {
    (i64::from(limit.unwrap_or(LIMIT_DEFAULT)), i64::from(offset.unwrap_or(0)))
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
        let nul = vec!["a\0b".to_owned()];
        tags("article.tagList", &nul, &mut check);
        assert!(check.finish().is_err(), "NUL in a tag");
    }

    #[test]
    fn user_names_cannot_hide_characters_or_be_path_steps() {
        let refused = [
            (".", "must not be only dots"),
            ("..", "must not be only dots"),
            ("jake\u{200B}", "must not contain control or invisible formatting characters"),
            ("\u{202E}ekaj", "must not contain control or invisible formatting characters"),
            ("ja\u{2066}ke", "must not contain control or invisible formatting characters"),
            ("ja\u{FEFF}ke", "must not contain control or invisible formatting characters"),
            ("ja\u{E0041}ke", "must not contain control or invisible formatting characters"),
            ("ja\u{7}ke", "must not contain control or invisible formatting characters"),
            ("ja\u{85}ke", "must not contain spaces or '/'"),
            ("ja/ke", "must not contain spaces or '/'"),
        ];
        for (name, problem) in refused {
            let Err(ConduitError::Invalid(errors)) = Check::new().username("user.username", name).finish() else {
                panic!("{name:?} is refused");
            };
            assert_eq!((errors[0].field.as_str(), errors[0].message.as_str()), ("user.username", problem), "{name:?}");
        }
        for name in ["jake", "j.ake", "...a", "Jéké", "雅克", "jake_2024", "🦀"] {
            assert!(Check::new().username("user.username", name).finish().is_ok(), "{name:?}");
        }
    }

    #[test]
    fn texts_must_not_hold_nul_or_be_only_whitespace() {
        for (value, ok) in [("a\0b", false), ("   ", false), ("a b", true), ("", true)] {
            let mut check = Check::new();
            check.required("article.title", value);
            assert_eq!(check.finish().is_ok(), ok, "{value:?}");
        }
    }

    #[test]
    fn pages_default_to_twenty_from_the_start() {
        assert_eq!(page(None, None), (20, 0));
        assert_eq!(page(Some(100), Some(5)), (100, 5));
    }

    #[test]
    fn user_names_are_url_segments() {
        for (name, ok) in [("jake", true), ("a b", false), ("a/b", false)] {
            let mut check = Check::new();
            check.username("user.username", name);
            assert_eq!(check.finish().is_ok(), ok, "{name}");
        }
    }
}

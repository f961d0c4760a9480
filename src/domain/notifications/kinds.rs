//! Job kinds, one per kind of notification; payloads carry `actor` and,
//! as the kind needs, `recipient`, `article` and `comment` ids.

/// `actor` followed `recipient`.
pub const FOLLOW: &str = "notify.follow";
/// `actor` favorited `article`.
pub const FAVORITE: &str = "notify.favorite";
/// `actor` wrote `comment` on `article`.
pub const COMMENT: &str = "notify.comment";
/// `actor` published `article`: every follower is told.
pub const ARTICLE: &str = "notify.article";

//! `conduit demo`: a small, realistic data set (users with bios, articles
//! with tags, comments, follows, favorites), added through the API's own
//! services so that every rule of the API holds (password hashes, slugs,
//! counters, notification jobs). Idempotent: what is already there is left
//! as it is, so running it again adds nothing.

use std::time::Duration;

use sqlx::PgPool;
use tonic::{Request, Status};

use crate::domain::auth::{Passwords, Tokens};
use crate::domain::{Ctx, Exports};
use crate::pb::conduit::v1 as pb;
use pb::articles_server::Articles as _;
use pb::comments_server::Comments as _;
use pb::profiles_server::Profiles as _;
use pb::users_server::Users as _;

/// The password of every demo user.
pub const PASSWORD: &str = "conduit-demo";

/// A demo user: name, bio.
const USERS: [(&str, &str); 4] = [
    ("amara", "Backend engineer. Writes about databases and the queries that hurt them."),
    ("bruno", "Frontend developer and occasional illustrator."),
    ("chen", "Site reliability engineer, on call more often than she would like."),
    ("dana", "Engineering manager; compilers in a past life."),
];

/// A demo article: author (index into [`USERS`]), title, description, body, tags.
const ARTICLES: [(usize, &str, &str, &str, &[&str]); 8] = [
    (
        0,
        "Indexes that pay for themselves",
        "Every index slows writes down; keep the ones reads really use.",
        "Start from `pg_stat_user_indexes`: an index scanned zero times in a month is a cost with no benefit.\n\nThen look at the queries that matter, not at the columns that look important.",
        &["postgres", "performance"],
    ),
    (
        0,
        "Reading an EXPLAIN plan without fear",
        "Bottom up, inner first, and always with ANALYZE.",
        "A plan is a tree: read the innermost node first. Compare estimated rows with actual rows; a tenfold gap is where the planner went wrong.",
        &["postgres", "debugging"],
    ),
    (
        1,
        "Forms that forgive typos",
        "Validation that helps instead of scolding.",
        "Say what is wrong next to the field, keep what the user typed, and accept the formats people actually use for phone numbers and dates.",
        &["ux", "frontend"],
    ),
    (
        1,
        "Dark mode in an afternoon",
        "CSS custom properties do most of the work.",
        "Put every colour in a custom property, switch the set under `prefers-color-scheme: dark`, and check the contrast of the three colours you forgot.",
        &["css", "frontend"],
    ),
    (
        2,
        "What a good alert looks like",
        "If nobody has to act, it is not an alert.",
        "A good alert names the symptom users feel, links the runbook, and fires rarely enough that people still read it.",
        &["sre", "monitoring"],
    ),
    (
        2,
        "Retries, backoff and jitter",
        "Retrying at once, all together, is how outages grow.",
        "Retry only what is safe to repeat, back off exponentially, add jitter so that clients spread out, and give up after a budget.",
        &["sre", "distributed-systems"],
    ),
    (
        3,
        "Writing a design doc people read",
        "One page of context, one of decision, the rest in an appendix.",
        "State the problem before the solution, the alternatives you rejected and why, and what would make you change your mind.",
        &["writing", "teams"],
    ),
    (
        3,
        "One-on-ones that are not status updates",
        "Status belongs in the tracker; the hour is for the person.",
        "Let them set the agenda, ask what is getting in their way, and write down what you promised to do.",
        &["teams"],
    ),
];

/// Demo comments: article, author (indexes), text.
const COMMENTS: [(usize, usize, &str); 9] = [
    (0, 2, "The zero-scan query found four indexes on our orders table. Dropped them; inserts got 30% faster."),
    (0, 3, "Worth saying: check the replicas too, their scans are not counted on the primary."),
    (1, 1, "Bookmarked. I always start reading from the top and get lost."),
    (2, 0, "Keeping what the user typed is the part most forms get wrong."),
    (3, 2, "Our dashboards thank you."),
    (4, 0, "We deleted half our alerts with this rule and nobody missed them."),
    (5, 3, "Adding a retry budget fixed our last incident before it started."),
    (6, 1, "The rejected alternatives section is the one I read first."),
    (7, 2, "Letting them set the agenda changed my one-on-ones completely."),
];

/// Demo follows: follower, followed (indexes into [`USERS`]).
const FOLLOWS: [(usize, usize); 8] = [(0, 2), (0, 3), (1, 0), (1, 3), (2, 0), (2, 1), (3, 0), (3, 2)];

/// Demo favorites: user, article (indexes).
const FAVORITES: [(usize, usize); 10] =
    [(0, 4), (0, 6), (1, 0), (1, 5), (2, 0), (2, 1), (2, 3), (3, 0), (3, 4), (3, 7)];

/// What `conduit demo` left in the database.
#[derive(Debug)]
pub struct Seeded {
    /// Rows this run added (0 when everything was there).
    pub added: usize,
    /// Users, articles, comments, follows and favorites of the data set.
    pub counts: [usize; 5],
    /// The first demo user's name.
    pub username: &'static str,
    /// A fresh token of that user.
    pub token: String,
}

/// Adds what is missing of the demo data set to `db` (migrated), signing
/// tokens with `secret` for `ttl`, and clears the response caches of the
/// conduits running on `db` so that they show it at once.
pub async fn seed(db: &PgPool, secret: &[u8], ttl: Duration) -> Result<Seeded, String> {
    let signals = crate::postgres::signal::Signals::new(db.clone(), Duration::from_millis(10));
    let ctx = Ctx {
        db: db.clone(),
        tokens: Tokens::new(secret, ttl),
        passwords: Passwords::new(1),
        logins: None,
        jobs: crate::postgres::jobs::Wake::new(signals),
        keys: crate::domain::idempotent::Keys::new(secret, Duration::from_secs(60), Duration::from_secs(5)),
    };
    let exports = Exports { batch: 100, max_concurrent: 1, stall_timeout: Duration::from_secs(30) };
    let services = Services {
        users: crate::domain::users::Users::new(ctx.clone()),
        profiles: crate::domain::profiles::Profiles::new(ctx.clone()),
        articles: crate::domain::articles::Articles::new(ctx.clone(), exports),
        comments: crate::domain::comments::Comments::new(ctx),
    };
    let seeded = services.seed().await.map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    // Other processes: their job workers wake now rather than at their next
    // poll, and their caches drop answers from before the demo data.
    crate::postgres::jobs::notify_workers(db).await.map_err(|e| e.to_string())?;
    crate::middleware::cache::clear_everywhere(db).await.map_err(|e| e.to_string())?;
    Ok(seeded)
}

/// The services the demo writes through.
struct Services {
    users: crate::domain::users::Users,
    profiles: crate::domain::profiles::Profiles,
    articles: crate::domain::articles::Articles,
    comments: crate::domain::comments::Comments,
}

/// A request carrying `token`.
fn as_user<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Token {token}").parse().expect("a token is ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

impl Services {
    async fn seed(&self) -> Result<Seeded, Status> {
        let mut added = 0;
        let mut tokens = Vec::new();
        for (username, bio) in USERS {
            let (token, new) = self.user(username).await?;
            if new {
                added += 1;
                let user = pb::UpdateUser { bio: Some(bio.to_owned()), ..Default::default() };
                let update = pb::UpdateCurrentUserRequest { user: Some(user), update_mask: None };
                self.users.update_current_user(as_user(&token, update)).await?;
            }
            tokens.push(token);
        }
        let mut slugs = Vec::new();
        for (author, title, description, body, tags) in ARTICLES {
            let (slug, new) = self.article(&tokens[author], USERS[author].0, title, description, body, tags).await?;
            added += usize::from(new);
            slugs.push(slug);
        }
        for (article, author, body) in COMMENTS {
            let slug = &slugs[article];
            let listed =
                self.comments.list_comments(Request::new(pb::ListCommentsRequest { slug: slug.clone() })).await?;
            let written =
                |c: &pb::Comment| c.body == body && c.author.as_ref().is_some_and(|a| a.username == USERS[author].0);
            if !listed.into_inner().comments.iter().any(written) {
                let comment = pb::NewComment { body: body.to_owned() };
                let request = pb::CreateCommentRequest { slug: slug.clone(), comment: Some(comment) };
                self.comments.create_comment(as_user(&tokens[author], request)).await?;
                added += 1;
            }
        }
        for (follower, followed) in FOLLOWS {
            let username = USERS[followed].0.to_owned();
            let profile = self
                .profiles
                .get_profile(as_user(&tokens[follower], pb::GetProfileRequest { username: username.clone() }))
                .await?;
            if !profile.into_inner().profile.is_some_and(|p| p.following) {
                self.profiles.follow_user(as_user(&tokens[follower], pb::FollowUserRequest { username })).await?;
                added += 1;
            }
        }
        for (user, article) in FAVORITES {
            let slug = slugs[article].clone();
            let read =
                self.articles.get_article(as_user(&tokens[user], pb::GetArticleRequest { slug: slug.clone() })).await?;
            if !read.into_inner().article.is_some_and(|a| a.favorited) {
                self.articles.favorite_article(as_user(&tokens[user], pb::FavoriteArticleRequest { slug })).await?;
                added += 1;
            }
        }
        Ok(Seeded {
            added,
            counts: [USERS.len(), ARTICLES.len(), COMMENTS.len(), FOLLOWS.len(), FAVORITES.len()],
            username: USERS[0].0,
            token: tokens.swap_remove(0),
        })
    }

    /// Registers `username`, or logs in if it exists: its token, and
    /// whether it was new.
    async fn user(&self, username: &str) -> Result<(String, bool), Status> {
        let email = format!("{username}@example.com");
        let new_user =
            pb::NewUser { username: username.to_owned(), email: email.clone(), password: PASSWORD.to_owned() };
        let (reply, new) = match self.users.register(Request::new(pb::RegisterRequest { user: Some(new_user) })).await {
            Ok(reply) => (reply, true),
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                let user = pb::LoginUser { email, password: PASSWORD.to_owned() };
                let login = self.users.login(Request::new(pb::LoginRequest { user: Some(user) })).await;
                let reply = login.map_err(|status| {
                    Status::failed_precondition(format!(
                        "the user {username} (or {username}@example.com) already exists and does not log in with \
                         the demo password ({}): the demo needs its own users",
                        status.message()
                    ))
                })?;
                (reply, false)
            }
            Err(status) => return Err(status),
        };
        let token = reply.into_inner().user.map(|u| u.token).unwrap_or_default();
        Ok((token, new))
    }

    /// The slug of `author`'s article titled `title`, created if missing,
    /// and whether it was new.
    async fn article(
        &self,
        token: &str,
        author: &str,
        title: &str,
        description: &str,
        body: &str,
        tags: &[&str],
    ) -> Result<(String, bool), Status> {
        let listed = self
            .articles
            .list_articles(Request::new(pb::ListArticlesRequest {
                author: Some(author.to_owned()),
                limit: Some(100),
                ..Default::default()
            }))
            .await?;
        if let Some(found) = listed.into_inner().articles.into_iter().find(|a| a.title == title) {
            return Ok((found.slug, false));
        }
        let article = pb::NewArticle {
            title: title.to_owned(),
            description: description.to_owned(),
            body: body.to_owned(),
            tag_list: tags.iter().map(|t| (*t).to_owned()).collect(),
        };
        let created =
            self.articles.create_article(as_user(token, pb::CreateArticleRequest { article: Some(article) })).await?;
        let slug = created.into_inner().article.map(|a| a.slug).unwrap_or_default();
        Ok((slug, true))
    }
}

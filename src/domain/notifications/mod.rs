//! `conduit.v1.Notifications`: what happened to a user's profile and
//! articles, made by background jobs and delivered live.
//!
//! Writes enqueue a job in their own transaction (see [`crate::postgres::jobs`]);
//! [`Fanout`] turns each job into notifications, numbered per recipient in
//! commit order. An insert trigger notifies `conduit_notifications` with
//! the recipients at commit (one `NOTIFY` per statement, ids separated by
//! commas); every replica's [`Hub`] listens and wakes the
//! watch streams of that recipient, which read what is new after their
//! cursor. Since numbers follow commit order, "everything after n" never
//! skips one that commits late: resuming after a reconnect has no gaps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use super::context::Ctx;
use super::error::{ConduitError, ConduitResult, FieldError};
use super::idempotent::Begun;
use crate::pb::conduit::v1::{
    ListNotificationsRequest, ListNotificationsResponse, MarkNotificationsReadRequest, MarkNotificationsReadResponse,
    Notification, NotificationKind, WatchNotificationsRequest, WatchNotificationsResponse, notifications_server,
};
use crate::postgres::jobs::{Handler, Handlers, Job, JobError};
use crate::postgres::listen::{Channel, Heard};

/// The channel the notification trigger notifies, with the recipient's id.
pub const CHANNEL: &str = "conduit_notifications";

pub mod kinds;

/// Registers the notification jobs' handler.
pub fn register(handlers: &mut Handlers) {
    handlers.register_kinds(&[kinds::FOLLOW, kinds::FAVORITE, kinds::COMMENT, kinds::ARTICLE], Fanout);
}

/// Makes the notifications of jobs, in the jobs' transaction: one
/// statement for a whole batch.
#[derive(Debug, Clone, Copy)]
pub struct Fanout;

/// Who is told of each job, by its notification kind (`p` is the job);
/// each notification's subject is checked to still exist (a deleted
/// article or user tells no one).
const RECIPIENTS: &str = "\
    SELECT id FROM users WHERE p.kind = 'follow' AND id = p.recipient \
    UNION ALL SELECT author_id FROM articles \
        WHERE p.kind = 'favorite' AND id = p.article AND author_id <> p.actor \
    UNION ALL SELECT a.author_id FROM comments c JOIN articles a ON a.id = c.article_id \
        WHERE p.kind = 'comment' AND c.id = p.comment AND a.author_id <> p.actor \
    UNION ALL SELECT f.follower_id FROM follows f JOIN articles a ON a.author_id = f.followee_id \
        WHERE p.kind = 'article' AND a.id = p.article";

/// The notifications of a batch of jobs (`$1`..`$6`: ids, notification
/// kinds, actors, articles, comments, recipients), in one statement. Each
/// recipient's counter row is taken once, in recipient order (so fan-outs
/// that overlap cannot deadlock), advanced by as many notifications as the
/// batch has for them; they are numbered in job order below it. The row
/// stays locked until commit, so numbers follow commit order.
static FANOUT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH p AS (SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int4[], $6::int8[]) \
                    AS p(job, kind, actor, article, comment, recipient) \
                    WHERE EXISTS (SELECT 1 FROM users WHERE id = p.actor)), \
              told AS (SELECT DISTINCT p.job, r.rid FROM p, LATERAL ({RECIPIENTS}) AS r(rid)), \
              per AS (SELECT rid, count(*) AS k FROM told GROUP BY rid), \
              numbered AS (INSERT INTO notification_counters (user_id, last_seq) \
                           SELECT rid, k FROM per ORDER BY rid \
                           ON CONFLICT (user_id) DO UPDATE \
                               SET last_seq = notification_counters.last_seq + EXCLUDED.last_seq \
                           RETURNING user_id, last_seq) \
         INSERT INTO notifications (recipient_id, seq, kind, actor_id, article_id, comment_id, job_id) \
         SELECT t.rid, n.last_seq - per.k + row_number() OVER (PARTITION BY t.rid ORDER BY t.job), \
                p.kind, p.actor, p.article, p.comment, p.job \
         FROM told t JOIN p ON p.job = t.job JOIN per ON per.rid = t.rid JOIN numbered n ON n.user_id = t.rid"
    )
});

impl Fanout {
    async fn notify(jobs: &[Job], tx: &mut PgConnection) -> Result<(), JobError> {
        let n = jobs.len();
        let (mut ids, mut kinds, mut actors) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut articles, mut comments, mut recipients) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for job in jobs {
            let id = |key: &str| job.payload.get(key).and_then(serde_json::Value::as_i64);
            let Some(actor) = id("actor") else {
                return Err(JobError(format!("job {}: the payload has no actor", job.id)));
            };
            let kind = match job.kind.as_str() {
                kinds::FOLLOW => "follow",
                kinds::FAVORITE => "favorite",
                kinds::COMMENT => "comment",
                kinds::ARTICLE => "article",
                other => return Err(JobError(format!("not a notification job: {other}"))),
            };
            ids.push(job.id);
            kinds.push(kind);
            actors.push(actor);
            articles.push(id("article"));
            comments.push(id("comment").and_then(|c| i32::try_from(c).ok()));
            recipients.push(id("recipient"));
        }
        sqlx::query(sqlx::AssertSqlSafe(FANOUT_SQL.as_str()))
            .bind(&ids)
            .bind(&kinds)
            .bind(&actors)
            .bind(&articles)
            .bind(&comments)
            .bind(&recipients)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

impl Handler for Fanout {
    fn run<'a>(&'a self, job: &'a Job, tx: &'a mut PgConnection) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(Self::notify(std::slice::from_ref(job), tx))
    }

    fn batches(&self) -> bool {
        true
    }

    fn run_batch<'a>(&'a self, jobs: &'a [Job], tx: &'a mut PgConnection) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(Self::notify(jobs, tx))
    }
}

/// Watch streams of this process, by user, woken when the user's
/// notifications change on any replica.
#[derive(Clone, Debug)]
pub struct Hub(Arc<HubInner>);

#[derive(Debug)]
struct HubInner {
    users: Mutex<HashMap<i64, watch::Sender<u64>>>,
    max_per_user: usize,
    keep_alive: Duration,
    closing: watch::Sender<bool>,
}

/// One open watch: woken on each change of its user's notifications.
struct Subscription {
    hub: Arc<HubInner>,
    user: i64,
    changes: watch::Receiver<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut users = self.hub.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // This subscription's receiver is still counted until after this.
        if users.get(&self.user).is_some_and(|s| s.receiver_count() <= 1) {
            users.remove(&self.user);
        }
    }
}

impl Hub {
    /// At most `max_per_user` watches per user; a keep-alive after each
    /// `keep_alive` of silence.
    pub fn new(max_per_user: usize, keep_alive: Duration) -> Self {
        let (closing, _) = watch::channel(false);
        Self(Arc::new(HubInner { users: Mutex::default(), max_per_user, keep_alive, closing }))
    }

    fn subscribe(&self, user: i64) -> Result<Subscription, Status> {
        if *self.0.closing.borrow() {
            return Err(shutting_down());
        }
        let mut users = self.0.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let sender = users.entry(user).or_insert_with(|| watch::channel(0).0);
        if sender.receiver_count() >= self.0.max_per_user {
            return Err(Status::resource_exhausted(format!(
                "at most {} notification watches may be open per user; close one first",
                self.0.max_per_user
            )));
        }
        let changes = sender.subscribe();
        Ok(Subscription { hub: self.0.clone(), user, changes })
    }

    /// Wakes the watches of `user`.
    fn changed(&self, user: i64) {
        let users = self.0.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = users.get(&user) {
            sender.send_modify(|n| *n += 1);
        }
    }

    /// Wakes every watch (after missing notifications while reconnecting).
    fn changed_all(&self) {
        let users = self.0.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for sender in users.values() {
            sender.send_modify(|n| *n += 1);
        }
    }

    /// Ends every watch with UNAVAILABLE (clients reconnect elsewhere and
    /// resume) and refuses new ones: the process is shutting down.
    pub fn close(&self) {
        self.0.closing.send_replace(true);
    }

    /// The channel of every replica's new notifications, for the process's
    /// shared listener.
    pub fn channel(self) -> Channel {
        Channel::new(CHANNEL, move |heard| match heard {
            // What was missed while not listening: every watch looks again.
            Heard::Connected => self.changed_all(),
            // The recipients of one statement's notifications.
            Heard::Payload(users) => {
                for user in users.split(',').filter_map(|u| u.parse().ok()) {
                    self.changed(user);
                }
            }
        })
    }
}

fn shutting_down() -> Status {
    super::error::unavailable("the server is shutting down; reconnect to resume", Duration::from_secs(1))
}

/// The Notifications service.
#[derive(Debug, Clone)]
pub struct Notifications {
    ctx: Ctx,
    hub: Hub,
}

/// Notifications read at once by a watch.
const WATCH_BATCH: i64 = 100;

#[derive(sqlx::FromRow)]
struct NotificationRow {
    seq: i64,
    kind: String,
    comment_id: Option<i32>,
    created_at: OffsetDateTime,
    read: bool,
    username: String,
    bio: Option<String>,
    image: Option<String>,
    following: bool,
    slug: Option<String>,
    title: Option<String>,
}

impl From<NotificationRow> for Notification {
    fn from(r: NotificationRow) -> Self {
        let kind = match r.kind.as_str() {
            "follow" => NotificationKind::Follow,
            "favorite" => NotificationKind::Favorite,
            "comment" => NotificationKind::Comment,
            "article" => NotificationKind::Article,
            _ => NotificationKind::Unspecified,
        };
        Notification {
            id: r.seq,
            kind: kind.into(),
            actor: Some(super::profiles::profile_of(r.username, r.bio, r.image, r.following)),
            article_slug: r.slug,
            article_title: r.title,
            comment_id: r.comment_id,
            created_at: Some(r.created_at.into()),
            read: r.read,
        }
    }
}

/// The read model: a user's notifications with the actor as the user sees
/// them. `$1` is the user; the caller adds conditions and order.
const SELECT: &str = "SELECT n.seq, n.kind, n.comment_id, n.created_at, n.read_at IS NOT NULL AS read, \
       u.username, u.bio, u.image, \
       EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = n.recipient_id AND f.followee_id = n.actor_id) \
           AS following, \
       a.slug, a.title \
     FROM notifications n JOIN users u ON u.id = n.actor_id LEFT JOIN articles a ON a.id = n.article_id \
     WHERE n.recipient_id = $1";

async fn unread_count(db: impl sqlx::PgExecutor<'_>, user: i64) -> ConduitResult<i32> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE recipient_id = $1 AND read_at IS NULL")
        .bind(user)
        .fetch_one(db)
        .await?;
    Ok(i32::try_from(n).unwrap_or(i32::MAX))
}

/// Notifications of `user` numbered after `after`, oldest first.
async fn after(db: &PgPool, user: i64, after: i64, limit: i64) -> Result<Vec<NotificationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} AND n.seq > $2 ORDER BY n.seq LIMIT $3")))
        .bind(user)
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await
}

type WatchStream = futures_util::stream::BoxStream<'static, Result<WatchNotificationsResponse, Status>>;

impl Notifications {
    /// The service on a shared context, with this process's watch hub.
    pub fn new(ctx: Ctx, hub: Hub) -> Self {
        Self { ctx, hub }
    }

    // GET /notifications
    async fn list(&self, request: Request<ListNotificationsRequest>) -> ConduitResult<ListNotificationsResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        // From the primary, though declared free of side effects: others'
        // writes (the jobs) make these rows, and a watch on the same user
        // announces them from the primary; a replica would list fewer than
        // the watch just announced.
        let db = &self.ctx.db;
        let r = request.into_inner();
        let limit = i64::from(r.limit.unwrap_or(20));
        let mut rows: Vec<NotificationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{SELECT} AND ($2::int8 IS NULL OR n.seq < $2) AND (NOT $3 OR n.read_at IS NULL) \
             ORDER BY n.seq DESC LIMIT $4"
        )))
        .bind(caller.user_id)
        .bind(r.before)
        .bind(r.unread)
        .bind(limit + 1)
        .fetch_all(db)
        .await?;
        let next_before = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(ListNotificationsResponse {
            notifications: rows.into_iter().map(Into::into).collect(),
            unread_count: unread_count(db, caller.user_id).await?,
            next_before,
        })
    }

    // POST /notifications:markRead
    async fn mark_read(
        &self,
        request: Request<MarkNotificationsReadRequest>,
    ) -> ConduitResult<MarkNotificationsReadResponse> {
        let caller = self.ctx.tokens.require(&request)?;
        if request.get_ref().ids.is_empty() && request.get_ref().up_to.is_none() {
            return Err(ConduitError::Invalid(vec![FieldError::new("ids", "or upTo must be given")]));
        }
        let mut write = match self.ctx.write(&request, caller.user_id).await? {
            Begun::Replay(answer) => return Ok(answer),
            Begun::Run(write) => write,
        };
        let r = request.into_inner();
        let marked = sqlx::query(
            "UPDATE notifications SET read_at = now() \
             WHERE recipient_id = $1 AND read_at IS NULL AND (seq = ANY($2) OR seq <= $3)",
        )
        .bind(caller.user_id)
        .bind(&r.ids)
        .bind(r.up_to)
        .execute(&mut *write)
        .await?
        .rows_affected();
        let answer = MarkNotificationsReadResponse {
            marked: i32::try_from(marked).unwrap_or(i32::MAX),
            unread_count: unread_count(&mut *write, caller.user_id).await?,
        };
        write.finish(&answer).await?;
        Ok(answer)
    }

    // GET /notifications:watch
    async fn watch(&self, request: Request<WatchNotificationsRequest>) -> Result<WatchStream, Status> {
        let caller = self.ctx.tokens.require(&request)?;
        // An EventSource reconnecting says where it stopped in this header.
        let resume = request.metadata().get("last-event-id").and_then(|v| v.to_str().ok()).map(str::trim);
        let resume = match resume {
            None | Some("") => None,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if n >= 0 => Some(n),
                _ => {
                    return Err(ConduitError::Invalid(vec![FieldError::new(
                        "last-event-id",
                        "must be a notification id (a whole number)",
                    )])
                    .into());
                }
            },
        };
        // An EventSource reconnects to the same URL (with its `after`) and
        // adds the header: the later of the two is where the client is.
        let start = request.into_inner().after.max(resume);
        let mut subscription = self.hub.subscribe(caller.user_id)?;
        // Subscribed first, then read where "now" is: nothing made in
        // between is missed. A position past it (from a stale or made-up
        // cursor) would hide what comes next: it counts as "now".
        let now: i64 =
            sqlx::query_scalar("SELECT COALESCE((SELECT last_seq FROM notification_counters WHERE user_id = $1), 0)")
                .bind(caller.user_id)
                .fetch_one(&self.ctx.db)
                .await
                .map_err(ConduitError::from)?;
        let cursor = start.map_or(now, |n| n.min(now));
        let (tx, rx) = mpsc::channel(16);
        let (db, user, keep_alive) = (self.ctx.db.clone(), caller.user_id, self.hub.0.keep_alive);
        let mut closing = self.hub.0.closing.subscribe();
        tokio::spawn(async move {
            let mut cursor = cursor;
            loop {
                subscription.changes.borrow_and_update();
                let rows = match after(&db, user, cursor, WATCH_BATCH).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(ConduitError::from(e)))).await;
                        return;
                    }
                };
                let full = rows.len() as i64 == WATCH_BATCH;
                for row in rows {
                    cursor = row.seq;
                    let message = WatchNotificationsResponse { id: Some(row.seq), notification: Some(row.into()) };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    changed = subscription.changes.changed() => if changed.is_err() { return },
                    () = async { let _ = closing.wait_for(|c| *c).await; } => {
                        let _ = tx.send(Err(shutting_down())).await;
                        return;
                    }
                    () = tx.closed() => return,
                    () = tokio::time::sleep(keep_alive) => {
                        let keep = WatchNotificationsResponse { id: None, notification: None };
                        if tx.send(Ok(keep)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(stream.boxed())
    }
}

#[tonic::async_trait]
impl notifications_server::Notifications for Notifications {
    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        Ok(Response::new(self.list(request).await?))
    }

    async fn mark_notifications_read(
        &self,
        request: Request<MarkNotificationsReadRequest>,
    ) -> Result<Response<MarkNotificationsReadResponse>, Status> {
        Ok(Response::new(self.mark_read(request).await?))
    }

    type WatchNotificationsStream = WatchStream;

    async fn watch_notifications(
        &self,
        request: Request<WatchNotificationsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        Ok(Response::new(self.watch(request).await?))
    }
}

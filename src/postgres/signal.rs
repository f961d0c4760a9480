//! Cross-replica signals sent by `NOTIFY`, coalesced.
//!
//! A signal says "look again" (a cache to clear, a queue to claim from); ten
//! of them in a row say no more than the last one. Sending one `NOTIFY` per
//! write cost more than the write: PostgreSQL serialises the commits of all
//! transactions that notify. So a process sends at most one `NOTIFY`
//! statement at a time, and at most one per `interval`, carrying every
//! channel signalled since the previous one. A signal is never dropped:
//! one raised while a send is under way is sent by the next.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

/// The sending side of the signals of one process (cheap to clone).
#[derive(Clone)]
pub struct Signals(Arc<Inner>);

struct Inner {
    /// Channel → payload of the latest signal not yet sent.
    pending: Mutex<BTreeMap<&'static str, String>>,
    raised: Notify,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals").finish_non_exhaustive()
    }
}

impl Signals {
    /// Signals sent on `db`, at most one statement per `interval`, by a task
    /// that runs until the pool closes.
    pub fn new(db: PgPool, interval: Duration) -> Self {
        let signals = Self(Arc::new(Inner { pending: Mutex::default(), raised: Notify::new() }));
        tokio::spawn(signals.clone().send_until_closed(db, interval));
        signals
    }

    /// Raises `channel` with `payload` (the latest payload per channel wins).
    pub fn raise(&self, channel: &'static str, payload: &str) {
        let mut pending = self.0.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match pending.get_mut(channel) {
            Some(p) if p == payload => return,
            Some(p) => payload.clone_into(p),
            None => {
                pending.insert(channel, payload.to_owned());
            }
        }
        drop(pending);
        self.0.raised.notify_one();
    }

    async fn send_until_closed(self, db: PgPool, interval: Duration) {
        let closed = db.close_event();
        let mut closed = std::pin::pin!(closed);
        loop {
            tokio::select! {
                () = self.0.raised.notified() => {}
                () = &mut closed => return,
            }
            let batch = std::mem::take(&mut *self.0.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            if batch.is_empty() {
                continue;
            }
            let (channels, payloads): (Vec<&str>, Vec<String>) = batch.into_iter().unzip();
            let sent = sqlx::query("SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS s(c, p)")
                .bind(&channels)
                .bind(&payloads)
                .execute(&db)
                .await;
            if let Err(e) = sent {
                if db.is_closed() {
                    return;
                }
                // The other replicas still clear their caches within their
                // TTL and poll their queues; this one tries again.
                tracing::warn!(error = %e, channels = ?channels, "cannot notify the other replicas");
                {
                    let mut pending = self.0.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    for (channel, payload) in channels.into_iter().zip(payloads) {
                        pending.entry(channel).or_insert(payload);
                    }
                }
                self.0.raised.notify_one();
                tokio::time::sleep(interval.max(Duration::from_millis(500))).await;
                continue;
            }
            tokio::time::sleep(interval).await;
        }
    }
}

//! `LISTEN` on a PostgreSQL channel for as long as the pool is open, the
//! way every cross-replica signal here needs it: reconnecting after
//! failures, and saying when notifications may have been missed.

use std::time::Duration;

use sqlx::PgPool;

/// What a listener hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard<'a> {
    /// Listening (again): whatever was sent while not listening is lost,
    /// so the caller looks for itself.
    Connected,
    /// One notification's payload.
    Payload(&'a str),
}

/// Listens on `channel` until the pool closes, passing what it hears to
/// `on`; a lost connection is re-established after a second.
pub async fn listen(db: PgPool, channel: &'static str, mut on: impl FnMut(Heard<'_>) + Send) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&db).await {
            Ok(listener) => listener,
            Err(_) if db.is_closed() => return,
            Err(e) => {
                tracing::debug!(channel, error = %e, "listener: cannot connect; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(channel).await {
            tracing::debug!(channel, error = %e, "listener: LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        on(Heard::Connected);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => on(Heard::Payload(notification.payload())),
                // The connection dropped and sqlx re-established it.
                Ok(None) => on(Heard::Connected),
                Err(_) => break,
            }
        }
        if db.is_closed() {
            return;
        }
    }
}

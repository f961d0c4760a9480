//! `LISTEN` on PostgreSQL channels for as long as the pool is open, the
//! way every cross-replica signal here needs it: all of a process's
//! channels on one connection, reconnecting after failures, and saying
//! when notifications may have been missed.

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

/// What one channel's notifications are given to.
pub type Handler = Box<dyn FnMut(Heard<'_>) + Send>;

/// One channel and what hears it.
pub struct Channel {
    name: &'static str,
    on: Handler,
}

impl Channel {
    /// `on` hears `name`'s notifications.
    pub fn new(name: &'static str, on: impl FnMut(Heard<'_>) + Send + 'static) -> Self {
        Self { name, on: Box::new(on) }
    }

    /// Gives `heard` to the handler. A handler that panics is logged and
    /// kept: the channels share a task, and one defect must not deafen
    /// the others.
    fn hear(&mut self, heard: Heard<'_>) {
        let on = &mut self.on;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on(heard))).is_err() {
            tracing::error!(channel = self.name, "a listener's handler panicked; it keeps listening");
        }
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Listens on every channel over one connection of `db` until the pool
/// closes: one connection per process however many channels it follows,
/// which the connection budget counts (docs/deploying.md). On (re)connecting
/// every handler hears [`Heard::Connected`].
pub async fn listen_all(db: PgPool, mut channels: Vec<Channel>) {
    if channels.is_empty() {
        return;
    }
    let names: Vec<&'static str> = channels.iter().map(|c| c.name).collect();
    let connected = |channels: &mut Vec<Channel>| channels.iter_mut().for_each(|c| c.hear(Heard::Connected));
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&db).await {
            Ok(listener) => listener,
            Err(_) if db.is_closed() => return,
            Err(e) => {
                tracing::debug!(channels = ?names, error = %e, "listener: cannot connect; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen_all(names.iter().copied()).await {
            tracing::debug!(channels = ?names, error = %e, "listener: LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        connected(&mut channels);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Some(channel) = channels.iter_mut().find(|c| c.name == notification.channel()) {
                        channel.hear(Heard::Payload(notification.payload()));
                    }
                }
                // The connection dropped and sqlx re-established it.
                Ok(None) => connected(&mut channels),
                Err(_) => break,
            }
        }
        if db.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handler_that_panics_keeps_hearing() {
        let heard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = heard.clone();
        let mut channel = Channel::new("c", move |h| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert_ne!(h, Heard::Payload("boom"), "a defect");
        });
        channel.hear(Heard::Payload("boom"));
        channel.hear(Heard::Connected);
        assert_eq!(heard.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}

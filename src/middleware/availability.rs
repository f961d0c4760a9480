//! Fail fast while the database is down: calls are refused at once in their
//! own protocol instead of each waiting for a pooled connection that will
//! not come. The database's state is [`Health`]'s, checked in the background.

use std::time::Duration;

use crate::observability::health::Health;

/// Fails calls fast while the database is known to be down (used as
/// `gateway::GateLayer::new(Availability::new(…))`): UNAVAILABLE (503 over
/// HTTP) with `Retry-After` and a `google.rpc.RetryInfo`, in the request's
/// own protocol, instead of waiting for a pooled connection that will not
/// come. Health and reflection keep answering; calls flow again as soon as a
/// check finds the database back.
#[derive(Clone)]
pub struct Availability {
    health: Health,
    gateway: gateway::Gateway,
    retry_after: Duration,
}

impl Availability {
    /// Refuses the gateway's methods while `health` sees the database down;
    /// clients are told to retry after `retry_after`.
    pub fn new(health: Health, gateway: gateway::Gateway, retry_after: Duration) -> Self {
        Self { health, gateway, retry_after }
    }
}

impl gateway::Admission for Availability {
    fn refuse(&self, req: &mut http::Request<axum::body::Body>) -> Option<http::Response<axum::body::Body>> {
        if !self.health.database_down() {
            return None;
        }
        self.gateway.method(req.extensions().get::<gateway::RpcMethod>()?.0)?;
        let status =
            crate::domain::error::unavailable("the database is unavailable; try again shortly", self.retry_after);
        Some(self.gateway.reject(req, &status))
    }
}

//! The authentication gate: every request is authenticated once, above the
//! protocol split, so that gRPC, gRPC-Web, Connect and JSON calls are
//! refused alike and before they are decoded or validated. Tokens
//! themselves are the domain's ([`crate::domain::auth`]): this layer only
//! finds the `authorization` header and refuses in the request's protocol.

use crate::domain::auth::{Tokens, token_missing};

/// Authenticates every request once, above the protocol split (used as
/// `gateway::GateLayer::new(Authenticate::new(…))`): a method declared
/// `(gateway.v1.access).authenticated` without valid credentials is refused
/// with UNAUTHENTICATED in the request's own protocol before it is decoded or
/// validated; valid credentials become a [`crate::domain::auth::Caller`] in the request's
/// extensions, which services read instead of checking again. On other
/// methods a bad token counts as none.
#[derive(Clone)]
pub struct Authenticate {
    gateway: gateway::Gateway,
    tokens: Tokens,
}

impl Authenticate {
    /// Reads each method's requirement from `gateway`, checks with `tokens`.
    pub fn new(gateway: gateway::Gateway, tokens: Tokens) -> Self {
        Self { gateway, tokens }
    }
}

impl gateway::Admission for Authenticate {
    fn refuse(&self, req: &mut http::Request<axum::body::Body>) -> Option<http::Response<axum::body::Body>> {
        let required = req
            .extensions()
            .get::<gateway::RpcMethod>()
            .and_then(|rpc| self.gateway.method(rpc.0))
            .is_some_and(|spec| spec.authenticated);
        let value = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        let refusal = match (self.tokens.caller_of(value), required) {
            (Ok(Some(caller)), _) => {
                if let Some(slot) = req.extensions().get::<crate::middleware::request_log::UserSlot>() {
                    let _ = slot.0.set(caller.user_id);
                }
                req.extensions_mut().insert(caller);
                None
            }
            (Ok(None), true) => Some(token_missing()),
            (Err(error), true) => Some(error),
            (_, false) => None,
        };
        refusal.map(|error| self.gateway.reject(req, &tonic::Status::from(error)))
    }
}

//! Idempotency keys: a client that cannot tell whether its write took
//! effect (the answer was lost, the call timed out, the database failed
//! over) sends it again with the same `Idempotency-Key` and is answered
//! once. This layer only checks the key and hands it to the services with
//! the RPC it came with; the write and its key commit together in
//! [`crate::domain::idempotent`].

use crate::domain::idempotent::Key;

/// The header (gRPC and Connect: metadata) carrying the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Longest key accepted, in bytes: room for any UUID or ULID form.
const MAX_KEY_BYTES: usize = 255;

/// Checks `Idempotency-Key` on calls that change something (used as
/// `gateway::GateLayer::new(Idempotency::new(…))`): a key that is not 1 to
/// 255 visible ASCII characters is refused with 400 / INVALID_ARGUMENT
/// naming the header; a good one becomes a [`Key`] in the call's
/// extensions. Reads, and methods that need no token (registration,
/// login), ignore the header.
#[derive(Clone)]
pub struct Idempotency {
    gateway: gateway::Gateway,
}

impl Idempotency {
    /// Reads each method's side effects from `gateway`.
    pub fn new(gateway: gateway::Gateway) -> Self {
        Self { gateway }
    }
}

impl gateway::Admission for Idempotency {
    fn refuse(&self, req: &mut http::Request<axum::body::Body>) -> Option<http::Response<axum::body::Body>> {
        let value = req.headers().get(IDEMPOTENCY_KEY)?;
        let rpc = req.extensions().get::<gateway::RpcMethod>()?.0;
        // Only a signed-in caller's writes are keyed (a key is the caller's
        // own); reads are safe to repeat anyway.
        if self.gateway.method(rpc).is_none_or(|spec| spec.no_side_effects || !spec.authenticated) {
            return None;
        }
        match well_formed(value.as_bytes()) {
            Some(key) => {
                let key = Key { rpc, key: key.to_owned() };
                req.extensions_mut().insert(key);
                None
            }
            None => {
                let status = tonic::Status::invalid_argument(format!(
                    "the {IDEMPOTENCY_KEY} header must be 1 to {MAX_KEY_BYTES} visible ASCII characters, \
                     such as a UUID the client makes for each new write"
                ));
                Some(self.gateway.reject_as(req, http::StatusCode::BAD_REQUEST, &status))
            }
        }
    }
}

/// The key, if it is 1 to [`MAX_KEY_BYTES`] visible ASCII characters.
fn well_formed(value: &[u8]) -> Option<&str> {
    if value.is_empty() || value.len() > MAX_KEY_BYTES || !value.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    std::str::from_utf8(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_visible_ascii() {
        assert_eq!(well_formed(b"4f0c2b9e-1d7a-4c3e-9b8f-2a6d5e7c1b00"), Some("4f0c2b9e-1d7a-4c3e-9b8f-2a6d5e7c1b00"));
        assert_eq!(well_formed(b"\"quoted\""), Some("\"quoted\""));
        assert_eq!(well_formed(&[b'k'; MAX_KEY_BYTES]), Some("k".repeat(MAX_KEY_BYTES).as_str()));
        assert_eq!(well_formed(&[b'k'; MAX_KEY_BYTES + 1]), None);
        assert_eq!(well_formed(b""), None);
        assert_eq!(well_formed(b"with space"), None);
        assert_eq!(well_formed("naïve".as_bytes()), None);
    }
}

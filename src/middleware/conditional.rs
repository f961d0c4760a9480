//! Conditional responses and cache directives, for every protocol that reads
//! with `GET` (JSON routes and Connect `GET`).
//!
//! A successful `GET` answered with one JSON or protobuf document carries a
//! strong `ETag` (a 64-bit FNV-1a digest of the exact bytes and their
//! length: the same on every replica running the same build); a request
//! whose `If-None-Match` names it gets 304 with no body. Answers that hold
//! credentials (the users service) are `no-store`; answers to a request
//! with credentials are `private`.

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;

/// Largest answer given an `ETag` (bigger ones are sent as they are).
const MAX_TAGGED: usize = 4 * 1024 * 1024;

/// The RPCs whose answers hold a token or credentials.
fn holds_credentials(rpc: &str) -> bool {
    rpc.starts_with("/conduit.v1.Users/")
}

/// FNV-1a, 64 bits: stable across processes and builds.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

fn etag(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{:016x}-{:x}\"", digest(bytes), bytes.len()))
        .expect("hex digits are a valid header value")
}

/// Whether `If-None-Match` names `tag` (or is `*`), by strong comparison.
fn matches(conditions: &[HeaderValue], tag: &HeaderValue) -> bool {
    conditions
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.as_bytes() == tag.as_bytes())
}

/// Conditional responses and cache directives (used as
/// `gateway::AroundLayer::new(Conditional)`); see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conditional;

/// What a request says about its answer's caching.
pub struct Asked {
    get: bool,
    private: bool,
    no_store: bool,
    /// The request's `If-None-Match` values (only a GET's are kept).
    conditions: Vec<HeaderValue>,
}

impl gateway::Around for Conditional {
    type State = Asked;

    fn before(&self, req: &mut Request<Body>) -> Asked {
        Asked {
            get: req.method() == Method::GET,
            private: req.headers().contains_key(header::AUTHORIZATION),
            no_store: req.extensions().get::<gateway::RpcMethod>().is_some_and(|rpc| holds_credentials(rpc.0)),
            conditions: if req.method() == Method::GET {
                req.headers().get_all(header::IF_NONE_MATCH).iter().cloned().collect()
            } else {
                Vec::new()
            },
        }
    }

    fn after(asked: Asked, mut response: Response<Body>) -> BoxFuture<'static, Response<Body>> {
        let directive = match (asked.no_store, asked.private) {
            (true, _) => Some("no-store"),
            (false, true) => Some("private, no-cache"),
            (false, false) if asked.get => Some("no-cache"),
            _ => None,
        };
        if let Some(directive) = directive
            && !response.headers().contains_key(header::CACHE_CONTROL)
        {
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(directive));
        }
        let whole = http_body::Body::size_hint(response.body()).exact().is_some_and(|n| n as usize <= MAX_TAGGED);
        if !asked.get || asked.no_store || response.status() != StatusCode::OK || !whole {
            return Box::pin(std::future::ready(response));
        }
        Box::pin(async move {
            let (mut parts, body) = response.into_parts();
            let bytes: Bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return Response::from_parts(parts, Body::empty()),
            };
            let tag = etag(&bytes);
            let not_modified = matches(&asked.conditions, &tag);
            parts.headers.insert(header::ETAG, tag);
            if not_modified {
                parts.status = StatusCode::NOT_MODIFIED;
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.remove(header::CONTENT_TYPE);
                return Response::from_parts(parts, Body::empty());
            }
            Response::from_parts(parts, Body::from(bytes))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_strong_stable_and_compared_exactly() {
        let tag = etag(b"{\"tags\":[]}");
        assert_eq!(tag, etag(b"{\"tags\":[]}"));
        assert_ne!(tag, etag(b"{\"tags\":[\"a\"]}"));
        assert!(tag.to_str().unwrap().starts_with('"') && !tag.to_str().unwrap().starts_with("W/"));
        let mut conditions = vec![HeaderValue::from_static("\"x\", \"y\"")];
        assert!(!matches(&conditions, &tag));
        conditions.push(tag.clone());
        assert!(matches(&conditions, &tag));
    }
}

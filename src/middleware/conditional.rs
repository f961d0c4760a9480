//! Conditional responses and cache directives, for every protocol that reads
//! with `GET` (JSON routes and Connect `GET`).
//!
//! A successful `GET` answered with one JSON or protobuf document carries a
//! strong `ETag` (a 64-bit digest of the exact bytes and their length: the
//! same on every replica running the same build); a request
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

/// A 64-bit digest of `bytes`, eight at a time with a folded 128-bit
/// multiply, stable across processes and builds. Like the FNV-1a it
/// replaced it is no defence against crafted collisions; it costs under one
/// instruction a byte where FNV-1a's byte at a time cost five (4% of a list
/// request's CPU).
fn digest(bytes: &[u8]) -> u64 {
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;
    let fold = |a: u64, b: u64| {
        let product = u128::from(a) * u128::from(b);
        (product as u64) ^ ((product >> 64) as u64)
    };
    let mut hash = K2 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or_default());
        hash = fold(hash ^ word ^ K2, K1);
    }
    let mut last = [0u8; 8];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    fold(hash ^ u64::from_le_bytes(last) ^ K1, K2)
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

    #[test]
    fn the_digest_is_fixed_across_builds_and_sees_every_byte() {
        // Replicas of one build, and of the next, must tag alike.
        assert_eq!(digest(br#"{"tags":["dragons","training"]}"#), 0x52ec_acbd_5464_45df);
        assert_eq!(digest(b""), 0x2024_c95d_cd9b_21b5);
        let text = br#"{"article":{"slug":"how-to-train-your-dragon","favoritesCount":0}}"#.to_vec();
        let original = digest(&text);
        for at in 0..text.len() {
            let mut changed = text.clone();
            changed[at] ^= 1;
            assert_ne!(digest(&changed), original, "a change at byte {at} is seen");
        }
        assert_ne!(digest(&text[..text.len() - 1]), original);
    }
}

//! Response compression (gzip, br, zstd, as the client's `Accept-Encoding`
//! prefers) for answers worth it, and entity tags that stay strong: a
//! compressed answer is another representation, so its tag gets the
//! coding as a suffix (`"…-gzip"`), which is taken off again when a
//! client sends it back in `If-None-Match`.
//!
//! gRPC and gRPC-Web answers are never compressed here (gRPC compresses
//! messages itself), nor are streams (NDJSON, server-sent events, Connect
//! streams), which must not wait for a compressor's buffer.

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, header};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};

/// The content codings this layer produces, as tag suffixes.
const CODINGS: [&str; 3] = ["gzip", "br", "zstd"];

/// Compresses answers of at least `min_bytes` (of unknown length too).
pub fn layer(min_bytes: u64) -> CompressionLayer<impl Predicate> {
    let worth_it = SizeAbove::new(min_bytes)
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::SSE)
        .and(NotForContentType::const_new("application/x-ndjson"))
        .and(NotForContentType::const_new("application/connect+"));
    CompressionLayer::new().gzip(true).br(true).zstd(true).no_deflate().compress_when(worth_it)
}

/// Gives compressed answers their own strong tags (used as
/// `gateway::AroundLayer::new(EncodedTags)` outside [`layer`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodedTags;

/// The coding named by the tags a request sent back, if any.
pub struct SentCoding(Option<&'static str>);

/// `"x-gzip"` → (`"x"`, gzip).
fn split_tag(tag: &str) -> (String, Option<&'static str>) {
    let tag = tag.trim();
    for coding in CODINGS {
        if let Some(base) = tag.strip_suffix('"').and_then(|t| t.strip_suffix(coding)).and_then(|t| t.strip_suffix('-'))
        {
            return (format!("{base}\""), Some(coding));
        }
    }
    (tag.to_owned(), None)
}

impl gateway::Around for EncodedTags {
    type State = SentCoding;

    fn before(&self, req: &mut Request<Body>) -> SentCoding {
        let Some(value) = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else {
            return SentCoding(None);
        };
        let mut sent = None;
        let plain: Vec<String> = value
            .split(',')
            .map(|tag| {
                let (base, coding) = split_tag(tag);
                sent = sent.or(coding);
                base
            })
            .collect();
        if sent.is_some()
            && let Ok(plain) = HeaderValue::from_str(&plain.join(", "))
        {
            req.headers_mut().insert(header::IF_NONE_MATCH, plain);
        }
        SentCoding(sent)
    }

    fn after(sent: SentCoding, mut response: Response<Body>) -> BoxFuture<'static, Response<Body>> {
        let coding = match response.status() {
            // A 304 validates the representation the client holds.
            http::StatusCode::NOT_MODIFIED => sent.0,
            _ => response
                .headers()
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| CODINGS.into_iter().find(|c| *c == v)),
        };
        if let Some(coding) = coding
            && let Some(tag) = response.headers().get(header::ETAG).and_then(|v| v.to_str().ok())
            && let Some(base) = tag.strip_suffix('"')
            && let Ok(tagged) = HeaderValue::from_str(&format!("{base}-{coding}\""))
        {
            response.headers_mut().insert(header::ETAG, tagged);
        }
        Box::pin(std::future::ready(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coding_suffixes_come_off_and_only_known_ones() {
        assert_eq!(split_tag(" \"abc-12-gzip\""), ("\"abc-12\"".to_owned(), Some("gzip")));
        assert_eq!(split_tag("\"abc-zstd\""), ("\"abc\"".to_owned(), Some("zstd")));
        assert_eq!(split_tag("\"abc-12\""), ("\"abc-12\"".to_owned(), None));
        assert_eq!(split_tag("*"), ("*".to_owned(), None));
    }
}

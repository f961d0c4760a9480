//! One structured line per request, and the request id it is known by.
//!
//! Never logged: request or response bodies, headers other than the request
//! id, and so no password, token or `authorization` value.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response};

pub use crate::domain::auth::UserSlot;

/// The request id header, accepted from the client or generated, and echoed.
pub const REQUEST_ID: &str = "x-request-id";

/// A request id the client may send: 1 to 128 visible ASCII characters.
fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// A new request id: unique within the process and across restarts.
fn generate() -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: OnceLock<u64> = OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos());
        (nanos.unwrap_or_default() as u64) ^ u64::from(std::process::id()).rotate_left(32)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{start:016x}{n:08x}")).expect("hex digits are a valid header value")
}

/// Logs one line per request, after its answer starts (used as
/// `gateway::AroundLayer::new(RequestLog)`): method, RPC or route template,
/// protocol, HTTP status (and gRPC status when the answer carries it in its
/// headers), latency, request id and user id.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLog;

/// What the log line needs from the request.
pub struct Logged {
    started: Instant,
    id: HeaderValue,
    user: UserSlot,
    method: http::Method,
    protocol: &'static str,
    rpc: Option<&'static str>,
    route: Option<&'static str>,
    trace: Option<crate::observability::observe::TraceId>,
}

impl gateway::Around for RequestLog {
    type State = Logged;

    fn before(&self, req: &mut Request<Body>) -> Logged {
        let id = match req.headers().get(REQUEST_ID) {
            Some(value) if acceptable(value) => value.clone(),
            _ => generate(),
        };
        req.headers_mut().insert(REQUEST_ID, id.clone());
        let user = UserSlot::default();
        req.extensions_mut().insert(user.clone());
        Logged {
            started: Instant::now(),
            id,
            user,
            method: req.method().clone(),
            protocol: req.extensions().get::<gateway::Protocol>().map_or("unknown", |p| p.as_str()),
            rpc: req.extensions().get::<gateway::RpcMethod>().map(|r| r.0),
            route: req.extensions().get::<gateway::RouteTemplate>().map(|r| r.0),
            trace: req.extensions().get::<crate::observability::observe::TraceId>().copied(),
        }
    }

    fn after(logged: Logged, mut response: Response<Body>) -> BoxFuture<'static, Response<Body>> {
        let grpc_status = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
        tracing::info!(
            target: "conduit::request",
            method = %logged.method,
            rpc = logged.rpc.unwrap_or("-"),
            route = logged.route.unwrap_or("-"),
            protocol = logged.protocol,
            status = response.status().as_u16(),
            grpc_status = grpc_status.as_deref().unwrap_or("-"),
            latency_ms = logged.started.elapsed().as_secs_f64() * 1000.0,
            request_id = logged.id.to_str().unwrap_or_default(),
            trace_id = logged.trace.map(|t| tracing::field::display(t.0)),
            user_id = logged.user.0.get().copied(),
            "request"
        );
        response.headers_mut().insert(REQUEST_ID, logged.id);
        Box::pin(std::future::ready(response))
    }
}

//! From gRPC status to HTTP: the standard code table and the pluggable
//! renderer that writes error bodies.

use http::StatusCode;
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Sets `Retry-After` (whole seconds, rounded up) from the status'
/// `google.rpc.RetryInfo`, if it has one.
pub(crate) fn retry_after(status: &Status, headers: &mut http::HeaderMap) {
    if let Some(delay) = status.get_details_retry_info().and_then(|info| info.retry_delay) {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds.max(1)));
    }
}

/// The standard mapping of gRPC codes to HTTP statuses (as in
/// `google/rpc/code.proto` and grpc-gateway).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// The canonical name of a code (`NOT_FOUND`, …), as metrics and traces label it.
pub fn code_name(code: Code) -> &'static str {
    gateway_rules::codes::CODE_NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The code an HTTP status stands for: the inverse of [`http_status`]
/// (other 4xx count as INVALID_ARGUMENT, other 5xx as INTERNAL), for
/// answers that carry no gRPC status of their own.
pub fn code_for_http_status(status: u16) -> Code {
    match status {
        200..=399 => Code::Ok,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 | 501 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::AlreadyExists,
        412 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        503 => Code::Unavailable,
        400..=499 => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// The Connect protocol's name of a code (`not_found`, `invalid_argument`, …).
pub fn connect_code(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Writes the HTTP form of a failed call. Install one per gateway to give an
/// API its own error shape.
pub trait ErrorRenderer: Send + Sync + 'static {
    /// HTTP status for a gRPC code; the standard table unless overridden.
    fn http_status(&self, code: Code) -> StatusCode {
        http_status(code)
    }

    /// Extra headers for an error (for example `WWW-Authenticate` on 401).
    fn headers(&self, _status: &Status, _headers: &mut http::HeaderMap) {}

    /// JSON body for an error.
    fn body(&self, status: &Status) -> Vec<u8>;

    /// JSON Schema of [`ErrorRenderer::body`], for the OpenAPI document.
    fn schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "description": "A google.rpc.Status: the gRPC code, a message and details.",
            "properties": {
                "code": { "type": "integer" },
                "message": { "type": "string" },
                "details": { "type": "array", "items": { "type": "object" } },
            },
            "required": ["code", "message"],
        })
    }
}

/// The default renderer: the `google.rpc.Status` JSON form, with
/// `BadRequest` details spelled out.
#[derive(Debug, Default, Clone, Copy)]
pub struct RpcStatusRenderer;

impl ErrorRenderer for RpcStatusRenderer {
    fn body(&self, status: &Status) -> Vec<u8> {
        let mut details = Vec::new();
        if let Some(bad) = status.get_details_bad_request() {
            let violations: Vec<_> =
                bad.field_violations.iter().map(|v| json!({"field": v.field, "description": v.description})).collect();
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": violations,
            }));
        }
        serde_json::to_vec(&json!({
            "code": status.code() as i32,
            "message": status.message(),
            "details": details,
        }))
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_code_like_the_standard_table() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn default_body_is_rpc_status_json() {
        let status = crate::rule::binding::invalid_field("a.b", "bad".into());
        let body: serde_json::Value = serde_json::from_slice(&RpcStatusRenderer.body(&status)).unwrap();
        assert_eq!(body["code"], 3);
        assert_eq!(body["details"][0]["fieldViolations"][0]["field"], "a.b");
    }
}

//! A call refused before it reaches a service (authentication, limits,
//! timeouts), answered in the request's own protocol.

use axum::body::Body;
use http::{Request, Response, header};
use tonic::Status;

use crate::gateway::{Gateway, Protocol};

impl Gateway {
    /// A failed answer to `req` in the request's own protocol (classified by
    /// [`crate::ClassifyLayer`]): trailers-only gRPC or gRPC-Web, the Connect error
    /// JSON, or the JSON error of the installed renderer; with `Retry-After`
    /// when the status carries a `google.rpc.RetryInfo`. For layers that
    /// refuse a call before it reaches a service (authentication, limits).
    pub fn reject<B>(&self, req: &Request<B>, status: &Status) -> Response<Body> {
        let mut response = self.rejection(req, status);
        crate::status::retry_after(status, response.headers_mut());
        response
    }

    /// As [`Gateway::reject`], but a JSON answer gets `http_status` where
    /// HTTP has a more exact status than the code's own (408 for a body
    /// that did not arrive in time, where DEADLINE_EXCEEDED alone says 504).
    pub fn reject_as<B>(&self, req: &Request<B>, http_status: http::StatusCode, status: &Status) -> Response<Body> {
        match req.extensions().get::<Protocol>() {
            Some(Protocol::Json) | None => self.error_response(Some(http_status), status),
            Some(_) => self.reject(req, status),
        }
    }

    /// What [`Gateway::reject`] needs of `req` (its protocol and content
    /// type), kept by a layer that may refuse the call after the request
    /// has moved on to the service.
    pub fn refusal_head<B>(req: &Request<B>) -> Request<()> {
        let mut head = Request::new(());
        if let Some(protocol) = req.extensions().get::<Protocol>() {
            head.extensions_mut().insert(*protocol);
        }
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            head.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
        }
        head
    }

    fn rejection<B>(&self, req: &Request<B>, status: &Status) -> Response<Body> {
        match req.extensions().get::<Protocol>() {
            Some(Protocol::Grpc) => status.clone().into_http(),
            Some(Protocol::GrpcWeb) => {
                let mut response: Response<Body> = status.clone().into_http();
                let content_type = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .cloned()
                    .unwrap_or(::http::HeaderValue::from_static("application/grpc-web+proto"));
                response.headers_mut().insert(header::CONTENT_TYPE, content_type);
                response
            }
            Some(Protocol::Connect) => crate::protocol::connect::error(status),
            _ => self.error_response(None, status),
        }
    }
}

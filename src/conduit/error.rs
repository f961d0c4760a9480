//! Conduit's errors: typed in the domain, turned into `tonic::Status` once
//! (field problems as `google.rpc.BadRequest`), and written for HTTP clients
//! in the RealWorld shape by [`RealWorldErrors`].

use http::StatusCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use gateway::ErrorRenderer;

/// A problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field in the request message (`user.email`).
    pub field: String,
    /// What is wrong, as a sentence naming the field (`email can't be blank`).
    pub message: String,
}

impl FieldError {
    /// A problem with `field`; `message` names it for a reader.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Everything a Conduit call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConduitError {
    /// No credentials, or bad ones.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The thing named does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is invalid.
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    /// A unique value is taken.
    #[error("already taken")]
    Taken(Vec<FieldError>),
    /// The database gave up on a conflicting write; retrying may succeed.
    #[error("conflicting concurrent write")]
    Busy,
    /// Anything else: logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result of Conduit operations.
pub type ConduitResult<T> = Result<T, ConduitError>;

impl From<sqlx::Error> for ConduitError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            match db.code().as_deref() {
                // A NUL or unencodable character that validation did not
                // catch (a lookup key, say): the client's text, not our fault.
                Some("22021" | "22P05") => {
                    return Self::Invalid(vec![FieldError::new("", "text must not contain NUL characters")]);
                }
                // A row referred to vanished meanwhile (the article of a new
                // comment, the user of a still-valid token).
                Some("23503") => return Self::NotFound("referenced record"),
                // Lock ordering should prevent these; if one happens, the
                // call may simply be retried.
                Some("40P01" | "40001") => return Self::Busy,
                _ => {}
            }
        }
        Self::Internal(format!("database: {e}"))
    }
}

fn with_violations(code: Code, fields: Vec<FieldError>) -> Status {
    let message = fields.iter().map(|f| f.message.as_str()).collect::<Vec<_>>().join("; ");
    let violations: Vec<FieldViolation> = fields.into_iter().map(|f| FieldViolation::new(f.field, f.message)).collect();
    Status::with_error_details(code, message, ErrorDetails::with_bad_request(violations))
}

impl From<ConduitError> for Status {
    fn from(e: ConduitError) -> Self {
        match e {
            ConduitError::Unauthenticated(m) => Status::unauthenticated(m),
            ConduitError::Forbidden(m) => Status::permission_denied(m),
            ConduitError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ConduitError::Invalid(fields) => with_violations(Code::InvalidArgument, fields),
            ConduitError::Taken(fields) => with_violations(Code::AlreadyExists, fields),
            ConduitError::Busy => Status::aborted("a concurrent change conflicted with this one; try again"),
            ConduitError::Internal(cause) => {
                // The cause stays in the log; clients learn only that it failed.
                tracing::error!(%cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Writes errors as the RealWorld spec wants:
/// `{"errors": {"body": ["email has already been taken", ...]}}`, with 422 for
/// invalid input and duplicates.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealWorldErrors;

impl ErrorRenderer for RealWorldErrors {
    fn http_status(&self, code: Code) -> StatusCode {
        match code {
            Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            other => gateway::http_status(other),
        }
    }

    fn headers(&self, status: &Status, headers: &mut http::HeaderMap) {
        if status.code() == Code::Unauthenticated {
            headers.insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Token"));
        }
    }

    fn body(&self, status: &Status) -> Vec<u8> {
        let messages: Vec<String> = match status.get_details_bad_request() {
            Some(bad) if !bad.field_violations.is_empty() => {
                bad.field_violations.into_iter().map(|v| v.description).collect()
            }
            _ => vec![status.message().to_owned()],
        };
        serde_json::to_vec(&serde_json::json!({ "errors": { "body": messages } })).unwrap_or_default()
    }
}

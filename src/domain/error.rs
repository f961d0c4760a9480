//! Conduit's errors: typed in the domain, turned into `tonic::Status` once
//! (field problems as `google.rpc.BadRequest`), and written for HTTP clients
//! in the RealWorld shape by [`RealWorldErrors`].

use http::StatusCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// How long clients are told to wait when the database is unavailable.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// UNAVAILABLE with a `google.rpc.RetryInfo` saying when to try again.
pub fn unavailable(message: &str, retry_after: std::time::Duration) -> Status {
    Status::with_error_details(Code::Unavailable, message, ErrorDetails::with_retry_info(Some(retry_after)))
}

/// `ErrorInfo.domain` of Conduit's authentication errors.
const AUTH_DOMAIN: &str = "conduit.realworld.io";

use gateway::ErrorRenderer;

/// A problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field in the request message (`user.email`).
    pub field: String,
    /// What is wrong, without the field's name (`can't be blank`).
    pub message: String,
}

impl FieldError {
    /// A problem with `field`; `message` says what, after the field's name.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Everything a Conduit call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConduitError {
    /// No credentials, or bad ones: `key` names what is wrong (`token`,
    /// `credentials`), `problem` how (`is missing`), `message` says it whole.
    #[error("{message}")]
    Unauthenticated {
        /// What is wrong.
        key: &'static str,
        /// How, after the key.
        problem: &'static str,
        /// The whole sentence.
        message: &'static str,
    },
    /// The caller may not do this to `resource` (`article`, `comment`).
    #[error("{message}")]
    Forbidden {
        /// The kind of resource refused.
        resource: &'static str,
        /// Why, as a sentence.
        message: &'static str,
    },
    /// The thing named does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is invalid.
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    /// A unique value is taken.
    #[error("already taken")]
    Taken(Vec<FieldError>),
    /// Too many failed attempts (logins at one account from one address);
    /// one more is allowed after the wait.
    #[error("too many failed attempts")]
    TooManyAttempts(std::time::Duration),
    /// The database gave up on a conflicting write; retrying may succeed.
    #[error("conflicting concurrent write")]
    Busy,
    /// The database cannot be reached now; retrying later may succeed.
    #[error("the database is unavailable")]
    Unavailable,
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
                    return Self::Invalid(vec![FieldError::new("", "must not contain NUL characters")]);
                }
                // A row referred to vanished meanwhile (the article of a new
                // comment, the user of a still-valid token).
                Some("23503") => return Self::NotFound("referenced record"),
                // Lock ordering should prevent these; if one happens, the
                // call may simply be retried.
                Some("40P01" | "40001") => return Self::Busy,
                // A retry that waited its limit for a call still running with
                // its idempotency key (`lock_timeout`).
                Some("55P03") => return Self::Busy,
                // The server is shutting down, crashed, starting or full, or the
                // connection failed (class 08): the database is out of reach.
                // A write that reached a server no longer primary (a
                // switchover, before the proxy stops routing to it) changed
                // nothing and finds the primary when retried.
                Some("57P01" | "57P02" | "57P03" | "53300" | "25006") => return Self::Unavailable,
                Some(code) if code.starts_with("08") => return Self::Unavailable,
                _ => {}
            }
        }
        // No connection to be had: a condition to retry, not a bug.
        if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_)) {
            return Self::Unavailable;
        }
        Self::Internal(format!("database: {e}"))
    }
}

/// The JSON name of the last part of a field path (`article.tag_list` →
/// `tagList`), or `body` for the request as a whole.
fn field_key(path: &str) -> String {
    match path.rsplit('.').next() {
        Some(leaf) if !leaf.is_empty() => gateway::lower_camel(leaf),
        _ => "body".to_owned(),
    }
}

fn with_violations(code: Code, fields: Vec<FieldError>) -> Status {
    let message =
        fields.iter().map(|f| format!("{} {}", field_key(&f.field), f.message)).collect::<Vec<_>>().join("; ");
    let violations: Vec<FieldViolation> = fields.into_iter().map(|f| FieldViolation::new(f.field, f.message)).collect();
    Status::with_error_details(code, message, ErrorDetails::with_bad_request(violations))
}

impl From<ConduitError> for Status {
    fn from(e: ConduitError) -> Self {
        match e {
            ConduitError::Unauthenticated { key, problem, message } => {
                let reason = format!("{key}_{problem}").replace(' ', "_").to_uppercase();
                let metadata = [("key".to_owned(), key.to_owned()), ("problem".to_owned(), problem.to_owned())];
                let info =
                    ErrorDetails::with_error_info(reason, AUTH_DOMAIN, std::collections::HashMap::from(metadata));
                Status::with_error_details(Code::Unauthenticated, message, info)
            }
            ConduitError::Forbidden { resource, message } => Status::with_error_details(
                Code::PermissionDenied,
                message,
                ErrorDetails::with_resource_info(resource, "", "", "forbidden"),
            ),
            ConduitError::NotFound(what) => Status::with_error_details(
                Code::NotFound,
                format!("{what} not found"),
                ErrorDetails::with_resource_info(what, "", "", "not found"),
            ),
            ConduitError::Invalid(fields) => with_violations(Code::InvalidArgument, fields),
            ConduitError::Taken(fields) => with_violations(Code::AlreadyExists, fields),
            ConduitError::TooManyAttempts(wait) => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!("too many failed logins for this account from your address; try again in {seconds} s"),
                    ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(seconds))),
                )
            }
            ConduitError::Busy => Status::aborted("a concurrent change conflicted with this one; try again"),
            ConduitError::Unavailable => unavailable("the database is unavailable; try again shortly", RETRY_AFTER),
            ConduitError::Internal(cause) => {
                // The cause stays in the log; clients learn only that it failed.
                tracing::error!(%cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Writes errors as RealWorld v2 wants them, keyed by what they concern,
/// from the status' structured details (never its message): field
/// violations by field (`{"errors": {"email": ["has already been taken"]}}`),
/// `ResourceInfo` by resource (`{"errors": {"article": ["not found"]}}`),
/// authentication `ErrorInfo` by its key (`{"errors": {"token": ["is
/// missing"]}}`); anything else under `body`. Invalid input is 422; other
/// codes follow the standard table (ALREADY_EXISTS is 409).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealWorldErrors;

impl ErrorRenderer for RealWorldErrors {
    fn http_status(&self, code: Code) -> StatusCode {
        match code {
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::UNPROCESSABLE_ENTITY,
            other => gateway::http_status(other),
        }
    }

    fn headers(&self, status: &Status, headers: &mut http::HeaderMap) {
        if status.code() == Code::Unauthenticated {
            headers.insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Token"));
        }
    }

    fn schema(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "object",
            "description": "RealWorld errors, keyed by the field, resource or credential they concern.",
            "required": ["errors"],
            "properties": {
                "errors": {
                    "type": "object",
                    "additionalProperties": { "type": "array", "items": { "type": "string" } },
                },
            },
        })
    }

    fn body(&self, status: &Status) -> Vec<u8> {
        let details = status.get_error_details();
        let mut errors: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
        let mut add = |key: String, message: String| {
            if let serde_json::Value::Array(list) = errors.entry(key).or_insert_with(|| serde_json::json!([])) {
                list.push(message.into());
            }
        };
        if let Some(bad) = details.bad_request().filter(|b| !b.field_violations.is_empty()) {
            for violation in &bad.field_violations {
                add(field_key(&violation.field), violation.description.clone());
            }
        } else if let Some(resource) = details.resource_info() {
            add(resource.resource_type.clone(), resource.description.clone());
        } else if let Some(info) = details.error_info().filter(|i| i.domain == AUTH_DOMAIN) {
            let get = |name: &str| info.metadata.get(name).cloned().unwrap_or_default();
            add(get("key"), get("problem"));
        } else {
            add("body".to_owned(), status.message().to_owned());
        }
        serde_json::to_vec(&serde_json::json!({ "errors": errors })).unwrap_or_default()
    }
}

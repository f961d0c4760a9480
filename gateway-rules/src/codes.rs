//! The gRPC status codes by name (`google/rpc/code.proto`): what
//! `(gateway.v1.errors)` may list at build time, and what the runtime labels
//! metrics and documents errors with.

/// The canonical names of the gRPC codes, indexed by number (`OK` is 0).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The number of the code called `name`, whatever its case or underscores
/// (`NOT_FOUND`, `not_found` and `NotFound` are 5).
pub fn code_number(name: &str) -> Option<i32> {
    let wanted = name.replace('_', "");
    CODE_NAMES.iter().position(|known| known.replace('_', "").eq_ignore_ascii_case(&wanted)).map(|n| n as i32)
}

/// Whether `name` is the canonical name of an error code (not `OK`), as
/// `(gateway.v1.errors)` must spell it.
pub fn is_error_code(name: &str) -> bool {
    CODE_NAMES[1..].contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_any_spelling_and_errors_exclude_ok() {
        assert_eq!(code_number("NOT_FOUND"), Some(5));
        assert_eq!(code_number("notfound"), Some(5));
        assert_eq!(code_number("Unauthenticated"), Some(16));
        assert_eq!(code_number("NOPE"), None);
        assert!(is_error_code("ABORTED"));
        assert!(!is_error_code("OK"));
        assert!(!is_error_code("aborted"));
    }
}

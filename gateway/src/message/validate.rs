//! Request validation declared in the protos with protovalidate's
//! `buf.validate` options and compiled by `gateway-build` into plain Rust
//! (no reflection, no expression interpreter on the request path).
//!
//! Every message of a package gets an implementation of [`Validate`]; the
//! generated tonic services decode with [`ValidatingCodec`], and the
//! gateway's typed handlers validate after decoding JSON or protobuf, so a
//! rule holds identically for gRPC, gRPC-Web, Connect and JSON. A broken rule
//! is `INVALID_ARGUMENT` with one `google.rpc.BadRequest` field violation per
//! problem: the field's path (`article.tag_list[2]`), a reason naming the
//! rule (`STRING_MAX_LEN`) and a description that reads after the field's
//! name (`is too long (maximum is 256 characters)`).
//!
//! Supported rules: `required`; `string`: `min_len`, `max_len`, `email`;
//! `repeated`: `min_items`, `max_items`, `unique`, `items` (string rules);
//! `int32`/`int64`: `gt`, `gte`, `lt`, `lte`. Any other rule fails the build.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// A message whose `buf.validate` rules were compiled by `gateway-build`.
pub trait Validate {
    /// Records every broken rule; field paths start with `prefix`.
    fn check(&self, prefix: &str, out: &mut Violations);

    /// `INVALID_ARGUMENT` with the field violations when a rule is broken.
    fn validate(&self) -> Result<(), Status> {
        let mut out = Violations::default();
        self.check("", &mut out);
        out.into_result()
    }
}

// A recursive message holds itself boxed (`Option<Box<T>>`); its rules are the message's.
impl<T: Validate + ?Sized> Validate for Box<T> {
    fn check(&self, prefix: &str, out: &mut Violations) {
        (**self).check(prefix, out);
    }
}

/// The broken rules of one message.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records that `field` (under `prefix`) breaks `reason`.
    pub fn add(&mut self, prefix: &str, field: &str, reason: &str, description: String) {
        let mut violation = FieldViolation::new(path(prefix, field), description);
        violation.reason = reason.to_owned();
        self.0.push(violation);
    }

    /// `Ok` when nothing was recorded.
    pub fn into_result(self) -> Result<(), Status> {
        if self.0.is_empty() {
            return Ok(());
        }
        let message = self.0.iter().map(|v| format!("{} {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
        Err(Status::with_error_details(Code::InvalidArgument, message, ErrorDetails::with_bad_request(self.0)))
    }
}

/// `prefix.field`, or `field` at the top.
pub fn path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() { field.to_owned() } else { format!("{prefix}.{field}") }
}

/// The rules of a string field (or of each item of a repeated one).
#[derive(Debug, Clone, Copy, Default)]
pub struct StringRules {
    /// Must not be empty (`required`).
    pub required: bool,
    /// Fewest characters, when set.
    pub min_len: Option<u64>,
    /// Most characters.
    pub max_len: Option<u64>,
    /// Must look like an email address: `local@domain`, no whitespace.
    pub email: bool,
}

/// Checks one string against its rules.
pub fn string(out: &mut Violations, prefix: &str, field: &str, value: &str, rules: &StringRules) {
    if let Some((reason, description)) = string_problem(value, rules) {
        out.add(prefix, field, reason, description);
    }
}

/// Checks item `index` of a repeated string field; its path
/// (`tag_list[2]`) is only written when it breaks a rule.
pub fn string_item(out: &mut Violations, prefix: &str, field: &str, index: usize, value: &str, rules: &StringRules) {
    if let Some((reason, description)) = string_problem(value, rules) {
        out.add(prefix, &format!("{field}[{index}]"), reason, description);
    }
}

fn string_problem(value: &str, rules: &StringRules) -> Option<(&'static str, String)> {
    if value.is_empty() {
        let required = rules.required || rules.min_len.is_some_and(|n| n > 0);
        return required.then(|| ("REQUIRED", "can't be blank".into()));
    }
    // Counting characters walks the text; bytes bound them (1 to 4 per
    // character), so most values are decided without counting.
    let bytes = value.len() as u64;
    let count = rules.max_len.is_some_and(|max| bytes > max) || rules.min_len.is_some_and(|min| bytes < min * 4);
    let chars = if count { value.chars().count() as u64 } else { bytes };
    if let Some(min) = rules.min_len.filter(|min| chars < *min) {
        Some(("STRING_MIN_LEN", format!("is too short (minimum is {min} characters)")))
    } else if let Some(max) = rules.max_len.filter(|max| chars > *max) {
        Some(("STRING_MAX_LEN", format!("is too long (maximum is {max} characters)")))
    } else if rules.email && !is_email(value) {
        Some(("STRING_EMAIL", "is invalid".into()))
    } else {
        None
    }
}

/// `local@domain` with both parts present, one `@`, no whitespace, and a
/// domain that neither starts nor ends with a dot.
fn is_email(value: &str) -> bool {
    match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// The rules of a repeated field.
#[derive(Debug, Clone, Copy, Default)]
pub struct RepeatedRules {
    /// Fewest items.
    pub min_items: Option<u64>,
    /// Most items.
    pub max_items: Option<u64>,
    /// No item twice.
    pub unique: bool,
}

/// Checks a repeated field's items as a whole.
pub fn repeated<T: PartialEq>(out: &mut Violations, prefix: &str, field: &str, items: &[T], rules: &RepeatedRules) {
    let count = items.len() as u64;
    if let Some(min) = rules.min_items.filter(|min| count < *min) {
        out.add(prefix, field, "REPEATED_MIN_ITEMS", format!("has too few items (minimum is {min})"));
    } else if let Some(max) = rules.max_items.filter(|max| count > *max) {
        out.add(prefix, field, "REPEATED_MAX_ITEMS", format!("has too many items (maximum is {max})"));
    }
    // Bounded by max_items above in practice; quadratic only on small lists.
    if rules.unique && items.iter().enumerate().any(|(i, item)| items[..i].contains(item)) {
        out.add(prefix, field, "REPEATED_UNIQUE", "has repeated items".into());
    }
}

/// The bounds of an integer field.
#[derive(Debug, Clone, Copy, Default)]
pub struct IntRules {
    /// Strictly greater than.
    pub gt: Option<i64>,
    /// At least.
    pub gte: Option<i64>,
    /// Strictly less than.
    pub lt: Option<i64>,
    /// At most.
    pub lte: Option<i64>,
}

/// Checks one integer against its bounds.
pub fn int(out: &mut Violations, prefix: &str, field: &str, value: i64, rules: &IntRules) {
    let broken = [
        (rules.gt.filter(|b| value <= *b), "INT_GT", "must be greater than"),
        (rules.gte.filter(|b| value < *b), "INT_GTE", "must be at least"),
        (rules.lt.filter(|b| value >= *b), "INT_LT", "must be less than"),
        (rules.lte.filter(|b| value > *b), "INT_LTE", "must be at most"),
    ];
    if let Some((Some(bound), reason, text)) = broken.into_iter().find(|(b, _, _)| b.is_some()) {
        out.add(prefix, field, reason, format!("{text} {bound}"));
    }
}

/// A message field marked `required` that is unset.
pub fn missing(out: &mut Violations, prefix: &str, field: &str) {
    out.add(prefix, field, "REQUIRED", "can't be blank".into());
}

/// tonic's protobuf codec, validating every message it decodes: generated
/// services reject a request that breaks its rules before the service
/// method runs (`gateway-build` sets it as the codec of every service).
#[derive(Debug, Clone)]
pub struct ValidatingCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ValidatingCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> Codec for ValidatingCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Validate + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = ValidatingDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ValidatingDecoder { _type: PhantomData }
    }
}

/// The decoder of [`ValidatingCodec`].
#[derive(Debug)]
pub struct ValidatingDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: prost::Message + Default + Validate + Send + 'static> Decoder for ValidatingDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // A message that does not decode (broken wire format, a string that
        // is not UTF-8) is the sender's mistake, as Connect and JSON say too;
        // tonic's own decoder calls it INTERNAL.
        let message = U::decode(buf).map_err(|e| {
            let name = std::any::type_name::<U>().rsplit("::").next().unwrap_or_default();
            Status::invalid_argument(format!("the message is not a valid {name}: {e}"))
        })?;
        message.validate()?;
        Ok(Some(message))
    }
}

/// Well-known types carry no rules of their own.
macro_rules! no_rules {
    ($($t:ty),* $(,)?) => {
        $(impl Validate for $t {
            fn check(&self, _prefix: &str, _out: &mut Violations) {}
        })*
    };
}

use crate::message::wkt;
no_rules!(
    wkt::Timestamp,
    wkt::Duration,
    wkt::FieldMask,
    wkt::Any,
    wkt::Empty,
    wkt::Struct,
    wkt::Value,
    wkt::ListValue,
    wkt::BoolValue,
    wkt::BytesValue,
    wkt::DoubleValue,
    wkt::FloatValue,
    wkt::Int32Value,
    wkt::Int64Value,
    wkt::StringValue,
    wkt::UInt32Value,
    wkt::UInt64Value,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(check: impl FnOnce(&mut Violations)) -> Vec<(String, String, String)> {
        let mut out = Violations::default();
        check(&mut out);
        out.0.into_iter().map(|v| (v.field, v.reason, v.description)).collect()
    }

    #[test]
    fn strings_lists_and_numbers_break_their_rules_with_a_reason_and_a_description() {
        let title = StringRules { required: true, max_len: Some(3), ..Default::default() };
        assert_eq!(problems(|o| string(o, "article", "title", "", &title))[0].1, "REQUIRED");
        assert_eq!(
            problems(|o| string(o, "article", "title", "abcd", &title)),
            [("article.title".into(), "STRING_MAX_LEN".into(), "is too long (maximum is 3 characters)".into())]
        );
        assert!(problems(|o| string(o, "", "title", "äbc", &title)).is_empty(), "characters, not bytes");
        let email = StringRules { email: true, ..Default::default() };
        assert_eq!(problems(|o| string(o, "", "email", "a b@c", &email))[0].1, "STRING_EMAIL");
        assert!(problems(|o| string(o, "", "email", "", &email)).is_empty(), "empty and not required");
        let tags = RepeatedRules { max_items: Some(2), unique: true, ..Default::default() };
        let reasons: Vec<String> =
            problems(|o| repeated(o, "", "tags", &["a", "b", "a"], &tags)).into_iter().map(|p| p.1).collect();
        assert_eq!(reasons, ["REPEATED_MAX_ITEMS", "REPEATED_UNIQUE"]);
        let limit = IntRules { gte: Some(1), lte: Some(100), ..Default::default() };
        assert_eq!(problems(|o| int(o, "", "limit", 0, &limit))[0].2, "must be at least 1");
        assert_eq!(problems(|o| int(o, "", "limit", 101, &limit))[0].2, "must be at most 100");
        assert!(problems(|o| int(o, "", "limit", 100, &limit)).is_empty());
    }

    #[test]
    fn a_broken_rule_is_invalid_argument_with_bad_request_details() {
        use tonic_types::StatusExt;
        let mut out = Violations::default();
        missing(&mut out, "user", "email");
        let status = out.into_result().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "user.email can't be blank");
        assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].reason, "REQUIRED");
    }
}

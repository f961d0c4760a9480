//! The well-known protobuf types (`google.protobuf.*`) as generated code
//! refers to them (`gateway-build` maps the package here), with their
//! proto3 JSON forms.
//!
//! [`Timestamp`] is the gateway's own: RFC 3339 in UTC with a `Z` and always
//! a fractional part (3, 6 or 9 digits; the specification allows 0 too),
//! which JavaScript clients and JSON Schema `date-time` validators read most
//! safely; one outside years 0001–9999 or with nanos outside 0–999,999,999
//! is an error, never written. [`FieldMask`] and
//! [`Any`] are its own too; the others come from `pbjson-types`.

pub use pbjson_types::{
    BoolValue, BytesValue, DoubleValue, Duration, Empty, FloatValue, Int32Value, Int64Value, ListValue, NullValue,
    StringValue, Struct, UInt32Value, UInt64Value, Value,
};

/// `google.protobuf.FieldMask`: in JSON one string of comma-separated
/// lowerCamelCase paths (`"user.displayName,photo"`); `paths` holds the
/// proto names (`user.display_name`).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct FieldMask {
    /// Field paths, dotted, with proto field names.
    #[prost(string, repeated, tag = "1")]
    pub paths: Vec<String>,
}

impl serde::Serialize for FieldMask {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(problem) = self.paths.iter().find_map(|p| unwritable_path(p)) {
            return Err(serde::ser::Error::custom(problem));
        }
        let camel: Vec<String> = self
            .paths
            .iter()
            .map(|p| p.split('.').map(crate::rule::spec::lower_camel).collect::<Vec<_>>().join("."))
            .collect();
        serializer.serialize_str(&camel.join(","))
    }
}

impl<'de> serde::Deserialize<'de> for FieldMask {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let paths = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|path| {
                if path.contains('_') {
                    return Err(serde::de::Error::custom(format!(
                        "field mask path {path:?} must be lowerCamelCase in JSON"
                    )));
                }
                Ok(path.split('.').map(snake_case).collect::<Vec<_>>().join("."))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { paths })
    }
}

/// Why a path cannot be written in JSON so that it reads back the same: its
/// lowerCamelCase form loses upper-case letters, and an `_` not followed by
/// a lower-case letter (`a__b`, `a_1`, `a_`).
fn unwritable_path(path: &str) -> Option<String> {
    let b = path.as_bytes();
    if b.iter().any(u8::is_ascii_uppercase) {
        return Some(format!("field mask path {path:?} has upper-case letters: it cannot be written as JSON"));
    }
    let bad_underscore =
        b.iter().enumerate().any(|(i, c)| *c == b'_' && !b.get(i + 1).is_some_and(u8::is_ascii_lowercase));
    bad_underscore.then(|| {
        format!("field mask path {path:?}: an '_' must be followed by a lower-case letter to be written as JSON")
    })
}

/// `displayName` → `display_name`.
fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

use std::fmt;

/// `google.protobuf.Timestamp`: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second, 0 to 999,999,999.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// Earliest and latest seconds proto3 allows (years 0001 to 9999).
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

impl Timestamp {
    /// A timestamp from seconds and nanoseconds since the epoch.
    pub fn new(seconds: i64, nanos: i32) -> Self {
        Self { seconds, nanos }
    }
}

impl From<time::OffsetDateTime> for Timestamp {
    fn from(t: time::OffsetDateTime) -> Self {
        Self::new(t.unix_timestamp(), t.nanosecond() as i32)
    }
}

/// Days since 1970-01-01 to a civil (year, month, day) date, proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A civil date to days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.seconds.div_euclid(86_400);
        let secs = self.seconds.rem_euclid(86_400);
        let (y, mo, d) = civil_from_days(days);
        write!(f, "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)?;
        let nanos = self.nanos.clamp(0, 999_999_999);
        if nanos % 1_000_000 == 0 {
            write!(f, ".{:03}Z", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            write!(f, ".{:06}Z", nanos / 1_000)
        } else {
            write!(f, ".{nanos:09}Z")
        }
    }
}

/// Why a string is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampParseError(&'static str);

impl fmt::Display for TimestampParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid RFC 3339 timestamp: {}", self.0)
    }
}

impl std::error::Error for TimestampParseError {}

impl std::str::FromStr for Timestamp {
    type Err = TimestampParseError;

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let num = |range: std::ops::Range<usize>| -> Result<i64, TimestampParseError> {
            let part = b.get(range).ok_or(TimestampParseError("too short"))?;
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(TimestampParseError("expected digits"));
            }
            Ok(part.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
        };
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return Err(TimestampParseError("expected YYYY-MM-DDTHH:MM:SS"));
        }
        let (year, month, day) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let month_days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if !(1..=12).contains(&month) || !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 59 {
            return Err(TimestampParseError("field out of range"));
        }
        let mut i = 19;
        let mut nanos = 0i64;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 9 {
                    nanos = nanos * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            let digits = i - start;
            if digits == 0 {
                return Err(TimestampParseError("empty fraction"));
            }
            if digits > 9 {
                return Err(TimestampParseError("more than 9 fractional digits"));
            }
            for _ in digits..9 {
                nanos *= 10;
            }
        }
        let offset = match b.get(i..) {
            Some(b"Z") => 0,
            Some([sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]) => {
                let digits = [h1, h2, m1, m2];
                if !digits.iter().all(|d| d.is_ascii_digit()) {
                    return Err(TimestampParseError("bad offset"));
                }
                let (hours, minutes) = ((h1 - b'0') * 10 + (h2 - b'0'), (m1 - b'0') * 10 + (m2 - b'0'));
                if hours > 23 || minutes > 59 {
                    return Err(TimestampParseError("offset out of range"));
                }
                let minutes = i64::from(hours) * 60 + i64::from(minutes);
                if *sign == b'+' { minutes * 60 } else { -minutes * 60 }
            }
            _ => return Err(TimestampParseError("expected Z or an offset")),
        };
        let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
            return Err(TimestampParseError("outside years 0001 to 9999"));
        }
        Ok(Self::new(seconds, nanos as i32))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&self.seconds) || !(0..=999_999_999).contains(&self.nanos) {
            return Err(serde::ser::Error::custom(format!(
                "timestamp {}s {}ns is outside years 0001 to 9999 or has nanos outside 0 to 999999999",
                self.seconds, self.nanos
            )));
        }
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_fraction_always() {
        let cases = [
            (Timestamp::new(0, 0), "1970-01-01T00:00:00.000Z"),
            (Timestamp::new(1_767_323_045, 123_000_000), "2026-01-02T03:04:05.123Z"),
            (Timestamp::new(1_767_323_045, 123_456_000), "2026-01-02T03:04:05.123456Z"),
            (Timestamp::new(1_767_323_045, 1), "2026-01-02T03:04:05.000000001Z"),
            (Timestamp::new(951_782_400, 0), "2000-02-29T00:00:00.000Z"),
            (Timestamp::new(1_709_164_800, 0), "2024-02-29T00:00:00.000Z"),
            (Timestamp::new(-1, 0), "1969-12-31T23:59:59.000Z"),
        ];
        for (ts, text) in cases {
            assert_eq!(ts.to_string(), text);
            assert_eq!(text.parse::<Timestamp>().unwrap(), ts, "{text}");
        }
    }

    #[test]
    fn refuses_to_write_what_cannot_be_read_back() {
        for unwritable in
            [Timestamp::new(MAX_SECONDS + 1, 0), Timestamp::new(MIN_SECONDS - 1, 0), Timestamp::new(0, -1)]
        {
            assert!(serde_json::to_string(&unwritable).is_err(), "{unwritable:?}");
        }
        assert_eq!(
            serde_json::to_string(&Timestamp::new(MAX_SECONDS, 999_999_999)).unwrap(),
            "\"9999-12-31T23:59:59.999999999Z\""
        );
        for unwritable in ["sInt32", "a__b", "digit_9", "trailing_"] {
            assert!(serde_json::to_string(&FieldMask { paths: vec![unwritable.into()] }).is_err(), "{unwritable}");
        }
        assert_eq!(
            serde_json::to_string(&FieldMask { paths: vec!["user.display_name".into()] }).unwrap(),
            "\"user.displayName\""
        );
    }

    #[test]
    fn parses_offsets_and_rejects_garbage() {
        let ts: Timestamp = "2026-01-02T05:04:05+02:00".parse().unwrap();
        assert_eq!(ts.to_string(), "2026-01-02T03:04:05.000Z");
        for bad in [
            "",
            "2026-01-02",
            "2026-13-02T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-01-02T00:00:00",
            "2026-01-02T00:00:00.Z",
            "x026-01-02T00:00:00Z",
            "2026-01-02t00:00:00Z",
            "2026-01-02T00:00:00z",
            "2026-01-02 00:00:00Z",
            "2026-01-02T00:00:00.1234567891Z",
            "2026-01-02T00:00:00+24:00",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
    }
}

/// `google.protobuf.Any`: a message packed with its type URL.
///
/// In JSON it is the packed message's own JSON with an `"@type"` key, or
/// `{"@type": …, "value": …}` when the packed type is a well-known type with
/// a JSON form of its own (`Timestamp`, wrappers, `Struct`, …). Only types
/// known to [`register_any_types`] can be written or read: the generated
/// `ANY_TYPES` of a package, and the well-known types, which are always known.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Any {
    /// `type.googleapis.com/<full message name>`.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The packed message, in protobuf binary.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: bytes::Bytes,
}

/// How [`Any`] converts one message type to and from JSON.
#[derive(Clone, Copy)]
pub struct AnyType {
    /// Full message name, `package.Message`.
    pub name: &'static str,
    to_json: fn(&[u8]) -> Result<serde_json::Value, String>,
    from_json: fn(serde_json::Value) -> Result<Vec<u8>, String>,
    /// Well-known types with their own JSON form nest it under `value`.
    nested: bool,
}

impl std::fmt::Debug for AnyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyType").field("name", &self.name).finish_non_exhaustive()
    }
}

impl AnyType {
    /// The converter of message `T`, whose full name is `name`.
    pub const fn of<T>(name: &'static str) -> Self
    where
        T: prost::Message + Default + serde::Serialize + serde::de::DeserializeOwned,
    {
        Self { name, to_json: any_to_json::<T>, from_json: any_from_json::<T>, nested: false }
    }

    const fn well_known<T>(name: &'static str) -> Self
    where
        T: prost::Message + Default + serde::Serialize + serde::de::DeserializeOwned,
    {
        Self { nested: true, ..Self::of::<T>(name) }
    }
}

fn any_to_json<T: prost::Message + Default + serde::Serialize>(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let message = T::decode(bytes).map_err(|e| e.to_string())?;
    serde_json::to_value(&message).map_err(|e| e.to_string())
}

fn any_from_json<T: prost::Message + serde::de::DeserializeOwned>(json: serde_json::Value) -> Result<Vec<u8>, String> {
    let message: T = serde_json::from_value(json).map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec())
}

/// The well-known types [`Any`] always knows.
const WELL_KNOWN: &[AnyType] = &[
    AnyType::well_known::<Timestamp>("google.protobuf.Timestamp"),
    AnyType::well_known::<Duration>("google.protobuf.Duration"),
    AnyType::well_known::<FieldMask>("google.protobuf.FieldMask"),
    AnyType::well_known::<Struct>("google.protobuf.Struct"),
    AnyType::well_known::<Value>("google.protobuf.Value"),
    AnyType::well_known::<ListValue>("google.protobuf.ListValue"),
    AnyType::well_known::<Any>("google.protobuf.Any"),
    AnyType::well_known::<BoolValue>("google.protobuf.BoolValue"),
    AnyType::well_known::<BytesValue>("google.protobuf.BytesValue"),
    AnyType::well_known::<DoubleValue>("google.protobuf.DoubleValue"),
    AnyType::well_known::<FloatValue>("google.protobuf.FloatValue"),
    AnyType::well_known::<Int32Value>("google.protobuf.Int32Value"),
    AnyType::well_known::<Int64Value>("google.protobuf.Int64Value"),
    AnyType::well_known::<StringValue>("google.protobuf.StringValue"),
    AnyType::well_known::<UInt32Value>("google.protobuf.UInt32Value"),
    AnyType::well_known::<UInt64Value>("google.protobuf.UInt64Value"),
    AnyType::of::<Empty>("google.protobuf.Empty"),
];

type AnyRegistry = std::sync::RwLock<std::collections::HashMap<&'static str, AnyType>>;

fn any_registry() -> &'static AnyRegistry {
    static REGISTRY: std::sync::OnceLock<AnyRegistry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| std::sync::RwLock::new(WELL_KNOWN.iter().map(|t| (t.name, *t)).collect()))
}

/// Makes message types known to [`Any`]'s JSON form, for the whole process
/// (JSON conversion has no other context to look them up in).
/// [`crate::GatewayBuilder::any_types`] calls it with a package's `ANY_TYPES`.
pub fn register_any_types(types: &[AnyType]) {
    let mut registry = any_registry().write().unwrap_or_else(std::sync::PoisonError::into_inner);
    registry.extend(types.iter().map(|t| (t.name, *t)));
}

fn any_type(type_url: &str) -> Option<AnyType> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    any_registry().read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).copied()
}

impl serde::Serialize for Any {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        if self.type_url.is_empty() && self.value.is_empty() {
            return serializer.serialize_map(Some(0))?.end();
        }
        let kind = any_type(&self.type_url).ok_or_else(|| {
            S::Error::custom(format!("Any of type {:?} cannot be written as JSON: the type is unknown", self.type_url))
        })?;
        let json =
            (kind.to_json)(&self.value).map_err(|e| S::Error::custom(format!("Any of type {}: {e}", kind.name)))?;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("@type", &self.type_url)?;
        match json {
            serde_json::Value::Object(fields) if !kind.nested => {
                for (key, value) in &fields {
                    map.serialize_entry(key, value)?;
                }
            }
            other => map.serialize_entry("value", &other)?,
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for Any {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let type_url = match fields.remove("@type") {
            Some(serde_json::Value::String(url)) => url,
            Some(_) => return Err(D::Error::custom("Any's @type must be a string")),
            None if fields.is_empty() => return Ok(Self::default()),
            None => return Err(D::Error::custom("an Any needs an @type naming the packed message")),
        };
        let kind = any_type(&type_url)
            .ok_or_else(|| D::Error::custom(format!("Any of type {type_url:?}: the type is unknown here")))?;
        let json = if kind.nested {
            fields.remove("value").unwrap_or(serde_json::Value::Null)
        } else {
            serde_json::Value::Object(fields)
        };
        let value = (kind.from_json)(json).map_err(|e| D::Error::custom(format!("Any of type {}: {e}", kind.name)))?;
        Ok(Self { type_url, value: value.into() })
    }
}

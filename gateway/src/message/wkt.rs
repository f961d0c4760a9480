//! The well-known protobuf types (`google.protobuf.*`) as generated code
//! refers to them (`gateway-build` maps the package here), with their
//! proto3 JSON forms, all the gateway's own (see [`crate::protojson`]).
//!
//! [`Timestamp`] is RFC 3339 in UTC with a `Z` and always a fractional
//! part (3, 6 or 9 digits; the specification allows 0 too), which
//! JavaScript clients and JSON Schema `date-time` validators read most
//! safely; one outside years 0001–9999 or with nanos outside
//! 0–999,999,999 is an error, never written. [`Duration`] is seconds with
//! an `s`, within ±315,576,000,000 s. [`Value`] is any JSON value, `null`
//! being its `null_value`.

use std::fmt;

use crate::protojson::{self as pj, Codec as _};

macro_rules! wrappers {
    ($($(#[$doc:meta])* $name:ident($ty:ty, $prost:ident, $codec:ty);)*) => {$(
        $(#[$doc])*
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct $name {
            /// The wrapped value.
            #[prost($prost, tag = "1")]
            pub value: $ty,
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                <$codec>::write(&self.value, serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <$codec>::read(deserializer)?
                    .ok_or_else(|| <D::Error as serde::de::Error>::custom("not a value of the wrapper"))?;
                Ok(Self { value })
            }
        }
    )*};
}

wrappers! {
    /// `google.protobuf.BoolValue`: the bool itself in JSON.
    BoolValue(bool, bool, pj::Bool);
    /// `google.protobuf.Int32Value`: the number itself in JSON.
    Int32Value(i32, int32, pj::Int32);
    /// `google.protobuf.Int64Value`: the number itself, as a string, in JSON.
    Int64Value(i64, int64, pj::Int64);
    /// `google.protobuf.UInt32Value`: the number itself in JSON.
    UInt32Value(u32, uint32, pj::UInt32);
    /// `google.protobuf.UInt64Value`: the number itself, as a string, in JSON.
    UInt64Value(u64, uint64, pj::UInt64);
    /// `google.protobuf.FloatValue`: the number itself in JSON.
    FloatValue(f32, float, pj::Float);
    /// `google.protobuf.DoubleValue`: the number itself in JSON.
    DoubleValue(f64, double, pj::Double);
    /// `google.protobuf.StringValue`: the string itself in JSON.
    StringValue(String, string, pj::Str);
    /// `google.protobuf.BytesValue`: the bytes themselves, in base64, in JSON.
    BytesValue(Vec<u8>, bytes, pj::Bytes<Vec<u8>>);
}

/// `google.protobuf.Empty`: `{}` in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Empty {}

impl serde::Serialize for Empty {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        serializer.serialize_map(Some(0))?.end()
    }
}

impl<'de> serde::Deserialize<'de> for Empty {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Empty;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Empty, A::Error> {
                if let Some(key) = map.next_key::<pj::Key<'de>>()? {
                    if !pj::ignoring_unknown_fields() {
                        return Err(pj::unknown_field("google.protobuf.Empty", &key.0));
                    }
                    map.next_value::<serde::de::IgnoredAny>()?;
                    while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                }
                Ok(Empty {})
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// `google.protobuf.NullValue`: `null` in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum NullValue {
    /// The only value.
    NullValue = 0,
}

impl pj::ProtoEnum for NullValue {
    fn from_json_name(name: &str) -> Option<i32> {
        (name == "NULL_VALUE").then_some(0)
    }
    fn json_name(number: i32) -> Option<&'static str> {
        (number == 0).then_some("NULL_VALUE")
    }
}

/// `google.protobuf.Struct`: a JSON object.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Struct {
    /// The object's members.
    #[prost(map = "string, message", tag = "1")]
    pub fields: std::collections::HashMap<String, Value>,
}

/// `google.protobuf.ListValue`: a JSON array.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListValue {
    /// The array's elements.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<Value>,
}

/// `google.protobuf.Value`: any JSON value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// Which value; unset is written as `null`.
    #[prost(oneof = "value::Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<value::Kind>,
}

/// The kinds of [`Value`].
pub mod value {
    /// One JSON value.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// `null`.
        #[prost(enumeration = "super::NullValue", tag = "1")]
        NullValue(i32),
        /// A number (finite: JSON has no other).
        #[prost(double, tag = "2")]
        NumberValue(f64),
        /// A string.
        #[prost(string, tag = "3")]
        StringValue(String),
        /// `true` or `false`.
        #[prost(bool, tag = "4")]
        BoolValue(bool),
        /// An object.
        #[prost(message, tag = "5")]
        StructValue(super::Struct),
        /// An array.
        #[prost(message, tag = "6")]
        ListValue(super::ListValue),
    }
}

impl serde::Serialize for Struct {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.fields.len()))?;
        for (key, value) in &self.fields {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl serde::Serialize for ListValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.values)
    }
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        match &self.kind {
            // No kind: nothing is there, which JSON says with null (as the reference does).
            None | Some(value::Kind::NullValue(_)) => serializer.serialize_unit(),
            Some(value::Kind::NumberValue(n)) if !n.is_finite() => {
                Err(S::Error::custom(format!("a google.protobuf.Value cannot hold {n} in JSON")))
            }
            Some(value::Kind::NumberValue(n)) => serializer.serialize_f64(*n),
            Some(value::Kind::StringValue(s)) => serializer.serialize_str(s),
            Some(value::Kind::BoolValue(b)) => serializer.serialize_bool(*b),
            Some(value::Kind::StructValue(s)) => s.serialize(serializer),
            Some(value::Kind::ListValue(l)) => l.serialize(serializer),
        }
    }
}

/// Reads any JSON value as a [`Value`]; objects become structs, arrays lists.
struct AnyJson;

impl<'de> serde::de::Visitor<'de> for AnyJson {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value { kind: Some(value::Kind::NullValue(0)) })
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value { kind: Some(value::Kind::BoolValue(v)) })
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.visit_f64(v as f64)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.visit_f64(v as f64)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        if !v.is_finite() {
            return Err(E::custom("a number in a google.protobuf.Value must be finite"));
        }
        Ok(Value { kind: Some(value::Kind::NumberValue(v)) })
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value { kind: Some(value::Kind::StringValue(v.to_owned())) })
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value { kind: Some(value::Kind::StringValue(v)) })
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = seq.next_element::<Value>()? {
            values.push(value);
        }
        Ok(Value { kind: Some(value::Kind::ListValue(ListValue { values })) })
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = std::collections::HashMap::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            if fields.insert(key, value).is_some() {
                return Err(serde::de::Error::custom("a key is given more than once in a google.protobuf.Struct"));
            }
        }
        Ok(Value { kind: Some(value::Kind::StructValue(Struct { fields })) })
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyJson)
    }
}

impl<'de> serde::Deserialize<'de> for Struct {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_map(AnyJson)?.kind {
            Some(value::Kind::StructValue(s)) => Ok(s),
            _ => Err(serde::de::Error::custom("a google.protobuf.Struct is a JSON object")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ListValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_seq(AnyJson)?.kind {
            Some(value::Kind::ListValue(l)) => Ok(l),
            _ => Err(serde::de::Error::custom("a google.protobuf.ListValue is a JSON array")),
        }
    }
}

/// `google.protobuf.Duration`: signed seconds with up to 9 fractional
/// digits and an `s` (`"-1.5s"`), within ±315,576,000,000 s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Duration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds, of the same sign as `seconds`, within ±999,999,999.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The longest duration proto3 allows, in seconds (10,000 years).
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (seconds, nanos) = (self.seconds, self.nanos);
        let valid = seconds.abs() <= MAX_DURATION_SECONDS
            && nanos.abs() <= 999_999_999
            && !(seconds > 0 && nanos < 0 || seconds < 0 && nanos > 0);
        if !valid {
            return Err(serde::ser::Error::custom(format!(
                "duration {seconds}s {nanos}ns is out of range or has nanos of the other sign"
            )));
        }
        let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
        let (whole, fraction) = (seconds.unsigned_abs(), nanos.unsigned_abs());
        let text = if fraction == 0 {
            format!("{sign}{whole}s")
        } else if fraction % 1_000_000 == 0 {
            format!("{sign}{whole}.{:03}s", fraction / 1_000_000)
        } else if fraction % 1_000 == 0 {
            format!("{sign}{whole}.{:06}s", fraction / 1_000)
        } else {
            format!("{sign}{whole}.{fraction:09}s")
        };
        serializer.serialize_str(&text)
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    /// Parses `[-]seconds[.fraction]s`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a duration such as \"1.5s\"");
        let body = text.strip_suffix('s').ok_or_else(bad)?;
        let (negative, body) = match body.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        let (whole, fraction) = body.split_once('.').unwrap_or((body, ""));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || (body.contains('.') && !digits(fraction)) || fraction.len() > 9 {
            return Err(bad());
        }
        let seconds: i64 = whole.parse().map_err(|_| bad())?;
        let nanos: i32 = format!("{fraction:0<9}").parse().map_err(|_| bad())?;
        if seconds > MAX_DURATION_SECONDS {
            return Err(format!("{text:?} is longer than 315576000000 s"));
        }
        Ok(if negative { Self { seconds: -seconds, nanos: -nanos } } else { Self { seconds, nanos } })
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

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

impl Timestamp {
    /// The RFC 3339 text of a timestamp of years 0001 to 9999 (`None`
    /// outside them), written two digits at a time into `buf`: the formatting
    /// machinery took ~3,000 instructions a timestamp, a fifth of a whole
    /// article list's CPU.
    fn rfc3339<'b>(&self, buf: &'b mut [u8; 30]) -> Option<&'b str> {
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&self.seconds) {
            return None;
        }
        let days = self.seconds.div_euclid(86_400);
        let secs = self.seconds.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let year = year as u32;
        digits(&mut buf[0..4], year);
        buf[4] = b'-';
        digits(&mut buf[5..7], month);
        buf[7] = b'-';
        digits(&mut buf[8..10], day);
        buf[10] = b'T';
        digits(&mut buf[11..13], secs / 3600);
        buf[13] = b':';
        digits(&mut buf[14..16], secs / 60 % 60);
        buf[16] = b':';
        digits(&mut buf[17..19], secs % 60);
        buf[19] = b'.';
        let nanos = self.nanos.clamp(0, 999_999_999) as u32;
        let (fraction, width) = if nanos.is_multiple_of(1_000_000) {
            (nanos / 1_000_000, 3)
        } else if nanos.is_multiple_of(1_000) {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        digits(&mut buf[20..20 + width], fraction);
        buf[20 + width] = b'Z';
        std::str::from_utf8(&buf[..21 + width]).ok()
    }
}

/// The decimal digits of 0 to 99, two bytes each.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes the last `buf.len()` decimal digits of `n`, zero-padded, two at a
/// time (a timestamp has 17 to 23 of them).
fn digits(buf: &mut [u8], mut n: u32) {
    let mut end = buf.len();
    while end >= 2 {
        let pair = (n % 100) as usize * 2;
        buf[end - 2..end].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
        n /= 100;
        end -= 2;
    }
    if end == 1 {
        buf[0] = b'0' + (n % 10) as u8;
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.rfc3339(&mut [0; 30]) {
            return f.write_str(text);
        }
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
        match self.rfc3339(&mut [0; 30]) {
            Some(text) if (0..=999_999_999).contains(&self.nanos) => serializer.serialize_str(text),
            _ => Err(serde::ser::Error::custom(format!(
                "timestamp {}s {}ns is outside years 0001 to 9999 or has nanos outside 0 to 999999999",
                self.seconds, self.nanos
            ))),
        }
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
            (Timestamp::new(MIN_SECONDS, 0), "0001-01-01T00:00:00.000Z"),
            (Timestamp::new(MAX_SECONDS, 999_999_999), "9999-12-31T23:59:59.999999999Z"),
        ];
        for (ts, text) in cases {
            assert_eq!(ts.to_string(), text);
            assert_eq!(text.parse::<Timestamp>().unwrap(), ts, "{text}");
        }
        // Outside years 1 to 9999 Display still writes something readable.
        assert_eq!(Timestamp::new(MAX_SECONDS + 1, 0).to_string(), "10000-01-01T00:00:00.000Z");
    }

    #[test]
    fn digit_by_digit_formatting_agrees_with_the_formatting_machinery() {
        let mut seconds = MIN_SECONDS;
        let mut step = 0i32;
        while seconds <= MAX_SECONDS {
            // Whole milliseconds, whole microseconds, then any nanoseconds.
            let nanos = match step % 3 {
                0 => step % 1000 * 1_000_000,
                1 => step % 1_000_000 * 1_000,
                _ => (step * 7919) % 1_000_000_000,
            };
            let ts = Timestamp::new(seconds, nanos);
            let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
            let (y, mo, d) = civil_from_days(days);
            let fraction = match nanos {
                n if n % 1_000_000 == 0 => format!("{:03}", n / 1_000_000),
                n if n % 1_000 == 0 => format!("{:06}", n / 1_000),
                n => format!("{n:09}"),
            };
            let expected =
                format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{fraction}Z", secs / 3600, secs / 60 % 60, secs % 60);
            assert_eq!(ts.to_string(), expected);
            seconds += 79_999_997;
            step += 1;
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

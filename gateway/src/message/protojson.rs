//! The runtime of the proto3 JSON code that `gateway-build` generates: how
//! each kind of field reads and writes its JSON form, as the ProtoJSON
//! specification states it. Generated `Serialize` and `Deserialize`
//! implementations call these; they are public for that code only.
//!
//! Reading: `null` leaves a field unset (a `google.protobuf.Value` field
//! excepted: `null` is its `null_value`, and `NullValue` is 0); integers
//! are read from numbers or strings, in exponent or fraction notation too,
//! when integral and in range; floats from numbers, numeric strings and
//! `"NaN"`, `"Infinity"`, `"-Infinity"`; bytes from standard or URL-safe
//! base64, padded or not; enums from a value name (aliases included) or
//! any number (proto3 enums are open). Unknown fields, and unknown enum
//! names, are refused unless [`ignoring_unknown_fields`] says otherwise.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
/// serde, for the generated code: an API using the gateway need not depend
/// on it itself.
#[doc(hidden)]
pub use serde;
use serde::de::{self, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};

thread_local! {
    static IGNORE_UNKNOWN: Cell<bool> = const { Cell::new(false) };
}

/// Whether unknown fields (and unknown enum value names) are being ignored
/// rather than refused, in the decoding running on this thread.
pub fn ignoring_unknown_fields() -> bool {
    IGNORE_UNKNOWN.with(Cell::get)
}

/// Runs `decode` with unknown fields ignored (`true`) or refused.
pub fn with_unknown_fields<T>(ignore: bool, decode: impl FnOnce() -> T) -> T {
    let before = IGNORE_UNKNOWN.with(|flag| flag.replace(ignore));
    let result = decode();
    IGNORE_UNKNOWN.with(|flag| flag.set(before));
    result
}

/// How one kind of protobuf value reads and writes JSON.
pub trait Codec {
    /// The Rust type prost gives it.
    type Value;
    /// Reads one value; `None` when it is to be left out (an unknown enum
    /// name while unknown fields are ignored).
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Self::Value>, D::Error>;
    /// Writes one value.
    fn write<S: Serializer>(value: &Self::Value, serializer: S) -> Result<S::Ok, S::Error>;
}

/// A codec whose values may be map keys, which JSON writes as strings.
pub trait KeyCodec: Codec {
    /// Reads a key.
    fn read_key(key: &str) -> Result<Self::Value, String>;
    /// Writes a key.
    fn write_key(value: &Self::Value) -> String;
}

/// Reads with codec `C` (`Deserialize` for generated code).
pub struct Read<C: Codec>(pub Option<C::Value>);

impl<'de, C: Codec> de::Deserialize<'de> for Read<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        C::read(deserializer).map(Read)
    }
}

/// Reads with codec `C`, `null` being "unset" (`None`).
pub struct ReadOrNull<C: Codec>(pub Option<C::Value>);

impl<'de, C: Codec> de::Deserialize<'de> for ReadOrNull<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<C>(PhantomData<C>);
        impl<'de, C: Codec> Visitor<'de> for V<C> {
            type Value = Option<C::Value>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
                C::read(deserializer)
            }
        }
        deserializer.deserialize_option(V::<C>(PhantomData)).map(ReadOrNull)
    }
}

/// Writes `value` with codec `C` (`Serialize` for generated code).
pub struct Write<'a, C: Codec>(pub &'a C::Value);

impl<C: Codec> serde::Serialize for Write<'_, C> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        C::write(self.0, serializer)
    }
}

/// A JSON object key, borrowed from the input when it has no escapes.
pub struct Key<'de>(pub Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// The error for a key that names no field (unknown fields refused).
pub fn unknown_field<E: de::Error>(message: &str, key: &str) -> E {
    E::custom(format!("{message} has no field named {key:?}"))
}

/// The error for a field named twice, or two members of one oneof.
pub fn duplicate_field<E: de::Error>(name: &str) -> E {
    E::custom(format!("field {name:?} is given more than once (or with another member of its oneof)"))
}

/// Which fields of a message were read: a field may be named once. The
/// first 128 are kept inline (no allocation for any ordinary message).
#[derive(Default)]
pub struct Seen {
    first: u128,
    more: Vec<u64>,
}

impl Seen {
    /// Marks field number `index` (its place in the message) as read;
    /// an error when it already was.
    pub fn once<E: de::Error>(&mut self, index: usize, name: &str) -> Result<(), E> {
        let already = if index < 128 {
            let bit = 1u128 << index;
            let before = self.first;
            self.first |= bit;
            before & bit != 0
        } else {
            let (word, bit) = ((index - 128) / 64, 1u64 << (index % 64));
            if self.more.len() <= word {
                self.more.resize(word + 1, 0);
            }
            let before = self.more[word];
            self.more[word] |= bit;
            before & bit != 0
        };
        if already { Err(duplicate_field(name)) } else { Ok(()) }
    }
}

// ---- integers ----

/// An integer read from a JSON number or string.
fn integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i128, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = i128;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer, as a number or a string")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
            Ok(i128::from(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
            Ok(i128::from(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
            integral(v).ok_or_else(|| E::custom(format!("{v} is not an integer")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i128, E> {
            integer_text(v).ok_or_else(|| E::custom(format!("{v:?} is not an integer")))
        }
    }
    deserializer.deserialize_any(V)
}

fn integral(v: f64) -> Option<i128> {
    // Beyond ±2^64 no integer field can hold it anyway.
    (v.is_finite() && v.fract() == 0.0 && v.abs() < 3.7e19).then_some(v as i128)
}

/// An integer written as text: digits, or a number in fraction or exponent
/// notation that is integral.
fn integer_text(text: &str) -> Option<i128> {
    let numeric =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    if !numeric {
        return None;
    }
    text.parse::<i128>().ok().or_else(|| text.parse::<f64>().ok().and_then(integral))
}

fn in_range<T: TryFrom<i128>, E: de::Error>(n: i128, what: &str) -> Result<T, E> {
    T::try_from(n).map_err(|_| E::custom(format!("{n} is out of range for {what}")))
}

macro_rules! integer_codec {
    ($(#[$doc:meta] $name:ident: $ty:ty, $what:literal, $quoted:literal;)*) => {$(
        #[$doc]
        pub struct $name;

        impl Codec for $name {
            type Value = $ty;
            fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<$ty>, D::Error> {
                in_range(integer(deserializer)?, $what).map(Some)
            }
            fn write<S: Serializer>(value: &$ty, serializer: S) -> Result<S::Ok, S::Error> {
                if $quoted { serializer.collect_str(value) } else { serde::Serialize::serialize(value, serializer) }
            }
        }

        impl KeyCodec for $name {
            fn read_key(key: &str) -> Result<$ty, String> {
                let n = integer_text(key).ok_or_else(|| format!("map key {key:?} is not an integer"))?;
                <$ty>::try_from(n).map_err(|_| format!("map key {n} is out of range for {}", $what))
            }
            fn write_key(value: &$ty) -> String {
                value.to_string()
            }
        }
    )*};
}

integer_codec! {
    /// `int32`, `sint32`, `sfixed32`: a number.
    Int32: i32, "int32", false;
    /// `uint32`, `fixed32`: a number.
    UInt32: u32, "uint32", false;
    /// `int64`, `sint64`, `sfixed64`: a string.
    Int64: i64, "int64", true;
    /// `uint64`, `fixed64`: a string.
    UInt64: u64, "uint64", true;
}

// ---- floats ----

fn float<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, or \"NaN\", \"Infinity\" or \"-Infinity\"")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                _ if !v.is_empty()
                    && v.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')) =>
                {
                    let n: f64 = v.parse().map_err(|_| E::custom(format!("{v:?} is not a number")))?;
                    if n.is_finite() { Ok(n) } else { Err(E::custom(format!("{v:?} is out of range"))) }
                }
                _ => Err(E::custom(format!("{v:?} is not a number"))),
            }
        }
    }
    deserializer.deserialize_any(V)
}

fn write_float<S: Serializer>(value: f64, serializer: S, single: bool) -> Result<S::Ok, S::Error> {
    if value.is_nan() {
        serializer.serialize_str("NaN")
    } else if value.is_infinite() {
        serializer.serialize_str(if value > 0.0 { "Infinity" } else { "-Infinity" })
    } else if single {
        serializer.serialize_f32(value as f32)
    } else {
        serializer.serialize_f64(value)
    }
}

/// `double`.
pub struct Double;

impl Codec for Double {
    type Value = f64;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
        float(deserializer).map(Some)
    }
    fn write<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        write_float(*value, serializer, false)
    }
}

/// `float`: a number beyond the float range is refused; one that rounds to
/// the largest float is that float.
pub struct Float;

impl Codec for Float {
    type Value = f32;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f32>, D::Error> {
        let v = float(deserializer)?;
        let single = v as f32;
        if v.is_finite() && single.is_infinite() {
            return Err(D::Error::custom(format!("{v} is out of range for float")));
        }
        Ok(Some(single))
    }
    fn write<S: Serializer>(value: &f32, serializer: S) -> Result<S::Ok, S::Error> {
        write_float(f64::from(*value), serializer, true)
    }
}

// ---- bool, string, bytes ----

/// `bool`: `true` or `false`.
pub struct Bool;

impl Codec for Bool {
    type Value = bool;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
        <bool as de::Deserialize>::deserialize(deserializer).map(Some)
    }
    fn write<S: Serializer>(value: &bool, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(*value)
    }
}

impl KeyCodec for Bool {
    fn read_key(key: &str) -> Result<bool, String> {
        match key {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("map key {key:?} is not true or false")),
        }
    }
    fn write_key(value: &bool) -> String {
        value.to_string()
    }
}

/// `string`.
pub struct Str;

impl Codec for Str {
    type Value = String;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
        <String as de::Deserialize>::deserialize(deserializer).map(Some)
    }
    fn write<S: Serializer>(value: &String, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value)
    }
}

impl KeyCodec for Str {
    fn read_key(key: &str) -> Result<String, String> {
        Ok(key.to_owned())
    }
    fn write_key(value: &String) -> String {
        value.clone()
    }
}

fn base64_engine(url_safe: bool) -> base64::engine::GeneralPurpose {
    let config = base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let alphabet = if url_safe { &base64::alphabet::URL_SAFE } else { &base64::alphabet::STANDARD };
    base64::engine::GeneralPurpose::new(alphabet, config)
}

/// Decodes standard or URL-safe base64, padded or not.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let url_safe = text.contains(['-', '_']);
    base64_engine(url_safe).decode(text).map_err(|e| format!("not base64: {e}"))
}

/// `bytes`: standard base64 with padding, written; either alphabet, read.
pub struct Bytes<B>(PhantomData<B>);

impl<B: From<Vec<u8>> + AsRef<[u8]>> Codec for Bytes<B> {
    type Value = B;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<B>, D::Error> {
        let text = <Cow<'de, str> as de::Deserialize>::deserialize(deserializer)?;
        decode_base64(&text).map(|v| Some(B::from(v))).map_err(D::Error::custom)
    }
    fn write<S: Serializer>(value: &B, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(value.as_ref()))
    }
}

// ---- enums ----

/// A generated enum's names, aliases included.
pub trait ProtoEnum {
    /// The number of a value name.
    fn from_json_name(name: &str) -> Option<i32>;
    /// The first name of a number.
    fn json_name(number: i32) -> Option<&'static str>;
}

/// An enum field (`i32` in prost): a value name, or any number.
pub struct Enum<E>(PhantomData<E>);

impl<E: ProtoEnum> Codec for Enum<E> {
    type Value = i32;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i32>, D::Error> {
        struct V<E>(PhantomData<E>);
        impl<E: ProtoEnum> Visitor<'_> for V<E> {
            type Value = Option<i32>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an enum value name or number")
            }
            fn visit_str<Er: de::Error>(self, v: &str) -> Result<Option<i32>, Er> {
                match E::from_json_name(v) {
                    Some(n) => Ok(Some(n)),
                    None if ignoring_unknown_fields() => Ok(None),
                    None => Err(Er::custom(format!("{v:?} is not a value of the enum"))),
                }
            }
            fn visit_i64<Er: de::Error>(self, v: i64) -> Result<Option<i32>, Er> {
                in_range(i128::from(v), "an enum").map(Some)
            }
            fn visit_u64<Er: de::Error>(self, v: u64) -> Result<Option<i32>, Er> {
                in_range(i128::from(v), "an enum").map(Some)
            }
            // A number written with a fraction or exponent, as integers may be (`-0`, `1.0`, `1e0`).
            fn visit_f64<Er: de::Error>(self, v: f64) -> Result<Option<i32>, Er> {
                let number = integral(v).ok_or_else(|| Er::custom(format!("{v} is not an integer")))?;
                in_range(number, "an enum").map(Some)
            }
        }
        deserializer.deserialize_any(V::<E>(PhantomData))
    }
    fn write<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
        match E::json_name(*value) {
            Some(name) => serializer.serialize_str(name),
            None => serializer.serialize_i32(*value),
        }
    }
}

/// `google.protobuf.NullValue`: `null` (or its name, or 0), read as 0.
pub struct Null;

impl Codec for Null {
    type Value = i32;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i32>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = i32;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<i32, E> {
                Ok(0)
            }
            fn visit_none<E: de::Error>(self) -> Result<i32, E> {
                Ok(0)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<i32, E> {
                if v == "NULL_VALUE" { Ok(0) } else { Err(E::custom(format!("{v:?} is not NULL_VALUE"))) }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
                if v == 0 { Ok(0) } else { Err(E::custom(format!("{v} is not NULL_VALUE"))) }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
                self.visit_i64(v as i64)
            }
        }
        deserializer.deserialize_any(V).map(Some)
    }
    fn write<S: Serializer>(_: &i32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}

// ---- messages, lists, maps ----

/// A message field: the message's own JSON.
pub struct Message<T>(PhantomData<T>);

impl<T: serde::Serialize + de::DeserializeOwned> Codec for Message<T> {
    type Value = T;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
        T::deserialize(deserializer).map(Some)
    }
    fn write<S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }
}

/// A repeated field: an array, whose elements may not be `null` (but a
/// `google.protobuf.Value`'s `null` is a value).
pub struct Repeated<C>(PhantomData<C>);

impl<C: Codec> Codec for Repeated<C> {
    type Value = Vec<C::Value>;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<C::Value>>, D::Error> {
        struct V<C>(PhantomData<C>);
        impl<'de, C: Codec> Visitor<'de> for V<C> {
            type Value = Vec<C::Value>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(item) = seq.next_element::<Read<C>>()? {
                    out.extend(item.0);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_seq(V::<C>(PhantomData)).map(Some)
    }
    fn write<S: Serializer>(value: &Vec<C::Value>, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(value.len()))?;
        for item in value {
            seq.serialize_element(&Write::<C>(item))?;
        }
        seq.end()
    }
}

/// A map field: an object whose keys are the keys written as strings; a
/// key may appear once.
pub struct Map<K, V, M>(PhantomData<(K, V, M)>);

impl<K, V, M> Codec for Map<K, V, M>
where
    K: KeyCodec,
    V: Codec,
    M: Default + Extend<(K::Value, V::Value)>,
    for<'a> &'a M: IntoIterator<Item = (&'a K::Value, &'a V::Value)>,
{
    type Value = M;
    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<M>, D::Error> {
        struct Entries<K, V, M>(PhantomData<(K, V, M)>);
        impl<'de, K: KeyCodec, V: Codec, M: Default + Extend<(K::Value, V::Value)>> Visitor<'de> for Entries<K, V, M> {
            type Value = M;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<M, A::Error> {
                let mut out = M::default();
                let mut keys = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let parsed = K::read_key(&key.0).map_err(A::Error::custom)?;
                    if !keys.insert(key.0.into_owned()) {
                        return Err(A::Error::custom("a map key is given more than once"));
                    }
                    if let Some(value) = map.next_value::<Read<V>>()?.0 {
                        out.extend([(parsed, value)]);
                    }
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(Entries::<K, V, M>(PhantomData)).map(Some)
    }
    fn write<S: Serializer>(value: &M, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, item) in value {
            map.serialize_entry(&K::write_key(key), &Write::<V>(item))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<C: Codec>(json: &str) -> Result<Option<C::Value>, String> {
        let mut de = serde_json::Deserializer::from_str(json);
        C::read(&mut de).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_read_from_numbers_and_strings_when_integral_and_in_range() {
        for (json, expected) in [
            ("1", 1),
            ("\"-2\"", -2),
            ("1e5", 100_000),
            ("\"1e5\"", 100_000),
            ("100000.000", 100_000),
            ("2.147483647e9", i32::MAX),
            ("-0", 0),
        ] {
            assert_eq!(read::<Int32>(json), Ok(Some(expected)), "{json}");
        }
        for bad in ["2147483648", "0.5", "\"\"", "\" 1\"", "true", "null", "\"0x10\"", "\"NaN\""] {
            assert!(read::<Int32>(bad).is_err(), "{bad}");
        }
        assert_eq!(read::<UInt64>("\"18446744073709551615\""), Ok(Some(u64::MAX)));
        assert!(read::<UInt64>("\"-1\"").is_err());
    }

    #[test]
    fn floats_read_exactly_and_refuse_what_does_not_fit() {
        assert_eq!(read::<Double>("2.22507e-308"), Ok(Some(2.22507e-308)));
        assert!(read::<Double>("\"NaN\"").unwrap().unwrap().is_nan());
        assert!(read::<Double>("\"nan\"").is_err());
        assert_eq!(read::<Float>("3.4028235e38"), Ok(Some(f32::MAX)));
        assert!(read::<Float>("3.502823e38").is_err());
    }

    #[test]
    fn bytes_read_either_alphabet_with_or_without_padding() {
        for text in ["AAEC/+8=", "AAEC/+8", "AAEC_-8=", "AAEC_-8"] {
            assert_eq!(decode_base64(text), Ok(vec![0, 1, 2, 255, 239]), "{text}");
        }
        assert!(decode_base64("AA*A").is_err());
    }

    #[test]
    fn unknown_fields_are_ignored_only_when_asked() {
        assert!(!ignoring_unknown_fields());
        assert!(with_unknown_fields(true, ignoring_unknown_fields));
        assert!(!ignoring_unknown_fields());
    }
}

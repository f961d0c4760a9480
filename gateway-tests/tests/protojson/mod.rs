//! The proto3 JSON mapping, differentially: the same inputs go to the
//! gateway (through a Connect client of `gatewaytest.v1.Conformance`, the
//! path every JSON request takes) and to the protobuf project's reference
//! implementation (`json_format` of the Python `protobuf` package, upb),
//! and their answers are compared.
//!
//! Inputs: the hand-written cases of `protojson/cases.txt`, each taken
//! from the ProtoJSON specification's text, and messages drawn at random
//! over every field of `AllKinds` (encoded by both sides, and the
//! reference's JSON of them decoded by the gateway). A case conforms when
//! both sides accept it with the same result (the same message, compared
//! in the reference's deterministic encoding; the same JSON value) or both
//! refuse it.
//!
//! Cases known to deviate are listed in `protojson/deviations.txt`, each
//! with its reason; the test fails on any deviation not listed and on any
//! listed case that now conforms, so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use prost::Message as _;
use serde_json::{Value, json};

use gateway_tests::pb;

/// The service the gateway's JSON goes through: what it decoded, handed
/// back in binary; a binary message handed back to be written as JSON.
pub(crate) struct Conformance;

#[tonic::async_trait]
impl pb::conformance_server::Conformance for Conformance {
    async fn decode(
        &self,
        request: tonic::Request<pb::AllKinds>,
    ) -> Result<tonic::Response<pb::Encoded>, tonic::Status> {
        Ok(tonic::Response::new(pb::Encoded { binary: request.into_inner().encode_to_vec() }))
    }

    async fn encode(
        &self,
        request: tonic::Request<pb::Encoded>,
    ) -> Result<tonic::Response<pb::AllKinds>, tonic::Status> {
        pb::AllKinds::decode(request.into_inner().binary.as_slice())
            .map(tonic::Response::new)
            .map_err(|e| tonic::Status::invalid_argument(format!("not an AllKinds: {e}")))
    }
}

const MESSAGE: &str = "gatewaytest.v1.AllKinds";
const RANDOM_MESSAGES: u64 = 300;
/// JSON texts made by mutating the reference's JSON of the random messages.
const MUTATED_TEXTS: usize = 300;

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("protojson")
}

/// The Python with the pinned `protobuf` (tests/clients/requirements.txt),
/// or `PROTOJSON_PYTHON`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("PROTOJSON_PYTHON") {
        return python.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/.venv/bin/python");
    assert!(venv.exists(), "the reference needs Python's protobuf: run `bash tests/clients/install.sh` first");
    venv
}

/// Runs the reference over `operations`; one answer each.
fn reference(operations: &[Value]) -> Vec<Value> {
    let dir = std::env::temp_dir().join(format!("protojson-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join(format!("ops-{}.json", operations.len()));
    std::fs::write(&input, serde_json::to_vec(operations).unwrap()).unwrap();
    let descriptors = Path::new(env!("OUT_DIR")).join("descriptor.bin");
    let out = std::process::Command::new(python())
        .arg(here().join("reference.py"))
        .arg(&descriptors)
        .arg(&input)
        .arg(MESSAGE)
        // Map order in the reference's JSON follows Python's string hashes:
        // fixed, so that the texts mutated are the same on every run.
        .env("PYTHONHASHSEED", "0")
        .output()
        .expect("the reference runs");
    assert!(out.status.success(), "the reference failed: {}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).expect("the reference answers JSON");
    assert_eq!(answers.len(), operations.len());
    answers
}

/// One hand-written case.
struct Case {
    id: String,
    kind: Kind,
    input: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// JSON to decode, unknown fields refused (the specification's default).
    Decode,
    /// JSON to decode, unknown fields ignored (`ignore_unknown_fields`).
    DecodeLenient,
    /// A message in the text format, to encode as JSON.
    Encode,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(here().join("cases.txt")).unwrap();
    let mut seen = BTreeSet::new();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let (kind, id, input) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or(""));
            let kind = match kind {
                "decode" => Kind::Decode,
                "decode-lenient" => Kind::DecodeLenient,
                "encode" => Kind::Encode,
                other => panic!("cases.txt: unknown kind {other:?}"),
            };
            assert!(seen.insert(id.to_owned()), "cases.txt: {id} twice");
            Case { id: id.to_owned(), kind, input: input.to_owned() }
        })
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

/// JSON values compared as the mapping means them: numbers by value, at
/// float precision where they differ beyond it (a `float` field's digits
/// are not fixed by the specification: `1e-45` and `1.4013e-45` are the
/// same float), and timestamps with or without a zero fraction (the
/// specification allows 0, 3, 6 or 9 digits; the gateway writes at least 3).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => {
                let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
                x == y || (x as f32 == y as f32 && (x as f32).is_finite())
            }
        },
        (Value::String(x), Value::String(y)) => x == y || whole_second(x) == whole_second(y),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// An RFC 3339 UTC timestamp without trailing zeros in its fraction; any
/// other text as it is.
fn whole_second(text: &str) -> String {
    let bytes = text.as_bytes();
    let is_timestamp = bytes.len() >= 20
        && bytes.last() == Some(&b'Z')
        && bytes.get(10) == Some(&b'T')
        && bytes.get(4) == Some(&b'-')
        && bytes.get(13) == Some(&b':');
    match text.strip_suffix('Z').and_then(|t| t.split_once('.')) {
        Some((whole, fraction)) if is_timestamp => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() { format!("{whole}Z") } else { format!("{whole}.{fraction}Z") }
        }
        _ => text.to_owned(),
    }
}

/// What the gateway answered: the message it decoded, or the JSON it wrote.
enum Ours {
    Decoded(Vec<u8>),
    Encoded(Value),
    Refused(String),
}

async fn gateway_decode(lab: &super::LabServer, json: &str) -> Ours {
    let answer = lab
        .send("POST", "/gatewaytest.v1.Conformance/Decode", &[("content-type", "application/json")], json.to_owned())
        .await;
    if answer.status != 200 {
        return Ours::Refused(answer.text());
    }
    let reply = answer.json();
    Ours::Decoded(reply["binary"].as_str().map(unb64).unwrap_or_default())
}

async fn gateway_encode(lab: &super::LabServer, binary: &[u8]) -> Ours {
    let request = json!({ "binary": b64(binary) }).to_string();
    let answer =
        lab.send("POST", "/gatewaytest.v1.Conformance/Encode", &[("content-type", "application/json")], request).await;
    if answer.status != 200 {
        return Ours::Refused(answer.text());
    }
    match serde_json::from_slice(&answer.body) {
        Ok(value) => Ours::Encoded(value),
        Err(e) => Ours::Refused(format!("not JSON: {e}")),
    }
}

/// A small seeded generator (xorshift64*), so runs are repeatable.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn count(&mut self) -> usize {
        if self.chance(2) { 0 } else { self.below(4) as usize }
    }
    fn i32(&mut self) -> i32 {
        [0, 1, -1, i32::MAX, i32::MIN, self.next() as i32][self.below(6) as usize]
    }
    fn i64(&mut self) -> i64 {
        [0, -1, i64::MAX, i64::MIN, 1 << 53, (1 << 53) + 1, self.next() as i64][self.below(7) as usize]
    }
    fn u32(&mut self) -> u32 {
        [0, u32::MAX, self.next() as u32][self.below(3) as usize]
    }
    fn u64(&mut self) -> u64 {
        [0, u64::MAX, 1 << 53, self.next()][self.below(4) as usize]
    }
    fn f64(&mut self) -> f64 {
        let bits = f64::from_bits(self.next());
        let finite = if bits.is_finite() { bits } else { 0.5 };
        [0.0, -0.0, 1.5, 1e300, 5e-324, f64::MAX, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, finite, 0.1]
            [self.below(11) as usize]
    }
    fn f32(&mut self) -> f32 {
        let bits = f32::from_bits(self.next() as u32);
        let finite = if bits.is_finite() { bits } else { 0.25 };
        [0.0, -0.0, 1.5, f32::MAX, f32::MIN_POSITIVE, 1e-45, f32::NAN, f32::INFINITY, finite, 0.1]
            [self.below(10) as usize]
    }
    fn string(&mut self) -> String {
        let pieces =
            ["", "a", "\u{e9}", "\u{1F600}", "\"quoted\"", "back\\slash", "\n\t", "\u{7f}\u{1}", "<&>", "\u{2028}"];
        (0..self.below(4)).map(|_| pieces[self.below(pieces.len() as u64) as usize]).collect()
    }
    fn bytes(&mut self) -> Vec<u8> {
        (0..self.below(7)).map(|_| self.next() as u8).collect()
    }
    fn tone(&mut self) -> i32 {
        [0, 1, 2, 3, -1][self.below(5) as usize]
    }
    fn finite(&mut self) -> f64 {
        let v = self.f64();
        if v.is_finite() { v } else { 2.5 }
    }
    fn value(&mut self, depth: u32) -> gateway::wkt::Value {
        use gateway::wkt::value::Kind as K;
        let kind = match self.below(if depth > 1 { 4 } else { 6 }) {
            0 => K::NullValue(0),
            1 => K::NumberValue(self.finite()),
            2 => K::StringValue(self.string()),
            3 => K::BoolValue(self.chance(2)),
            4 => K::StructValue(self.structure(depth + 1)),
            _ => K::ListValue(gateway::wkt::ListValue {
                values: (0..self.count()).map(|_| self.value(depth + 1)).collect(),
            }),
        };
        gateway::wkt::Value { kind: Some(kind) }
    }
    fn structure(&mut self, depth: u32) -> gateway::wkt::Struct {
        gateway::wkt::Struct { fields: (0..self.count()).map(|_| (self.string(), self.value(depth))).collect() }
    }
    fn timestamp(&mut self) -> gateway::wkt::Timestamp {
        // 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
        let seconds = -62_135_596_800 + (self.below(253_402_300_800 + 62_135_596_800) as i64);
        let nanos = [0, 1_000_000, 1_000, 1, self.below(1_000_000_000) as i32][self.below(5) as usize];
        gateway::wkt::Timestamp { seconds, nanos }
    }
    fn duration(&mut self) -> gateway::wkt::Duration {
        let seconds = self.below(2 * 315_576_000_000 + 1) as i64 - 315_576_000_000;
        let nanos = [0, 500_000_000, 1, self.below(1_000_000_000) as i32][self.below(4) as usize];
        // The sign of nanos follows the seconds'.
        let nanos = if seconds < 0 { -nanos } else { nanos };
        gateway::wkt::Duration { seconds, nanos }
    }
    fn inner(&mut self, depth: u32) -> pb::all_kinds::Inner {
        pb::all_kinds::Inner {
            a: self.i32(),
            outer: (depth < 2 && self.chance(4)).then(|| Box::new(self.message(depth + 1))),
        }
    }

    /// `text` (a JSON document) changed once: a character deleted, doubled
    /// or replaced, or one value swapped for one that some field kind reads
    /// differently (so most mutants stay JSON and reach the field codecs).
    fn mutate(&mut self, text: &str) -> String {
        const TOKENS: [&str; 16] =
            ["\"", "{", "}", "[", "]", ":", ",", "0", "-", ".", "e", "n", "\\", "1", " ", "\\u0000"];
        const VALUES: [&str; 24] = [
            "null",
            "0",
            "-0",
            "1.0",
            "1e5",
            "\"1e5\"",
            "1.5",
            "-1",
            "4294967296",
            "9223372036854775808",
            "1e400",
            "\"NaN\"",
            "\"Infinity\"",
            "\"\"",
            "\"AAA=\"",
            "\"-_8\"",
            "true",
            "\"true\"",
            "[]",
            "{}",
            "[null]",
            "\"1970-01-01T00:00:00Z\"",
            "\"1.5s\"",
            "\"RED\"",
        ];
        let chars: Vec<char> = text.chars().collect();
        if chars.is_empty() || self.chance(2) {
            // A value replaced: find the start of a value (after ':' or '[' or ',').
            let starts: Vec<usize> =
                chars.iter().enumerate().filter(|(_, c)| matches!(c, ':' | '[')).map(|(i, _)| i + 1).collect();
            let Some(&at) = starts.get(self.below(starts.len().max(1) as u64) as usize) else { return "null".into() };
            let rest: String = chars[at..].iter().collect();
            let end = value_end(&rest);
            let value = VALUES[self.below(VALUES.len() as u64) as usize];
            return format!("{}{value}{}", chars[..at].iter().collect::<String>(), &rest[end..]);
        }
        let at = self.below(chars.len() as u64) as usize;
        let mut out: Vec<String> = chars.iter().map(char::to_string).collect();
        match self.below(3) {
            0 => out[at] = String::new(),
            1 => out[at] = out[at].repeat(2),
            _ => out[at] = TOKENS[self.below(TOKENS.len() as u64) as usize].to_owned(),
        }
        out.concat()
    }

    /// A message with each field set or not at random.
    fn message(&mut self, depth: u32) -> pb::AllKinds {
        use pb::all_kinds::Choice;
        let mut m = pb::AllKinds::default();
        macro_rules! maybe {
            ($($field:ident = $value:expr;)*) => { $(if self.chance(3) { m.$field = $value; })* };
        }
        maybe! {
            s_int32 = self.i32(); s_int64 = self.i64(); s_uint32 = self.u32(); s_uint64 = self.u64();
            s_sint32 = self.i32(); s_sint64 = self.i64(); s_fixed32 = self.u32(); s_fixed64 = self.u64();
            s_sfixed32 = self.i32(); s_sfixed64 = self.i64(); s_float = self.f32(); s_double = self.f64();
            s_bool = self.chance(2); s_string = self.string(); s_bytes = self.bytes(); s_tone = self.tone();
            s_shade = self.below(3) as i32;
            inner = Some(self.inner(depth).into()); elsewhere = Some(pb::Elsewhere { c: self.i32() });
            o_int32 = Some(self.i32()); o_int64 = Some(self.i64()); o_uint64 = Some(self.u64());
            o_float = Some(self.f32()); o_double = Some(self.f64()); o_bool = Some(self.chance(2));
            o_string = Some(self.string()); o_bytes = Some(self.bytes()); o_tone = Some(self.tone());
            r_int32 = (0..self.count()).map(|_| self.i32()).collect();
            r_int64 = (0..self.count()).map(|_| self.i64()).collect();
            r_uint32 = (0..self.count()).map(|_| self.u32()).collect();
            r_uint64 = (0..self.count()).map(|_| self.u64()).collect();
            r_sint32 = (0..self.count()).map(|_| self.i32()).collect();
            r_sint64 = (0..self.count()).map(|_| self.i64()).collect();
            r_fixed32 = (0..self.count()).map(|_| self.u32()).collect();
            r_fixed64 = (0..self.count()).map(|_| self.u64()).collect();
            r_sfixed32 = (0..self.count()).map(|_| self.i32()).collect();
            r_sfixed64 = (0..self.count()).map(|_| self.i64()).collect();
            r_float = (0..self.count()).map(|_| self.f32()).collect();
            r_double = (0..self.count()).map(|_| self.f64()).collect();
            r_bool = (0..self.count()).map(|_| self.chance(2)).collect();
            r_string = (0..self.count()).map(|_| self.string()).collect();
            r_bytes = (0..self.count()).map(|_| self.bytes()).collect();
            r_tone = (0..self.count()).map(|_| self.tone()).collect();
            r_inner = (0..self.count()).map(|_| self.inner(depth + 1)).collect();
            m_int32 = (0..self.count()).map(|_| (self.i32(), self.i32())).collect();
            m_int64 = (0..self.count()).map(|_| (self.i64(), self.i64())).collect();
            m_uint32 = (0..self.count()).map(|_| (self.u32(), self.u32())).collect();
            m_uint64 = (0..self.count()).map(|_| (self.u64(), self.u64())).collect();
            m_sint32 = (0..self.count()).map(|_| (self.i32(), self.i32())).collect();
            m_sint64 = (0..self.count()).map(|_| (self.i64(), self.i64())).collect();
            m_fixed32 = (0..self.count()).map(|_| (self.u32(), self.u32())).collect();
            m_fixed64 = (0..self.count()).map(|_| (self.u64(), self.u64())).collect();
            m_sfixed32 = (0..self.count()).map(|_| (self.i32(), self.i32())).collect();
            m_sfixed64 = (0..self.count()).map(|_| (self.i64(), self.i64())).collect();
            m_bool = (0..self.count()).map(|_| (self.chance(2), self.chance(2))).collect();
            m_string = (0..self.count()).map(|_| (self.string(), self.string())).collect();
            m_bytes = (0..self.count()).map(|_| (self.string(), self.bytes())).collect();
            m_float = (0..self.count()).map(|_| (self.string(), self.f32())).collect();
            m_double = (0..self.count()).map(|_| (self.string(), self.f64())).collect();
            m_inner = (0..self.count()).map(|_| (self.string(), self.inner(depth + 1))).collect();
            m_tone = (0..self.count()).map(|_| (self.string(), self.tone())).collect();
            w_bool = Some(gateway::wkt::BoolValue { value: self.chance(2) });
            w_int32 = Some(gateway::wkt::Int32Value { value: self.i32() });
            w_int64 = Some(gateway::wkt::Int64Value { value: self.i64() });
            w_uint32 = Some(gateway::wkt::UInt32Value { value: self.u32() });
            w_uint64 = Some(gateway::wkt::UInt64Value { value: self.u64() });
            w_float = Some(gateway::wkt::FloatValue { value: self.f32() });
            w_double = Some(gateway::wkt::DoubleValue { value: self.f64() });
            w_string = Some(gateway::wkt::StringValue { value: self.string() });
            w_bytes = Some(gateway::wkt::BytesValue { value: self.bytes() });
            rw_int32 = (0..self.count()).map(|_| gateway::wkt::Int32Value { value: self.i32() }).collect();
            rw_string = (0..self.count()).map(|_| gateway::wkt::StringValue { value: self.string() }).collect();
            duration = Some(self.duration()); timestamp = Some(self.timestamp());
            field_mask = Some(gateway::wkt::FieldMask { paths: vec!["s_int32".into(), "inner.a".into()] });
            r#struct = Some(self.structure(depth)); value = Some(self.value(depth));
            null_value = 0;
            list_value = Some(gateway::wkt::ListValue { values: (0..self.count()).map(|_| self.value(depth)).collect() });
            r_duration = (0..self.count()).map(|_| self.duration()).collect();
            r_timestamp = (0..self.count()).map(|_| self.timestamp()).collect();
            r_struct = (0..self.count()).map(|_| self.structure(depth)).collect();
            r_value = (0..self.count()).map(|_| self.value(depth)).collect();
            m_value = (0..self.count()).map(|_| (self.string(), self.value(depth))).collect();
            plainname = self.i32(); two_words = self.i32(); leading_underscore = self.i32();
            double_underscore = self.i32(); trailing = self.i32(); digit_9after = self.i32();
            already_camel_case = self.i32(); capital_start = self.i32(); all_caps = self.i32(); renamed = self.i32();
        }
        if depth < 2 && self.chance(5) {
            m.recursive = Some(Box::new(self.message(depth + 1)));
        }
        m.choice = match self.below(12) {
            0 => Some(Choice::CUint32(self.u32())),
            1 => Some(Choice::CInner(self.inner(depth + 1).into())),
            2 => Some(Choice::CString(self.string())),
            3 => Some(Choice::CBytes(self.bytes())),
            4 => Some(Choice::CBool(self.chance(2))),
            5 => Some(Choice::CUint64(self.u64())),
            6 => Some(Choice::CFloat(self.f32())),
            7 => Some(Choice::CDouble(self.f64())),
            8 => Some(Choice::CTone(self.tone())),
            9 => Some(Choice::CNull(0)),
            _ => None,
        };
        m
    }
}

/// Where the JSON value at the start of `text` ends (after leading blanks),
/// by bracket depth and string quoting; the text's length if it never ends.
fn value_end(text: &str) -> usize {
    let (mut depth, mut in_string, mut escaped, mut started) = (0i32, false, false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_string = false;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            continue;
        }
        match c {
            ' ' | '\n' | '\t' | '\r' if !started => {}
            '"' => (in_string, started) = (true, true),
            '{' | '[' => (depth, started) = (depth + 1, true),
            '}' | ']' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            ',' | '}' | ']' | '\n' if depth == 0 => return i,
            _ => started = true,
        }
    }
    text.len()
}

/// A decoding case: the reference's message (base64), or why it refused; the gateway's answer.
struct Decoded {
    id: String,
    reference: Result<String, String>,
    ours: Ours,
}

/// The outcome of one case on both sides.
struct Outcome {
    id: String,
    conforms: bool,
    detail: String,
}

fn compare_encoding(id: String, theirs: &Value, ours: Ours) -> Outcome {
    let reference_json = theirs["ok"].as_bool().unwrap_or(false).then(|| theirs["json"].as_str().unwrap());
    let (conforms, detail) = match (reference_json, ours) {
        (None, Ours::Refused(_)) => (true, String::new()),
        (Some(text), Ours::Encoded(value)) => {
            let expected: Value = serde_json::from_str(text).unwrap();
            (same_json(&expected, &value), format!("reference {expected}\ngateway   {value}"))
        }
        (None, Ours::Encoded(value)) => {
            (false, format!("reference refused ({}); gateway wrote {value}", theirs["error"]))
        }
        (Some(text), Ours::Refused(why)) => (false, format!("reference wrote {text}; gateway refused: {why}")),
        (_, Ours::Decoded(_)) => unreachable!(),
    };
    Outcome { id, conforms, detail }
}

/// Runs every case and random message on both sides; the outcomes by id.
async fn outcomes() -> Vec<Outcome> {
    let lab = super::lab().await;
    let lenient = super::lab_with(true).await;
    let cases = cases();
    let mut draw = Draw(0x5EED_0FC0_FFEE);
    let random: Vec<pb::AllKinds> = (0..RANDOM_MESSAGES).map(|_| draw.message(0)).collect();

    // Round 1: the reference decodes and encodes every input.
    let mut operations: Vec<Value> = cases
        .iter()
        .map(|case| match case.kind {
            Kind::Decode => json!({"op": "decode", "json": case.input}),
            Kind::DecodeLenient => json!({"op": "decode", "json": case.input, "ignore_unknown": true}),
            Kind::Encode => json!({"op": "encode_text", "text": case.input}),
        })
        .collect();
    operations.extend(random.iter().map(|m| json!({"op": "encode", "binary": b64(&m.encode_to_vec())})));
    let answers = reference(&operations);

    // The gateway's side, and what the reference must canonicalize of it.
    let mut outcomes = Vec::new();
    let mut decoded: Vec<Decoded> = Vec::new();
    for (case, theirs) in cases.iter().zip(&answers) {
        match case.kind {
            Kind::Decode | Kind::DecodeLenient => {
                let reference = match theirs["ok"].as_bool() {
                    Some(true) => Ok(theirs["binary"].as_str().unwrap().to_owned()),
                    _ => Err(theirs["error"].to_string()),
                };
                let server = if case.kind == Kind::DecodeLenient { &lenient } else { &lab };
                let ours = gateway_decode(server, &case.input).await;
                decoded.push(Decoded { id: case.id.clone(), reference, ours });
            }
            Kind::Encode => {
                let binary = unb64(theirs["binary"].as_str().expect("the text case parses"));
                outcomes.push(compare_encoding(case.id.clone(), theirs, gateway_encode(&lab, &binary).await));
            }
        }
    }
    for (n, (message, theirs)) in random.iter().zip(&answers[cases.len()..]).enumerate() {
        let ours = gateway_encode(&lab, &message.encode_to_vec()).await;
        outcomes.push(compare_encoding(format!("random-encode-{n}"), theirs, ours));
        // The reference's JSON of the message decodes to the message.
        if let Some(text) = theirs["json"].as_str() {
            let reference = Ok(b64(&message.encode_to_vec()));
            decoded.push(Decoded {
                id: format!("random-decode-{n}"),
                reference,
                ours: gateway_decode(&lab, text).await,
            });
        }
    }

    // Mutants of the reference's JSON texts: both sides decode them, and
    // must refuse them alike or read the same message.
    // (Not of texts holding the largest float, which the reference cannot
    // read back: the listed `float-max` deviation, whatever the mutation.)
    let texts = answers[cases.len()..]
        .iter()
        .filter_map(|theirs| theirs["json"].as_str())
        .filter(|text| !text.contains("3.4028235e+38"));
    let mutants: Vec<String> = texts.cycle().take(MUTATED_TEXTS).map(|text| draw.mutate(text)).collect();
    let operations: Vec<Value> = mutants.iter().map(|text| json!({"op": "decode", "json": text})).collect();
    for (n, (text, theirs)) in mutants.iter().zip(reference(&operations)).enumerate() {
        let reference = match theirs["ok"].as_bool() {
            Some(true) => Ok(theirs["binary"].as_str().unwrap().to_owned()),
            _ => Err(format!("{} on {text}", theirs["error"])),
        };
        decoded.push(Decoded { id: format!("mutant-{n}"), reference, ours: gateway_decode(&lab, text).await });
    }

    // Round 2: the reference re-encodes both sides' messages deterministically
    // (map order, and so on), and those encodings are compared.
    let mut canonical = Vec::new();
    for case in &decoded {
        if let (Ok(theirs), Ours::Decoded(ours)) = (&case.reference, &case.ours) {
            canonical.push(json!({"op": "reencode", "binary": theirs}));
            canonical.push(json!({"op": "reencode", "binary": b64(ours)}));
        }
    }
    let canonical = reference(&canonical);
    let mut pairs = canonical.chunks(2);
    for case in decoded {
        let (conforms, detail) = match (&case.reference, case.ours) {
            (Err(_), Ours::Refused(_)) => (true, String::new()),
            (Err(why), Ours::Decoded(_)) => (false, format!("reference refused ({why}); gateway accepted")),
            (Ok(_), Ours::Refused(why)) => (false, format!("gateway refused: {why}")),
            (Ok(_), Ours::Decoded(_)) => {
                let pair = pairs.next().unwrap();
                (
                    pair[0]["binary"] == pair[1]["binary"],
                    format!("reference {}\ngateway   {}", pair[0]["text"], pair[1]["text"]),
                )
            }
            (_, Ours::Encoded(_)) => unreachable!(),
        };
        outcomes.push(Outcome { id: case.id, conforms, detail });
    }
    outcomes
}

/// The listed deviations: id → reason.
fn listed_deviations() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(here().join("deviations.txt")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (id, reason) = l.split_once(' ').unwrap_or((l, ""));
            (id.to_owned(), reason.trim().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn the_json_mapping_matches_the_reference_implementation() {
    let outcomes = outcomes().await;
    let listed = listed_deviations();
    let conforming = outcomes.iter().filter(|o| o.conforms).count();
    let generated = |o: &&Outcome| o.id.starts_with("random") || o.id.starts_with("mutant");
    let hand_written = outcomes.iter().filter(|o| !generated(o)).count();
    let hand_conforming = outcomes.iter().filter(|o| !generated(o) && o.conforms).count();
    eprintln!(
        "proto3 JSON against the reference: {conforming} of {} conform ({hand_conforming} of {hand_written} hand-written cases)",
        outcomes.len()
    );
    let new: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.conforms && !listed.contains_key(&o.id))
        .map(|o| format!("{}:\n{}", o.id, o.detail))
        .collect();
    let fixed: Vec<&String> =
        outcomes.iter().filter(|o| o.conforms && listed.contains_key(&o.id)).map(|o| &o.id).collect();
    let ids: BTreeSet<&String> = outcomes.iter().map(|o| &o.id).collect();
    let stale: Vec<&String> = listed.keys().filter(|id| !ids.contains(id)).collect();
    assert!(new.is_empty(), "{} cases deviate from the reference:\n{}", new.len(), new.join("\n\n"));
    assert!(fixed.is_empty() && stale.is_empty(), "listed as deviating but conforming (or gone): {fixed:?} {stale:?}");
}

//! Builds a typed request message from an HTTP request: path variables, query
//! parameters and the JSON body, following the rule's `body` setting.
//!
//! Values are typed by the target field (see [`FieldKind`]) and the result is
//! deserialized straight into the generated Rust message with its proto3-JSON
//! serde implementation. Every failure is `INVALID_ARGUMENT` with a
//! `google.rpc.BadRequest` naming the field.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::rule::spec::{FieldKind, FieldSpec, MessageSpec, RouteSpec};

/// A `BadRequest` status for one field (`""`: the request as a whole).
/// `description` says what is wrong without naming the field; the status
/// message is `<field>: <description>`.
pub fn invalid_field(field: &str, description: String) -> Status {
    let message = if field.is_empty() { description.clone() } else { format!("{field}: {description}") };
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(vec![FieldViolation::new(field, description)]),
    )
}

/// Decodes a whole message from its proto3 JSON (an empty body is `{}`).
pub(crate) fn decode_json<I: DeserializeOwned>(body: &[u8]) -> Result<I, Status> {
    from_slice(if is_blank(body) { b"{}" } else { body })
}

/// Decodes the request of an HTTP rule from its path variables, query
/// string and body.
pub(crate) fn decode_http<I: DeserializeOwned>(
    spec: &RouteSpec,
    params: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<I, Status> {
    if spec.body == "*" && params.is_empty() && !spec.update_mask {
        // The common case: the body is the whole message, parsed in one pass.
        return decode_json(body);
    }
    let mut root = Map::new();
    let mut mask = Vec::new();
    if !spec.body.is_empty() && !is_blank(body) {
        // Keys named twice are refused here too, as the typed decoders refuse
        // them: serde_json's `Value` would keep the last one.
        let StrictJson(body) = from_slice(body)?;
        if spec.body == "*" {
            match body {
                Value::Object(map) => {
                    if spec.update_mask {
                        paths_of(&map, spec.input, "", &mut mask);
                    }
                    root = map;
                }
                _ => return Err(invalid_field("", "the request body must be a JSON object".into())),
            }
        } else {
            let (parent, field) = slot(&mut root, spec.input, spec.body)?;
            if spec.update_mask
                && let (Value::Object(map), Some(message)) = (&body, field.message)
            {
                paths_of(map, message, "", &mut mask);
            }
            parent.insert(field.json_name.to_owned(), body);
        }
    }
    for (path, value) in params {
        set_text(&mut root, spec.input, path, value, false)?;
    }
    if spec.body != "*"
        && let Some(query) = query
    {
        bind_query(&mut root, spec, params, query)?;
    }
    if spec.update_mask && !root.contains_key("updateMask") && !root.contains_key("update_mask") {
        let camel: Vec<String> = mask
            .iter()
            .map(|p| p.split('.').map(crate::rule::spec::lower_camel).collect::<Vec<_>>().join("."))
            .collect();
        root.insert("updateMask".to_owned(), Value::String(camel.join(",")));
    }
    from_json(Value::Object(root))
}

/// The field paths (proto names, dotted) of the keys present in a JSON
/// object, descending into message fields: the update mask of a partial
/// update. Maps, repeated fields and well-known types are leaves.
fn paths_of(object: &Map<String, Value>, message: &'static MessageSpec, prefix: &str, into: &mut Vec<String>) {
    for (key, value) in object {
        let Some(field) = message.field(key) else { continue };
        let path = if prefix.is_empty() { field.name.to_owned() } else { format!("{prefix}.{}", field.name) };
        match (value, field.message) {
            (Value::Object(inner), Some(nested)) if !field.repeated && !inner.is_empty() => {
                paths_of(inner, nested, &path, into)
            }
            _ => into.push(path),
        }
    }
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// Deserializes one whole JSON document: anything after it is an error too.
fn from_slice<T: DeserializeOwned>(body: &[u8]) -> Result<T, Status> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = from_json(&mut deserializer)?;
    deserializer.end().map_err(|e| invalid_field("", format!("malformed JSON request: {e}")))?;
    Ok(value)
}

/// Deserializes with the path of the failing field in the error.
fn from_json<'de, T: serde::Deserialize<'de>, D: serde::Deserializer<'de, Error = E>, E: std::fmt::Display>(
    deserializer: D,
) -> Result<T, Status> {
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if matches!(path.as_str(), "" | "." | "?") {
            invalid_field("", format!("malformed JSON request: {inner}"))
        } else {
            invalid_field(&path, inner.to_string())
        }
    })
}

/// A JSON document in which no object names a key twice.
struct StrictJson(Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
        struct Strict;
        impl<'de> Visitor<'de> for Strict {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::from(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value::from(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::String(v))
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(StrictJson(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut object = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let StrictJson(value) = map.next_value()?;
                    if object.contains_key(&key) {
                        return Err(A::Error::custom(format!("field {key:?} is given more than once")));
                    }
                    object.insert(key, value);
                }
                Ok(Value::Object(object))
            }
        }
        deserializer.deserialize_any(Strict).map(StrictJson)
    }
}

fn bind_query(
    root: &mut Map<String, Value>,
    spec: &RouteSpec,
    params: &[(String, String)],
    query: &str,
) -> Result<(), Status> {
    // Parameters the API does not declare are refused, as unknown JSON
    // fields are, unless the gateway ignores those.
    let ignoring = crate::protojson::ignoring_unknown_fields();
    for pair in form_urlencoded(query) {
        let (key, value) = pair?;
        if key.is_empty() {
            continue;
        }
        // `?f.value=5` names a wrapper's value: it sets the wrapper as `?f=5` does.
        let key = match key.strip_suffix(".value") {
            Some(wrapper) if resolve(spec.input, wrapper).is_some_and(|f| f.wrapper) => wrapper.to_owned(),
            _ => key,
        };
        // A field bound by the path or the body (or inside one, or holding
        // one) cannot be set again; its siblings can.
        let bound = params.iter().map(|(p, _)| p.as_str()).chain((!spec.body.is_empty()).then_some(spec.body));
        if let Some(by) = bound.into_iter().find(|b| overlaps(b, &key, spec.input)) {
            if ignoring {
                continue;
            }
            return Err(invalid_field(
                &key,
                format!("is bound by the {}; it cannot be set again", if by == spec.body { "body" } else { "path" }),
            ));
        }
        if resolve(spec.input, &key).is_none() {
            if ignoring {
                continue;
            }
            return Err(invalid_field(&key, format!("names no field of {}", spec.input.name)));
        }
        set_text(root, spec.input, &key, &value, true)?;
    }
    Ok(())
}

/// Whether two field paths (proto or JSON names) are the same field or one
/// holds the other.
fn overlaps(bound: &str, key: &str, message: &'static MessageSpec) -> bool {
    let names = |path: &str| -> Vec<&'static str> {
        let mut spec = Some(message);
        path.split('.')
            .map_while(|part| {
                let field = spec?.field(part)?;
                spec = field.message;
                Some(field.name)
            })
            .collect()
    };
    let (a, b) = (names(bound), names(key));
    !a.is_empty()
        && !b.is_empty()
        && a.iter().zip(&b).all(|(x, y)| x == y)
        && (a.len() <= b.len() || b.len() == key.split('.').count())
}

/// Splits `a=1&b=x+y` into decoded pairs; a pair that does not decode to
/// UTF-8 is an error naming it.
fn form_urlencoded(query: &str) -> impl Iterator<Item = Result<(String, String), Status>> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8().map(std::borrow::Cow::into_owned)
        };
        let key = dec(k)
            .map_err(|_| invalid_field("", format!("query parameter {k:?} is not UTF-8 once percent-decoded")))?;
        let value = dec(v).map_err(|_| invalid_field(&key, "is not UTF-8 once percent-decoded".into()))?;
        Ok((key, value))
    })
}

fn resolve(mut message: &'static MessageSpec, path: &str) -> Option<&'static FieldSpec> {
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = message.field(part)?;
        if parts.peek().is_none() {
            return Some(field);
        }
        if field.repeated {
            return None;
        }
        message = field.message?;
    }
    None
}

/// The object that holds the last field of `path`, creating parents on the way.
fn slot<'a>(
    root: &'a mut Map<String, Value>,
    message: &'static MessageSpec,
    path: &str,
) -> Result<(&'a mut Map<String, Value>, &'static FieldSpec), Status> {
    let mut spec = message;
    let mut object = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = spec.field(part).ok_or_else(|| invalid_field(path, format!("no such field in {}", spec.name)))?;
        if parts.peek().is_none() {
            return Ok((object, field));
        }
        let nested = match (field.message, field.repeated) {
            (Some(nested), false) => nested,
            _ => return Err(invalid_field(path, format!("{} is not a message field", field.name))),
        };
        let entry = object.entry(field.json_name.to_owned()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        object = entry.as_object_mut().expect("just made an object");
        spec = nested;
    }
    Err(invalid_field(path, "empty field path".into()))
}

/// Sets the field at `path` from a text value, typed by the field.
fn set_text(
    root: &mut Map<String, Value>,
    message: &'static MessageSpec,
    path: &str,
    text: &str,
    from_query: bool,
) -> Result<(), Status> {
    let (object, field) = slot(root, message, path)?;
    let value = typed(field, path, text)?;
    if field.repeated && from_query {
        match object.entry(field.json_name.to_owned()).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(items) => items.push(value),
            other => *other = Value::Array(vec![value]),
        }
    } else if field.repeated {
        return Err(invalid_field(path, "a repeated field cannot be a path variable".into()));
    } else {
        object.insert(field.json_name.to_owned(), value);
    }
    Ok(())
}

fn typed(field: &FieldSpec, path: &str, text: &str) -> Result<Value, Status> {
    let bad = |what: &str| invalid_field(path, format!("{text:?} is not {what}"));
    Ok(match field.kind {
        FieldKind::String | FieldKind::Bytes | FieldKind::StringValued => Value::String(text.to_owned()),
        // Enums by name or by number.
        FieldKind::Enum => match text.trim().parse::<i32>() {
            Ok(number) => Value::from(number),
            Err(_) => Value::String(text.to_owned()),
        },
        FieldKind::Int32 => Value::from(text.trim().parse::<i32>().map_err(|_| bad("a 32-bit integer"))?),
        FieldKind::Uint32 => Value::from(text.trim().parse::<u32>().map_err(|_| bad("an unsigned 32-bit integer"))?),
        // 64-bit integers stay strings, as proto3 JSON writes them.
        FieldKind::Int64 => Value::String(text.trim().parse::<i64>().map_err(|_| bad("a 64-bit integer"))?.to_string()),
        FieldKind::Uint64 => {
            Value::String(text.trim().parse::<u64>().map_err(|_| bad("an unsigned 64-bit integer"))?.to_string())
        }
        FieldKind::Float => match text.trim() {
            special @ ("NaN" | "Infinity" | "-Infinity") => Value::String(special.to_owned()),
            number => {
                let n: f64 = number.parse().map_err(|_| bad("a number"))?;
                serde_json::Number::from_f64(n).map(Value::Number).ok_or_else(|| bad("a finite number"))?
            }
        },
        FieldKind::Bool => match text.trim() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(bad("true or false")),
        },
        FieldKind::Message | FieldKind::Map => {
            return Err(invalid_field(path, "a message or map field cannot be set from the URL".into()));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    static INNER: MessageSpec = MessageSpec {
        name: "t.Inner",
        fields: &[FieldSpec {
            name: "leaf_name",
            json_name: "leafName",
            kind: FieldKind::String,
            repeated: false,
            message: None,
            wrapper: false,
        }],
    };
    static REQUEST: MessageSpec = MessageSpec {
        name: "t.Request",
        fields: &[
            FieldSpec {
                name: "name",
                json_name: "name",
                kind: FieldKind::String,
                repeated: false,
                message: None,
                wrapper: false,
            },
            FieldSpec {
                name: "page_size",
                json_name: "pageSize",
                kind: FieldKind::Int32,
                repeated: false,
                message: None,
                wrapper: false,
            },
            FieldSpec {
                name: "big",
                json_name: "big",
                kind: FieldKind::Int64,
                repeated: false,
                message: None,
                wrapper: false,
            },
            FieldSpec {
                name: "flag",
                json_name: "flag",
                kind: FieldKind::Bool,
                repeated: false,
                message: None,
                wrapper: false,
            },
            FieldSpec {
                name: "ids",
                json_name: "ids",
                kind: FieldKind::Int32,
                repeated: true,
                message: None,
                wrapper: false,
            },
            FieldSpec {
                name: "inner",
                json_name: "inner",
                kind: FieldKind::Message,
                repeated: false,
                message: Some(&INNER),
                wrapper: false,
            },
        ],
    };

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, rename_all = "camelCase")]
    struct Inner {
        leaf_name: String,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, rename_all = "camelCase")]
    struct Request {
        name: String,
        page_size: i32,
        big: String,
        flag: bool,
        ids: Vec<i32>,
        inner: Option<Inner>,
    }

    fn spec(body: &'static str) -> &'static RouteSpec {
        Box::leak(Box::new(RouteSpec {
            rpc: "/t.S/M",
            http_method: "GET",
            template: "/x",
            body,
            response_body: "",
            success_code: 200,
            input: &REQUEST,
            update_mask: false,
        }))
    }

    fn decode<T: DeserializeOwned>(
        spec: &RouteSpec,
        (params, query, body): (&[(&str, &str)], Option<&str>, &str),
    ) -> Result<T, Status> {
        let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        decode_http(spec, &params, query, body.as_bytes())
    }

    fn violation(status: &Status) -> (String, String) {
        let bad = status.get_details_bad_request().expect("a BadRequest detail");
        (bad.field_violations[0].field.clone(), bad.field_violations[0].description.clone())
    }

    #[test]
    fn binds_path_query_and_body_by_field_type() {
        let cases: &[(&str, &[(&str, &str)], Option<&str>, &str, Request)] = &[
            ("", &[("name", "a b")], None, "", Request { name: "a b".into(), ..Default::default() }),
            (
                "",
                &[("inner.leaf_name", "x")],
                Some("pageSize=5&flag=true&ids=1&ids=2&big=9007199254740993"),
                "",
                Request {
                    page_size: 5,
                    flag: true,
                    ids: vec![1, 2],
                    big: "9007199254740993".into(),
                    inner: Some(Inner { leaf_name: "x".into() }),
                    ..Default::default()
                },
            ),
            (
                "",
                &[],
                Some("page_size=7&inner.leafName=q%20r&name=x+y"),
                "",
                Request {
                    page_size: 7,
                    name: "x y".into(),
                    inner: Some(Inner { leaf_name: "q r".into() }),
                    ..Default::default()
                },
            ),
            (
                "*",
                &[("name", "from-path")],
                Some("pageSize=9"),
                r#"{"name":"from-body","pageSize":3}"#,
                Request { name: "from-path".into(), page_size: 3, ..Default::default() },
            ),
            ("*", &[], None, r#"{"ids":[4],"unknownField":1}"#, Request { ids: vec![4], ..Default::default() }),
            ("*", &[], None, "  ", Request::default()),
            (
                "inner",
                &[("name", "n")],
                Some("pageSize=2"),
                r#"{"leafName":"b"}"#,
                Request {
                    name: "n".into(),
                    page_size: 2,
                    inner: Some(Inner { leaf_name: "b".into() }),
                    ..Default::default()
                },
            ),
        ];
        for (body, params, query, text, expected) in cases {
            let got = decode::<Request>(spec(body), (params, *query, text)).unwrap_or_else(|s| panic!("{s:?}"));
            assert_eq!(&got, expected, "body={body} params={params:?} query={query:?}");
        }
    }

    #[test]
    fn names_the_field_of_every_binding_error() {
        let cases: &[(&str, &[(&str, &str)], Option<&str>, &str, &str)] = &[
            ("", &[], Some("pageSize=ten"), "", "pageSize"),
            ("", &[], Some("pageSize=3000000000"), "", "pageSize"),
            ("", &[], Some("flag=maybe"), "", "flag"),
            ("", &[], Some("big=1.5"), "", "big"),
            ("", &[], Some("inner=x"), "", "inner"),
            ("", &[], Some("unknown=1"), "", "unknown"),
            ("", &[("name", "n")], Some("name=x"), "", "name"),
            ("", &[], Some("name=%C3%28"), "", "name"),
            ("*", &[], None, r#"{"pageSize":"x"#, "pageSize"),
            ("*", &[], None, "{,", ""),
            ("*", &[], None, r#"{"pageSize":true}"#, "pageSize"),
            ("*", &[], None, r#"{"inner":{"leafName":5}}"#, "inner.leafName"),
            ("*", &[("name", "p")], None, "[1]", ""),
            ("*", &[], None, r#"{"pageSize":1} trailing"#, ""),
            ("*", &[("name", "p")], None, r#"{"pageSize":1}{}"#, ""),
        ];
        for (body, params, query, text, field) in cases {
            let status = decode::<Request>(spec(body), (params, *query, text)).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            let (got, description) = violation(&status);
            assert_eq!(&got, field, "{query:?} {text}: {description}");
            assert!(!description.is_empty(), "{query:?} {text}: a description");
            assert!(status.message().starts_with(field), "{} names {field}", status.message());
        }
    }
}

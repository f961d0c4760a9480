//! Serves the OpenAPI document `gateway-build` wrote, completed with what
//! only the running gateway knows: the error responses of the installed
//! renderer (its statuses and its body's schema).

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Response, header};
use serde_json::{Value, json};
use tonic::Code;

use crate::status::ErrorRenderer;

/// gRPC code names as `x-grpc-errors` lists them.
fn code_named(name: &str) -> Option<Code> {
    gateway_rules::codes::code_number(name).map(Code::from_i32)
}

/// The document with an error response for every code each operation can
/// answer: INVALID_ARGUMENT (any input can be malformed), UNAUTHENTICATED
/// where the operation has security, NOT_FOUND where its path names a
/// resource, and the codes it declares in `x-grpc-errors`.
pub(crate) fn complete(text: &str, renderer: &dyn ErrorRenderer) -> Result<Bytes, &'static str> {
    let mut document: Value = serde_json::from_str(text).map_err(|_| "the OpenAPI document is not valid JSON")?;
    let schemas = document["components"]["schemas"].as_object_mut().ok_or("the OpenAPI document has no schemas")?;
    let name = if schemas.contains_key("Error") { "GatewayError" } else { "Error" };
    schemas.insert(name.to_owned(), renderer.schema());
    let reference = json!({ "$ref": format!("#/components/schemas/{name}") });
    let paths = document["paths"].as_object_mut().ok_or("the OpenAPI document has no paths")?;
    for (path, operations) in paths.iter_mut() {
        let Some(operations) = operations.as_object_mut() else { continue };
        for operation in operations.values_mut() {
            let mut codes = vec![Code::InvalidArgument];
            if operation.get("security").is_some() {
                codes.push(Code::Unauthenticated);
            }
            if path.contains('{') {
                codes.push(Code::NotFound);
            }
            if let Some(Value::Array(declared)) = operation.get("x-grpc-errors") {
                codes.extend(declared.iter().filter_map(Value::as_str).filter_map(code_named));
            }
            let Some(responses) = operation["responses"].as_object_mut() else { continue };
            for code in codes {
                let status = renderer.http_status(code);
                responses.entry(status.as_u16().to_string()).or_insert_with(|| {
                    json!({
                        "description": status.canonical_reason().unwrap_or("Error"),
                        "content": { "application/json": { "schema": reference.clone() } },
                    })
                });
            }
        }
    }
    serde_json::to_vec_pretty(&document).map(Bytes::from).map_err(|_| "the OpenAPI document cannot be written")
}

/// `GET /openapi.json` or, as YAML, `GET /openapi.yaml`.
pub(crate) fn response(document: Bytes, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(document));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The document as block-style YAML (strings in JSON's double-quoted form,
/// which YAML reads the same way).
pub(crate) fn yaml(document: &[u8]) -> Result<Bytes, &'static str> {
    let value: Value = serde_json::from_slice(document).map_err(|_| "the OpenAPI document is not valid JSON")?;
    let mut out = String::with_capacity(document.len());
    write_yaml(&value, 0, &mut out);
    Ok(Bytes::from(out))
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => serde_json::to_string(text).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn write_yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                out.push_str(&pad);
                out.push_str(&scalar(&Value::String(key.clone())));
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(":\n");
                        write_yaml(item, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(":\n");
                        write_yaml(item, indent, out);
                    }
                    _ => {
                        out.push_str(": ");
                        out.push_str(&inline(item));
                        out.push('\n');
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&pad);
                out.push_str("- ");
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let mut nested = String::new();
                        write_yaml(item, indent + 2, &mut nested);
                        out.push_str(nested.trim_start());
                    }
                    _ => {
                        out.push_str(&inline(item));
                        out.push('\n');
                    }
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

/// Empty collections and scalars, written on one line.
fn inline(value: &Value) -> String {
    match value {
        Value::Object(_) | Value::Array(_) => value.to_string(),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::RpcStatusRenderer;

    #[test]
    fn error_responses_follow_the_renderer_and_the_operation() {
        let text = r#"{"openapi":"3.1.0","paths":{"/things/{id}":{"get":{"security":[{"Token":[]}],
            "x-grpc-errors":["PERMISSION_DENIED"],"responses":{"200":{"description":"OK"}}}}},
            "components":{"schemas":{}}}"#;
        let document: Value = serde_json::from_slice(&complete(text, &RpcStatusRenderer).unwrap()).unwrap();
        let responses = document["paths"]["/things/{id}"]["get"]["responses"].as_object().unwrap();
        let statuses: Vec<&str> = responses.keys().map(String::as_str).collect();
        assert_eq!(statuses, ["200", "400", "401", "403", "404"]);
        assert_eq!(responses["404"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error");
        assert!(document["components"]["schemas"]["Error"]["properties"]["code"].is_object());
    }

    #[test]
    fn yaml_is_block_style() {
        let text = br#"{"a":{"b":[1,{"c":"x: y","d":[]}],"e":{}},"f":"g"}"#;
        let yaml = String::from_utf8(yaml(text).unwrap().to_vec()).unwrap();
        assert_eq!(yaml, "\"a\":\n  \"b\":\n  - 1\n  - \"c\": \"x: y\"\n    \"d\": []\n  \"e\": {}\n\"f\": \"g\"\n");
    }
}

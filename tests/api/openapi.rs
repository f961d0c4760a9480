//! Every kind of response of the JSON API validates against the schemas of
//! the RealWorld OpenAPI document (strictly: no property the schema lacks).

use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, spawn_app};

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/realworld/openapi-v2.yml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {path}: {e}. This test checks answers against the RealWorld contract, \
             which is not in this repository: put the RealWorld project's \
             specs/api/openapi.yml (v2.0.0, gothinkster/realworld) at ../shared/realworld/openapi-v2.yml, beside this checkout"
        )
    });
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::to_value(yaml).unwrap()
}

fn resolve<'a>(spec: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            resolve(spec, spec.pointer(pointer).unwrap_or_else(|| panic!("dangling {reference}")))
        }
        None => node,
    }
}

fn is_date_time(text: &str) -> bool {
    text.parse::<gateway::wkt::Timestamp>().is_ok() && text.ends_with('Z') && text.contains('.')
}

/// Checks `value` against `schema`; pushes one line per problem.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    let kind = schema.get("type").and_then(Value::as_str).unwrap_or("any");
    let ok = match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !ok {
        problems.push(format!("{at}: expected {kind}, got {value}"));
        return;
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time") && !is_date_time(value.as_str().unwrap()) {
        problems.push(format!("{at}: not an RFC 3339 date-time: {value}"));
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                problems.push(format!("{at}: missing required {name}"));
            }
        }
        for (name, item) in object {
            match properties.get(name) {
                Some(sub) => check(spec, sub, item, &format!("{at}.{name}"), problems),
                None => match schema.get("additionalProperties").filter(|a| a.is_object()) {
                    Some(sub) => check(spec, sub, item, &format!("{at}.{name}"), problems),
                    None => problems.push(format!("{at}: property {name} is not in the schema")),
                },
            }
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(spec, schema, item, &format!("{at}[{i}]"), problems);
        }
    }
}

/// The spec's path template for a request path (`/api` and query removed).
fn template<'a>(spec: &'a Value, path: &str) -> &'a str {
    let path = path.trim_start_matches("/api").split('?').next().unwrap();
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(&str, usize)> = None;
    for template in spec["paths"].as_object().unwrap().keys() {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let fits = parts.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s);
        let literals = parts.iter().filter(|t| !t.starts_with('{')).count();
        if fits && best.is_none_or(|(_, n)| literals > n) {
            best = Some((template, literals));
        }
    }
    best.unwrap_or_else(|| panic!("no spec path for {path}")).0
}

fn validate(spec: &Value, method: &str, path: &str, reply: &Reply, problems: &mut Vec<String>) {
    let template = template(spec, path);
    let operation = &spec["paths"][template][method.to_lowercase()];
    assert!(operation.is_object(), "{method} {template} is not in the spec");
    let status = reply.status.to_string();
    let where_ = format!("{method} {path} -> {status}");
    let declared = operation["responses"].get(&status).map(|r| resolve(spec, r));
    let schema = match declared {
        Some(response) => match response.pointer("/content/application~1json/schema") {
            Some(schema) => schema.clone(),
            None if reply.status == 204 => {
                if !reply.raw.is_empty() {
                    problems.push(format!("{where_}: 204 with a body"));
                }
                return;
            }
            // Declared without a body shape (401): errors still use the error model.
            None => json!({"$ref": "#/components/schemas/GenericErrorModel"}),
        },
        // Statuses the issue adds (403, 404) use the spec's error model.
        None if reply.status >= 400 => json!({"$ref": "#/components/schemas/GenericErrorModel"}),
        None => {
            problems.push(format!("{where_}: status not declared by the spec"));
            return;
        }
    };
    check(spec, &schema, &reply.body, &where_, problems);
}

async fn call(
    app: &TestApp,
    seen: &mut Vec<(String, String, Reply)>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Value {
    let reply = app.json(method, path, token, body).await;
    let out = reply.body.clone();
    seen.push((method.to_owned(), path.to_owned(), reply));
    out
}

#[tokio::test]
async fn every_json_response_matches_the_realworld_schemas() {
    let spec = spec();
    let app = spawn_app().await;
    let mut seen = Vec::new();
    let s = &mut seen;
    let user = |name: &str| json!({"user": {"username": name, "email": format!("{name}@example.com"), "password": "password1"}});

    let jake = call(&app, s, "POST", "/api/users", None, Some(user("jake"))).await["user"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let anne = call(&app, s, "POST", "/api/users", None, Some(user("anne"))).await["user"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (j, a) = (Some(jake.as_str()), Some(anne.as_str()));
    call(&app, s, "POST", "/api/users", None, Some(user("jake"))).await;
    call(
        &app,
        s,
        "POST",
        "/api/users/login",
        None,
        Some(json!({"user": {"email": "jake@example.com", "password": "password1"}})),
    )
    .await;
    call(
        &app,
        s,
        "POST",
        "/api/users/login",
        None,
        Some(json!({"user": {"email": "jake@example.com", "password": "nope"}})),
    )
    .await;
    call(&app, s, "GET", "/api/user", j, None).await;
    call(&app, s, "GET", "/api/user", None, None).await;
    call(&app, s, "PUT", "/api/user", j, Some(json!({"user": {"bio": "hello", "image": "https://example.com/j.png"}})))
        .await;
    call(&app, s, "PUT", "/api/user", j, Some(json!({"user": {"email": "bad"}}))).await;
    call(&app, s, "GET", "/api/profiles/anne", j, None).await;
    call(&app, s, "GET", "/api/profiles/nobody", None, None).await;
    call(&app, s, "POST", "/api/profiles/jake/follow", a, None).await;
    call(&app, s, "DELETE", "/api/profiles/jake/follow", a, None).await;
    call(&app, s, "POST", "/api/profiles/jake/follow", a, None).await;
    let article = json!({"article": {"title": "Dragons", "description": "how", "body": "carefully", "tagList": ["training", "dragons"]}});
    let slug =
        call(&app, s, "POST", "/api/articles", j, Some(article)).await["article"]["slug"].as_str().unwrap().to_owned();
    call(&app, s, "POST", "/api/articles", j, Some(json!({"article": {}}))).await;
    call(&app, s, "GET", &format!("/api/articles/{slug}"), a, None).await;
    call(&app, s, "GET", "/api/articles/nope", None, None).await;
    call(&app, s, "PUT", &format!("/api/articles/{slug}"), j, Some(json!({"article": {"body": "very carefully"}})))
        .await;
    call(&app, s, "PUT", &format!("/api/articles/{slug}"), a, Some(json!({"article": {"body": "mine now"}}))).await;
    call(&app, s, "POST", &format!("/api/articles/{slug}/favorite"), a, None).await;
    call(&app, s, "GET", "/api/articles", a, None).await;
    call(&app, s, "GET", "/api/articles?tag=dragons&author=jake&favorited=anne&limit=5&offset=0", None, None).await;
    call(&app, s, "GET", "/api/articles?limit=0", None, None).await;
    call(&app, s, "GET", "/api/articles/feed", a, None).await;
    call(&app, s, "GET", "/api/articles/feed", None, None).await;
    call(&app, s, "DELETE", &format!("/api/articles/{slug}/favorite"), a, None).await;
    let comment =
        call(&app, s, "POST", &format!("/api/articles/{slug}/comments"), a, Some(json!({"comment": {"body": "nice"}})))
            .await;
    call(&app, s, "POST", &format!("/api/articles/{slug}/comments"), a, Some(json!({"comment": {}}))).await;
    call(&app, s, "GET", &format!("/api/articles/{slug}/comments"), j, None).await;
    let id = comment["comment"]["id"].as_i64().unwrap();
    call(&app, s, "DELETE", &format!("/api/articles/{slug}/comments/{id}"), j, None).await;
    call(&app, s, "DELETE", &format!("/api/articles/{slug}/comments/{id}"), a, None).await;
    call(&app, s, "GET", "/api/tags", None, None).await;
    call(&app, s, "DELETE", &format!("/api/articles/{slug}"), j, None).await;

    let mut problems = Vec::new();
    let mut statuses = std::collections::BTreeSet::new();
    for (method, path, reply) in &seen {
        statuses.insert(reply.status);
        validate(&spec, method, path, reply, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        [200, 201, 204, 401, 403, 404, 409, 422],
        "all kinds were checked"
    );
}

#[test]
fn the_validator_rejects_what_the_spec_forbids() {
    let spec = spec();
    let schema = json!({"$ref": "#/components/schemas/Profile"});
    let mut problems = Vec::new();
    check(&spec, &schema, &json!({"username": "a", "bio": "", "image": "", "following": false}), "ok", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    check(&spec, &schema, &json!({"username": "a", "bio": "", "following": "no", "extra": 1}), "bad", &mut problems);
    assert_eq!(problems.len(), 3, "{problems:?}");
}

/// Statuses the service documents beyond `openapi-v2.yml`: changing the
/// email or user name to one already taken is 409, as on registration (the
/// contract lists no 409 for `PUT /user`).
const CONTRACT_GAPS: &[(&str, &str, &str)] = &[("put", "/user", "409")];

/// A schema reduced to what the contract fixes: types (with nullability),
/// properties, required properties, items and additional properties, with
/// references resolved. Descriptions, formats and bounds are left out.
fn shape(doc: &Value, schema: &Value) -> Value {
    let schema = resolve(doc, schema);
    if let Some(Value::Array(options)) = schema.get("anyOf") {
        let (nulls, others): (Vec<&Value>, Vec<&Value>) = options.iter().partition(|o| o["type"] == "null");
        if let ([_], [inner]) = (nulls.as_slice(), others.as_slice()) {
            let mut inner = shape(doc, inner);
            inner["nullable"] = json!(true);
            return inner;
        }
    }
    let (kind, nullable) = match &schema["type"] {
        Value::Array(kinds) => {
            let kind = kinds.iter().find(|k| *k != "null").cloned().unwrap_or(Value::Null);
            (kind, kinds.iter().any(|k| k == "null"))
        }
        kind => (kind.clone(), false),
    };
    let mut out = json!({ "type": kind, "nullable": nullable });
    if let Some(properties) = schema["properties"].as_object() {
        let shaped: serde_json::Map<String, Value> =
            properties.iter().map(|(name, sub)| (name.clone(), shape(doc, sub))).collect();
        out["properties"] = Value::Object(shaped);
        let mut required: Vec<&str> =
            schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        required.sort_unstable();
        out["required"] = json!(required);
    }
    if schema.get("items").is_some() {
        out["items"] = shape(doc, &schema["items"]);
    }
    if schema["additionalProperties"].is_object() {
        out["additionalProperties"] = shape(doc, &schema["additionalProperties"]);
    }
    out
}

/// The schema of a response (itself possibly a `$ref` to `components/responses`).
fn response_schema<'a>(doc: &'a Value, response: &'a Value) -> &'a Value {
    &resolve(doc, response)["content"]["application/json"]["schema"]
}

#[tokio::test]
async fn the_generated_document_agrees_with_the_realworld_contract() {
    let app = spawn_app().await;
    let reply = app.get("/openapi.json", None).await;
    assert_eq!(reply.status, 200);
    let ours = reply.body;
    assert_eq!(ours["openapi"], "3.1.0");
    // The same document as YAML.
    let yaml = app.get("/openapi.yaml", None).await;
    let parsed: serde_yaml::Value = serde_yaml::from_slice(&yaml.raw).expect("YAML");
    assert_eq!(serde_json::to_value(parsed).unwrap(), ours);
    let theirs = spec();
    let mut problems = Vec::new();
    let mut operations = 0;
    for (path, item) in theirs["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap().iter().filter(|(m, _)| *m != "parameters") {
            operations += 1;
            let at = format!("{} /api{path}", method.to_uppercase());
            let Some(mine) = ours["paths"].get(format!("/api{path}")).and_then(|p| p.get(method)) else {
                problems.push(format!("{at}: missing"));
                continue;
            };
            let mut wanted: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            let got: Vec<&String> = mine["responses"].as_object().unwrap().keys().collect();
            // Known gaps of the contract, documented rather than hidden: the
            // service answers them and its document says so.
            for (gap_method, gap_path, status) in CONTRACT_GAPS {
                if *gap_method == method.as_str() && *gap_path == path.as_str() {
                    wanted.push(got.iter().find(|s| s.as_str() == *status).copied().unwrap_or_else(|| {
                        panic!("{at}: the waived status {status} is not documented any more: drop the waiver")
                    }));
                }
            }
            wanted.sort();
            if wanted != got {
                problems.push(format!("{at}: statuses {got:?}, the contract has {wanted:?}"));
            }
            let waived =
                |status: &str| CONTRACT_GAPS.iter().any(|(m, p, s)| *m == method && *p == path && *s == status);
            for status in wanted.iter().filter(|s| got.contains(s) && !waived(s)) {
                let contract = shape(&theirs, response_schema(&theirs, &op["responses"][status.as_str()]));
                let generated = shape(&ours, response_schema(&ours, &mine["responses"][status.as_str()]));
                if contract != generated {
                    problems.push(format!("{at} {status}: schema\n  generated {generated}\n  contract  {contract}"));
                }
            }
            let secured = |op: &Value| op.get("security").is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()));
            if secured(op) != secured(mine) {
                problems.push(format!("{at}: security differs"));
            }
        }
    }
    assert_eq!(operations, 19);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

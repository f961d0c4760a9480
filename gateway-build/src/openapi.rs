//! Writes an OpenAPI 3.1 document of the JSON API from the descriptors:
//! paths and methods from the `google.api.http` rules, path and query
//! parameters typed from their fields, request and response schemas from the
//! messages (proto comments as descriptions, `buf.validate` rules as JSON
//! Schema keywords, `optional` fields and wrappers as nullable), success
//! statuses from `(gateway.v1.http_response)`, security from
//! `(gateway.v1.access)`. Errors are left to the runtime, which knows the
//! installed renderer (see `gateway::Gateway::openapi`).

use std::collections::{BTreeMap, HashMap, HashSet};

use prost_reflect::{
    Cardinality, DescriptorPool, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, MethodDescriptor,
};
use serde_json::{Map, Value as Json, json};

use crate::BuildError;
use crate::names::field_at;
use crate::rules::{FieldRules, StringRules};
use gateway_rules::PathTemplate;

/// What the document says of the API as a whole.
#[derive(Debug, Clone)]
pub struct OpenApi {
    /// `info.title`.
    pub title: String,
    /// `info.version`.
    pub version: String,
    /// `info.description` (Markdown).
    pub description: String,
    /// The security scheme of methods declared `(gateway.v1.access).authenticated`:
    /// its name and its OpenAPI definition (for example an `apiKey` in the
    /// `Authorization` header).
    pub security: Option<(String, Json)>,
}

/// Leading comments of every described element, by file and path.
struct Comments(HashMap<(String, Vec<i32>), String>);

impl Comments {
    fn of(files: impl Iterator<Item = FileDescriptor>) -> Self {
        let mut map = HashMap::new();
        for file in files {
            let proto = file.file_descriptor_proto();
            for location in proto.source_code_info.iter().flat_map(|info| info.location.iter()) {
                if let Some(text) = location.leading_comments.as_deref() {
                    let text = text.lines().map(str::trim).collect::<Vec<_>>().join("\n").trim().to_owned();
                    if !text.is_empty() {
                        map.insert((file.name().to_owned(), location.path.clone()), text);
                    }
                }
            }
        }
        Self(map)
    }

    fn get(&self, file: &FileDescriptor, path: &[i32]) -> Option<&str> {
        self.0.get(&(file.name().to_owned(), path.to_vec())).map(String::as_str)
    }
}

struct Writer<'a> {
    pool: &'a DescriptorPool,
    settings: JsonSettings,
    comments: Comments,
    schemas: BTreeMap<String, Json>,
    /// Messages answered by some method: all their fields are present.
    outputs: HashSet<String>,
    names: HashMap<String, String>,
}

/// Adds the JSON Schema keywords of a field's `buf.validate` rules.
fn apply_rules(schema: &mut Map<String, Json>, rules: &FieldRules, repeated: bool) {
    if let Some(string) = rules.string.as_ref().filter(|_| !repeated) {
        string_keywords(schema, string);
    }
    if let Some(list) = &rules.repeated {
        for (value, keyword) in [(list.min_items, "minItems"), (list.max_items, "maxItems")] {
            if let Some(value) = value {
                schema.insert(keyword.into(), json!(value));
            }
        }
        if list.unique {
            schema.insert("uniqueItems".into(), json!(true));
        }
        if let (Some(items), Some(Json::Object(item_schema))) = (&list.items, schema.get_mut("items")) {
            string_keywords(item_schema, items);
        }
    }
    if let Some(int) = &rules.int {
        for (value, keyword) in
            [(int.gte, "minimum"), (int.lte, "maximum"), (int.gt, "exclusiveMinimum"), (int.lt, "exclusiveMaximum")]
        {
            if let Some(value) = value {
                schema.insert(keyword.into(), json!(value));
            }
        }
    }
}

fn string_keywords(schema: &mut Map<String, Json>, string: &StringRules) {
    for (value, keyword) in [(string.min_len, "minLength"), (string.max_len, "maxLength")] {
        if let Some(value) = value {
            schema.insert(keyword.into(), json!(value));
        }
    }
    if string.email {
        schema.insert("format".into(), json!("email"));
    }
}

impl Writer<'_> {
    fn json_name(&self, field: &FieldDescriptor) -> String {
        if self.settings.proto_names { field.name().to_owned() } else { field.json_name().to_owned() }
    }

    fn schema_name(&mut self, message: &MessageDescriptor) -> String {
        if let Some(name) = self.names.get(message.full_name()) {
            return name.clone();
        }
        let short = message.name().to_owned();
        let taken = self.names.values().any(|n| *n == short);
        let name = if taken { message.full_name().to_owned() } else { short };
        self.names.insert(message.full_name().to_owned(), name.clone());
        name
    }

    /// A `$ref` to the message's schema, writing it on first use.
    fn reference(&mut self, message: &MessageDescriptor) -> Json {
        let name = self.schema_name(message);
        if !self.schemas.contains_key(&name) {
            self.schemas.insert(name.clone(), json!({}));
            let schema = self.message_schema(message, &[]);
            self.schemas.insert(name.clone(), schema);
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    /// The schema of a message, leaving out the fields named in `skip`.
    fn message_schema(&mut self, message: &MessageDescriptor, skip: &[&str]) -> Json {
        let mut properties = Map::new();
        let mut required = Vec::new();
        let output = self.outputs.contains(message.full_name());
        for field in message.fields().filter(|f| !skip.contains(&f.name())) {
            // The API's own messages were checked for unsupported rules when
            // their validation was generated (which fails the build); the
            // document never fails it, and a field whose rules cannot be
            // read gets no keywords.
            let rules = FieldRules::of(self.pool, &field).unwrap_or_default();
            let mut schema = self.field_schema(&field, Some(&rules));
            if let (Some(text), Json::Object(map)) =
                (self.comments.get(&field.parent_file(), field.path()).map(str::to_owned), &mut schema)
            {
                map.insert("description".into(), json!(text));
            }
            let name = self.json_name(&field);
            let nullable = is_nullable(&field);
            if rules.required_on_input(&field) {
                // A required field is never null, whatever its presence.
                schema = strip_null(schema);
            }
            let always = output && self.settings.emit_defaults && (!nullable || self.settings.null_for_unset);
            if rules.required_on_input(&field) || always {
                required.push(json!(name));
            }
            properties.insert(name, schema);
        }
        let mut schema = json!({ "type": "object", "properties": properties });
        if !required.is_empty() {
            schema["required"] = Json::Array(required);
        }
        if let Some(text) = self.comments.get(&message.parent_file(), message.path()) {
            schema["description"] = json!(text);
        }
        schema
    }

    fn field_schema(&mut self, field: &FieldDescriptor, rules: Option<&FieldRules>) -> Json {
        let item = self.kind_schema(&field.kind());
        let repeated = field.cardinality() == Cardinality::Repeated;
        let mut schema = if field.is_map() {
            let Kind::Message(entry) = field.kind() else { unreachable!("a map field is a message") };
            let value = entry.map_entry_value_field();
            json!({ "type": "object", "additionalProperties": self.kind_schema(&value.kind()) })
        } else if repeated {
            json!({ "type": "array", "items": item })
        } else {
            item
        };
        if let (Some(rules), Json::Object(map)) = (rules, &mut schema) {
            apply_rules(map, rules, repeated);
        }
        // Fields declared `optional` and wrappers are null when unset (3.1 says
        // so with a type union); a plain message field is taken as always set.
        if !repeated && is_nullable(field) {
            schema = nullable_schema(schema);
        }
        schema
    }

    fn kind_schema(&mut self, kind: &Kind) -> Json {
        match kind {
            Kind::Double | Kind::Float => json!({ "type": "number" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
            Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int32", "minimum": 0 }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({ "type": "string", "format": "int64" }),
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Enum(e) => {
                json!({ "type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>() })
            }
            Kind::Message(m) => match m.full_name() {
                "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
                "google.protobuf.Duration" => json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$" }),
                "google.protobuf.FieldMask" => json!({ "type": "string" }),
                "google.protobuf.Struct" => json!({ "type": "object" }),
                "google.protobuf.ListValue" => json!({ "type": "array" }),
                "google.protobuf.Value" => json!({}),
                "google.protobuf.Empty" => json!({ "type": "object" }),
                "google.protobuf.Any" => json!({ "type": "object", "properties": { "@type": { "type": "string" } } }),
                "google.protobuf.StringValue" => json!({ "type": "string" }),
                "google.protobuf.BoolValue" => json!({ "type": "boolean" }),
                "google.protobuf.BytesValue" => json!({ "type": "string", "format": "byte" }),
                "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({ "type": "number" }),
                "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({ "type": "integer" }),
                "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => json!({ "type": "string" }),
                _ => self.reference(m),
            },
        }
    }
}

/// Declared `optional`, or a wrapper type (`google.protobuf.StringValue`, …).
fn is_nullable(field: &FieldDescriptor) -> bool {
    let wrapper =
        |name: &str| name.starts_with("google.protobuf.") && name.ends_with("Value") && name != "google.protobuf.Value";
    field.field_descriptor_proto().proto3_optional()
        || matches!(field.kind(), Kind::Message(m) if wrapper(m.full_name()))
}

/// `schema` or `null`.
fn nullable_schema(schema: Json) -> Json {
    match schema {
        Json::Object(mut map) => match map.get("type").cloned() {
            Some(Json::String(kind)) => {
                map.insert("type".into(), json!([kind, "null"]));
                Json::Object(map)
            }
            _ => json!({ "anyOf": [Json::Object(map), { "type": "null" }] }),
        },
        other => other,
    }
}

/// One operation's rule, as `generate` read it.
pub(crate) struct Operation {
    pub(crate) method: MethodDescriptor,
    /// gRPC code names from `(gateway.v1.errors)`.
    pub(crate) errors: Vec<String>,
    pub(crate) verb: String,
    pub(crate) template: String,
    pub(crate) body: String,
    pub(crate) response_body: String,
    pub(crate) success: u32,
    pub(crate) authenticated: bool,
    pub(crate) update_mask: bool,
}

/// The builder's JSON settings the document must agree with.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonSettings {
    pub(crate) proto_names: bool,
    pub(crate) emit_defaults: bool,
    pub(crate) null_for_unset: bool,
}

/// The document of every operation.
pub(crate) fn document(
    pool: &DescriptorPool,
    config: &OpenApi,
    settings: JsonSettings,
    operations: &[Operation],
) -> Result<String, BuildError> {
    let mut writer = Writer {
        pool,
        settings,
        comments: Comments::of(pool.files()),
        schemas: BTreeMap::new(),
        outputs: operations.iter().map(|o| o.method.output().full_name().to_owned()).collect(),
        names: HashMap::new(),
    };
    // Response messages and the messages they hold are outputs too.
    let mut pending: Vec<MessageDescriptor> = operations.iter().map(|o| o.method.output()).collect();
    while let Some(message) = pending.pop() {
        for field in message.fields() {
            if let Kind::Message(nested) = field.kind()
                && writer.outputs.insert(nested.full_name().to_owned())
            {
                pending.push(nested);
            }
        }
    }
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    for op in operations {
        let template = PathTemplate::parse(&op.template).map_err(|e| e.to_string())?;
        let (path, path_fields) = openapi_path(&template, &op.template);
        let input = op.method.input();
        let mut parameters = Vec::new();
        for (name, field_path) in &path_fields {
            let field = field_at(&input, field_path);
            let schema = field.as_ref().map_or(json!({ "type": "string" }), |f| writer.field_schema(f, None));
            let schema = strip_null(schema);
            parameters.push(json!({ "name": name, "in": "path", "required": true, "schema": schema }));
        }
        let bound: Vec<&str> = path_fields.iter().map(|(_, f)| f.split('.').next().unwrap_or(f)).collect();
        if op.body.is_empty() {
            for field in input.fields().filter(|f| !bound.contains(&f.name())) {
                if matches!(field.kind(), Kind::Message(ref m) if !m.full_name().starts_with("google.protobuf.")) {
                    continue;
                }
                let rules = FieldRules::of(pool, &field).unwrap_or_default();
                let schema = strip_null(writer.field_schema(&field, Some(&rules)));
                let mut parameter = json!({ "name": writer.json_name(&field), "in": "query", "schema": schema });
                if let Some(text) = writer.comments.get(&field.parent_file(), field.path()) {
                    parameter["description"] = json!(text);
                }
                if rules.required_on_input(&field) {
                    parameter["required"] = json!(true);
                }
                parameters.push(parameter);
            }
        }
        let mut operation = Map::new();
        let service = op.method.parent_service();
        let base_id = format!("{}_{}", service.name(), op.method.name());
        let count = seen_ids.entry(base_id.clone()).or_insert(0);
        *count += 1;
        let id = if *count == 1 { base_id } else { format!("{base_id}_{count}") };
        operation.insert("operationId".into(), json!(id));
        operation.insert("tags".into(), json!([service.name()]));
        if let Some(text) = writer.comments.get(&op.method.parent_file(), op.method.path()) {
            let text = unwrap_lines(text);
            let summary = text.split_once(". ").map_or(text.trim_end_matches('.'), |(first, _)| first);
            operation.insert("summary".into(), json!(summary));
            operation.insert("description".into(), json!(text));
        }
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Json::Array(parameters));
        }
        match op.body.as_str() {
            "" => {}
            "*" => {
                let mut skip = bound.clone();
                if op.update_mask {
                    skip.push("update_mask");
                }
                let schema = writer.message_schema(&input, &skip);
                operation.insert(
                    "requestBody".into(),
                    json!({ "required": true, "content": { "application/json": { "schema": schema } } }),
                );
            }
            field_name => {
                let schema =
                    field_at(&input, field_name).map_or(json!({}), |f| strip_null(writer.field_schema(&f, None)));
                operation.insert(
                    "requestBody".into(),
                    json!({ "required": true, "content": { "application/json": { "schema": schema } } }),
                );
            }
        }
        let output = op.method.output();
        let response = if op.success == 204 {
            json!({ "description": "No content" })
        } else {
            let schema = if op.response_body.is_empty() {
                writer.reference(&output)
            } else {
                field_at(&output, &op.response_body).map_or(json!({}), |f| strip_null(writer.field_schema(&f, None)))
            };
            if op.method.is_server_streaming() {
                // A stream: each NDJSON line, or each event's data, is one message.
                json!({
                    "description": "A stream of messages: one per line (newline-delimited JSON), or one per \
                                    Server-Sent Event's data when the request accepts text/event-stream",
                    "content": {
                        "application/x-ndjson": { "schema": schema },
                        "text/event-stream": { "schema": { "type": "string" } },
                    },
                })
            } else {
                json!({ "description": "OK", "content": { "application/json": { "schema": schema } } })
            }
        };
        operation.insert("responses".into(), json!({ op.success.to_string(): response }));
        if op.authenticated
            && let Some((scheme, _)) = &config.security
        {
            operation.insert("security".into(), json!([{ scheme.clone(): [] }]));
        }
        if !op.errors.is_empty() {
            operation.insert("x-grpc-errors".into(), json!(op.errors));
        }
        operation.insert("x-grpc-method".into(), json!(format!("/{}/{}", service.full_name(), op.method.name())));
        // A rule for every method (`custom: {kind: "*"}`) has no one OpenAPI operation.
        if op.verb == "*" {
            continue;
        }
        paths.entry(path).or_default().insert(op.verb.to_lowercase(), Json::Object(operation));
    }
    let mut components = json!({ "schemas": writer.schemas });
    if let Some((scheme, definition)) = &config.security {
        components["securitySchemes"] = json!({ scheme.clone(): definition });
    }
    let mut info = json!({ "title": config.title, "version": config.version });
    if !config.description.is_empty() {
        info["description"] = json!(config.description);
    }
    let document = json!({ "openapi": "3.1.0", "info": info, "paths": paths, "components": components });
    Ok(serde_json::to_string_pretty(&document)?)
}

/// Comment lines joined into paragraphs (a blank line separates them).
fn unwrap_lines(text: &str) -> String {
    text.split("\n\n").map(|p| p.split('\n').collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("\n\n")
}

/// A parameter is never null: it is either sent or not.
fn strip_null(schema: Json) -> Json {
    match schema {
        Json::Object(map) if map.contains_key("anyOf") => match map.get("anyOf") {
            Some(Json::Array(options)) if options.len() == 2 && options[1] == json!({ "type": "null" }) => {
                let mut inner = options[0].clone();
                if let (Json::Object(inner_map), Some(text)) = (&mut inner, map.get("description")) {
                    inner_map.insert("description".into(), text.clone());
                }
                inner
            }
            _ => Json::Object(map),
        },
        Json::Object(mut map) => {
            if let Some(Json::Array(kinds)) = map.get("type")
                && let [Json::String(kind), Json::String(null)] = kinds.as_slice()
                && null == "null"
            {
                let kind = kind.clone();
                map.insert("type".into(), json!(kind));
            }
            Json::Object(map)
        }
        other => other,
    }
}

/// `/v1/{name=shelves/*}:publish` → (`/v1/{name}:publish`, [(name, field path)]).
fn openapi_path(template: &PathTemplate, text: &str) -> (String, Vec<(String, String)>) {
    let mut out = String::new();
    let mut variables = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        let inside = &rest[open + 1..close];
        let field = inside.split('=').next().unwrap_or(inside);
        let name = field.rsplit('.').next().unwrap_or(field).to_owned();
        out.push('{');
        out.push_str(&name);
        out.push('}');
        variables.push((name, field.to_owned()));
        rest = &rest[(close + 1).min(rest.len())..];
    }
    out.push_str(rest);
    debug_assert_eq!(variables.len(), template.variables.len());
    (out, variables)
}

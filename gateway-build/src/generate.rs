//! Writes `<package>.gateway.rs`: method specs, handler tables, HTTP routes
//! and field tables, all read off the descriptors.

use std::collections::HashSet;
use std::fmt::Write as _;

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};

use crate::BuildError;
use crate::names::{field_at, message_path, snake_case};
use gateway_rules::{PathTemplate, Router};

/// One HTTP binding of a method, read from its `google.api.http` rule.
struct Binding {
    verb: String,
    template: String,
    body: String,
    response_body: String,
}

/// Reads a `google.api.http` rule and its `additional_bindings` (one level
/// deep, as http.proto allows) into bindings; `method` names the rule's
/// method in errors.
fn http_bindings(method: &str, rule: &DynamicMessage, nested: bool, into: &mut Vec<Binding>) -> Result<(), BuildError> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let mut verb_path = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(verb) {
            verb_path = Some((verb.to_uppercase(), text(verb)));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
    {
        let get = |n: &str| match custom.get_field_by_name(n).as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        verb_path = Some((get("kind").to_uppercase(), get("path")));
    }
    let Some((verb, template)) = verb_path else {
        return Err(format!(
            "{method}: a google.api.http rule sets no pattern (get, put, post, delete, patch or custom)"
        )
        .into());
    };
    let binding = Binding { verb, template, body: text("body"), response_body: text("response_body") };
    let where_ = format!("{method} ({} {})", binding.verb, binding.template);
    // http.proto: both name a field at the top level of their message.
    for (option, field) in [("body", &binding.body), ("response_body", &binding.response_body)] {
        if field.contains('.') {
            return Err(format!("{where_}: {option} {field} must name a top-level field").into());
        }
    }
    into.push(binding);
    if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        if nested && !more.is_empty() {
            return Err(format!("{where_}: additional_bindings cannot hold additional_bindings of their own").into());
        }
        for extra in more {
            if let Value::Message(extra) = extra {
                http_bindings(method, extra, true, into)?;
            }
        }
    }
    Ok(())
}

fn success_code(method: &MethodDescriptor, ext: Option<&ExtensionDescriptor>) -> u32 {
    let Some(ext) = ext else { return 200 };
    let options = method.options();
    if !options.has_extension(ext) {
        return 200;
    }
    match options.get_extension(ext).as_ref() {
        Value::Message(m) => match m.get_field_by_name("success_code").as_deref() {
            Some(Value::U32(code)) if *code != 0 => *code,
            _ => 200,
        },
        _ => 200,
    }
}

/// Whether a method option message (`ext`, such as `gateway.v1.access`)
/// sets its bool `field` (`authenticated`) to true.
fn option_flag(method: &MethodDescriptor, ext: Option<&ExtensionDescriptor>, field: &str) -> bool {
    let Some(ext) = ext else { return false };
    let options = method.options();
    options.has_extension(ext)
        && matches!(options.get_extension(ext).as_ref(), Value::Message(m)
            if matches!(m.get_field_by_name(field).as_deref(), Some(Value::Bool(true))))
}

/// `(gateway.v1.access).authenticated = true`.
fn authenticated(method: &MethodDescriptor, ext: Option<&ExtensionDescriptor>) -> bool {
    option_flag(method, ext, "authenticated")
}

/// `(gateway.v1.errors).codes`, checked against the gRPC code names.
fn error_codes(method: &MethodDescriptor, ext: Option<&ExtensionDescriptor>) -> Result<Vec<String>, BuildError> {
    let Some(ext) = ext.filter(|e| method.options().has_extension(e)) else { return Ok(Vec::new()) };
    let Value::Message(options) = method.options().get_extension(ext).into_owned() else { return Ok(Vec::new()) };
    let Some(Value::List(codes)) = options.get_field_by_name("codes").map(|v| v.into_owned()) else {
        return Ok(Vec::new());
    };
    codes
        .iter()
        .map(|code| match code.as_str() {
            Some(name) if gateway_rules::codes::is_error_code(name) => Ok(name.to_owned()),
            other => Err(format!("{}: (gateway.v1.errors) names no gRPC code: {other:?}", method.full_name()).into()),
        })
        .collect()
}

/// `option idempotency_level = NO_SIDE_EFFECTS` (value 1 of the enum).
fn no_side_effects(method: &MethodDescriptor) -> bool {
    matches!(method.options().get_field_by_name("idempotency_level").as_deref(), Some(Value::EnumNumber(1)))
}

/// The JSON name of the output field marked `(gateway.v1.event_id)`.
fn event_id(message: &MessageDescriptor, ext: Option<&ExtensionDescriptor>) -> String {
    let Some(ext) = ext else { return String::new() };
    message
        .fields()
        .find(|f| {
            let options = f.options();
            options.has_extension(ext) && matches!(options.get_extension(ext).as_ref(), Value::Bool(true))
        })
        .map(|f| f.json_name().to_owned())
        .unwrap_or_default()
}

fn method_kind(method: &MethodDescriptor) -> &'static str {
    match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => "Unary",
        (false, true) => "ServerStreaming",
        (true, false) => "ClientStreaming",
        (true, true) => "BidiStreaming",
    }
}

/// Generates the gateway tables of one package.
pub(crate) fn package(
    pool: &DescriptorPool,
    package: &str,
    own_files: &HashSet<String>,
    operations: &mut Vec<crate::openapi::Operation>,
) -> Result<String, BuildError> {
    // A package that imports no google.api annotations simply has no HTTP rules.
    let http_ext = pool.get_extension_by_name("google.api.http");
    let response_ext = pool.get_extension_by_name("gateway.v1.http_response");
    let event_ext = pool.get_extension_by_name("gateway.v1.event_id");
    let access_ext = pool.get_extension_by_name("gateway.v1.access");
    let errors_ext = pool.get_extension_by_name("gateway.v1.errors");
    let effects_ext = pool.get_extension_by_name("gateway.v1.effects");

    let mut code = String::from("// Generated by gateway-build from the protos. Do not edit.\n\n");
    let mut specs = Vec::new();
    let mut seen = HashSet::new();
    let mut statics = String::new();
    let mut routes = String::new();
    let mut method_list = Vec::new();
    // (HTTP method, template) → RPC, to refuse rules that match the same requests.
    let mut router = Router::new();
    let mut route_rpcs: Vec<String> = Vec::new();

    for service in pool.services() {
        if service.package_name() != package || !own_files.contains(service.parent_file().name()) {
            continue;
        }
        let svc = service.name();
        let svc_snake = snake_case(svc);
        let mut handlers = String::new();
        for method in service.methods() {
            let rpc = format!("/{}/{}", service.full_name(), method.name());
            let input = method.input();
            let output = method.output();
            // As prost names it from this package's module: nested types and
            // other packages' (`super::super::other::v1::Shared`) included.
            let input_ty = message_path(&input, package);
            collect_specs(&input, &mut seen, &mut specs);
            let method_static =
                format!("METHOD_{}_{}", svc_snake.to_uppercase(), snake_case(method.name()).to_uppercase());
            writeln!(
                statics,
                "/// `{rpc}`.\npub static {method_static}: ::gateway::MethodSpec = ::gateway::MethodSpec {{\n    \
                 rpc: {rpc:?},\n    kind: ::gateway::MethodKind::{kind},\n    no_side_effects: {nse},\n    \
                 input: &{input_spec},\n    event_id: {event:?},\n    authenticated: {authenticated},\n    \
                 changes_no_data: {changes_no_data},\n}};\n",
                kind = method_kind(&method),
                nse = no_side_effects(&method),
                input_spec = spec_ident(&input),
                event = event_id(&output, event_ext.as_ref()),
                authenticated = authenticated(&method, access_ext.as_ref()),
                changes_no_data = option_flag(&method, effects_ext.as_ref(), "changes_no_data"),
            )?;
            method_list.push(method_static.clone());

            let rust_method = snake_case(method.name());
            let constructor = match method_kind(&method) {
                "Unary" => Some("unary"),
                "ServerStreaming" => Some("server_streaming"),
                _ => None,
            };
            match constructor {
                Some(constructor) => writeln!(
                    handlers,
                    "        ::gateway::Method::{constructor}(&{method_static}, {{\n            \
                     let service = service.clone();\n            \
                     move |request: tonic::Request<{input_ty}>| {{\n                \
                     let service = service.clone();\n                \
                     async move {{ service.{rust_method}(request).await }}\n            \
                     }}\n        \
                     }}),",
                )?,
                None => writeln!(handlers, "        ::gateway::Method::grpc_only(&{method_static}),")?,
            }

            let options = method.options();
            let Some(http_ext) = http_ext.as_ref().filter(|ext| options.has_extension(ext)) else { continue };
            let Value::Message(rule) = options.get_extension(http_ext).into_owned() else { continue };
            let mut bindings = Vec::new();
            http_bindings(method.full_name(), &rule, false, &mut bindings)?;
            let status = success_code(&method, response_ext.as_ref());
            for b in bindings {
                let where_ = || format!("{} ({} {})", method.full_name(), b.verb, b.template);
                let template = PathTemplate::parse(&b.template).map_err(|e| format!("{}: {e}", where_()))?;
                for var in &template.variables {
                    let field = field_at(&input, &var.field_path).ok_or_else(|| {
                        format!("{}: variable {} names no field of {}", where_(), var.field_path, input.full_name())
                    })?;
                    // http.proto: a non-repeated field of a primitive (non-message) type.
                    if field.is_list() || field.is_map() || matches!(field.kind(), Kind::Message(_)) {
                        return Err(format!(
                            "{}: variable {} must be a non-repeated field of a primitive type, not {}",
                            where_(),
                            var.field_path,
                            type_name(&field)
                        )
                        .into());
                    }
                }
                if !matches!(b.body.as_str(), "" | "*") && field_at(&input, &b.body).is_none() {
                    return Err(format!("{}: body {} names no field of {}", where_(), b.body, input.full_name()).into());
                }
                if !b.response_body.is_empty() && field_at(&output, &b.response_body).is_none() {
                    return Err(format!(
                        "{}: response_body {} names no field of {}",
                        where_(),
                        b.response_body,
                        output.full_name()
                    )
                    .into());
                }
                let verb = http::Method::from_bytes(b.verb.as_bytes())
                    .map_err(|_| format!("{}: invalid HTTP method", where_()))?;
                if let Some(other) = router.conflict(&verb, &template) {
                    return Err(format!(
                        "HTTP rules conflict: {} {} of {} matches the same requests as a rule of {}",
                        b.verb,
                        b.template,
                        method.full_name(),
                        route_rpcs[other].trim_start_matches('/').replace('/', ".")
                    )
                    .into());
                }
                router.add(verb, &b.template).map_err(|e| format!("{}: {e}", where_()))?;
                route_rpcs.push(rpc.clone());
                let update_mask = input.get_field_by_name("update_mask").is_some_and(|f| {
                    matches!(f.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask")
                        && !template.variables.iter().any(|v| v.field_path.split('.').next() == Some("update_mask"))
                        && !b.body.is_empty()
                        && b.body != "update_mask"
                });
                operations.push(crate::openapi::Operation {
                    method: method.clone(),
                    errors: error_codes(&method, errors_ext.as_ref())?,
                    verb: b.verb.clone(),
                    template: b.template.clone(),
                    body: b.body.clone(),
                    response_body: b.response_body.clone(),
                    success: status,
                    authenticated: authenticated(&method, access_ext.as_ref()),
                    update_mask,
                });
                writeln!(
                    routes,
                    "    ::gateway::RouteSpec {{\n        rpc: {rpc:?},\n        http_method: {verb:?},\n        \
                     template: {template:?},\n        body: {body:?},\n        response_body: {response_body:?},\n        \
                     success_code: {status},\n        input: &{input_spec},\n        update_mask: {update_mask},\n    }},",
                    verb = b.verb,
                    template = b.template,
                    body = b.body,
                    response_body = b.response_body,
                    input_spec = spec_ident(&input),
                )?;
            }
        }
        writeln!(
            code,
            "/// The methods of `{full}` for the gateway, calling `service` in process.\n\
             pub fn {svc_snake}_gateway_methods<T: {svc_snake}_server::{svc}>(\n    \
             service: std::sync::Arc<T>,\n\
             ) -> Vec<::gateway::Method> {{\n    vec![\n{handlers}    ]\n}}\n",
            full = service.full_name(),
        )?;
    }

    writeln!(
        code,
        "/// Every method of package `{package}`.\npub static METHODS: &[&::gateway::MethodSpec] = &[{}];\n",
        method_list.iter().map(|m| format!("&{m}")).collect::<Vec<_>>().join(", ")
    )?;
    writeln!(
        code,
        "/// Every HTTP binding of package `{package}`, in declaration order.\n\
         pub static HTTP_ROUTES: &[::gateway::RouteSpec] = &[\n{routes}];\n"
    )?;
    let mut any_types = String::new();
    for message in pool.all_messages() {
        if message.package_name() == package
            && own_files.contains(message.parent_file().name())
            && !message.is_map_entry()
        {
            writeln!(
                any_types,
                "    ::gateway::wkt::AnyType::of::<{}>(\"{}\"),",
                message_path(&message, package),
                message.full_name()
            )?;
        }
    }
    writeln!(
        code,
        "/// Every message of package `{package}`, for `google.protobuf.Any` in JSON.\n\
         pub const ANY_TYPES: &[::gateway::wkt::AnyType] = &[\n{any_types}];\n"
    )?;
    let own = |m: &MessageDescriptor| own_files.contains(m.parent_file().name());
    code.push_str(&crate::validation::impls(pool, package, &own, &|m| message_path(m, package))?);
    code.push_str(&statics);
    for message in specs {
        write_spec(&mut code, &message)?;
    }
    Ok(code)
}

/// How a field's type is written in a .proto file, for errors.
fn type_name(field: &FieldDescriptor) -> String {
    let base = match field.kind() {
        Kind::Message(m) if field.is_map() => {
            let (key, value) = (m.map_entry_key_field(), m.map_entry_value_field());
            return format!("map<{}, {}>", type_name(&key), type_name(&value));
        }
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    };
    if field.is_list() { format!("repeated {base}") } else { base }
}

/// Whether a message is bound from a single JSON string (a well-known type
/// with a string form), so a path or query value may set it.
fn is_string_wkt(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
    )
}

/// The scalar kind of a wrapper type (`google.protobuf.Int32Value` → `Int32`).
fn wrapper_kind(message: &MessageDescriptor) -> Option<&'static str> {
    Some(match message.full_name() {
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => "Float",
        "google.protobuf.Int32Value" => "Int32",
        "google.protobuf.UInt32Value" => "Uint32",
        "google.protobuf.Int64Value" => "Int64",
        "google.protobuf.UInt64Value" => "Uint64",
        "google.protobuf.BoolValue" => "Bool",
        "google.protobuf.StringValue" => "String",
        "google.protobuf.BytesValue" => "Bytes",
        _ => return None,
    })
}

/// Messages whose fields the gateway binds into: not the well-known types,
/// whose JSON forms are special.
fn is_plain_message(message: &MessageDescriptor) -> bool {
    message.package_name() != "google.protobuf"
}

fn collect_specs(message: &MessageDescriptor, seen: &mut HashSet<String>, into: &mut Vec<MessageDescriptor>) {
    if !seen.insert(message.full_name().to_owned()) {
        return;
    }
    into.push(message.clone());
    for field in message.fields() {
        if let Kind::Message(inner) = field.kind()
            && !field.is_map()
            && is_plain_message(&inner)
        {
            collect_specs(&inner, seen, into);
        }
    }
}

fn spec_ident(message: &MessageDescriptor) -> String {
    format!("MESSAGE_{}", snake_case(&message.full_name().replace('.', "_")).to_uppercase())
}

fn field_kind(field: &FieldDescriptor) -> &'static str {
    if field.is_map() {
        return "Map";
    }
    match field.kind() {
        Kind::Double | Kind::Float => "Float",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "Int32",
        Kind::Uint32 | Kind::Fixed32 => "Uint32",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "Int64",
        Kind::Uint64 | Kind::Fixed64 => "Uint64",
        Kind::Bool => "Bool",
        Kind::String => "String",
        Kind::Bytes => "Bytes",
        Kind::Enum(_) => "Enum",
        Kind::Message(m) if is_string_wkt(&m) => "StringValued",
        Kind::Message(m) => wrapper_kind(&m).unwrap_or("Message"),
    }
}

fn write_spec(code: &mut String, message: &MessageDescriptor) -> Result<(), BuildError> {
    writeln!(
        code,
        "/// Binding table of `{}`.\npub static {}: ::gateway::MessageSpec = ::gateway::MessageSpec {{\n    \
         name: \"{}\",\n    fields: &[",
        message.full_name(),
        spec_ident(message),
        message.full_name()
    )?;
    for field in message.fields() {
        let nested = match field.kind() {
            Kind::Message(m) if !field.is_map() && is_plain_message(&m) => format!("Some(&{})", spec_ident(&m)),
            _ => "None".to_owned(),
        };
        writeln!(
            code,
            "        ::gateway::FieldSpec {{ name: \"{}\", json_name: \"{}\", kind: ::gateway::FieldKind::{}, repeated: {}, message: {}, wrapper: {} }},",
            field.name(),
            field.json_name(),
            field_kind(&field),
            field.is_list(),
            nested,
            matches!(field.kind(), Kind::Message(ref m) if wrapper_kind(m).is_some()),
        )?;
    }
    writeln!(code, "    ],\n}};\n")?;
    Ok(())
}

//! Compiles `proto/` with a pure-Rust protobuf compiler (no system `protoc`)
//! into, per package:
//! - `<package>.rs`: prost messages, tonic clients and servers;
//! - `<package>.serde.rs`: proto3-JSON serde implementations (pbjson);
//! - `<package>.http.rs`: the HTTP routes of every `google.api.http` rule and
//!   the field tables the gateway binds path and query parameters with;
//!
//! and `descriptor.bin`, the encoded descriptor set with custom options kept.
//! Nothing here knows any particular API: it is all read off the descriptors.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};

type BuildResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The proto type every `Timestamp` field is generated as: prost's own type
/// prints `+00:00` and drops fractions, the gateway wants canonical UTC.
const TIMESTAMP_RUST_TYPE: &str = "crate::wkt::Timestamp";

fn main() -> BuildResult {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");

    let mut sources = Vec::new();
    collect_protos(Path::new("proto"), &mut sources)?;
    // Vendored dependencies are compiled only as imports.
    sources.retain(|p| !p.starts_with("proto/google"));
    let sources: Vec<PathBuf> = sources.into_iter().map(|p| p.strip_prefix("proto").unwrap().to_path_buf()).collect();

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&sources)?;
    // The encoded set keeps custom options (google.api.http and ours);
    // `file_descriptor_set()` would drop them.
    let encoded = compiler.encode_file_descriptor_set();
    fs::write(out.join("descriptor.bin"), &encoded)?;

    let own_files: HashSet<String> = compiler.files().filter(|f| !f.is_import()).map(|f| f.name().to_owned()).collect();
    // prost needs the imported files too (to know the types it refers to);
    // the Rust it writes for them is simply not included.
    let fds = prost_types::FileDescriptorSet::decode(encoded.as_slice())?;
    let packages: BTreeSet<String> =
        fds.file.iter().filter(|f| own_files.contains(f.name())).map(|f| f.package().to_owned()).collect();

    tonic_prost_build::configure().extern_path(".google.protobuf.Timestamp", TIMESTAMP_RUST_TYPE).compile_fds(fds)?;

    let prefixes: Vec<String> = packages.iter().map(|p| format!(".{p}")).collect();
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .extern_path(".google.protobuf.Timestamp", TIMESTAMP_RUST_TYPE)
        .emit_fields()
        .ignore_unknown_fields()
        .build(&prefixes)?;

    let pool = DescriptorPool::decode(encoded.as_slice())?;
    for package in &packages {
        let code = http_routes(&pool, package, &own_files)?;
        fs::write(out.join(format!("{package}.http.rs")), code)?;
    }
    Ok(())
}

fn collect_protos(dir: &Path, into: &mut Vec<PathBuf>) -> BuildResult {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            collect_protos(&path, into)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            into.push(path);
        }
    }
    Ok(())
}

/// One HTTP binding of a method, read from its `google.api.http` rule.
struct Binding {
    verb: String,
    template: String,
    body: String,
    response_body: String,
}

fn http_bindings(rule: &DynamicMessage, into: &mut Vec<Binding>) {
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
    if let Some((verb, template)) = verb_path {
        into.push(Binding { verb, template, body: text("body"), response_body: text("response_body") });
    }
    if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for extra in more {
            if let Value::Message(extra) = extra {
                http_bindings(extra, into);
            }
        }
    }
}

fn success_code(method: &MethodDescriptor, ext: Option<&ExtensionDescriptor>) -> u32 {
    let Some(ext) = ext else { return 200 };
    let options = method.options();
    if !options.has_extension(ext) {
        return 200;
    }
    match options.get_extension(ext).as_ref() {
        Value::Message(m) => match m.get_field_by_name("success_code").as_deref() {
            Some(Value::U32(0)) | None => 200,
            Some(Value::U32(code)) => *code,
            _ => 200,
        },
        _ => 200,
    }
}

fn http_routes(pool: &DescriptorPool, package: &str, own_files: &HashSet<String>) -> BuildResult<String> {
    let http_ext =
        pool.get_extension_by_name("google.api.http").ok_or("google/api/annotations.proto is not imported")?;
    let response_ext = pool.get_extension_by_name("gateway.v1.http_response");

    let mut code = String::from("// Generated by build.rs from the google.api.http rules. Do not edit.\n\n");
    let mut specs = Vec::new();
    let mut seen = HashSet::new();
    let mut statics = String::new();
    let mut grpc_methods = Vec::new();

    for service in pool.services() {
        if service.package_name() != package || !own_files.contains(service.parent_file().name()) {
            continue;
        }
        let svc = service.name();
        let svc_snake = snake_case(svc);
        for method in service.methods() {
            grpc_methods.push(format!("/{}/{}", service.full_name(), method.name()));
        }
        let mut routes = String::new();
        for method in service.methods() {
            if method.is_client_streaming() || method.is_server_streaming() {
                continue;
            }
            let options = method.options();
            if !options.has_extension(&http_ext) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&http_ext).into_owned() else {
                continue;
            };
            let mut bindings = Vec::new();
            http_bindings(&rule, &mut bindings);
            let input = method.input();
            let output = method.output();
            for ty in [&input, &output] {
                if ty.package_name() != package || ty.parent_message().is_some() {
                    return Err(format!(
                        "{}: HTTP-bound methods need top-level request and response messages of package {package}",
                        method.full_name()
                    )
                    .into());
                }
            }
            collect_specs(&input, &mut seen, &mut specs);
            let status = success_code(&method, response_ext.as_ref());
            let rust_method = snake_case(method.name());
            for (i, b) in bindings.into_iter().enumerate() {
                let spec = format!("ROUTE_{}_{}_{i}", svc_snake.to_uppercase(), rust_method.to_uppercase());
                writeln!(
                    statics,
                    "static {spec}: crate::gateway::RouteSpec = crate::gateway::RouteSpec {{\n    \
                     rpc: \"/{full}/{name}\",\n    \
                     http_method: {verb:?},\n    \
                     template: {template:?},\n    \
                     body: {body:?},\n    \
                     response_body: {response_body:?},\n    \
                     success_code: {status},\n    \
                     input: &{input_spec},\n\
                     }};\n",
                    full = service.full_name(),
                    name = method.name(),
                    verb = b.verb,
                    template = b.template,
                    body = b.body,
                    response_body = b.response_body,
                    input_spec = spec_ident(&input),
                )?;
                writeln!(
                    routes,
                    "        crate::gateway::Route::unary(&{spec}, {{\n            \
                     let service = service.clone();\n            \
                     move |request: tonic::Request<{input_ty}>| {{\n                \
                     let service = service.clone();\n                \
                     async move {{ service.{rust_method}(request).await }}\n            \
                     }}\n        \
                     }}),",
                    input_ty = input.name(),
                )?;
            }
        }
        if routes.is_empty() {
            continue;
        }
        writeln!(
            code,
            "/// The HTTP routes of `{full}`, calling `service` in process.\n\
             pub fn {svc_snake}_http_routes<T: {svc_snake}_server::{svc}>(\n    \
             service: std::sync::Arc<T>,\n\
             ) -> Vec<crate::gateway::Route> {{\n    vec![\n{routes}    ]\n}}\n",
            full = service.full_name(),
        )?;
    }

    writeln!(
        code,
        "/// The gRPC path of every method of package `{package}`, for naming requests.\n\
         pub const GRPC_METHODS: &[&str] = &{grpc_methods:?};\n"
    )?;
    code.push_str(&statics);
    for message in specs {
        write_spec(&mut code, &message)?;
    }
    Ok(code)
}

/// Whether a message is bound from a single JSON string (a well-known type
/// with a string form), so a path or query value may set it.
fn is_string_wkt(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
    )
}

fn collect_specs(message: &MessageDescriptor, seen: &mut HashSet<String>, into: &mut Vec<MessageDescriptor>) {
    if !seen.insert(message.full_name().to_owned()) {
        return;
    }
    into.push(message.clone());
    for field in message.fields() {
        if let Kind::Message(inner) = field.kind()
            && !field.is_map()
            && !is_string_wkt(&inner)
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
        Kind::Message(_) => "Message",
    }
}

fn write_spec(code: &mut String, message: &MessageDescriptor) -> BuildResult {
    writeln!(
        code,
        "/// Binding table of `{}`.\npub static {}: crate::gateway::MessageSpec = crate::gateway::MessageSpec {{\n    \
         name: \"{}\",\n    fields: &[",
        message.full_name(),
        spec_ident(message),
        message.full_name()
    )?;
    for field in message.fields() {
        let nested = match field.kind() {
            Kind::Message(m) if !field.is_map() && !is_string_wkt(&m) => format!("Some(&{})", spec_ident(&m)),
            _ => "None".to_owned(),
        };
        writeln!(
            code,
            "        crate::gateway::FieldSpec {{ name: \"{}\", json_name: \"{}\", kind: crate::gateway::FieldKind::{}, repeated: {}, message: {} }},",
            field.name(),
            field.json_name(),
            field_kind(&field),
            field.is_list(),
            nested
        )?;
    }
    writeln!(code, "    ],\n}};\n")?;
    Ok(())
}

/// `GetCurrentUser` → `get_current_user`, as prost and tonic name things.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower = i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if i > 0 && chars[i - 1] != '_' && (prev_lower || (prev_upper && next_lower)) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

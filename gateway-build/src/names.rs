//! Names and field paths, as prost, tonic and the rules spell them; shared
//! by the table, check and document writers.

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};

/// `GetCurrentUser` → `get_current_user`, as prost and tonic name things.
pub(crate) fn snake_case(name: &str) -> String {
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

/// A Rust field name as prost writes it.
pub(crate) fn rust_field(field: &FieldDescriptor) -> String {
    let name = snake_case(field.name());
    match name.as_str() {
        "type" | "match" | "ref" | "mod" | "use" | "fn" | "impl" | "self" | "struct" | "enum" | "trait" | "loop"
        | "move" | "where" | "async" | "await" | "dyn" | "box" | "in" | "for" | "if" | "else" | "return" => {
            format!("r#{name}")
        }
        _ => name,
    }
}

/// Follows a dotted field path through messages; the last field.
pub(crate) fn field_at(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let mut current = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = current.get_field_by_name(part)?;
        if parts.peek().is_none() {
            return Some(field);
        }
        match field.kind() {
            Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
            _ => return None,
        }
    }
    None
}

/// An identifier as prost writes it: keywords raw, or with `_` where raw
/// identifiers are not allowed.
fn sanitize(ident: String) -> String {
    match ident.as_str() {
        "as" | "break" | "const" | "continue" | "else" | "enum" | "false" | "fn" | "for" | "if" | "impl" | "in"
        | "let" | "loop" | "match" | "mod" | "move" | "mut" | "pub" | "ref" | "return" | "static" | "struct"
        | "trait" | "true" | "type" | "unsafe" | "use" | "where" | "while" | "dyn" | "abstract" | "become" | "box"
        | "do" | "final" | "macro" | "override" | "priv" | "typeof" | "unsized" | "virtual" | "yield" | "async"
        | "await" | "try" | "gen" => format!("r#{ident}"),
        "_" | "super" | "self" | "Self" | "extern" | "crate" => format!("{ident}_"),
        s if s.starts_with(|c: char| c.is_numeric()) => format!("_{ident}"),
        _ => ident,
    }
}

/// A field or module name as prost writes it.
pub(crate) fn snake(name: &str) -> String {
    sanitize(name.to_snake_case())
}

/// A type name as prost writes it.
pub(crate) fn camel(name: &str) -> String {
    sanitize(name.to_upper_camel_case())
}

/// The Rust path of a message or enum, from the module of `package`, as
/// prost and the gateway's well-known types name it.
fn type_path(full_name: &str, parent_messages: &[String], type_package: &str, package: &str) -> String {
    let name = full_name.rsplit('.').next().unwrap_or(full_name);
    if type_package == "google.protobuf" {
        return format!("::gateway::wkt::{name}");
    }
    let mut path = String::new();
    if type_package != package {
        for _ in package.split('.').filter(|p| !p.is_empty()) {
            path.push_str("super::");
        }
        for part in type_package.split('.').filter(|p| !p.is_empty()) {
            path.push_str(&snake(part));
            path.push_str("::");
        }
    }
    for parent in parent_messages {
        path.push_str(&snake(parent));
        path.push_str("::");
    }
    path.push_str(&camel(name));
    path
}

/// The names of the messages `parent` is in, outermost first, with it.
fn enclosing(parent: Option<MessageDescriptor>) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = parent;
    while let Some(message) = at {
        names.insert(0, message.name().to_owned());
        at = message.parent_message();
    }
    names
}

/// The Rust path of a message, from the module of `package`.
pub(crate) fn message_path(message: &MessageDescriptor, package: &str) -> String {
    type_path(message.full_name(), &enclosing(message.parent_message()), message.package_name(), package)
}

/// The Rust path of an enum, from the module of `package`.
pub(crate) fn enum_path(enumeration: &EnumDescriptor, package: &str) -> String {
    type_path(enumeration.full_name(), &enclosing(enumeration.parent_message()), enumeration.package_name(), package)
}

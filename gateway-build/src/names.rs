//! Names and field paths, as prost, tonic and the rules spell them; shared
//! by the table, check and document writers.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};

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

//! Compiles `buf.validate` field rules into `impl gateway::validate::Validate`
//! for every message of a package. A rule the runtime does not implement
//! fails the build, naming the field and the rule, rather than being ignored.

use std::fmt::Write as _;

use prost_reflect::{Cardinality, DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use crate::BuildError;

/// The rules read off one field, in the runtime's terms.
#[derive(Default)]
struct Rules {
    required: bool,
    string: Option<String>,
    items: Option<String>,
    repeated: Option<String>,
    int: Option<String>,
}

fn set_fields(message: &DynamicMessage) -> Vec<(String, Value)> {
    message.fields().map(|(f, v)| (f.name().to_owned(), v.clone())).collect()
}

fn unsupported(field: &FieldDescriptor, rule: &str) -> BuildError {
    format!(
        "{}: buf.validate rule `{rule}` is not supported (supported: required; string min_len, max_len, email; \
         repeated min_items, max_items, unique, items; int32/int64 gt, gte, lt, lte)",
        field.full_name()
    )
    .into()
}

fn u64_of(value: &Value) -> u64 {
    match value {
        Value::U64(n) => *n,
        Value::U32(n) => u64::from(*n),
        _ => 0,
    }
}

fn i64_of(value: &Value) -> i64 {
    match value {
        Value::I64(n) => *n,
        Value::I32(n) => i64::from(*n),
        _ => 0,
    }
}

/// `::gateway::validate::StringRules { … }` from a `StringRules` message.
fn string_rules(field: &FieldDescriptor, rules: &DynamicMessage, required: bool) -> Result<String, BuildError> {
    let (mut min, mut max, mut email) = (None, None, false);
    for (name, value) in set_fields(rules) {
        match name.as_str() {
            "min_len" => min = Some(u64_of(&value)),
            "max_len" => max = Some(u64_of(&value)),
            "email" => email = matches!(value, Value::Bool(true)),
            other => return Err(unsupported(field, &format!("string.{other}"))),
        }
    }
    Ok(format!(
        "::gateway::validate::StringRules {{ required: {required}, min_len: {min:?}, max_len: {max:?}, email: {email} }}"
    ))
}

fn rules_of(field: &FieldDescriptor, field_rules: &DynamicMessage) -> Result<Rules, BuildError> {
    let mut rules = Rules::default();
    let fields = set_fields(field_rules);
    rules.required = fields.iter().any(|(name, value)| name == "required" && matches!(value, Value::Bool(true)));
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("required", _) => {}
            ("string", Value::Message(m)) => rules.string = Some(string_rules(field, &m, rules.required)?),
            ("int32" | "int64", Value::Message(m)) => {
                let mut bounds = [None; 4];
                for (bound, value) in set_fields(&m) {
                    let at = match bound.as_str() {
                        "gt" => 0,
                        "gte" => 1,
                        "lt" => 2,
                        "lte" => 3,
                        other => return Err(unsupported(field, &format!("{name}.{other}"))),
                    };
                    bounds[at] = Some(i64_of(&value));
                }
                rules.int = Some(format!(
                    "::gateway::validate::IntRules {{ gt: {:?}, gte: {:?}, lt: {:?}, lte: {:?} }}",
                    bounds[0], bounds[1], bounds[2], bounds[3]
                ));
            }
            ("repeated", Value::Message(m)) => {
                let (mut min, mut max, mut unique) = (None, None, false);
                for (rule, value) in set_fields(&m) {
                    match (rule.as_str(), value) {
                        ("min_items", v) => min = Some(u64_of(&v)),
                        ("max_items", v) => max = Some(u64_of(&v)),
                        ("unique", v) => unique = matches!(v, Value::Bool(true)),
                        ("items", Value::Message(items)) => {
                            for (kind, value) in set_fields(&items) {
                                match (kind.as_str(), value) {
                                    ("string", Value::Message(s)) => {
                                        rules.items = Some(string_rules(field, &s, false)?);
                                    }
                                    (other, _) => return Err(unsupported(field, &format!("repeated.items.{other}"))),
                                }
                            }
                        }
                        (other, _) => return Err(unsupported(field, &format!("repeated.{other}"))),
                    }
                }
                rules.repeated = Some(format!(
                    "::gateway::validate::RepeatedRules {{ min_items: {min:?}, max_items: {max:?}, unique: {unique} }}"
                ));
            }
            (other, _) => return Err(unsupported(field, other)),
        }
    }
    if rules.required && rules.string.is_none() && matches!(field.kind(), Kind::String) {
        rules.string = Some(format!("::gateway::validate::StringRules {{ required: true, ..{DEFAULT} }}"));
    }
    Ok(rules)
}

const DEFAULT: &str =
    "::gateway::validate::StringRules { required: false, min_len: None, max_len: None, email: false }";

/// A Rust field name as prost writes it.
fn rust_field(field: &FieldDescriptor) -> String {
    let name = crate::generate::snake_case(field.name());
    match name.as_str() {
        "type" | "match" | "ref" | "mod" | "use" | "fn" | "impl" | "self" | "struct" | "enum" | "trait" | "loop"
        | "move" | "where" | "async" | "await" | "dyn" | "box" | "in" | "for" | "if" | "else" | "return" => {
            format!("r#{name}")
        }
        _ => name,
    }
}

/// The `check` body of one message.
fn check_body(pool: &DescriptorPool, message: &MessageDescriptor, package: &str) -> Result<String, BuildError> {
    let ext = pool.get_extension_by_name("buf.validate.field");
    if let Some(message_ext) = pool.get_extension_by_name("buf.validate.message")
        && message.options().has_extension(&message_ext)
    {
        return Err(format!("{}: buf.validate message rules are not supported", message.full_name()).into());
    }
    let mut body = String::new();
    for field in message.fields() {
        let rules = match &ext {
            Some(ext) if field.options().has_extension(ext) => match field.options().get_extension(ext).as_ref() {
                Value::Message(m) => rules_of(&field, m)?,
                _ => Rules::default(),
            },
            _ => Rules::default(),
        };
        let name = field.name();
        let access = rust_field(&field);
        let optional = field.supports_presence() && !matches!(field.kind(), Kind::Message(_));
        let repeated = field.cardinality() == Cardinality::Repeated && !field.is_map();
        if let Some(string) = &rules.string {
            if optional {
                if rules.required {
                    writeln!(
                        body,
                        "        if self.{access}.is_none() {{ ::gateway::validate::missing(out, prefix, {name:?}); }}"
                    )?;
                }
                writeln!(
                    body,
                    "        if let Some(v) = &self.{access} {{ ::gateway::validate::string(out, prefix, {name:?}, v, &{string}); }}"
                )?;
            } else {
                writeln!(
                    body,
                    "        ::gateway::validate::string(out, prefix, {name:?}, &self.{access}, &{string});"
                )?;
            }
        }
        if let Some(int) = &rules.int {
            if optional {
                writeln!(
                    body,
                    "        if let Some(v) = self.{access} {{ ::gateway::validate::int(out, prefix, {name:?}, i64::from(v), &{int}); }}"
                )?;
            } else {
                writeln!(
                    body,
                    "        ::gateway::validate::int(out, prefix, {name:?}, i64::from(self.{access}), &{int});"
                )?;
            }
        }
        if let Some(list) = &rules.repeated {
            writeln!(body, "        ::gateway::validate::repeated(out, prefix, {name:?}, &self.{access}, &{list});")?;
        }
        if let Some(items) = &rules.items {
            writeln!(
                body,
                "        for (i, v) in self.{access}.iter().enumerate() {{ ::gateway::validate::string_item(out, prefix, {name:?}, i, v, &{items}); }}"
            )?;
        }
        if let Kind::Message(nested) = field.kind() {
            let own = nested.package_name() == package && !nested.is_map_entry();
            if repeated && own {
                writeln!(
                    body,
                    "        for (i, v) in self.{access}.iter().enumerate() {{ ::gateway::validate::Validate::check(v, &::gateway::validate::path(prefix, &format!(\"{name}[{{i}}]\")), out); }}"
                )?;
            } else if !repeated && !field.is_map() {
                if rules.required {
                    writeln!(
                        body,
                        "        if self.{access}.is_none() {{ ::gateway::validate::missing(out, prefix, {name:?}); }}"
                    )?;
                }
                if own && field.containing_oneof().is_none() {
                    writeln!(
                        body,
                        "        if let Some(v) = &self.{access} {{ ::gateway::validate::Validate::check(v, &::gateway::validate::path(prefix, {name:?}), out); }}"
                    )?;
                }
            }
        }
    }
    Ok(body)
}

/// `impl Validate` for every message of `package` declared in its own files.
pub(crate) fn impls(
    pool: &DescriptorPool,
    package: &str,
    own: &dyn Fn(&MessageDescriptor) -> bool,
    rust_path: &dyn Fn(&MessageDescriptor) -> String,
) -> Result<String, BuildError> {
    let mut code = String::new();
    for message in pool.all_messages().filter(|m| m.package_name() == package && own(m) && !m.is_map_entry()) {
        let body = check_body(pool, &message, package)?;
        let (prefix, out) = if body.is_empty() { ("_prefix", "_out") } else { ("prefix", "out") };
        writeln!(
            code,
            "impl ::gateway::validate::Validate for {} {{\n    fn check(&self, {prefix}: &str, {out}: &mut ::gateway::validate::Violations) {{\n{body}    }}\n}}\n",
            rust_path(&message)
        )?;
    }
    Ok(code)
}

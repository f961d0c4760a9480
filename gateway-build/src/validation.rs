//! Compiles `buf.validate` field rules (read by [`crate::rules`]) into
//! `impl gateway::validate::Validate` for every message of a package.

use std::fmt::Write as _;

use prost_reflect::{Cardinality, DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

use crate::BuildError;
use crate::names::rust_field;
use crate::rules::{FieldRules, IntRules, RepeatedRules, StringRules, refuse_message_rules};

/// The rules of one field as the runtime's rule values (Rust expressions).
#[derive(Default)]
struct Checks {
    required: bool,
    string: Option<String>,
    items: Option<String>,
    repeated: Option<String>,
    int: Option<String>,
}

/// `::gateway::validate::StringRules { … }`.
fn string_code(rules: &StringRules, required: bool) -> String {
    let StringRules { min_len, max_len, email } = rules;
    format!(
        "::gateway::validate::StringRules {{ required: {required}, min_len: {min_len:?}, max_len: {max_len:?}, email: {email} }}"
    )
}

impl Checks {
    fn of(field: &FieldDescriptor, rules: &FieldRules) -> Self {
        let string = match &rules.string {
            Some(string) => Some(string_code(string, rules.required)),
            // A required string without rules of its own must not be empty.
            None if rules.required && matches!(field.kind(), Kind::String) => {
                Some(format!("::gateway::validate::StringRules {{ required: true, ..{DEFAULT} }}"))
            }
            None => None,
        };
        Self {
            required: rules.required,
            string,
            int: rules.int.map(|IntRules { gt, gte, lt, lte }| {
                format!("::gateway::validate::IntRules {{ gt: {gt:?}, gte: {gte:?}, lt: {lt:?}, lte: {lte:?} }}")
            }),
            repeated: rules.repeated.map(|RepeatedRules { min_items, max_items, unique, .. }| {
                format!(
                    "::gateway::validate::RepeatedRules {{ min_items: {min_items:?}, max_items: {max_items:?}, unique: {unique} }}"
                )
            }),
            items: rules.repeated.and_then(|r| r.items).map(|items| string_code(&items, false)),
        }
    }
}

const DEFAULT: &str =
    "::gateway::validate::StringRules { required: false, min_len: None, max_len: None, email: false }";

/// The `check` body of one message.
fn check_body(pool: &DescriptorPool, message: &MessageDescriptor, package: &str) -> Result<String, BuildError> {
    refuse_message_rules(pool, message)?;
    let mut body = String::new();
    for field in message.fields() {
        let rules = Checks::of(&field, &FieldRules::of(pool, &field)?);
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

//! The `buf.validate` rules of a field, read once into one model that both
//! the generated checks ([`crate::validation`]) and the OpenAPI schemas
//! ([`crate::openapi`]) are written from, so that what is documented and
//! what is enforced cannot drift apart.
//!
//! Only the rules the runtime implements are modelled; any other rule fails
//! the build, naming the field and the rule, rather than being ignored.

use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, MessageDescriptor, Value};

use crate::BuildError;

/// Every rule of one field.
#[derive(Debug, Default)]
pub(crate) struct FieldRules {
    /// `required`: the field must be set (a string non-empty).
    pub(crate) required: bool,
    /// `string`: lengths in characters, and the email form.
    pub(crate) string: Option<StringRules>,
    /// `int32` / `int64`: bounds.
    pub(crate) int: Option<IntRules>,
    /// `repeated`: counts, uniqueness and the rules of each item.
    pub(crate) repeated: Option<RepeatedRules>,
}

/// `buf.validate.StringRules`, as far as they are supported: `min_len` and
/// `max_len` in characters, and whether the value must be an email address.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StringRules {
    pub(crate) min_len: Option<u64>,
    pub(crate) max_len: Option<u64>,
    pub(crate) email: bool,
}

/// `buf.validate.Int32Rules` / `Int64Rules`: the exclusive (`gt`, `lt`) and
/// inclusive (`gte`, `lte`) bounds, each optional.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IntRules {
    pub(crate) gt: Option<i64>,
    pub(crate) gte: Option<i64>,
    pub(crate) lt: Option<i64>,
    pub(crate) lte: Option<i64>,
}

/// `buf.validate.RepeatedRules`: `min_items`, `max_items`, `unique`, and
/// `items.string`, the rules every item must pass.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RepeatedRules {
    pub(crate) min_items: Option<u64>,
    pub(crate) max_items: Option<u64>,
    pub(crate) unique: bool,
    pub(crate) items: Option<StringRules>,
}

impl FieldRules {
    /// The rules of `field`; none when it declares none.
    pub(crate) fn of(pool: &DescriptorPool, field: &FieldDescriptor) -> Result<Self, BuildError> {
        let Some(ext) = pool.get_extension_by_name("buf.validate.field") else { return Ok(Self::default()) };
        if !field.options().has_extension(&ext) {
            return Ok(Self::default());
        }
        match field.options().get_extension(&ext).as_ref() {
            Value::Message(rules) => Self::parse(field, rules),
            _ => Ok(Self::default()),
        }
    }

    fn parse(field: &FieldDescriptor, message: &DynamicMessage) -> Result<Self, BuildError> {
        let mut rules = Self::default();
        for (name, value) in set_fields(message) {
            match (name.as_str(), value) {
                ("required", value) => rules.required = is_true(&value),
                ("string", Value::Message(m)) => rules.string = Some(StringRules::parse(field, "string", &m)?),
                ("int32" | "int64", Value::Message(m)) => rules.int = Some(IntRules::parse(field, &name, &m)?),
                ("repeated", Value::Message(m)) => rules.repeated = Some(RepeatedRules::parse(field, &m)?),
                (other, _) => return Err(unsupported(field, other)),
            }
        }
        Ok(rules)
    }

    /// Whether the rules make the field required on input: `required`, or a
    /// minimum length on a field without presence (an `optional` field's
    /// rules apply only when it is sent).
    pub(crate) fn required_on_input(&self, field: &FieldDescriptor) -> bool {
        self.required
            || (!field.field_descriptor_proto().proto3_optional()
                && self.string.and_then(|s| s.min_len).is_some_and(|n| n > 0))
    }
}

impl StringRules {
    fn parse(field: &FieldDescriptor, path: &str, message: &DynamicMessage) -> Result<Self, BuildError> {
        let mut rules = Self::default();
        for (name, value) in set_fields(message) {
            match name.as_str() {
                "min_len" => rules.min_len = Some(u64_of(&value)),
                "max_len" => rules.max_len = Some(u64_of(&value)),
                "email" => rules.email = is_true(&value),
                other => return Err(unsupported(field, &format!("{path}.{other}"))),
            }
        }
        Ok(rules)
    }
}

impl IntRules {
    fn parse(field: &FieldDescriptor, path: &str, message: &DynamicMessage) -> Result<Self, BuildError> {
        let mut rules = Self::default();
        for (name, value) in set_fields(message) {
            let bound = match name.as_str() {
                "gt" => &mut rules.gt,
                "gte" => &mut rules.gte,
                "lt" => &mut rules.lt,
                "lte" => &mut rules.lte,
                other => return Err(unsupported(field, &format!("{path}.{other}"))),
            };
            *bound = Some(i64_of(&value));
        }
        Ok(rules)
    }
}

impl RepeatedRules {
    fn parse(field: &FieldDescriptor, message: &DynamicMessage) -> Result<Self, BuildError> {
        let mut rules = Self::default();
        for (name, value) in set_fields(message) {
            match (name.as_str(), value) {
                ("min_items", value) => rules.min_items = Some(u64_of(&value)),
                ("max_items", value) => rules.max_items = Some(u64_of(&value)),
                ("unique", value) => rules.unique = is_true(&value),
                ("items", Value::Message(items)) => {
                    for (kind, value) in set_fields(&items) {
                        match (kind.as_str(), value) {
                            ("string", Value::Message(s)) => {
                                rules.items = Some(StringRules::parse(field, "string", &s)?);
                            }
                            (other, _) => return Err(unsupported(field, &format!("repeated.items.{other}"))),
                        }
                    }
                }
                (other, _) => return Err(unsupported(field, &format!("repeated.{other}"))),
            }
        }
        Ok(rules)
    }
}

/// Message-level rules are not supported: a message declaring any fails
/// the build.
pub(crate) fn refuse_message_rules(pool: &DescriptorPool, message: &MessageDescriptor) -> Result<(), BuildError> {
    match pool.get_extension_by_name("buf.validate.message") {
        Some(ext) if message.options().has_extension(&ext) => {
            Err(format!("{}: buf.validate message rules are not supported", message.full_name()).into())
        }
        _ => Ok(()),
    }
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

fn is_true(value: &Value) -> bool {
    matches!(value, Value::Bool(true))
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

//! Writes `<package>.serde.rs`: the proto3 JSON `Serialize` and
//! `Deserialize` of every message of a package and the value names of its
//! enums, on the runtime in `gateway::protojson`, which states the mapping.

use std::collections::HashSet;
use std::fmt::Write as _;

use prost_reflect::{DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};

use crate::BuildError;
use crate::names::{camel, enum_path, message_path, snake};

/// How the JSON of a package is written.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonOptions {
    /// Fields without presence are written even when they hold their default.
    pub(crate) emit_defaults: bool,
    /// Fields with presence are written as `null` when unset, and only they
    /// may be `null` when read (others refuse it, as the OpenAPI document
    /// then says); otherwise `null` reads as "unset" for every field.
    pub(crate) null_for_unset: bool,
    /// Keys are the proto field names, not the JSON names.
    pub(crate) proto_names: bool,
}

/// The codec of one value of `kind` (not repeated).
fn codec(kind: &Kind, package: &str) -> String {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "pj::Int32".into(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "pj::Int64".into(),
        Kind::Uint32 | Kind::Fixed32 => "pj::UInt32".into(),
        Kind::Uint64 | Kind::Fixed64 => "pj::UInt64".into(),
        Kind::Float => "pj::Float".into(),
        Kind::Double => "pj::Double".into(),
        Kind::Bool => "pj::Bool".into(),
        Kind::String => "pj::Str".into(),
        Kind::Bytes => "pj::Bytes<::std::vec::Vec<u8>>".into(),
        Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => "pj::Null".into(),
        Kind::Enum(e) => format!("pj::Enum<{}>", enum_path(e, package)),
        Kind::Message(m) => format!("pj::Message<{}>", message_path(m, package)),
    }
}

/// The codec of a whole field: repeated and map fields included.
fn field_codec(field: &FieldDescriptor, package: &str) -> String {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else { unreachable!("a map field is a message of entries") };
        let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        format!("pj::Map<{}, {}, _>", codec(&key.kind(), package), codec(&value.kind(), package))
    } else if field.is_list() {
        format!("pj::Repeated<{}>", codec(&field.kind(), package))
    } else {
        codec(&field.kind(), package)
    }
}

fn is_value_message(kind: &Kind) -> bool {
    matches!(kind, Kind::Message(m) if m.full_name() == "google.protobuf.Value")
}

fn is_message(kind: &Kind) -> bool {
    matches!(kind, Kind::Message(_))
}

/// The oneof a field belongs to, synthetic ones (proto3 `optional`) aside.
fn real_oneof(field: &FieldDescriptor) -> Option<prost_reflect::OneofDescriptor> {
    field.containing_oneof().filter(|o| !o.is_synthetic())
}

/// Whether prost gives the field an `Option`: messages and proto3 `optional`.
fn has_option(field: &FieldDescriptor) -> bool {
    !field.is_list() && !field.is_map() && (is_message(&field.kind()) || field.containing_oneof().is_some())
}

/// The `Serialize` impl of `message`.
fn serialize(message: &MessageDescriptor, package: &str, options: JsonOptions) -> Result<String, BuildError> {
    let path = message_path(message, package);
    let mut body = String::new();
    let mut oneofs_done = HashSet::new();
    for field in message.fields() {
        let key = if options.proto_names { field.name().to_owned() } else { field.json_name().to_owned() };
        let access = snake(field.name());
        if let Some(oneof) = real_oneof(&field) {
            if !oneofs_done.insert(oneof.name().to_owned()) {
                continue;
            }
            let enum_path = format!("{}::{}", message_module(message, package), camel(oneof.name()));
            writeln!(body, "        match &self.{} {{", snake(oneof.name()))?;
            for member in oneof.fields() {
                let member_key =
                    if options.proto_names { member.name().to_owned() } else { member.json_name().to_owned() };
                let value = borrow(&member, package, "v");
                writeln!(
                    body,
                    "            ::core::option::Option::Some({enum_path}::{}(v)) => map.serialize_entry({member_key:?}, &pj::Write::<{}>({value}))?,",
                    camel(member.name()),
                    codec(&member.kind(), package),
                )?;
            }
            writeln!(body, "            ::core::option::Option::None => {{}}\n        }}")?;
            continue;
        }
        let codec = field_codec(&field, package);
        if has_option(&field) {
            let value = borrow(&field, package, "v");
            let otherwise = if options.null_for_unset {
                format!(" else {{\n            map.serialize_entry({key:?}, &())?;\n        }}")
            } else {
                String::new()
            };
            writeln!(
                body,
                "        if let ::core::option::Option::Some(v) = &self.{access} {{\n            map.serialize_entry({key:?}, &pj::Write::<{codec}>({value}))?;\n        }}{otherwise}"
            )?;
        } else {
            let set = if options.emit_defaults {
                "true".to_owned()
            } else if field.is_list() || field.is_map() {
                format!("!self.{access}.is_empty()")
            } else {
                match field.kind() {
                    Kind::Bool => format!("self.{access}"),
                    Kind::String | Kind::Bytes => format!("!self.{access}.is_empty()"),
                    Kind::Float | Kind::Double => format!("self.{access} != 0.0"),
                    _ => format!("self.{access} != 0"),
                }
            };
            writeln!(
                body,
                "        if {set} {{\n            map.serialize_entry({key:?}, &pj::Write::<{codec}>(&self.{access}))?;\n        }}"
            )?;
        }
    }
    Ok(format!(
        "impl ::gateway::protojson::serde::Serialize for {path} {{\n    \
         #[allow(unused_variables, unused_mut)]\n    \
         fn serialize<S: ::gateway::protojson::serde::Serializer>(&self, serializer: S) -> ::core::result::Result<S::Ok, S::Error> {{\n        \
         use ::gateway::protojson::serde::ser::SerializeMap as _;\n        \
         #[allow(unused_imports)]\n        \
         use ::gateway::protojson as pj;\n        \
         let mut map = serializer.serialize_map(::core::option::Option::None)?;\n{body}        map.end()\n    }}\n}}\n"
    ))
}

/// The module prost puts a message's nested types in.
fn message_module(message: &MessageDescriptor, package: &str) -> String {
    let path = message_path(message, package);
    match path.rsplit_once("::") {
        Some((prefix, _)) => format!("{prefix}::{}", snake(message.name())),
        None => snake(message.name()),
    }
}

/// `binding` as a reference to the field's value type: a message that
/// prost may have boxed (recursion) is borrowed through the box.
fn borrow(field: &FieldDescriptor, package: &str, binding: &str) -> String {
    match field.kind() {
        Kind::Message(m) if !field.is_list() && !field.is_map() => {
            format!("::core::borrow::Borrow::<{}>::borrow({binding})", message_path(&m, package))
        }
        _ => binding.to_owned(),
    }
}

/// The `Deserialize` impl of `message`.
fn deserialize(message: &MessageDescriptor, package: &str, options: JsonOptions) -> Result<String, BuildError> {
    let path = message_path(message, package);
    let mut arms = String::new();
    let field_count = message.fields().len();
    for (index, field) in message.fields().enumerate() {
        let (json, proto) = (field.json_name(), field.name());
        let names = if json == proto { format!("{json:?}") } else { format!("{json:?} | {proto:?}") };
        let access = snake(field.name());
        let codec = field_codec(&field, package);
        // A Value's null is its null_value, and NullValue's is 0: both are values.
        let null_is_value =
            !field.is_list() && !field.is_map() && (is_value_message(&field.kind()) || codec == "pj::Null");
        // Where only fields with presence are nullable (`null_for_unset`, which
        // the OpenAPI document says too), null for any other field is refused.
        let null_refused = options.null_for_unset && !has_option(&field) && real_oneof(&field).is_none();
        let reader = if null_is_value || null_refused {
            format!("pj::Read<{codec}>")
        } else {
            format!("pj::ReadOrNull<{codec}>")
        };
        let store = if let Some(oneof) = real_oneof(&field) {
            let oneof_index = field_count + message.oneofs().position(|o| o.name() == oneof.name()).unwrap_or(0);
            format!(
                "seen.once({oneof_index}, {:?})?;\n                        message.{} = ::core::option::Option::Some({}::{}::{}(v.into()));",
                oneof.name(),
                snake(oneof.name()),
                message_module(message, package),
                camel(oneof.name()),
                camel(field.name())
            )
        } else if has_option(&field) {
            format!("message.{access} = ::core::option::Option::Some(v.into());")
        } else {
            format!("message.{access} = v;")
        };
        writeln!(
            arms,
            "                    {names} => {{\n                        seen.once({index}, {json:?})?;\n                        \
             if let ::core::option::Option::Some(v) = map.next_value::<{reader}>()?.0 {{\n                        {store}\n                        }}\n                    }}"
        )?;
    }
    let full = message.full_name();
    Ok(format!(
        "impl<'de> ::gateway::protojson::serde::Deserialize<'de> for {path} {{\n    \
         fn deserialize<D: ::gateway::protojson::serde::Deserializer<'de>>(deserializer: D) -> ::core::result::Result<Self, D::Error> {{\n        \
         struct Fields;\n        \
         impl<'de> ::gateway::protojson::serde::de::Visitor<'de> for Fields {{\n            \
         type Value = {path};\n            \
         fn expecting(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {{\n                \
         f.write_str(\"a JSON object ({full})\")\n            }}\n            \
         #[allow(unused_mut, unused_variables)]\n            \
         fn visit_map<A: ::gateway::protojson::serde::de::MapAccess<'de>>(self, mut map: A) -> ::core::result::Result<{path}, A::Error> {{\n                \
         #[allow(unused_imports)]\n                \
         use ::gateway::protojson as pj;\n                \
         let mut message = <{path} as ::core::default::Default>::default();\n                \
         let mut seen = pj::Seen::default();\n                \
         while let ::core::option::Option::Some(key) = map.next_key::<pj::Key<'de>>()? {{\n                    \
         match &*key.0 {{\n{arms}                    \
         _ if pj::ignoring_unknown_fields() => {{\n                        map.next_value::<::gateway::protojson::serde::de::IgnoredAny>()?;\n                    }}\n                    \
         _ => return ::core::result::Result::Err(pj::unknown_field({full:?}, &key.0)),\n                    }}\n                }}\n                \
         ::core::result::Result::Ok(message)\n            }}\n        }}\n        \
         deserializer.deserialize_map(Fields)\n    }}\n}}\n"
    ))
}

/// The `ProtoEnum` impl of `enumeration`: every name, aliases included.
fn enum_names(enumeration: &EnumDescriptor, package: &str) -> Result<String, BuildError> {
    let path = enum_path(enumeration, package);
    let mut from = String::new();
    let mut to = String::new();
    let mut numbers = HashSet::new();
    // In declaration order: a number's name is the first declared for it.
    for value in &enumeration.enum_descriptor_proto().value {
        writeln!(from, "            {:?} => ::core::option::Option::Some({}),", value.name(), value.number())?;
        if numbers.insert(value.number()) {
            writeln!(to, "            {} => ::core::option::Option::Some({:?}),", value.number(), value.name())?;
        }
    }
    Ok(format!(
        "impl ::gateway::protojson::ProtoEnum for {path} {{\n    \
         fn from_json_name(name: &str) -> ::core::option::Option<i32> {{\n        match name {{\n{from}            _ => ::core::option::Option::None,\n        }}\n    }}\n    \
         fn json_name(number: i32) -> ::core::option::Option<&'static str> {{\n        match number {{\n{to}            _ => ::core::option::Option::None,\n        }}\n    }}\n}}\n"
    ))
}

/// The JSON code of every message and enum declared in `package`'s own files.
pub(crate) fn package(
    pool: &DescriptorPool,
    package: &str,
    own_files: &HashSet<String>,
    options: JsonOptions,
) -> Result<String, BuildError> {
    let mut code = String::from("// Generated by gateway-build from the protos. Do not edit.\n\n");
    for message in pool.all_messages() {
        if message.package_name() != package
            || !own_files.contains(message.parent_file().name())
            || message.is_map_entry()
        {
            continue;
        }
        code.push_str(&serialize(&message, package, options)?);
        code.push_str(&deserialize(&message, package, options)?);
    }
    for enumeration in pool.all_enums() {
        if enumeration.package_name() != package || !own_files.contains(enumeration.parent_file().name()) {
            continue;
        }
        code.push_str(&enum_names(&enumeration, package)?);
    }
    Ok(code)
}

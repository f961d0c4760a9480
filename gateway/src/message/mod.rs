//! Messages: the typed in-process handler of each method, which decodes
//! JSON or protobuf into the generated request and encodes its answer
//! ([`method`]), the proto3 JSON mapping the generated code runs on
//! ([`protojson`]), the well-known types
//! ([`wkt`]) and the checks of `buf.validate` rules ([`validate`]).

pub(crate) mod json;
pub(crate) mod method;
pub mod protojson;
pub mod validate;
pub mod wkt;

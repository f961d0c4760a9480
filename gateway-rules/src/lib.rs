//! What the gateway's runtime (`gateway`) and its build-time generator
//! (`gateway-build`) share, so that a rule the build accepts is a rule the
//! runtime serves the same way: the `google.api.http` path template grammar
//! ([`template`]), the router that matches requests to rules and finds rules
//! that would match the same requests ([`router`]), and the names of the gRPC
//! status codes ([`codes`]).
//!
//! It knows no protocol and no API, and depends on nothing but `http`.

pub mod codes;
pub mod router;
pub mod template;

pub use router::{Match, Router};
pub use template::{PathTemplate, SegmentPattern, TemplateError, Variable};

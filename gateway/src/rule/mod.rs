//! `google.api.http` rules: the specs `gateway-build` generates for each
//! method and route ([`spec`]), path templates ([`template`]), the segment
//! trie that matches requests to rules ([`router`]), and the binding of
//! path, query and body into the typed request ([`binding`]).

pub(crate) mod binding;
pub(crate) mod router;
pub(crate) mod spec;
pub(crate) mod template;

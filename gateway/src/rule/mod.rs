//! `google.api.http` rules: the specs `gateway-build` generates for each
//! method and route ([`spec`]), path templates ([`template`]) and the
//! segment trie that matches requests to rules ([`router`]) — both shared
//! with `gateway-build` through the `gateway-rules` crate — and the binding
//! of path, query and body into the typed request ([`binding`]).

pub(crate) mod binding;
pub(crate) mod spec;

pub(crate) use gateway_rules::{router, template};

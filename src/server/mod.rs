//! Transport: the connection loop that serves HTTP/1.1 and HTTP/2 on one
//! listener ([`connections`]), TLS with certificate reloads ([`tls`]), the
//! stop signal ([`shutdown`]) and the admin listener's routes ([`admin`]).

pub mod admin;
pub mod connections;
pub mod shutdown;
pub mod tls;

pub use connections::{ConnectionLimits, accept, serve};

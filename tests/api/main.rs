//! Integration tests: the real service on a real socket with its own
//! Postgres database per test, driven over JSON/HTTP and gRPC.

mod articles;
mod background;
mod cli;
mod clients;
mod comments;
mod gateway;
mod helpers;
mod idempotency;
mod openapi;
mod ops;
mod profiles;
mod replicas;
mod users;

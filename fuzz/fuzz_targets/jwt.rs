#![no_main]
//! The token parser conduit runs on every `authorization` header: conduit's
//! own module, compiled alone (see its `fuzz_one`).

#[path = "../../src/domain/auth/jwt.rs"]
#[allow(dead_code, unreachable_pub)]
mod jwt;

libfuzzer_sys::fuzz_target!(|data: &[u8]| jwt::fuzz_one(data));

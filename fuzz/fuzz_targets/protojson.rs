#![no_main]
//! See `gateway_tests::fuzz::protojson`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_tests::fuzz::protojson(data));

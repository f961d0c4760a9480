#![no_main]
//! See `gateway_tests::fuzz::connect`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_tests::fuzz::connect(data));

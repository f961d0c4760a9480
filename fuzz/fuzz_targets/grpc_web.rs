#![no_main]
//! See `gateway_tests::fuzz::grpc_web`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_tests::fuzz::grpc_web(data));

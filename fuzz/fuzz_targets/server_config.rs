//! Fuzz target: see [`vantiq_fuzz::server_config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vantiq_fuzz::server_config(data));

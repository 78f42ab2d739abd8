//! Fuzz target: see [`vantiq_fuzz::connection_ops`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vantiq_fuzz::connection_ops(data));

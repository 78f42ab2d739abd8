//! Fuzz target: see [`vantiq_fuzz::frame_decode`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vantiq_fuzz::frame_decode(data));

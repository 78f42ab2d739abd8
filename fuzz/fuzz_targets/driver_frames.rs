//! Fuzz target: see [`vantiq_fuzz::driver_frames`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vantiq_fuzz::driver_frames(data));

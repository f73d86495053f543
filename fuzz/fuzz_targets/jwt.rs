//! libFuzzer entry for [`streammask_fuzz::jwt`] (its docs say what the oracles are).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streammask_fuzz::jwt::run(data));

//! libFuzzer entry for [`streammask_fuzz::event_stream`] (its docs say what the oracles are).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| streammask_fuzz::event_stream::run(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzzcheck::check("formats_yaml")(data));

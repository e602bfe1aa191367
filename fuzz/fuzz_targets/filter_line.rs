#![no_main]
//! Fuzz target `filter_line`: the check lives in tests/fuzz_checks, shared with the stable replay test.

#[path = "../../tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::filter_line(data));

//! Journal rules: an operator's rule and any journal lines classify without a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    detector::fuzzing::journal_rules(&String::from_utf8_lossy(bytes));
});

//! Ring-buffer records: whatever bytes come out of the ring, decoding, correlating and writing
//! the record never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| detector::fuzzing::record(bytes));

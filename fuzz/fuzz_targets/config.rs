//! The configuration file: any text is a configuration or an error with a line, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        detector::fuzzing::config(text);
    }
});

//! Fuzz `contec-cms50d`: any byte stream, fed through `drain` and step by step, must not panic, and
//! every step must consume `1..=len` bytes (the StreamDecoder contract).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vitalgate::drivers::fuzzing::stream_driver("contec-cms50d", data));

//! Fuzz `masimo-ascii`: any byte stream, fed through `drain` and step by step, must not panic, and
//! every step must consume `1..=len` bytes (the StreamDecoder contract).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vitalgate::drivers::fuzzing::stream_driver("masimo-ascii", data));

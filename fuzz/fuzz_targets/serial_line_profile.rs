//! Fuzz the data-driven line decoder with the shipped example profile
//! (`devices/example-line-oximeter.toml`): no panic, every step consumes `1..=len` bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vitalgate::drivers::serial::profile::{parse_profile, Profile};

const PROFILE: &str = include_str!("../../devices/example-line-oximeter.toml");

fn profile() -> &'static Profile {
    static P: OnceLock<Profile> = OnceLock::new();
    P.get_or_init(|| {
        parse_profile(PROFILE, std::path::Path::new("example-line-oximeter.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let p = profile();
    vitalgate::drivers::fuzzing::stream_contract(&|| p.decoder(), data);
});

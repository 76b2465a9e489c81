//! Fuzz the data-driven line decoder with the shipped example profile
//! (`devices/example-line-oximeter.toml`): no panic, every step consumes `1..=len` bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vitalgate::drivers::serial::profile::{parse_profile, Profile};
use vitalgate::drivers::{drain, Step};

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
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    let n = drain(p.decoder().as_mut(), data, &mut out, &mut errors);
    assert!(n <= data.len());

    let mut dec = p.decoder();
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let consumed = match dec.feed(rest) {
            Step::NeedMore => break,
            Step::Frame { consumed, .. } | Step::Skip { consumed, .. } => consumed,
        };
        assert!(
            (1..=rest.len()).contains(&consumed),
            "consumed {consumed} of {}",
            rest.len()
        );
        pos += consumed;
    }
});

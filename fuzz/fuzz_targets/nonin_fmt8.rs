//! Fuzz `nonin-fmt8`: any byte stream, fed through `drain` and step by step, must not panic, and
//! every step must consume `1..=len` bytes (the StreamDecoder contract).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::drivers::{drain, find, DriverKind, Step};

fuzz_target!(|data: &[u8]| {
    let Some(DriverKind::Stream(make)) = find("nonin-fmt8").map(|d| d.kind) else {
        panic!("driver nonin-fmt8 is not a registered stream driver");
    };
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    let n = drain(make().as_mut(), data, &mut out, &mut errors);
    assert!(n <= data.len());

    let mut dec = make();
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

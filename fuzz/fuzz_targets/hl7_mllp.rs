//! Fuzz the HL7 path: any byte stream, cut into reads of fuzzer-chosen sizes, goes through the
//! MLLP deframer (cap 4096); every frame through `hl7::header` and `hl7::decode` and, when it
//! has a header, the ACK builder. Nothing may panic; no frame may exceed the cap; an ACK is
//! always exactly MSH + MSA (+ ERR), whatever the message's fields held.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::hl7::{self, ack, MonitorZone, Verdict};
use vitalgate::transport::mllp::{Deframer, Event};

const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let mut d = Deframer::new(CAP);
    let mut events = Vec::new();
    for chunk in bytes.chunks(step) {
        d.feed(chunk, &mut events);
    }
    for e in events {
        let Event::Frame(f) = e else { continue };
        assert!(f.len() <= CAP);
        let text = String::from_utf8_lossy(&f);
        let decoded = hl7::decode(&text, MonitorZone::EuropeLondon);
        if let Ok(h) = hl7::header(&text) {
            let verdict = match &decoded {
                Ok(_) => Verdict::Stored,
                Err(r) => Verdict::from(r),
            };
            if let Some(a) = ack::build(&h, &verdict, "20260101000000") {
                let segments = a.trim_end_matches('\r').split('\r').count();
                assert!(segments == 2 || segments == 3, "{a:?}");
            }
        }
    }
});

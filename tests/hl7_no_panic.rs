//! No input makes the HL7 decoder or the MLLP deframer panic (issue 16, point 6).

use proptest::prelude::*;
use vitalgate::hl7::{self, MonitorZone};
use vitalgate::transport::mllp::{encode, Deframer, Event};

/// Text built from HL7's own characters, so the generator reaches deep into the parser
/// (segments, separators, escapes, timestamps) instead of failing at the first byte.
fn hl7ish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("MSH|^~\\&|".to_string()),
        Just("\r".to_string()),
        Just("\n".to_string()),
        Just("OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.1|".to_string()),
        Just("|262688^MDC_DIM_PERCENT^MDC|||||R|||".to_string()),
        Just("ORU^R01^ORU_R01|".to_string()),
        Just("PV1||I|".to_string()),
        Just("PID|||".to_string()),
        Just("OBR|1||||||".to_string()),
        Just("\\X0D\\".to_string()),
        Just("\\".to_string()),
        Just("é".to_string()),
        Just("~".to_string()),
        Just("^".to_string()),
        Just("&".to_string()),
        Just("|".to_string()),
        "[0-9+.-]{0,20}",
        "\\PC{0,8}",
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn the_decoder_never_panics_on_hl7_like_text(text in hl7ish()) {
        let _ = hl7::decode(&text, MonitorZone::EuropeLondon);
        let _ = hl7::header(&text);
    }

    #[test]
    fn the_decoder_never_panics_on_any_text(text in "\\PC{0,300}") {
        let _ = hl7::decode(&text, MonitorZone::EuropeLondon);
        let _ = hl7::header(&text);
    }

    #[test]
    fn the_deframer_never_panics_and_never_exceeds_its_cap(
        chunks in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(0x0Bu8), Just(0x1C), Just(0x0D), any::<u8>()], 0..64), 0..20),
        cap in 1usize..64,
    ) {
        let mut d = Deframer::new(cap);
        let mut out = Vec::new();
        for c in &chunks {
            d.feed(c, &mut out);
        }
        for e in &out {
            if let Event::Frame(f) = e {
                prop_assert!(f.len() <= cap);
            }
        }
    }

    #[test]
    fn framed_payloads_come_back_whole_however_the_stream_is_cut(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>().prop_filter("no MLLP control bytes", |b| ![0x0B, 0x1C].contains(b)), 0..50), 1..6),
        cuts in proptest::collection::vec(1usize..30, 0..10),
    ) {
        let stream: Vec<u8> = payloads.iter().flat_map(|p| encode(p)).collect();
        let mut d = Deframer::new(1024);
        let mut out = Vec::new();
        let mut rest = stream.as_slice();
        for c in cuts {
            let n = c.min(rest.len());
            d.feed(&rest[..n], &mut out);
            rest = &rest[n..];
        }
        d.feed(rest, &mut out);
        let frames: Vec<Vec<u8>> = out.into_iter().filter_map(|e| match e { Event::Frame(f) => Some(f), _ => None }).collect();
        prop_assert_eq!(frames, payloads);
    }
}

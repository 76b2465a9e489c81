//! Types that hold an NHS Number never show it in `Debug` (issue 12 point 2): a `{:?}` in a
//! log line, a panic message or a test failure must not print one.

use std::sync::Arc;

use time::macros::datetime;
use vitalgate::ingest::Frame;
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::{DerivedRecord, ReadingRecord, Record};

const NHS: &str = "9434765919";

fn pulse() -> Reading {
    Reading::canonical(Metric::PulseRate, Decimal::new(72, 0))
}

fn assert_masked(debug: &str) {
    assert!(!debug.contains(NHS), "NHS Number in clear: {debug}");
    assert!(!debug.contains("943476"), "part of the NHS Number: {debug}");
}

#[test]
fn frame_debug_masks_the_nhs_number() {
    let frame = Frame {
        device_id: Arc::from("ox1"),
        patient_id: Arc::from("p1"),
        nhs_number: Some(Arc::from(NHS)),
        readings: vec![pulse()],
        received_at: datetime!(2026-06-01 10:00 UTC),
        clock_synced: true,
        cursor: None,
        done: None,
    };
    let debug = format!("{frame:?}");
    assert_masked(&debug);
    assert!(
        debug.contains("***-***-5919") && debug.contains("ox1"),
        "{debug}"
    );
}

#[test]
fn stored_reading_record_debug_masks_the_nhs_number() {
    let record = Record::Reading(ReadingRecord {
        device_id: "ox1".into(),
        patient_id: "p1".into(),
        nhs_number: Some(NHS.into()),
        received_at: datetime!(2026-06-01 10:00 UTC),
        clock_synced: true,
        readings: vec![pulse()],
        boot: None,
    });
    let debug = format!("{record:?} {record:#?}");
    assert_masked(&debug);
    assert!(debug.contains("***-***-5919"), "{debug}");
}

#[test]
fn stored_derived_record_debug_hides_the_nhs_number_in_its_fhir_json() {
    let record = Record::Derived(DerivedRecord {
        patient_id: "p1".into(),
        observation: serde_json::json!({
            "resourceType": "Observation",
            "subject": {"identifier": {
                "system": "https://fhir.nhs.uk/Id/nhs-number",
                "value": NHS,
            }},
            "valueQuantity": {"value": 5},
        }),
    });
    let debug = format!("{record:?}");
    assert_masked(&debug);
    assert!(debug.contains("nhs-number"), "{debug}");
}

/// The structural guard: a struct with an `nhs_number` field held as text (not the
/// self-redacting `NhsNumber`) must not `#[derive(Debug)]`; it writes `Debug` by hand with
/// `redact::MaskedNhs`.
#[test]
fn no_struct_holding_an_nhs_number_as_text_derives_debug() {
    let mut offenders = Vec::new();
    let mut files = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let is_struct = (t.starts_with("pub struct ")
                || t.starts_with("struct ")
                || t.starts_with("pub(crate) struct "))
                && t.ends_with('{');
            if !is_struct {
                continue;
            }
            let body: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim() != "}")
                .copied()
                .collect();
            let holds_text = body.iter().any(|l| {
                let l = l.trim();
                (l.starts_with("pub nhs_number:") || l.starts_with("nhs_number:"))
                    && !l.contains("NhsNumber")
            });
            if !holds_text {
                continue;
            }
            checked += 1;
            let derives_debug = lines[..i]
                .iter()
                .rev()
                .take_while(|l| {
                    let l = l.trim_start();
                    l.starts_with("#[") || l.starts_with("///") || l.starts_with("//")
                })
                .any(|l| l.contains("derive(") && l.contains("Debug"));
            if derives_debug {
                offenders.push(format!("{}:{}: {}", path.display(), i + 1, t));
            }
        }
    }
    assert!(checked >= 3, "the scan found only {checked} such structs");
    assert!(
        offenders.is_empty(),
        "derive Debug on a type holding an NHS Number:\n{}",
        offenders.join("\n")
    );
}

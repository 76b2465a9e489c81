//! HL7 v2 ORU^R01 (IHE PCD-01) decoding against the public samples and vectors of
//! protocols.md §3.3 and §3.4, and the HL7 pitfalls of §4 item 10.

use time::macros::datetime;
use vitalgate::hl7::{self, MonitorZone, Refusal, RowOutcome};
use vitalgate::reading::{Decimal, Metric, Unit, Value};

const ZONE: MonitorZone = MonitorZone::EuropeLondon;

/// protocols.md §3.3: the verbatim Mindray VS-900 PCD-01 message (MRY), demo mode.
const MINDRAY: &str = "MSH|^~\\&|MINDRAY_VS900^00A0370098006640^EUI-64||||20200212125541||ORU^R01^ORU_R01|13|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r\
PID|||2eefgghy^^^Hospital^PI||TEST^SR T3ST^^^^^L||19891023|M\r\
PV1||I|INTER^^1^1|||||||||||||||||||||||||||||||||||||||||20200212\r\
OBR|1|13^MINDRAY_VS900^00A0370098006640^EUI-64|13^MINDRAY_VS900^00A0370098006640^EUI-64|182777000^monitoring of patient^SCT|||20200212125541\r\
OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|100|262688^MDC_DIM_PERCENT^MDC||DEMO|||R|||20200212125541||||00A0370098006640^^00A0370098006640^EUI-64\r\
OBX|2|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.3.1.149530|80|264864^MDC_DIM_BEAT_PER_MIN^MDC||DEMO|||R|||20200212125541\r\
OBX|3|NM|150488^MDC_BLD_PERF_INDEX^MDC|1.3.1.150488|12.00|262688^MDC_DIM_PERCENT^MDC||DEMO|||R|||20200212125541\r\
OBX|4|NM|150301^MDC_PRESS_CUFF_SYS^MDC|1.1.9.150301|166|266016^MDC_DIM_MMHG^MDC||DEMO|||R|||20200212125008|||^APERIODIC\r\
OBX|5|NM|150303^MDC_PRESS_CUFF_MEAN^MDC|1.1.9.150303|122|266016^MDC_DIM_MMHG^MDC||DEMO|||R|||20200212125008|||^APERIODIC\r\
OBX|6|NM|150302^MDC_PRESS_CUFF_DIA^MDC|1.1.9.150302|100|266016^MDC_DIM_MMHG^MDC||DEMO|||R|||20200212125008|||^APERIODIC\r";

/// The Mindray sample with its demo marks taken away (to check the numbers it carries).
fn mindray_live() -> String {
    MINDRAY.replace("||DEMO|||", "|||||")
}

/// GE B40 header for the GEB vectors (GE sends NE/AL).
const GE_MSH: &str = "MSH|^~\\&|B40_GE^080019FFFE0B4020^EUI-64|GE|||20260115101500||ORU^R01^ORU_R01|77|P|2.6|||NE|AL||UNICODE UTF-8|||PCD_DEC_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\rPV1||I|3West^301^1\rOBR|1|||182777000^monitoring of patient^SCT|||20260115101500\r";

fn ge(obx: &str) -> hl7::Oru {
    hl7::decode(&format!("{GE_MSH}{obx}\r"), ZONE).expect("decodes")
}

fn only_reading(oru: &hl7::Oru) -> vitalgate::reading::Reading {
    let r: Vec<_> = oru.readings().map(|(_, r)| r.clone()).collect();
    assert_eq!(r.len(), 1, "{:?}", oru.rows);
    r[0].clone()
}

fn number(r: &vitalgate::reading::Reading) -> f64 {
    match r.value {
        Value::Number(d) => d.to_f64(),
        v => panic!("not a number: {v:?}"),
    }
}

/// H4, pitfall 10: every OBX-8 is `DEMO`: the whole message is demonstration data.
#[test]
fn h4_mindray_demo_mode_message_is_rejected_as_demo_data() {
    let err = hl7::decode(MINDRAY, ZONE).unwrap_err();
    assert!(matches!(err, Refusal::DemoData(_)), "{err:?}");
    assert!(err.is_reject());
}

/// H4: header fields and the device EUI-64.
#[test]
fn h4_mindray_header_gives_control_id_ack_modes_and_device() {
    let h = hl7::header(MINDRAY).unwrap();
    assert_eq!(h.control_id, "13");
    assert_eq!(
        (h.accept_ack.as_str(), h.application_ack.as_str()),
        ("AL", "NE")
    );
    assert_eq!(h.trigger, "R01");
    let oru = hl7::decode(&mindray_live(), ZONE).unwrap();
    assert_eq!(oru.device.as_deref(), Some("00A0370098006640"));
    assert_eq!(oru.location.as_deref(), Some("INTER^^1^1"));
}

/// H4 (numbers, with the demo marks removed): six numerics, units, and the NIBP time from
/// OBX-14 (12:50:08), not MSH-7 (12:55:41) (pitfall 10).
#[test]
fn h4_mindray_numerics_become_six_readings_with_ucum_units_and_obx14_times() {
    let oru = hl7::decode(&mindray_live(), ZONE).unwrap();
    let got: Vec<(Metric, f64, Option<Unit>, _)> = oru
        .readings()
        .map(|(_, r)| (r.metric, number(r), r.unit, r.device_time.unwrap()))
        .collect();
    let at_55 = datetime!(2020-02-12 12:55:41 UTC);
    let at_50 = datetime!(2020-02-12 12:50:08 UTC);
    assert_eq!(
        got,
        vec![
            (Metric::Spo2, 100.0, Some(Unit::Percent), at_55),
            (Metric::PulseRate, 80.0, Some(Unit::PerMinute), at_55),
            (Metric::PerfusionIndex, 12.0, Some(Unit::Percent), at_55),
            (Metric::SystolicBp, 166.0, Some(Unit::MmHg), at_50),
            (Metric::MeanBp, 122.0, Some(Unit::MmHg), at_50),
            (Metric::DiastolicBp, 100.0, Some(Unit::MmHg), at_50),
        ]
    );
    // 12.00 keeps the device's digits.
    let pi = oru.readings().nth(2).unwrap().1.clone();
    assert_eq!(pi.value, Value::Number(Decimal::new(1200, -2)));
}

/// H5: GE SpO2 with containment 1.22.1.2, status R, OBX-18 device.
#[test]
fn h5_ge_spo2_row_gives_spo2_100_and_its_equipment_id() {
    let oru = ge("OBX|43|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.2|100|262688^MDC_DIM_PERCENT^MDC|||||R|||||||080019FFFE0B4020^B40_GE");
    let r = only_reading(&oru);
    assert_eq!(
        (r.metric, number(&r), r.unit),
        (Metric::Spo2, 100.0, Some(Unit::Percent))
    );
    assert_eq!(oru.rows[0].containment, "1.22.1.2");
    assert_eq!(oru.rows[0].equipment.as_deref(), Some("080019FFFE0B4020"));
    // No OBX-14: the OBR-7 time.
    assert_eq!(r.device_time, Some(datetime!(2026-01-15 10:15 UTC)));
}

/// H6: temperature 37.1 Cel and respiration rate 18 /min.
#[test]
fn h6_ge_temperature_and_respiration_rate() {
    let t = only_reading(&ge("OBX|49|NM|150344^MDC_TEMP^MDC|1.26.1.1|37.1|268192^MDC_DIM_DEGC^MDC|||||R|||||||080019FFFE0B4020^B40_GE"));
    assert_eq!(
        (t.metric, t.value, t.unit),
        (
            Metric::BodyTemperature,
            Value::Number(Decimal::new(371, -1)),
            Some(Unit::Celsius)
        )
    );
    let rr = only_reading(&ge("OBX|45|NM|151562^MDC_RESP_RATE^MDC|1.20.1.1|18|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R|||||||080019FFFE0B4020^B40_GE"));
    assert_eq!(
        (rr.metric, number(&rr), rr.unit),
        (Metric::RespiratoryRate, 18.0, Some(Unit::PerMinute))
    );
}

/// H6: two respiration rates (impedance and ECG) are both kept, on distinct channels.
#[test]
fn h6_two_respiration_rates_stay_two_readings_on_two_channels() {
    let oru = ge("OBX|45|NM|151562^MDC_RESP_RATE^MDC|1.20.1.1|18|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R|||||||080019FFFE0B4020^B40_GE\rOBX|47|NM|151562^MDC_RESP_RATE^MDC|1.6.1.1|30|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R|||||||080019FFFE0B4020^B40_GE");
    let got: Vec<(String, f64)> = oru.readings().map(|(c, r)| (c, number(r))).collect();
    assert_eq!(
        got,
        vec![("1.20".to_string(), 18.0), ("1.6".to_string(), 30.0)]
    );
}

/// H7, pitfall 10: the VMD row (empty OBX-2, status X) is containment only; the arterial
/// pressure is decoded but has no vitalgate metric, so it is skipped with the reason.
#[test]
fn h7_containment_rows_are_not_readings_and_arterial_pressure_is_not_guessed() {
    let oru = ge("OBX|2||69854^MDC_DEV_METER_PRESS_BLD_VMD^MDC|1.13.0.0|||||||X\rOBX|4|NM|150033^MDC_PRESS_BLD_ART_SYS^MDC|1.13.1.1|112|266016^MDC_DIM_MMHG^MDC|||||R|||||||080019FFFE0B4020^B40_GE");
    assert_eq!(oru.rows[0].outcome, RowOutcome::Containment);
    match &oru.rows[1].outcome {
        RowOutcome::Skipped(why) => assert!(why.contains("arterial systolic"), "{why}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(oru.readings().count(), 0);
}

/// H8: Philips MDIL heart rate with an empty value and status X: no reading.
#[test]
fn h8_philips_invalid_measurement_gives_no_reading() {
    let msg = "MSH|^~\\&|Efficia|Philips|||20260115101500||ORU^R01|9|P|2.4\rOBR|1||||||20260115101500\rOBX||NM|0002-4182^HR^MDIL|||0004-0aa0^bpm^MDIL|||||X";
    let oru = hl7::decode(msg, ZONE).unwrap();
    assert_eq!(oru.rows[0].outcome, RowOutcome::NoValue);
}

#[test]
fn philips_mdil_heart_rate_with_a_value_is_a_heart_rate_reading() {
    let msg = "MSH|^~\\&|Efficia|Philips|||20260115101500||ORU^R01|9|P|2.4\rOBR|1||||||20260115101500\rOBX||NM|0002-4182^HR^MDIL||72|0004-0aa0^bpm^MDIL|||||F";
    let r = only_reading(&hl7::decode(msg, ZONE).unwrap());
    assert_eq!(
        (r.metric, number(&r), r.unit),
        (Metric::HeartRate, 72.0, Some(Unit::PerMinute))
    );
}

#[test]
fn ecg_heart_rate_and_nibp_noninvasive_codes_are_readings() {
    let oru = ge("OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.1|64|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R\rOBX|2|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.9.1.1|120|266016^MDC_DIM_MMHG^MDC|||||R");
    let m: Vec<Metric> = oru.readings().map(|(_, r)| r.metric).collect();
    assert_eq!(m, vec![Metric::HeartRate, Metric::SystolicBp]);
}

#[test]
fn obx11_empty_gives_no_reading() {
    let oru = ge(
        "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.1|64|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||",
    );
    assert_eq!(oru.rows[0].outcome, RowOutcome::NoValue);
}

#[test]
fn msh11_debug_or_training_processing_ids_are_demo_data() {
    for id in ["D", "T"] {
        let msg = mindray_live().replace("|13|P|2.6|", &format!("|13|{id}|2.6|"));
        assert!(
            matches!(hl7::decode(&msg, ZONE), Err(Refusal::DemoData(_))),
            "{id}"
        );
    }
}

#[test]
fn a_single_obx8_test_mark_rejects_the_whole_message() {
    let msg = mindray_live().replacen(
        "|12.00|262688^MDC_DIM_PERCENT^MDC|||",
        "|12.00|262688^MDC_DIM_PERCENT^MDC||T|",
        1,
    );
    assert!(matches!(hl7::decode(&msg, ZONE), Err(Refusal::DemoData(_))));
}

/// protocols.md §3.1: LF or CRLF segment ends are read like CR.
#[test]
fn lf_and_crlf_segment_ends_decode_like_cr() {
    let cr = hl7::decode(&mindray_live(), ZONE).unwrap();
    assert_eq!(
        hl7::decode(&mindray_live().replace('\r', "\n"), ZONE).unwrap(),
        cr
    );
    assert_eq!(
        hl7::decode(&mindray_live().replace('\r', "\r\n"), ZONE).unwrap(),
        cr
    );
}

#[test]
fn other_message_types_are_unsupported_events() {
    let msg = "MSH|^~\\&|A|B|||20260115101500||ADT^A01|5|P|2.5\rPID|||1";
    assert!(matches!(hl7::decode(msg, ZONE), Err(Refusal::UnsupportedEvent(e)) if e == "ADT^A01"));
}

#[test]
fn a_non_numeric_value_is_malformed_and_names_the_field() {
    let oru = hl7::decode(&format!("{GE_MSH}OBX|7|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.2|9x|262688^MDC_DIM_PERCENT^MDC|||||R"), ZONE);
    match oru {
        Err(Refusal::Malformed { at, .. }) => assert_eq!(at, "OBX[1]-5"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_bad_observation_time_is_malformed_and_names_the_field() {
    let oru = hl7::decode(&format!("{GE_MSH}OBX|7|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.2|98|262688^MDC_DIM_PERCENT^MDC|||||R|||2026011|"), ZONE);
    match oru {
        Err(Refusal::Malformed { at, .. }) => assert_eq!(at, "OBX[1]-14"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_unit_that_does_not_fit_the_metric_is_skipped_not_guessed() {
    let oru =
        ge("OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.1|98|266016^MDC_DIM_MMHG^MDC|||||R");
    assert!(matches!(&oru.rows[0].outcome, RowOutcome::Skipped(w) if w.contains("OBX[1]-6")));
    let oru = ge("OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.1|98||||||R");
    assert!(matches!(&oru.rows[0].outcome, RowOutcome::Skipped(_)));
}

#[test]
fn a_monitor_time_zone_offset_in_the_timestamp_is_honoured() {
    let oru = ge("OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.1|64|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20260701120000+0200");
    assert_eq!(
        only_reading(&oru).device_time,
        Some(datetime!(2026-07-01 10:00 UTC))
    );
}

#[test]
fn escaped_separators_in_a_value_are_decoded_before_reading_the_number() {
    // `\X33\` is "3": decoded, not read as garbage.
    let oru = ge("OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.1|6\\X34\\|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R");
    assert_eq!(number(&only_reading(&oru)), 64.0);
}

#[test]
fn frames_that_are_not_hl7_are_refused_as_such() {
    for junk in ["", "hello", "MSH", "PID|1|2\rMSH|^~\\&|"] {
        assert!(
            matches!(hl7::decode(junk, ZONE), Err(Refusal::NotHl7(_))),
            "{junk:?}"
        );
        assert!(hl7::header(junk).is_err());
    }
}

#[test]
fn patient_identifiers_are_read_from_every_pid3_repetition() {
    let msg = mindray_live().replace("2eefgghy^^^Hospital^PI", "4857773456^^^NHS^NH~MRN1^^^H^MR");
    let oru = hl7::decode(&msg, ZONE).unwrap();
    assert_eq!(
        oru.patient_ids,
        vec!["4857773456".to_string(), "MRN1".to_string()]
    );
}

/// H3: the python-hl7 ACK reads as an ACK with MSA-1 AA and MSA-2 HL7MSG00001.
#[test]
fn h3_python_hl7_ack_block_reads_as_aa_for_its_message() {
    let framed = vitalgate::transport::mllp::encode(b"MSH|^~\\&|LABADT|DH|EPICADT|DH|201301011228||ACK^A01^ACK|HL7ACK00001|P|2.3\rMSA|AA|HL7MSG00001\r");
    let mut d = vitalgate::transport::mllp::Deframer::new(1 << 20);
    let mut ev = Vec::new();
    d.feed(&framed, &mut ev);
    let [vitalgate::transport::mllp::Event::Frame(payload)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    let text = std::str::from_utf8(payload).unwrap();
    let h = hl7::header(text).unwrap();
    assert_eq!(
        (h.message_type.as_str(), h.trigger.as_str()),
        ("ACK", "A01")
    );
    let m = hl7_parser::Message::parse(text.trim_end_matches('\r')).unwrap();
    let msa = m.segment("MSA").unwrap();
    assert_eq!(msa.field(1).unwrap().raw_value(), "AA");
    assert_eq!(msa.field(2).unwrap().raw_value(), "HL7MSG00001");
}

/// Security: PID-3 (an NHS Number or MRN) never appears in a decoded message's Debug output.
#[test]
fn a_decoded_message_debug_output_never_shows_patient_identifiers() {
    let msg = mindray_live().replace("2eefgghy^^^Hospital^PI", "9434765919^^^NHS^NH");
    let oru = hl7::decode(&msg, ZONE).unwrap();
    let shown = format!("{oru:?}");
    assert!(!shown.contains("9434765919"), "{shown}");
    assert!(shown.contains("1 redacted"), "{shown}");
}

/// Blank lines between segments (an export that ends segments with CR and LF separately, or a
/// stray empty line) are not segments and do not make the message unreadable.
#[test]
fn blank_lines_between_segments_are_ignored() {
    let live = mindray_live();
    let blank = live.replace("\rOBX|2|", "\r\r\n\rOBX|2|");
    assert_eq!(
        hl7::decode(&blank, ZONE).unwrap(),
        hl7::decode(&live, ZONE).unwrap()
    );
}

/// A segment the parser cannot read never silently truncates the message: the rest would be
/// lost while the monitor is told it was stored.
#[test]
fn an_unparsable_segment_refuses_the_message_instead_of_truncating_it() {
    let broken = mindray_live().replace("\rOBX|4|", "\r|bad|\rOBX|4|");
    match hl7::decode(&broken, ZONE) {
        Err(Refusal::Malformed { at, .. }) => assert_eq!(at, "segment 8"),
        other => panic!("{other:?}"),
    }
}

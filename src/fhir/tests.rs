//! Specification tests for the FHIR mapping. Sections cited are clinical.md unless named.

use serde_json::Value;
use time::macros::datetime;
use time::OffsetDateTime;

use super::codes::{self, LOINC, SNOMED};
use super::*;
use crate::nhs_number::NhsNumber;
use crate::reading::{Absent, Acvpu, Decimal, Flag, Metric, Reading, Unit};

fn nhs() -> NhsNumber {
    NhsNumber::parse("9000000009").unwrap() // §3.3 PDS sandbox number
}

fn ctx<'a>(n: Option<&'a NhsNumber>) -> ObservationContext<'a> {
    ObservationContext {
        gateway_id: "hub-0001",
        device_id: "PO-123456",
        device_display: Some("Pulse oximeter PO-123456"),
        nhs_number: n,
        setting: RecordingSetting::Residential,
        effective: datetime!(2025-06-20 09:15:00 +01:00),
    }
}

fn obs(readings: &[Reading]) -> Value {
    let n = nhs();
    observation(&ctx(Some(&n)), readings).unwrap()
}

/// A plausible reading for every metric, in its canonical unit.
pub(super) fn sample(m: Metric) -> Reading {
    let d = match m {
        Metric::HeartRate | Metric::PulseRate => Decimal::int(72),
        Metric::Spo2 => Decimal::int(97),
        Metric::RespiratoryRate => Decimal::int(16),
        Metric::BodyTemperature => Decimal::new(376, -1),
        Metric::SystolicBp => Decimal::int(128),
        Metric::DiastolicBp => Decimal::int(82),
        Metric::MeanBp => Decimal::int(97),
        Metric::BodyWeight => Decimal::new(724, -1),
        Metric::BodyHeight => Decimal::new(1752, -1),
        Metric::Bmi => Decimal::new(236, -1),
        Metric::BloodGlucose => Decimal::new(54, -1),
        Metric::PerfusionIndex => Decimal::new(32, -1),
        Metric::InspiredOxygen => Decimal::int(2),
        Metric::Acvpu => return Reading::acvpu(Acvpu::A),
    };
    Reading::canonical(m, d)
}

fn codings_with(o: &Value, system: &str) -> usize {
    o["code"]["coding"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["system"] == system)
        .count()
}

fn is_vital_sign_profile(o: &Value) -> bool {
    o["meta"]["profile"][0]
        .as_str()
        .unwrap()
        .starts_with(codes::VITAL_SIGNS_PROFILE)
}

#[test]
fn every_metric_maps_to_a_uk_core_profile_with_status_final() {
    for m in Metric::ALL {
        let o = obs(&[sample(m)]);
        let profile = o["meta"]["profile"][0].as_str().unwrap();
        assert!(profile.starts_with(codes::SD_BASE), "{m}: {profile}");
        assert_eq!(o["status"], "final", "{m}"); // §1.3 status fixed final
        assert_eq!(o["resourceType"], "Observation");
    }
}

#[test]
fn vital_signs_have_exactly_one_loinc_and_a_snomed_coding() {
    // §1.3: slice loinc 1..1, snomedCT 1..*, invariant ukcore-obs-vs-001
    let mut checked = 0;
    for m in Metric::ALL {
        let o = obs(&[sample(m)]);
        if is_vital_sign_profile(&o) {
            assert_eq!(codings_with(&o, LOINC), 1, "{m}");
            assert!(codings_with(&o, SNOMED) >= 1, "{m}");
            checked += 1;
        }
    }
    // HR, pulse, SpO2, RR, temp, systolic (panel), diastolic, mean, weight, height, BMI
    assert_eq!(checked, 11);
}

#[test]
fn vital_signs_have_exactly_one_vital_signs_category() {
    // §1.3: category 1..1, code fixed vital-signs
    for m in Metric::ALL {
        let o = obs(&[sample(m)]);
        if is_vital_sign_profile(&o) {
            let cats = o["category"].as_array().unwrap();
            assert_eq!(cats.len(), 1, "{m}");
            assert_eq!(cats[0]["coding"][0]["system"], codes::OBSERVATION_CATEGORY);
            assert_eq!(cats[0]["coding"][0]["code"], "vital-signs", "{m}");
        }
    }
}

#[test]
fn non_vital_sign_profiles_use_their_own_category() {
    // §1.2: glucose category not fixed; ACVPU/NEWS2 survey; §1.7 oxygen therapy
    let cat = |m| obs(&[sample(m)])["category"][0]["coding"][0]["code"].clone();
    assert_eq!(cat(Metric::BloodGlucose), "laboratory");
    assert_eq!(cat(Metric::Acvpu), "survey");
    assert_eq!(cat(Metric::InspiredOxygen), "therapy");
}

#[test]
fn every_numeric_metric_has_a_ucum_value_quantity_in_the_profile_unit() {
    for m in Metric::ALL {
        let o = obs(&[sample(m)]);
        let q = if m == Metric::SystolicBp {
            &o["component"][0]["valueQuantity"]
        } else {
            &o["valueQuantity"]
        };
        match m.canonical_unit() {
            Some(u) => {
                assert_eq!(q["system"], codes::UCUM, "{m}");
                assert_eq!(q["code"], u.ucum(), "{m}");
                assert!(q["value"].is_number() && q["unit"].is_string(), "{m}");
            }
            None => assert!(q.is_null(), "{m}"),
        }
    }
}

#[test]
fn heart_rate_matches_the_section_1_8_example_shape() {
    let o = obs(&[Reading::canonical(Metric::HeartRate, Decimal::int(72))]);
    assert_eq!(
        o["meta"]["profile"][0],
        "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation-VitalSigns-HeartRate"
    );
    assert_eq!(o["code"]["coding"][0]["code"], "364075005");
    assert_eq!(o["code"]["coding"][1]["code"], "8867-4");
    assert_eq!(
        o["valueQuantity"],
        serde_json::json!({"value": 72, "unit": "per minute", "system": "http://unitsofmeasure.org", "code": "/min"})
    );
    assert_eq!(o["effectiveDateTime"], "2025-06-20T09:15:00+01:00");
    assert_eq!(o["device"]["identifier"]["system"], "urn:vitalgate:device");
    assert_eq!(o["device"]["identifier"]["value"], "hub-0001/PO-123456");
    assert_eq!(o["device"]["display"], "Pulse oximeter PO-123456");
}

#[test]
fn subject_is_the_nhs_number_identifier() {
    // §1.5
    let o = obs(&[sample(Metric::Spo2)]);
    assert_eq!(
        o["subject"],
        serde_json::json!({"type": "Patient", "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}})
    );
}

#[test]
fn subject_without_nhs_number_falls_back_to_the_gateway_patient() {
    let o = observation(&ctx(None), &[sample(Metric::Spo2)]).unwrap();
    assert_eq!(
        o["subject"]["identifier"]["system"],
        codes::GATEWAY_PATIENT_SYSTEM
    );
    assert_eq!(o["subject"]["identifier"]["value"], "hub-0001");
    assert!(!o.to_string().contains("nhs-number"));
}

#[test]
fn recording_setting_extension_follows_the_context() {
    // §1.3: residential for home hubs, clinical on wards
    let n = nhs();
    let mut c = ctx(Some(&n));
    let ext = |c: &ObservationContext| {
        observation(c, &[sample(Metric::Spo2)]).unwrap()["extension"][0].clone()
    };
    assert_eq!(ext(&c)["url"], codes::RECORDING_SETTING_URL);
    assert_eq!(
        ext(&c)["valueCodeableConcept"]["coding"][0]["code"],
        "residential"
    );
    c.setting = RecordingSetting::Clinical;
    assert_eq!(
        ext(&c)["valueCodeableConcept"]["coding"][0]["code"],
        "clinical"
    );
}

#[test]
fn id_and_identifier_carry_the_same_deterministic_uuid() {
    let a = obs(&[sample(Metric::Spo2)]);
    let b = obs(&[sample(Metric::Spo2)]);
    assert_eq!(a["id"], b["id"]);
    assert_eq!(a["identifier"][0]["value"], a["id"]);
    assert_eq!(
        a["identifier"][0]["system"],
        "https://tools.ietf.org/html/rfc4122"
    );
    let expected = observation_id(
        "hub-0001",
        "PO-123456",
        ObservationKey::Metric(Metric::Spo2),
        datetime!(2025-06-20 08:15:00 UTC),
    );
    assert_eq!(a["id"], expected.to_string());
}

#[test]
fn observation_id_namespace_is_the_documented_v5_of_the_project_url() {
    let ns = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        b"https://github.com/vitalgate/vitalgate/fhir/observation-id",
    );
    assert_eq!(OBSERVATION_ID_NAMESPACE, ns);
}

#[test]
fn observation_id_ignores_the_utc_offset_of_the_same_instant() {
    let k = ObservationKey::Metric(Metric::HeartRate);
    assert_eq!(
        observation_id("g", "d", k, datetime!(2025-06-20 10:00 +01:00)),
        observation_id("g", "d", k, datetime!(2025-06-20 09:00 UTC))
    );
}

#[test]
fn observation_id_differs_by_device_metric_and_time() {
    let t = datetime!(2025-06-20 09:00 UTC);
    let hr = ObservationKey::Metric(Metric::HeartRate);
    let base = observation_id("g", "d", hr, t);
    assert_ne!(base, observation_id("g", "d2", hr, t));
    assert_ne!(
        base,
        observation_id("g", "d", ObservationKey::Metric(Metric::PulseRate), t)
    );
    assert_ne!(
        base,
        observation_id("g", "d", hr, t + time::Duration::SECOND)
    );
    assert_ne!(
        base,
        observation_id("g", "d", ObservationKey::BloodPressurePanel, t)
    );
}

#[test]
fn observation_id_fields_cannot_run_into_each_other() {
    let t = datetime!(2025-06-20 09:00 UTC);
    let k = ObservationKey::Metric(Metric::HeartRate);
    assert_ne!(
        observation_id("a|1:b", "c", k, t),
        observation_id("a", "b|1:c", k, t)
    );
}

#[test]
fn bp_panel_has_the_exact_component_texts_of_section_1_3() {
    let o = obs(&[sample(Metric::DiastolicBp), sample(Metric::SystolicBp)]);
    assert_eq!(
        o["meta"]["profile"][0],
        "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation-VitalSigns-BloodPressure"
    );
    assert_eq!(o["code"]["coding"][1]["code"], "85354-9");
    assert!(o.get("valueQuantity").is_none()); // value[x] 0..0
    let comps = o["component"].as_array().unwrap();
    assert_eq!(comps.len(), 2);
    // systolic first whatever the input order
    assert_eq!(comps[0]["code"]["text"], "Systolic blood pressure");
    assert_eq!(comps[0]["code"]["coding"][1]["code"], "8480-6");
    assert_eq!(comps[0]["valueQuantity"]["value"], 128);
    assert_eq!(comps[1]["code"]["text"], "Diastolic blood pressure");
    assert_eq!(comps[1]["code"]["coding"][1]["code"], "8462-4");
    assert_eq!(comps[1]["valueQuantity"]["code"], "mm[Hg]");
}

#[test]
fn systolic_alone_is_a_panel_with_one_component() {
    // §1.3: SystolicBP 1..1, DiastolicBP 0..1
    let o = obs(&[sample(Metric::SystolicBp)]);
    assert_eq!(o["component"].as_array().unwrap().len(), 1);
    assert_eq!(o["meta"]["profile"][0], codes::BP_PROFILE);
}

#[test]
fn diastolic_alone_is_a_generic_vital_sign_not_a_panel() {
    let o = obs(&[sample(Metric::DiastolicBp)]);
    assert_eq!(o["meta"]["profile"][0], codes::VITAL_SIGNS_PROFILE);
    assert_eq!(o["valueQuantity"]["value"], 82);
}

#[test]
fn bp_set_with_mean_is_refused_and_names_group_for_fhir() {
    let e = observation(
        &ctx(None),
        &[
            sample(Metric::SystolicBp),
            sample(Metric::DiastolicBp),
            sample(Metric::MeanBp),
        ],
    )
    .unwrap_err();
    assert!(matches!(e, FhirError::NotOneObservation { .. }));
    assert!(e.to_string().contains("group_for_fhir"), "{e}");
}

#[test]
fn two_unrelated_readings_are_refused() {
    let e = observation(
        &ctx(None),
        &[sample(Metric::Spo2), sample(Metric::PulseRate)],
    )
    .unwrap_err();
    assert!(matches!(e, FhirError::NotOneObservation { .. }));
}

#[test]
fn no_readings_is_an_error() {
    assert_eq!(observation(&ctx(None), &[]), Err(FhirError::NoReadings));
}

#[test]
fn implausible_reading_is_refused_not_mapped() {
    let e = observation(
        &ctx(None),
        &[Reading::canonical(Metric::Spo2, Decimal::int(101))],
    )
    .unwrap_err();
    assert!(matches!(e, FhirError::InvalidReading(_)));
}

#[test]
fn group_for_fhir_pairs_bp_and_leaves_the_rest_alone() {
    let frame = [
        sample(Metric::DiastolicBp),
        sample(Metric::MeanBp),
        sample(Metric::SystolicBp),
        sample(Metric::PulseRate),
    ];
    let groups = group_for_fhir(&frame);
    let metrics: Vec<Vec<Metric>> = groups
        .iter()
        .map(|g| g.iter().map(|r| r.metric).collect())
        .collect();
    assert_eq!(
        metrics,
        vec![
            vec![Metric::MeanBp],
            vec![Metric::SystolicBp, Metric::DiastolicBp],
            vec![Metric::PulseRate]
        ]
    );
    for g in &groups {
        assert!(observation(&ctx(None), g).is_ok(), "{g:?}");
    }
}

#[test]
fn group_for_fhir_pairs_the_kth_systolic_with_the_kth_diastolic() {
    let s1 = Reading::canonical(Metric::SystolicBp, Decimal::int(120));
    let d1 = Reading::canonical(Metric::DiastolicBp, Decimal::int(80));
    let s2 = Reading::canonical(Metric::SystolicBp, Decimal::int(130));
    let d2 = Reading::canonical(Metric::DiastolicBp, Decimal::int(85));
    let d3 = Reading::canonical(Metric::DiastolicBp, Decimal::int(90));
    let groups = group_for_fhir(&[s1.clone(), d1.clone(), s2.clone(), d2.clone(), d3.clone()]);
    assert_eq!(groups, vec![vec![s1, d1], vec![s2, d2], vec![d3]]);
}

#[test]
fn group_for_fhir_keeps_every_reading_exactly_once() {
    let frame: Vec<Reading> = Metric::ALL.iter().map(|&m| sample(m)).collect();
    let groups = group_for_fhir(&frame);
    let flat: Vec<Reading> = groups.into_iter().flatten().collect();
    assert_eq!(flat.len(), frame.len());
    for r in &frame {
        assert!(flat.contains(r), "{r:?}");
    }
}

#[test]
fn absent_values_get_data_absent_reason_and_no_value() {
    // the R4 data-absent-reason codes chosen in the module docs
    let cases = [
        (Absent::Nan, "not-a-number"),
        (Absent::PosInf, "positive-infinity"),
        (Absent::NegInf, "negative-infinity"),
        (Absent::Nres, "error"),
        (Absent::Missing, "unknown"),
    ];
    for (a, code) in cases {
        let o = obs(&[Reading::absent(Metric::Spo2, a)]);
        assert!(o.get("valueQuantity").is_none(), "{a:?}");
        assert_eq!(
            o["dataAbsentReason"]["coding"][0]["system"],
            codes::DATA_ABSENT_REASON
        );
        assert_eq!(o["dataAbsentReason"]["coding"][0]["code"], code, "{a:?}");
    }
}

#[test]
fn absent_bp_component_gets_data_absent_reason() {
    // vs-3: every component has a value or a dataAbsentReason
    let o = obs(&[
        sample(Metric::SystolicBp),
        Reading::absent(Metric::DiastolicBp, Absent::Nres),
    ]);
    let d = &o["component"][1];
    assert!(d.get("valueQuantity").is_none());
    assert_eq!(d["dataAbsentReason"]["coding"][0]["code"], "error");
}

#[test]
fn device_flags_go_into_a_note() {
    let r = sample(Metric::Spo2).with_flags([Flag::Motion, Flag::LowPerfusion]);
    let o = obs(&[r]);
    assert_eq!(
        o["note"][0]["text"],
        "vitalgate device flags: low_perfusion, motion"
    );
}

#[test]
fn no_flags_no_note() {
    assert!(obs(&[sample(Metric::Spo2)]).get("note").is_none());
}

#[test]
fn bp_panel_notes_the_union_of_component_flags() {
    let s = sample(Metric::SystolicBp).with_flags([Flag::CuffFitLoose]);
    let d = sample(Metric::DiastolicBp).with_flags([Flag::CuffFitLoose, Flag::IrregularPulse]);
    let o = obs(&[s, d]);
    assert_eq!(
        o["note"][0]["text"],
        "vitalgate device flags: irregular_pulse, cuff_fit_loose"
    );
}

#[test]
fn fahrenheit_temperature_is_sent_in_celsius_with_the_original_in_a_note() {
    // §1.2: BodyTemperature fixes Cel
    let r = Reading::number(
        Metric::BodyTemperature,
        Decimal::new(1004, -1),
        Unit::Fahrenheit,
    );
    let o = obs(&[r]);
    assert_eq!(o["valueQuantity"]["code"], "Cel");
    assert_eq!(o["valueQuantity"]["value"], 38);
    let note = o["note"][0]["text"].as_str().unwrap();
    assert!(note.contains("100.4 [degF]"), "{note}");
}

#[test]
fn pounds_are_sent_in_kilograms() {
    // §1.2: BodyWeight fixes kg
    let o = obs(&[Reading::number(
        Metric::BodyWeight,
        Decimal::new(1502, -1),
        Unit::Pound,
    )]);
    assert_eq!(o["valueQuantity"]["code"], "kg");
    assert_eq!(o["valueQuantity"]["value"], 68.13);
}

#[test]
fn exact_digits_survive_to_the_json_number() {
    let o = obs(&[Reading::canonical(
        Metric::BodyTemperature,
        Decimal::new(3760, -2),
    )]);
    assert_eq!(o["valueQuantity"]["value"].to_string(), "37.6");
}

#[test]
fn room_air_is_breathing_room_air_without_value() {
    // §1.7: 722742002 Breathing room air, no value
    let o = obs(&[Reading::canonical(Metric::InspiredOxygen, Decimal::int(0))]);
    assert_eq!(o["code"]["coding"][0]["code"], "722742002");
    assert!(o.get("valueQuantity").is_none());
    assert!(o.get("dataAbsentReason").is_none());
}

#[test]
fn oxygen_flow_is_patient_on_oxygen_in_litres_per_minute() {
    // §1.7: 371825009 Patient on oxygen, valueQuantity l/min
    let o = obs(&[Reading::canonical(Metric::InspiredOxygen, Decimal::int(2))]);
    assert_eq!(o["code"]["coding"][0]["code"], "371825009");
    assert_eq!(o["valueQuantity"]["code"], "l/min");
    assert_eq!(o["valueQuantity"]["unit"], "litre per minute");
}

#[test]
fn absent_oxygen_flow_asserts_neither_air_nor_oxygen() {
    let o = obs(&[Reading::absent(Metric::InspiredOxygen, Absent::Nan)]);
    let s = o["code"].to_string();
    assert!(!s.contains("722742002") && !s.contains("371825009"), "{s}");
    assert_eq!(o["dataAbsentReason"]["coding"][0]["code"], "not-a-number");
}

#[test]
fn acvpu_new_confusion_is_coded_in_snomed() {
    // §1.2: UKCore-ACVPU value set
    let o = obs(&[Reading::acvpu(Acvpu::C)]);
    assert_eq!(o["code"]["coding"][0]["code"], "1104441000000107");
    assert_eq!(o["valueCodeableConcept"]["coding"][0]["code"], "130987000");
}

#[test]
fn effective_offset_beyond_fourteen_hours_is_refused() {
    let mut c = ctx(None);
    c.effective = OffsetDateTime::from_unix_timestamp(0)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(15, 0, 0).unwrap());
    let e = observation(&c, &[sample(Metric::Spo2)]).unwrap_err();
    assert!(matches!(e, FhirError::EffectiveTime(_)));
}

#[test]
fn effective_utc_is_written_with_z() {
    let mut c = ctx(None);
    c.effective = datetime!(2025-06-20 08:15:00.5 UTC);
    let o = observation(&c, &[sample(Metric::Spo2)]).unwrap();
    assert_eq!(o["effectiveDateTime"], "2025-06-20T08:15:00.5Z");
}

fn case_08() -> News2Score {
    // §2.6 case 08: RR 22, SpO2 94 (S1), O2, SBP 115, HR 80, A, 38.5 -> 2/1/2/0/0/0/1 = 6
    News2Score {
        total: 6,
        sub_scores: News2SubScores {
            respiration_rate: 2,
            spo2: 1,
            air_or_oxygen: 2,
            systolic_bp: 0,
            pulse: 0,
            consciousness: 0,
            temperature: 1,
        },
        spo2_scale: Spo2Scale::Scale1,
        derived_from: vec![uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2)],
    }
}

#[test]
fn news2_total_is_a_score_of_quantity_with_seven_components() {
    // §1.2 EarlyWarningTotalScore, §2.4 codes
    let n = nhs();
    let o = news2_observation(&ctx(Some(&n)), &case_08()).unwrap();
    assert_eq!(o["meta"]["profile"][0], codes::NEWS2_PROFILE);
    assert_eq!(o["category"][0]["coding"][0]["code"], "survey");
    assert_eq!(o["code"]["coding"][0]["code"], "1104051000000101");
    assert_eq!(o["valueQuantity"]["value"], 6);
    assert_eq!(o["valueQuantity"]["code"], "{ScoreOf}");
    let comps = o["component"].as_array().unwrap();
    assert_eq!(comps.len(), 7);
    let rr = comps
        .iter()
        .find(|c| c["code"]["coding"][0]["code"] == "1104301000000104")
        .unwrap();
    assert_eq!(rr["valueQuantity"]["value"], 2);
    let spo2 = comps
        .iter()
        .find(|c| c["code"]["coding"][0]["code"] == "1104311000000102")
        .unwrap();
    assert_eq!(spo2["valueQuantity"]["value"], 1);
}

#[test]
fn news2_scale_2_uses_the_scale_2_sub_score_code() {
    let mut s = case_08();
    s.spo2_scale = Spo2Scale::Scale2;
    let o = news2_observation(&ctx(None), &s).unwrap().to_string();
    assert!(o.contains("1104321000000108") && !o.contains("1104311000000102"));
}

#[test]
fn news2_derived_from_references_the_source_observations() {
    let o = news2_observation(&ctx(None), &case_08()).unwrap();
    assert_eq!(
        o["derivedFrom"][0]["reference"],
        "Observation/00000000-0000-0000-0000-000000000001"
    );
    assert_eq!(o["derivedFrom"].as_array().unwrap().len(), 2);
}

#[test]
fn news2_total_that_is_not_the_sum_is_refused() {
    let mut s = case_08();
    s.total = 5;
    assert_eq!(
        news2_observation(&ctx(None), &s),
        Err(FhirError::News2Total { total: 5, sum: 6 })
    );
}

#[test]
fn news2_impossible_sub_score_is_refused() {
    // Chart 1: air or oxygen scores 0 or 2 only
    let mut s = case_08();
    s.sub_scores.air_or_oxygen = 1;
    s.total = 5;
    assert!(matches!(
        news2_observation(&ctx(None), &s),
        Err(FhirError::News2SubScore {
            parameter: "air or oxygen",
            ..
        })
    ));
}

/// The publisher sends `observation_json`'s bytes; they must be the golden (`Value`) JSON
/// byte for byte, for every metric, absent values, device flags and the BP panel.
#[test]
fn observation_json_is_the_value_json_for_every_metric() {
    let n = nhs();
    let mut cases: Vec<Vec<Reading>> = Vec::new();
    for m in Metric::ALL {
        cases.push(vec![
            sample(m).with_flags([Flag::Motion, Flag::LowPerfusion])
        ]);
        if m != Metric::Acvpu {
            // ACVPU is a code: it has no absent form (AcvpuNeedsCode).
            cases.push(vec![Reading::absent(m, Absent::Nres)]);
        }
    }
    cases.push(vec![
        sample(Metric::SystolicBp),
        sample(Metric::DiastolicBp),
    ]);
    cases.push(vec![
        sample(Metric::SystolicBp),
        Reading::absent(Metric::DiastolicBp, Absent::Nan),
    ]);
    for readings in &cases {
        let v = observation(&ctx(Some(&n)), readings).unwrap();
        let bytes = observation_json(&ctx(Some(&n)), readings).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            serde_json::to_string(&v).unwrap(),
            "{readings:?}"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn any_reading() -> impl Strategy<Value = Reading> {
        let metric = proptest::sample::select(Metric::ALL.to_vec());
        let units = proptest::sample::select(vec![
            Unit::PerMinute,
            Unit::Percent,
            Unit::Celsius,
            Unit::Fahrenheit,
            Unit::MmHg,
            Unit::KiloPascal,
            Unit::Kilogram,
            Unit::Pound,
            Unit::Centimetre,
            Unit::Metre,
            Unit::Inch,
            Unit::KgPerM2,
            Unit::MmolPerL,
            Unit::MgPerDl,
            Unit::LitrePerMinute,
        ]);
        let absent = proptest::sample::select(vec![
            Absent::Nan,
            Absent::Nres,
            Absent::PosInf,
            Absent::NegInf,
            Absent::Missing,
        ]);
        (
            metric,
            any::<i64>(),
            any::<i8>(),
            units,
            absent,
            0u8..3,
            any::<bool>(),
        )
            .prop_map(|(m, mantissa, exponent, unit, why, kind, with_flag)| {
                let r = match kind {
                    0 => Reading::number(m, Decimal::new(mantissa, exponent), unit),
                    1 => Reading::number(
                        m,
                        Decimal::new(mantissa % 2000, -(exponent.rem_euclid(3))),
                        unit,
                    ),
                    _ => Reading::absent(m, why),
                };
                if with_flag {
                    r.with_flags([Flag::Motion])
                } else {
                    r
                }
            })
    }

    proptest! {
        #[test]
        fn observation_never_panics_and_valid_output_has_value_or_reason(rs in proptest::collection::vec(any_reading(), 0..4)) {
            let n = nhs();
            if let Ok(o) = observation(&ctx(Some(&n)), &rs) {
                prop_assert_eq!(&o["status"], "final");
                let has_content = o.get("valueQuantity").is_some()
                    || o.get("valueCodeableConcept").is_some()
                    || o.get("dataAbsentReason").is_some()
                    || o.get("component").is_some()
                    || o["code"]["coding"][0]["code"] == "722742002"; // room air: no value by design
                prop_assert!(has_content, "{}", o);
            }
        }

        /// The publisher's bytes (typed structs, `doc.rs`) are exactly the `Value`'s bytes:
        /// the struct fields are in the sorted key order a `serde_json::Map` uses.
        #[test]
        fn observation_json_bytes_equal_the_value_serialized(rs in proptest::collection::vec(any_reading(), 0..4), with_nhs in any::<bool>()) {
            let n = nhs();
            let c = ctx(with_nhs.then_some(&n));
            match (observation(&c, &rs), observation_json(&c, &rs)) {
                (Ok(v), Ok(bytes)) => prop_assert_eq!(
                    String::from_utf8(bytes).unwrap(),
                    serde_json::to_string(&v).unwrap()
                ),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "value {:?} but bytes {:?}", a, b),
            }
        }

        #[test]
        fn group_for_fhir_groups_always_map_when_readings_are_valid(rs in proptest::collection::vec(any_reading(), 0..8)) {
            let valid: Vec<Reading> = rs.into_iter().filter(|r| r.validate().is_ok()).collect();
            let groups = group_for_fhir(&valid);
            prop_assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), valid.len());
            for g in &groups {
                prop_assert!(observation(&ctx(None), g).is_ok(), "{:?}", g);
            }
        }
    }
}

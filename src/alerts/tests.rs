//! Engine-level specifications: NEWS2 through the engine (clinical.md §2.6 worked cases), the
//! partial-set rule, thresholds (persistence, hysteresis, no flapping), the lifecycle
//! (escalation = exactly one event), technical alarms, persistence across restarts, the event
//! schema, a deteriorating-patient sequence and a no-panic property.

use proptest::prelude::*;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::*;
use crate::reading::{Absent, Acvpu, Decimal, Flag, Metric, Reading, Unit};

const T0: OffsetDateTime = datetime!(2026-11-23 08:00 UTC);

fn at(s: i64) -> OffsetDateTime {
    T0 + Duration::seconds(s)
}

fn num(m: Metric, v: f64) -> Reading {
    Reading::canonical(m, Decimal::from_f64(v).unwrap())
}

fn no_rules() -> PatientAlertConfig {
    PatientAlertConfig {
        rules: vec![],
        ..PatientAlertConfig::default()
    }
}

fn engine(cfg: PatientAlertConfig) -> AlertEngine {
    AlertEngine::new("pt-7f3a", cfg).unwrap()
}

/// Feeds one reading with a unique obs ref, returns its events.
fn feed(e: &mut AlertEngine, t: OffsetDateTime, r: Reading) -> Vec<AlertEvent> {
    let obs = format!("obs-{}-{}", r.metric, (t - T0).whole_seconds());
    e.on_reading(t, "hub-dev", &r, &obs).events
}

struct Set {
    rr: f64,
    spo2: f64,
    o2: bool,
    sbp: f64,
    hr: f64,
    acvpu: Acvpu,
    temp: f64,
}

/// Feeds a full NEWS2 set at `t` (oxygen as an inspired_oxygen reading: 2 l/min or 0).
fn feed_set(
    e: &mut AlertEngine,
    t: OffsetDateTime,
    s: &Set,
) -> (Vec<AlertEvent>, Option<News2Score>) {
    let readings = [
        num(Metric::RespiratoryRate, s.rr),
        num(Metric::Spo2, s.spo2),
        num(Metric::InspiredOxygen, if s.o2 { 2.0 } else { 0.0 }),
        num(Metric::SystolicBp, s.sbp),
        num(Metric::PulseRate, s.hr),
        Reading::acvpu(s.acvpu),
        num(Metric::BodyTemperature, s.temp),
    ];
    let mut events = Vec::new();
    let mut score = None;
    for r in readings {
        let obs = format!("obs-{}-{}", r.metric, (t - T0).whole_seconds());
        let out = e.on_reading(t, "hub-dev", &r, &obs);
        events.extend(out.events);
        if let Some(s) = out.news2.into_iter().last() {
            score = Some(s);
        }
    }
    (events, score)
}

fn complete(e: &AlertEngine, t: OffsetDateTime) -> News2Score {
    match e.news2(t) {
        News2Status::Complete(s) => s,
        News2Status::Partial(p) => panic!("expected a complete NEWS2, missing {:?}", p.missing),
    }
}

fn subs(s: &News2Score) -> Vec<u8> {
    s.sub_scores.iter().map(|x| x.score).collect()
}

/// Runs a clinical.md §2.6 case through the engine and checks sub-scores, total, "any 3" and band.
#[allow(clippy::too_many_arguments)]
fn check_case(set: Set, want_subs: [u8; 7], total: u8, any_three: bool, band: RiskBand) {
    let mut e = engine(no_rules());
    let (_, score) = feed_set(&mut e, T0, &set);
    let s = complete(&e, T0);
    assert_eq!(subs(&s), want_subs, "sub-scores RR/SpO2/O2/SBP/HR/C/T");
    assert_eq!(s.total, total);
    assert_eq!(s.any_three, any_three);
    assert_eq!(s.band, band);
    assert_eq!(
        score.as_ref(),
        Some(&s),
        "the reading completing the set yields the score"
    );
}

fn set(rr: f64, spo2: f64, o2: bool, sbp: f64, hr: f64, acvpu: Acvpu, temp: f64) -> Set {
    Set {
        rr,
        spo2,
        o2,
        sbp,
        hr,
        acvpu,
        temp,
    }
}

// ---- clinical.md §2.6 worked cases (aggregate, through the engine) ---------------------------

#[test]
fn news2_case_01_all_normal_lower_edges_totals_0_low() {
    check_case(
        set(12.0, 96.0, false, 111.0, 51.0, Acvpu::A, 36.1),
        [0; 7],
        0,
        false,
        RiskBand::Low,
    );
}

#[test]
fn news2_case_02_all_normal_upper_edges_totals_0_low() {
    check_case(
        set(20.0, 100.0, false, 219.0, 90.0, Acvpu::A, 38.0),
        [0; 7],
        0,
        false,
        RiskBand::Low,
    );
}

#[test]
fn news2_case_03_hr_91_totals_1_low() {
    check_case(
        set(16.0, 97.0, false, 125.0, 91.0, Acvpu::A, 37.0),
        [0, 0, 0, 0, 1, 0, 0],
        1,
        false,
        RiskBand::Low,
    );
}

#[test]
fn news2_case_04_totals_4_without_single_3_is_low() {
    check_case(
        set(9.0, 94.0, false, 120.0, 91.0, Acvpu::A, 35.1),
        [1, 1, 0, 0, 1, 0, 1],
        4,
        false,
        RiskBand::Low,
    );
}

#[test]
fn news2_case_05_single_red_rr_8_is_low_medium() {
    check_case(
        set(8.0, 97.0, false, 120.0, 80.0, Acvpu::A, 37.0),
        [3, 0, 0, 0, 0, 0, 0],
        3,
        true,
        RiskBand::LowMedium,
    );
}

#[test]
fn news2_case_06_single_red_new_confusion_is_low_medium() {
    check_case(
        set(16.0, 97.0, false, 120.0, 80.0, Acvpu::C, 37.0),
        [0, 0, 0, 0, 0, 3, 0],
        3,
        true,
        RiskBand::LowMedium,
    );
}

#[test]
fn news2_case_07_totals_5_medium() {
    check_case(
        set(18.0, 96.0, false, 100.0, 111.0, Acvpu::A, 38.1),
        [0, 0, 0, 2, 2, 0, 1],
        5,
        false,
        RiskBand::Medium,
    );
}

#[test]
fn news2_case_08_totals_6_medium_on_oxygen() {
    check_case(
        set(22.0, 94.0, true, 115.0, 80.0, Acvpu::A, 38.5),
        [2, 1, 2, 0, 0, 0, 1],
        6,
        false,
        RiskBand::Medium,
    );
}

#[test]
fn news2_case_09_totals_7_high() {
    check_case(
        set(25.0, 93.0, false, 105.0, 95.0, Acvpu::A, 37.0),
        [3, 2, 0, 1, 1, 0, 0],
        7,
        true,
        RiskBand::High,
    );
}

#[test]
fn news2_case_10_maximum_totals_20_high() {
    check_case(
        set(30.0, 85.0, true, 85.0, 140.0, Acvpu::U, 34.5),
        [3, 3, 2, 3, 3, 3, 3],
        20,
        true,
        RiskBand::High,
    );
}

// ---- NEWS2 inputs ------------------------------------------------------------------------------

fn normal() -> Set {
    set(16.0, 97.0, false, 125.0, 70.0, Acvpu::A, 37.0)
}

#[test]
fn news2_without_acvpu_is_partial_and_names_consciousness() {
    let mut e = engine(no_rules());
    for r in [
        num(Metric::RespiratoryRate, 16.0),
        num(Metric::Spo2, 97.0),
        num(Metric::SystolicBp, 125.0),
        num(Metric::PulseRate, 70.0),
        num(Metric::BodyTemperature, 37.0),
    ] {
        let obs = format!("o-{}", r.metric);
        assert_eq!(
            e.on_reading(T0, "d", &r, &obs).news2,
            vec![],
            "no score from a partial set"
        );
    }
    match e.news2(T0) {
        News2Status::Partial(p) => {
            assert_eq!(p.missing, vec![News2Parameter::Consciousness]);
            assert_eq!(p.sub_scores.len(), 6);
        }
        News2Status::Complete(s) => panic!("no total may be given without ACVPU, got {}", s.total),
    }
}

#[test]
fn news2_parameter_older_than_freshness_window_is_missing() {
    let mut e = engine(no_rules());
    feed_set(&mut e, T0, &normal());
    assert!(matches!(e.news2(at(30 * 60)), News2Status::Complete(_)));
    match e.news2(at(30 * 60 + 1)) {
        News2Status::Partial(p) => assert_eq!(p.missing.len(), 6, "all but air/oxygen are stale"),
        News2Status::Complete(_) => panic!("stale readings must not make a total"),
    }
}

#[test]
fn news2_absent_value_or_sensor_off_flag_does_not_count_as_fresh() {
    let mut e = engine(no_rules());
    e.on_reading(
        T0,
        "ox",
        &Reading::absent(Metric::Spo2, Absent::Missing),
        "o1",
    );
    e.on_reading(
        T0,
        "ox",
        &num(Metric::RespiratoryRate, 16.0).with_flags([Flag::SensorOff]),
        "o2",
    );
    e.on_reading(
        T0,
        "ox",
        &num(Metric::PulseRate, 70.0).with_flags([Flag::Motion]),
        "o3",
    );
    let News2Status::Partial(p) = e.news2(T0) else {
        panic!("partial expected")
    };
    assert!(p.missing.contains(&News2Parameter::OxygenSaturation));
    assert!(p.missing.contains(&News2Parameter::RespirationRate));
    assert!(
        !p.missing.contains(&News2Parameter::Pulse),
        "a motion flag keeps the value"
    );
}

#[test]
fn news2_spo2_scale2_applies_only_when_configured() {
    // SpO2 90 % on air: Scale 1 scores 3, Scale 2 scores 0 (clinical.md §2.1).
    let mut s1 = engine(no_rules());
    let mut s2 = engine(PatientAlertConfig {
        spo2_scale: Spo2Scale::Scale2,
        ..no_rules()
    });
    let mut patient = normal();
    patient.spo2 = 90.0;
    feed_set(&mut s1, T0, &patient);
    feed_set(&mut s2, T0, &patient);
    assert_eq!(subs(&complete(&s1, T0))[1], 3);
    assert_eq!(subs(&complete(&s2, T0))[1], 0);
}

#[test]
fn news2_on_oxygen_from_config_scores_two_and_drives_scale2_oxygen_column() {
    // Scale 2, SpO2 97 %: on air 0; on oxygen (from patient config) 3, plus 2 for oxygen.
    let mut e = engine(PatientAlertConfig {
        spo2_scale: Spo2Scale::Scale2,
        on_oxygen: true,
        ..no_rules()
    });
    feed_set(&mut e, T0, &normal()); // its inspired_oxygen reading is 0 l/min
    let s = complete(&e, T0);
    assert_eq!(
        subs(&s)[1..3],
        [3, 2],
        "a 0 l/min reading cannot override the prescription"
    );
}

#[test]
fn news2_temperature_in_fahrenheit_is_converted_then_banded() {
    let mut e = engine(no_rules());
    feed_set(&mut e, T0, &normal());
    // 95.0 °F = 35.0 °C -> 3 (clinical.md §2.1 temperature <= 35.0)
    let f = Reading::number(
        Metric::BodyTemperature,
        Decimal::new(950, -1),
        Unit::Fahrenheit,
    );
    e.on_reading(at(1), "thermo", &f, "t-f");
    let s = complete(&e, at(1));
    assert_eq!(s.sub_scores[6].score, 3);
    assert_eq!(s.sub_scores[6].value, "35.0");
}

#[test]
fn news2_non_integer_values_are_rounded_half_up_before_banding() {
    // clinical.md §2.5: 35.05 °C -> 1, 20.5/min -> 2, 90.5 mmHg -> 2.
    let mut e = engine(no_rules());
    feed_set(&mut e, T0, &normal());
    e.on_reading(
        at(1),
        "d",
        &Reading::canonical(Metric::BodyTemperature, Decimal::new(3505, -2)),
        "t",
    );
    e.on_reading(
        at(1),
        "d",
        &Reading::canonical(Metric::RespiratoryRate, Decimal::new(205, -1)),
        "r",
    );
    e.on_reading(
        at(1),
        "d",
        &Reading::canonical(Metric::SystolicBp, Decimal::new(905, -1)),
        "b",
    );
    let s = subs(&complete(&e, at(1)));
    assert_eq!((s[0], s[3], s[6]), (2, 2, 1));
}

#[test]
fn news2_pulse_uses_the_more_recent_of_pulse_rate_and_heart_rate() {
    let mut e = engine(no_rules());
    feed_set(&mut e, T0, &normal()); // pulse_rate 70 at T0
    e.on_reading(at(10), "ecg", &num(Metric::HeartRate, 135.0), "hr");
    let s = complete(&e, at(10));
    assert_eq!(
        (s.sub_scores[4].score, s.sub_scores[4].obs_ref.as_deref()),
        (3, Some("hr"))
    );
    e.on_reading(at(20), "ox", &num(Metric::PulseRate, 72.0), "pr");
    assert_eq!(complete(&e, at(20)).sub_scores[4].score, 0);
}

#[test]
fn news2_pulse_rate_wins_a_tie_with_heart_rate() {
    let mut e = engine(no_rules());
    feed_set(&mut e, T0, &normal()); // pulse_rate 70 at T0
    e.on_reading(T0, "ecg", &num(Metric::HeartRate, 135.0), "hr");
    assert_eq!(complete(&e, T0).sub_scores[4].score, 0);
}

#[test]
fn news2_score_is_yielded_on_change_not_for_every_identical_reading() {
    let mut e = engine(no_rules());
    let (_, first) = feed_set(&mut e, T0, &normal());
    assert!(first.is_some());
    let again = e.on_reading(at(1), "ox", &num(Metric::Spo2, 97.0), "s2");
    assert_eq!(
        again.news2,
        vec![],
        "same sub-scores within the window: nothing new to publish"
    );
    let changed = e.on_reading(at(2), "ox", &num(Metric::Spo2, 95.0), "s3");
    let s = changed
        .news2
        .into_iter()
        .next()
        .expect("a changed sub-score is published");
    assert_eq!(s.total, 1);
    assert!(s.derived_from.contains(&"s3".to_string()));
    assert_eq!(
        s.derived_from.len(),
        7,
        "one ObsRef per parameter incl. inspired oxygen"
    );
}

#[test]
fn news2_late_older_reading_does_not_replace_a_newer_one() {
    let mut e = engine(no_rules());
    feed_set(&mut e, at(600), &normal());
    let old = num(Metric::Spo2, 85.0).at(at(300));
    e.on_reading(at(601), "ox", &old, "old");
    assert_eq!(complete(&e, at(601)).sub_scores[1].score, 0);
}

// ---- NEWS2 alerts ------------------------------------------------------------------------------

#[test]
fn news2_single_parameter_3_with_partial_set_raises_and_names_missing() {
    let mut e = engine(no_rules());
    let ev = feed(&mut e, T0, num(Metric::RespiratoryRate, 7.0));
    assert_eq!(ev.len(), 1, "{ev:#?}");
    let ev = &ev[0];
    assert_eq!(
        (ev.kind, ev.transition, ev.priority),
        (AlertKind::News2, Transition::Raised, Priority::Medium)
    );
    assert_eq!(ev.rule, "news2:red:respiration_rate");
    let b = ev.news2.as_ref().unwrap();
    assert_eq!(b.total, None);
    assert!(b.missing.contains(&News2Parameter::Consciousness));
    assert!(ev.text.contains("consciousness"), "{}", ev.text);
    assert_eq!(ev.obs_refs, vec!["obs-respiratory_rate-0".to_string()]);
}

#[test]
fn news2_aggregate_5_raises_medium_and_7_escalates_with_exactly_one_event() {
    let mut e = engine(no_rules());
    let (ev, _) = feed_set(
        &mut e,
        T0,
        &set(18.0, 96.0, false, 100.0, 111.0, Acvpu::A, 38.1),
    ); // case 07
    let raised: Vec<_> = ev.iter().filter(|e| e.rule == "news2:aggregate").collect();
    assert_eq!(raised.len(), 1, "{ev:#?}");
    assert_eq!(
        (raised[0].transition, raised[0].priority),
        (Transition::Raised, Priority::Medium)
    );
    assert_eq!(raised[0].news2.as_ref().unwrap().total, Some(5));
    // RR 25 -> +3 = 8: high.
    let up = feed(&mut e, at(60), num(Metric::RespiratoryRate, 25.0));
    let agg: Vec<_> = up.iter().filter(|e| e.rule == "news2:aggregate").collect();
    assert_eq!(agg.len(), 1);
    assert_eq!(
        (agg[0].transition, agg[0].priority, agg[0].previous_priority),
        (
            Transition::Escalated,
            Priority::High,
            Some(Priority::Medium)
        )
    );
    assert_eq!(agg[0].alert_id, raised[0].alert_id);
    // The same high reading again: nothing new.
    let again = feed(&mut e, at(61), num(Metric::RespiratoryRate, 25.0));
    assert!(
        again.iter().all(|e| e.rule != "news2:aggregate"),
        "{again:#?}"
    );
}

#[test]
fn news2_aggregate_de_escalates_and_clears_only_after_settle_time() {
    let mut e = engine(no_rules()); // settle 30 min
    feed_set(
        &mut e,
        T0,
        &set(25.0, 93.0, false, 105.0, 95.0, Acvpu::A, 37.0),
    ); // case 09: 7
    let (ev, _) = feed_set(&mut e, at(60), &normal());
    assert!(
        ev.iter().all(|e| e.rule != "news2:aggregate"),
        "not before the settle time"
    );
    assert!(e
        .tick(at(60 + 1799))
        .events
        .iter()
        .all(|e| e.rule != "news2:aggregate"));
    let cleared = e.tick(at(60 + 1800)).events;
    let agg: Vec<_> = cleared
        .iter()
        .filter(|e| e.rule == "news2:aggregate")
        .collect();
    assert_eq!(agg.len(), 1);
    assert_eq!(agg[0].transition, Transition::Cleared);
}

#[test]
fn news2_red_score_is_not_cleared_by_the_parameter_going_stale() {
    let mut e = engine(no_rules());
    feed(&mut e, T0, num(Metric::RespiratoryRate, 7.0));
    assert!(e.tick(at(24 * 3600)).events.is_empty());
    assert_eq!(e.active_alerts().len(), 1);
}

#[test]
fn news2_single_3_with_low_total_raises_only_the_red_alert_not_the_aggregate() {
    // clinical.md §2.6 case 05: RR 8 alone scores 3, total 3, band Low-medium.
    let mut e = engine(no_rules());
    let (ev, score) = feed_set(
        &mut e,
        T0,
        &set(8.0, 97.0, false, 120.0, 80.0, Acvpu::A, 37.0),
    );
    let rules: Vec<&str> = ev.iter().map(|e| e.rule.as_str()).collect();
    assert_eq!(rules, ["news2:red:respiration_rate"]);
    assert_eq!(score.map(|s| s.band), Some(RiskBand::LowMedium));
}

// ---- issue 13: sets scored together, band on every NEWS2 event, values behind the score ---------

/// The readings of a §2.6 set (oxygen as inspired_oxygen 2 l/min, air as 0 l/min).
fn set_readings(s: &Set) -> Vec<Reading> {
    vec![
        num(Metric::RespiratoryRate, s.rr),
        num(Metric::Spo2, s.spo2),
        num(Metric::InspiredOxygen, if s.o2 { 2.0 } else { 0.0 }),
        num(Metric::SystolicBp, s.sbp),
        num(Metric::PulseRate, s.hr),
        Reading::acvpu(s.acvpu),
        num(Metric::BodyTemperature, s.temp),
    ]
}

/// Feeds a full set as ONE observation set (one committed batch).
fn feed_together(e: &mut AlertEngine, t: OffsetDateTime, s: &Set) -> ReadingOutcome {
    let readings = set_readings(s);
    let refs: Vec<String> = readings
        .iter()
        .map(|r| format!("obs-{}-{}", r.metric, (t - T0).whole_seconds()))
        .collect();
    let set: Vec<SetReading<'_>> = readings
        .iter()
        .zip(&refs)
        .map(|(reading, obs_ref)| SetReading {
            device: "hub-dev",
            reading,
            obs_ref,
        })
        .collect();
    e.on_observation_set(t, &set)
}

#[test]
fn set_arriving_together_is_scored_together_and_no_event_claims_a_parameter_missing() {
    // clinical.md §2.6 case 10: six red parameters in one write.
    let mut e = engine(no_rules());
    let out = feed_together(
        &mut e,
        T0,
        &set(30.0, 85.0, true, 85.0, 140.0, Acvpu::U, 34.5),
    );
    let reds: Vec<&str> = out
        .events
        .iter()
        .filter(|e| e.rule.starts_with("news2:red:"))
        .map(|e| e.rule.as_str())
        .collect();
    assert_eq!(reds.len(), 6, "{reds:?}");
    for ev in &out.events {
        let b = ev.news2.as_ref().unwrap();
        assert!(b.missing.is_empty(), "{}: {:?}", ev.rule, b.missing);
        assert_eq!(b.total, Some(20), "{}", ev.rule);
        assert!(!ev.text.contains("no fresh value"), "{}", ev.text);
    }
    assert_eq!(
        out.news2.iter().map(|s| s.total).collect::<Vec<_>>(),
        [20],
        "one score for the set"
    );
}

#[test]
fn spot_readings_one_parameter_at_a_time_still_combine_within_the_freshness_window() {
    let mut e = engine(no_rules());
    let mut last = None;
    for (i, r) in set_readings(&normal()).into_iter().enumerate() {
        let t = at(i as i64 * 120); // seven readings over 12 minutes, from separate devices
        last = e
            .on_reading(t, &format!("dev-{i}"), &r, &format!("o{i}"))
            .news2
            .pop();
    }
    assert_eq!(last.map(|s| s.total), Some(0));
}

/// Feeds `readings` one message at a time from device "mon", all stamped with device time
/// `t`, received 10 ms apart from `t` on; returns every outcome.
fn feed_split(
    e: &mut AlertEngine,
    t: OffsetDateTime,
    readings: Vec<Reading>,
) -> Vec<ReadingOutcome> {
    readings
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let now = t + Duration::milliseconds(10 * i as i64);
            let obs = format!("obs-{}", r.metric);
            e.on_reading(now, "mon", &r.at(t), &obs)
        })
        .collect()
}

#[test]
fn set_from_one_device_with_one_time_split_over_messages_is_scored_as_a_whole() {
    // clinical.md §2.6 case 05 from a monitor that sends each parameter as its own message.
    let mut e = engine(no_rules());
    let outs = feed_split(
        &mut e,
        T0,
        set_readings(&set(8.0, 97.0, false, 120.0, 80.0, Acvpu::A, 37.0)),
    );
    let (last, earlier) = outs.split_last().unwrap();
    assert!(
        earlier
            .iter()
            .all(|o| o.events.is_empty() && o.news2.is_empty()),
        "nothing is scored before the set is whole: {earlier:#?}"
    );
    assert_eq!(last.events.len(), 1, "{:#?}", last.events);
    let b = last.events[0].news2.as_ref().unwrap();
    assert_eq!(
        (b.missing.clone(), b.total, b.band),
        (vec![], Some(3), Some(RiskBand::LowMedium))
    );
    assert_eq!(last.news2.len(), 1);
}

#[test]
fn held_set_is_scored_on_tick_after_the_hold_when_the_rest_never_comes() {
    let mut e = engine(no_rules());
    let out = e.on_reading(T0, "mon", &num(Metric::RespiratoryRate, 8.0).at(T0), "rr");
    assert!(out.events.is_empty());
    assert!(
        e.tick(at(1)).events.is_empty(),
        "still within news2_set_hold_secs (2 s)"
    );
    let ev = e.tick(at(2)).events;
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0].rule, "news2:red:respiration_rate");
    assert!(ev[0].news2.as_ref().unwrap().missing.len() == 5);
}

#[test]
fn held_set_is_scored_on_what_it_had_when_another_set_arrives() {
    let mut e = engine(no_rules());
    e.on_reading(T0, "mon", &num(Metric::RespiratoryRate, 8.0).at(T0), "rr");
    // A thermometer (another device) closes the monitor's set before its own value counts.
    let out = e.on_reading(at(1), "thermo", &num(Metric::BodyTemperature, 37.0), "t");
    let red = out
        .events
        .iter()
        .find(|e| e.rule == "news2:red:respiration_rate")
        .expect("the held red score is raised");
    assert!(red
        .news2
        .as_ref()
        .unwrap()
        .missing
        .contains(&News2Parameter::Temperature));
}

#[test]
fn held_set_survives_a_restart_and_is_scored_after_it() {
    let mut e = engine(no_rules());
    e.on_reading(T0, "mon", &num(Metric::RespiratoryRate, 8.0).at(T0), "rr");
    assert!(e.has_open_set());
    let json = serde_json::to_string(e.state()).unwrap();
    let mut restored =
        AlertEngine::with_state("pt-7f3a", no_rules(), serde_json::from_str(&json).unwrap())
            .unwrap();
    let ev = restored.tick(at(30)).events;
    assert_eq!(ev.len(), 1);
    assert!(!restored.has_open_set());
}

#[test]
fn set_hold_of_zero_scores_every_message_at_once() {
    let mut e = engine(PatientAlertConfig {
        news2_set_hold_secs: 0,
        ..no_rules()
    });
    let out = e.on_reading(T0, "mon", &num(Metric::RespiratoryRate, 8.0).at(T0), "rr");
    assert_eq!(out.events.len(), 1);
    assert!(!e.has_open_set());
}

#[test]
fn config_refuses_a_set_hold_longer_than_a_minute() {
    let c: PatientAlertConfig = toml::from_str("news2_set_hold_secs = 61").unwrap();
    let Err(AlertConfigError::Invalid(problems)) = c.validate() else {
        panic!("must be refused")
    };
    assert_eq!(problems[0].key, "news2_set_hold_secs");
    let c: PatientAlertConfig = toml::from_str("news2_set_hold_secs = 60").unwrap();
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn readings_without_a_device_time_are_never_held() {
    let mut e = engine(no_rules());
    let ev = feed(&mut e, T0, num(Metric::RespiratoryRate, 8.0));
    assert_eq!(
        ev.len(),
        1,
        "a spot reading stamped on receipt is scored at once"
    );
    assert!(!e.has_open_set());
}

#[test]
fn single_red_with_low_total_names_total_band_and_response_in_its_event() {
    // clinical.md §2.6 case 05 (RR 8): total 3, a single 3 -> low-medium, urgent ward-based.
    let mut e = engine(no_rules());
    let out = feed_together(
        &mut e,
        T0,
        &set(8.0, 97.0, false, 120.0, 80.0, Acvpu::A, 37.0),
    );
    assert_eq!(out.events.len(), 1, "{:#?}", out.events);
    let ev = &out.events[0];
    assert_eq!(ev.rule, "news2:red:respiration_rate");
    let b = ev.news2.as_ref().unwrap();
    assert_eq!(
        (b.total, b.band, b.response),
        (
            Some(3),
            Some(RiskBand::LowMedium),
            Some(ClinicalResponse::UrgentWardBasedResponse)
        )
    );
    assert_eq!(
        b.response_text,
        Some(ClinicalResponse::UrgentWardBasedResponse.text())
    );
    assert!(
        ev.text
            .contains("NEWS2 total 3 (low-medium clinical risk): urgent ward-based response"),
        "{}",
        ev.text
    );
}

#[test]
fn red_event_from_a_partial_set_says_the_band_is_at_least_low_medium_and_what_is_missing() {
    let mut e = engine(no_rules());
    let ev = feed(&mut e, T0, num(Metric::RespiratoryRate, 8.0));
    assert!(
        ev[0].text.contains("at least low-medium clinical risk"),
        "{}",
        ev[0].text
    );
    assert!(
        ev[0]
            .text
            .contains("No NEWS2 total: no fresh value for SpO2, systolic BP"),
        "{}",
        ev[0].text
    );
}

#[test]
fn every_news2_event_of_a_complete_set_carries_total_band_and_response() {
    let mut e = engine(no_rules());
    let out = feed_together(
        &mut e,
        T0,
        &set(25.0, 93.0, false, 105.0, 95.0, Acvpu::A, 37.0),
    ); // case 09: 7, red RR
    let rules: Vec<&str> = out.events.iter().map(|e| e.rule.as_str()).collect();
    assert_eq!(rules, ["news2:red:respiration_rate", "news2:aggregate"]);
    for ev in &out.events {
        let b = ev.news2.as_ref().unwrap();
        assert_eq!(
            (b.total, b.band, b.response),
            (
                Some(7),
                Some(RiskBand::High),
                Some(ClinicalResponse::EmergencyResponse)
            ),
            "{}",
            ev.rule
        );
    }
}

#[test]
fn aggregate_event_lists_the_observed_values_with_units_and_observation_ids() {
    let mut e = engine(no_rules());
    let out = feed_together(
        &mut e,
        T0,
        &set(18.0, 96.0, false, 100.0, 111.0, Acvpu::A, 38.1),
    ); // case 07: 5
    let agg = out
        .events
        .iter()
        .find(|e| e.rule == "news2:aggregate")
        .unwrap();
    let got: Vec<(String, String, Option<String>, String)> = agg
        .values
        .iter()
        .map(|v| {
            (
                v.metric.to_string(),
                v.value.clone(),
                v.unit.clone(),
                v.obs_ref.clone(),
            )
        })
        .collect();
    let want = [
        (
            "respiratory_rate",
            "18",
            Some("/min"),
            "obs-respiratory_rate-0",
        ),
        ("spo2", "96", Some("%"), "obs-spo2-0"),
        (
            "inspired_oxygen",
            "0",
            Some("l/min"),
            "obs-inspired_oxygen-0",
        ),
        ("systolic_bp", "100", Some("mm[Hg]"), "obs-systolic_bp-0"),
        ("pulse_rate", "111", Some("/min"), "obs-pulse_rate-0"),
        ("acvpu", "A", None, "obs-acvpu-0"),
        (
            "body_temperature",
            "38.1",
            Some("Cel"),
            "obs-body_temperature-0",
        ),
    ];
    let want: Vec<(String, String, Option<String>, String)> = want
        .iter()
        .map(|(m, v, u, r)| {
            (
                m.to_string(),
                v.to_string(),
                u.map(str::to_string),
                r.to_string(),
            )
        })
        .collect();
    assert_eq!(got, want);
    let refs: Vec<&str> = agg.values.iter().map(|v| v.obs_ref.as_str()).collect();
    assert_eq!(agg.obs_refs, refs);
}

#[test]
fn red_event_lists_its_own_value_first() {
    let mut e = engine(no_rules());
    let out = feed_together(
        &mut e,
        T0,
        &set(16.0, 97.0, false, 120.0, 80.0, Acvpu::C, 37.0),
    ); // case 06
    let ev = &out.events[0];
    assert_eq!(ev.rule, "news2:red:consciousness");
    assert_eq!(ev.values[0].value, "C");
    assert_eq!(ev.values.len(), 7, "{:#?}", ev.values);
}

#[test]
fn news2_device_time_in_the_future_is_clamped_to_now() {
    let mut e = engine(no_rules());
    feed_set(&mut e, T0, &normal());
    let future = num(Metric::Spo2, 97.0).at(at(24 * 3600));
    e.on_reading(T0, "ox", &future, "f");
    assert!(
        matches!(e.news2(at(1801)), News2Status::Partial(_)),
        "a future stamp must not stay fresh longer"
    );
}

#[test]
fn news2_suspect_device_clock_uses_receipt_time() {
    let mut e = engine(no_rules());
    let stale_stamp = num(Metric::RespiratoryRate, 7.0).at(at(-7 * 24 * 3600));
    assert!(
        feed(&mut e, T0, stale_stamp.clone()).is_empty(),
        "a week-old stamp is history"
    );
    let ev = feed(
        &mut e,
        T0,
        stale_stamp.with_flags([Flag::DeviceClockSuspect]),
    );
    assert_eq!(
        ev.len(),
        1,
        "with a suspect clock the reading counts as received now"
    );
}

// ---- threshold rules ---------------------------------------------------------------------------

fn spo2_rule() -> ThresholdRule {
    ThresholdRule {
        id: "spo2_low".into(),
        metric: Metric::Spo2,
        above: None,
        below: Some(93.0),
        persist_secs: 60,
        hysteresis: 2.0,
        clear_after_secs: 300,
        priority: Priority::High,
        inside_scale2_target: false,
    }
}

fn with_rule(r: ThresholdRule) -> AlertEngine {
    engine(PatientAlertConfig {
        rules: vec![r],
        ..PatientAlertConfig::default()
    })
}

fn threshold_events(ev: Vec<AlertEvent>) -> Vec<AlertEvent> {
    ev.into_iter()
        .filter(|e| e.kind == AlertKind::Threshold)
        .collect()
}

// Issue 13 point 4: persistence is judged on the readings' observation times, never on the
// gateway clock alone; the text says what the readings show.

#[test]
fn threshold_raises_only_when_breaching_readings_cover_the_persistence_window() {
    let mut e = with_rule(spo2_rule()); // below 93, persist 60 s
    assert!(threshold_events(feed(&mut e, T0, num(Metric::Spo2, 92.0))).is_empty());
    assert!(threshold_events(feed(&mut e, at(30), num(Metric::Spo2, 92.0))).is_empty());
    assert!(
        threshold_events(e.tick(at(120)).events).is_empty(),
        "two readings 30 s apart do not show 60 s below the limit, however long we wait"
    );
    let ev = threshold_events(feed(&mut e, at(75), num(Metric::Spo2, 90.0)));
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].transition, ev[0].priority),
        (Transition::Raised, Priority::High)
    );
    assert_eq!(
        ev[0].obs_refs,
        vec!["obs-spo2-0", "obs-spo2-30", "obs-spo2-75"],
        "the readings of the run"
    );
    let t = ev[0].threshold.as_ref().unwrap();
    assert_eq!((t.limit, t.clear_at), (93.0, 95.0));
    let evidence = t.evidence.as_ref().unwrap();
    assert_eq!((evidence.readings, evidence.span_secs), (3, 75));
    assert_eq!(
        (evidence.first_observed_at, evidence.last_observed_at),
        (T0, at(75))
    );
    let shown: Vec<&str> = ev[0].values.iter().map(|v| v.value.as_str()).collect();
    assert_eq!(shown, ["92", "90"], "first and latest reading of the run");
}

#[test]
fn threshold_text_states_readings_and_span_never_a_duration_the_data_cannot_show() {
    let mut e = with_rule(spo2_rule());
    feed(&mut e, T0, num(Metric::Spo2, 92.0));
    let ev = threshold_events(feed(&mut e, at(75), num(Metric::Spo2, 90.0)));
    let text = &ev[0].text;
    assert!(
        text.contains("below 93 %: 2 readings over 75 s, latest 90 %"),
        "{text}"
    );
    assert!(!text.contains("for at least"), "{text}");
}

#[test]
fn threshold_single_spot_reading_never_satisfies_a_persistence_rule() {
    let mut e = with_rule(spo2_rule());
    let mut ev = feed(&mut e, T0, num(Metric::Spo2, 90.0));
    for s in [30, 60, 61, 600, 1700] {
        ev.extend(e.tick(at(s)).events);
    }
    assert!(
        threshold_events(ev).is_empty(),
        "one reading cannot show 60 s below 93 %"
    );
}

#[test]
fn threshold_repeat_spot_reading_after_the_window_raises_naming_both_readings() {
    // A spot-check oximeter: the patient re-measures 10 minutes later, still low.
    let mut e = with_rule(spo2_rule());
    feed(&mut e, T0, num(Metric::Spo2, 91.0));
    let ev = threshold_events(feed(&mut e, at(600), num(Metric::Spo2, 90.0)));
    assert_eq!(ev.len(), 1);
    assert!(
        ev[0].text.contains("2 readings over 600 s"),
        "{}",
        ev[0].text
    );
}

#[test]
fn threshold_readings_further_apart_than_the_freshness_window_do_not_form_one_run() {
    let mut e = with_rule(spo2_rule()); // freshness 30 min
    feed(&mut e, T0, num(Metric::Spo2, 90.0));
    let ev = threshold_events(feed(&mut e, at(1801), num(Metric::Spo2, 90.0)));
    assert!(ev.is_empty(), "{ev:#?}");
    assert_eq!(
        threshold_events(feed(&mut e, at(1861), num(Metric::Spo2, 90.0))).len(),
        1,
        "the new run covers 60 s"
    );
}

#[test]
fn threshold_transient_dip_interrupted_by_normal_value_does_not_raise() {
    let mut e = with_rule(spo2_rule());
    feed(&mut e, T0, num(Metric::Spo2, 90.0));
    feed(&mut e, at(30), num(Metric::Spo2, 97.0));
    feed(&mut e, at(50), num(Metric::Spo2, 90.0));
    assert!(
        threshold_events(feed(&mut e, at(100), num(Metric::Spo2, 90.0))).is_empty(),
        "the run restarted at 50 s"
    );
    assert_eq!(
        threshold_events(feed(&mut e, at(110), num(Metric::Spo2, 90.0))).len(),
        1
    );
}

#[test]
fn threshold_clears_only_when_clearing_readings_cover_the_clear_delay() {
    let mut e = with_rule(spo2_rule()); // clears at >= 95 held 300 s
    feed(&mut e, T0, num(Metric::Spo2, 90.0));
    assert_eq!(
        threshold_events(feed(&mut e, at(60), num(Metric::Spo2, 90.0))).len(),
        1
    );
    feed(&mut e, at(100), num(Metric::Spo2, 96.0));
    assert!(
        threshold_events(e.tick(at(1000)).events).is_empty(),
        "one normal reading followed by silence does not clear"
    );
    let ev = threshold_events(feed(&mut e, at(400), num(Metric::Spo2, 97.0)));
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].transition, Transition::Cleared);
    assert!(
        ev[0]
            .text
            .contains("back at or above 95 %: 2 readings over 300 s, latest 97 %"),
        "{}",
        ev[0].text
    );
}

#[test]
fn threshold_oscillating_near_limit_gives_one_raise_and_one_clear() {
    let mut e = with_rule(spo2_rule()); // below 93, hysteresis 2 (clears at >= 95), clear after 300 s
    let mut events = Vec::new();
    // 2 minutes at 91-92 (raises at 60 s), 18 minutes wobbling 92..95 inside the hysteresis
    // band (95 never held long enough to clear), then recovery to 96-97.
    let wobble = [92.0, 93.0, 95.0, 94.0, 92.0, 94.0];
    for i in 0..200 {
        let t = at(i * 10);
        let v = match i {
            0..=11 => [91.0, 92.0][(i % 2) as usize],
            12..=119 => wobble[(i % 6) as usize],
            _ => [96.0, 97.0][(i % 2) as usize],
        };
        events.extend(feed(&mut e, t, num(Metric::Spo2, v)));
        events.extend(e.tick(t).events);
    }
    let th = threshold_events(events);
    let transitions: Vec<_> = th.iter().map(|e| e.transition).collect();
    assert_eq!(
        transitions,
        vec![Transition::Raised, Transition::Cleared],
        "{th:#?}"
    );
    assert_eq!(th[0].alert_id, th[1].alert_id);
    assert_eq!(
        th[1].time,
        at(1200 + 300),
        "clears 300 s after the first value >= 95"
    );
}

#[test]
fn threshold_spot_check_without_persistence_raises_on_the_reading() {
    let mut e = engine(PatientAlertConfig::default()); // default_home_rules
    let ev = threshold_events(feed(&mut e, T0, num(Metric::SystolicBp, 185.0)));
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].rule.as_str(), ev[0].priority),
        ("threshold:systolic_high", Priority::Medium)
    );
    assert_eq!(ev[0].values[0].value, "185");
    assert!(ev[0].text.contains("above 179"), "{}", ev[0].text);
}

#[test]
fn threshold_compares_in_canonical_unit_after_conversion() {
    let mut e = engine(PatientAlertConfig::default());
    // 101.0 °F = 38.3 °C > 38.0 (temperature_high)
    let r = Reading::number(Metric::BodyTemperature, Decimal::int(101), Unit::Fahrenheit);
    let ev = threshold_events(e.on_reading(T0, "th", &r, "t1").events);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].values[0].unit.as_deref(), Some("[degF]"));
    assert!((ev[0].values[0].canonical.unwrap() - 38.333).abs() < 0.01);
}

#[test]
fn threshold_pending_breach_is_dropped_when_its_reading_goes_stale() {
    let mut r = spo2_rule();
    r.persist_secs = 3600; // longer than the 30 min freshness window
    let mut e = with_rule(r);
    feed(&mut e, T0, num(Metric::Spo2, 90.0));
    assert!(threshold_events(e.tick(at(1801)).events).is_empty());
    assert!(
        threshold_events(feed(&mut e, at(3600), num(Metric::Spo2, 90.0))).is_empty(),
        "the first reading was stale: the run restarted at 3600 s"
    );
}

#[test]
fn threshold_pending_breach_in_state_from_rules_1_0_is_dropped_not_raised_on_time() {
    // Rules 1.0.0 persisted a pending breach as a tracker waiting for time to pass; 2.0.0
    // raises only on readings that cover the window, so such a slot must not raise on tick.
    let old = r#"{"slots":{"threshold:spo2_low":{"rule":{"type":"threshold","rule_id":"spo2_low"},
        "tracker":{"desired":"high","up_since":"2026-11-23T08:00:00Z","down_since":null},
        "timing":{"raise_after_secs":60,"settle_after_secs":300},"device":"ox","metric":"spo2",
        "refs":["obs-1"]}}}"#;
    let state: EngineState = serde_json::from_str(old).unwrap();
    let mut e =
        AlertEngine::with_state("pt-7f3a", with_rule(spo2_rule()).config().clone(), state).unwrap();
    assert!(e.tick(at(120)).events.is_empty());
    assert!(e.active_alerts().is_empty());
}

#[test]
fn threshold_alert_clears_when_its_rule_is_removed_from_config() {
    let mut e = with_rule(spo2_rule());
    feed(&mut e, T0, num(Metric::Spo2, 85.0));
    assert_eq!(
        threshold_events(feed(&mut e, at(60), num(Metric::Spo2, 85.0))).len(),
        1
    );
    let state = e.state().clone();
    let mut e2 = AlertEngine::with_state("pt-7f3a", no_rules(), state).unwrap();
    let ev = threshold_events(e2.tick(at(61)).events);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].transition, Transition::Cleared);
    assert!(
        ev[0].text.contains("no longer configured"),
        "{}",
        ev[0].text
    );
}

// ---- technical alarms --------------------------------------------------------------------------

fn technical(ev: &[AlertEvent], condition: TechnicalCondition) -> Vec<AlertEvent> {
    ev.iter()
        .filter(|e| e.technical.as_ref().and_then(|t| t.condition) == Some(condition))
        .cloned()
        .collect()
}

#[test]
fn technical_device_silent_raises_after_interval_and_clears_on_reading() {
    let mut e = engine(no_rules());
    e.register_device(T0, "scale-1", Duration::hours(26));
    assert!(
        e.tick(at(26 * 3600)).events.is_empty(),
        "exactly the interval is not yet silent"
    );
    let ev = e.tick(at(26 * 3600 + 1)).events;
    let s = technical(&ev, TechnicalCondition::DeviceSilent);
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].priority, s[0].device.as_deref()),
        (Priority::Medium, Some("scale-1"))
    );
    assert!(
        e.tick(at(27 * 3600)).events.is_empty(),
        "no second event while silent"
    );
    let back = e
        .on_reading(
            at(27 * 3600),
            "scale-1",
            &num(Metric::BodyWeight, 80.0),
            "w",
        )
        .events;
    let c = technical(&back, TechnicalCondition::DeviceSilent);
    assert_eq!(
        (c.len(), c[0].transition, &c[0].alert_id),
        (1, Transition::Cleared, &s[0].alert_id)
    );
}

#[test]
fn technical_sensor_off_raises_only_when_it_persists() {
    let mut e = engine(no_rules()); // sensor_off_after_secs 120
    let off = Reading::absent(Metric::Spo2, Absent::Missing).with_flags([Flag::SensorOff]);
    assert!(e.on_reading(T0, "ox", &off, "a").events.is_empty());
    assert!(
        e.on_reading(at(60), "ox", &num(Metric::Spo2, 97.0), "b")
            .events
            .is_empty(),
        "finger back in: cancelled"
    );
    e.on_reading(at(100), "ox", &off, "c");
    assert!(e.tick(at(219)).events.is_empty());
    let ev = technical(&e.tick(at(220)).events, TechnicalCondition::SensorOff);
    assert_eq!((ev.len(), ev[0].priority), (1, Priority::Low));
}

#[test]
fn technical_probe_disconnected_raises_when_it_persists() {
    let mut e = engine(no_rules());
    let off = Reading::absent(Metric::Spo2, Absent::Nan).with_flags([Flag::ProbeDisconnected]);
    e.on_reading(T0, "ox", &off, "a");
    let ev = technical(
        &e.tick(at(120)).events,
        TechnicalCondition::ProbeDisconnected,
    );
    assert_eq!(
        (ev.len(), ev[0].rule.as_str()),
        (1, "technical:probe_disconnected:ox")
    );
}

#[test]
fn technical_unregistering_a_silent_device_clears_its_alarm() {
    let mut e = engine(no_rules());
    e.register_device(T0, "ox", Duration::minutes(5));
    assert_eq!(e.tick(at(301)).events.len(), 1);
    let c = e.unregister_device(at(400), "ox");
    assert_eq!((c.len(), c[0].transition), (1, Transition::Cleared));
    assert!(e.tick(at(10_000)).events.is_empty(), "no longer watched");
}

#[test]
fn technical_low_battery_raises_at_once_and_clears_after_clear_delay() {
    let mut e = engine(no_rules()); // clear_after_secs 300
    let low = num(Metric::Spo2, 97.0).with_flags([Flag::LowBattery]);
    let ev = technical(
        &e.on_reading(T0, "ox", &low, "a").events,
        TechnicalCondition::LowBattery,
    );
    assert_eq!(ev.len(), 1);
    assert!(e
        .on_reading(at(10), "ox", &num(Metric::Spo2, 97.0), "b")
        .events
        .is_empty());
    assert!(
        e.on_reading(at(20), "ox", &low, "c").events.is_empty(),
        "flicker: still the same alert"
    );
    e.on_reading(at(30), "ox", &num(Metric::Spo2, 97.0), "d");
    assert!(e.tick(at(329)).events.is_empty());
    let c = technical(&e.tick(at(330)).events, TechnicalCondition::LowBattery);
    assert_eq!((c.len(), c[0].transition), (1, Transition::Cleared));
}

#[test]
fn technical_repeated_rejections_raise_at_threshold_within_window() {
    let mut e = engine(no_rules()); // 3 within 600 s
    assert!(e
        .on_rejected(T0, "ox", Metric::Spo2, "spo2 = 130 % implausible")
        .is_empty());
    assert!(e
        .on_rejected(at(100), "ox", Metric::Spo2, "spo2 = 131 % implausible")
        .is_empty());
    let ev = e.on_rejected(at(200), "ox", Metric::Spo2, "spo2 = 132 % implausible");
    let r = technical(&ev, TechnicalCondition::RepeatedRejections);
    assert_eq!(r.len(), 1);
    let d = r[0].technical.as_ref().unwrap();
    assert_eq!(d.rejections_in_window, Some(3));
    assert!(r[0].text.contains("132"), "{}", r[0].text);
}

#[test]
fn technical_rejections_spread_beyond_window_do_not_raise() {
    let mut e = engine(no_rules());
    e.on_rejected(T0, "ox", Metric::Spo2, "x");
    e.on_rejected(at(400), "ox", Metric::Spo2, "x");
    assert!(
        e.on_rejected(at(700), "ox", Metric::Spo2, "x").is_empty(),
        "the first left the window"
    );
}

#[test]
fn technical_rejection_alarm_clears_after_valid_reading_and_clear_delay() {
    let mut e = engine(no_rules());
    for i in 0..3 {
        e.on_rejected(at(i), "ox", Metric::Spo2, "x");
    }
    e.on_reading(at(10), "ox", &num(Metric::Spo2, 97.0), "ok");
    assert!(e.tick(at(309)).events.is_empty());
    let c = technical(
        &e.tick(at(310)).events,
        TechnicalCondition::RepeatedRejections,
    );
    assert_eq!((c.len(), c[0].transition), (1, Transition::Cleared));
}

#[test]
fn technical_outbox_warns_escalates_once_and_clears_below_clear_level() {
    let mut e = engine(no_rules()); // warn 80, high 95, clear 70, clear after 300 s
    let w = e.on_outbox_depth(T0, 800, 1000);
    assert_eq!((w.len(), w[0].priority), (1, Priority::Medium));
    let h = e.on_outbox_depth(at(10), 960, 1000);
    assert_eq!(
        (h.len(), h[0].transition, h[0].priority),
        (1, Transition::Escalated, Priority::High)
    );
    assert!(e.on_outbox_depth(at(20), 970, 1000).is_empty());
    assert!(
        e.on_outbox_depth(at(30), 750, 1000).is_empty(),
        "de-escalation waits for the clear delay"
    );
    let d = e.on_outbox_depth(at(330), 740, 1000);
    assert_eq!(
        (d.len(), d[0].transition, d[0].priority),
        (1, Transition::DeEscalated, Priority::Medium)
    );
    e.on_outbox_depth(at(340), 100, 1000);
    let c = e.tick(at(640)).events;
    assert_eq!((c.len(), c[0].transition), (1, Transition::Cleared));
    assert_eq!(c[0].technical.as_ref().unwrap().outbox_depth, Some(100));
}

#[test]
fn technical_clock_unsynchronised_raises_after_grace_and_clears_when_synced() {
    let mut e = engine(no_rules()); // 600 s grace
    assert!(e.on_clock_sync(T0, false).is_empty());
    assert!(e.tick(at(599)).events.is_empty());
    let r = e.tick(at(600)).events;
    assert_eq!(
        (r.len(), r[0].priority, r[0].device.clone()),
        (1, Priority::Low, None)
    );
    let c = e.on_clock_sync(at(700), true);
    assert_eq!((c.len(), c[0].transition), (1, Transition::Cleared));
}

// ---- persistence, ids, config ------------------------------------------------------------------

#[test]
fn engine_state_round_trip_keeps_alert_ids_and_does_not_re_raise() {
    let mut e = with_rule(spo2_rule());
    e.register_device(T0, "ox", Duration::minutes(5));
    feed(&mut e, T0, num(Metric::Spo2, 88.0));
    let raised = threshold_events(feed(&mut e, at(60), num(Metric::Spo2, 88.0)));
    assert_eq!(raised.len(), 1);
    feed(&mut e, at(70), num(Metric::RespiratoryRate, 7.0)); // a NEWS2 red alert too

    let json = serde_json::to_string(e.state()).unwrap();
    let state: EngineState = serde_json::from_str(&json).unwrap();
    assert_eq!(&state, e.state());
    let mut restored = AlertEngine::with_state("pt-7f3a", e.config().clone(), state).unwrap();
    assert_eq!(restored.active_alerts(), e.active_alerts());

    assert!(
        threshold_events(feed(&mut restored, at(80), num(Metric::Spo2, 88.0))).is_empty(),
        "no re-raise"
    );
    feed(&mut restored, at(90), num(Metric::Spo2, 97.0));
    let cleared = threshold_events(feed(&mut restored, at(390), num(Metric::Spo2, 97.0)));
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].transition, Transition::Cleared);
    assert_eq!(cleared[0].alert_id, raised[0].alert_id);
}

#[test]
fn engine_same_inputs_give_identical_events() {
    let run = || {
        let mut e = engine(PatientAlertConfig::default());
        let mut ev = feed_set(
            &mut e,
            T0,
            &set(25.0, 90.0, false, 185.0, 95.0, Acvpu::A, 38.6),
        )
        .0;
        ev.extend(e.tick(at(120)).events);
        serde_json::to_string(&ev).unwrap()
    };
    assert_eq!(run(), run());
}

#[test]
fn engine_refuses_nhs_number_as_patient_id() {
    for id in ["9434765919", "943 476 5919", "943-476-5919", "", "  "] {
        assert!(
            matches!(
                AlertEngine::new(id, no_rules()),
                Err(AlertConfigError::PatientId(_))
            ),
            "{id:?}"
        );
    }
    assert!(AlertEngine::new("pt-9434765919", no_rules()).is_ok());
}

#[test]
fn config_default_home_rules_are_valid() {
    assert_eq!(PatientAlertConfig::default().validate(), Ok(()));
}

#[test]
fn config_toml_without_rules_uses_defaults_and_empty_list_means_none() {
    let c: PatientAlertConfig = toml::from_str("on_oxygen = true").unwrap();
    assert_eq!(c.rules, default_home_rules());
    assert!(c.on_oxygen);
    let c: PatientAlertConfig = toml::from_str("rules = []").unwrap();
    assert!(c.rules.is_empty());
}

#[test]
fn config_rejects_unknown_keys() {
    let e = toml::from_str::<PatientAlertConfig>(
        "[[rules]]\nid = \"x\"\nmetric = \"spo2\"\nbelow = 90\npersit_secs = 5\npriority = \"high\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("persit_secs"), "{e}");
    assert!(toml::from_str::<PatientAlertConfig>("spo2_scale = \"scale_3\"").is_err());
}

#[test]
fn config_validation_names_every_bad_key() {
    let c: PatientAlertConfig = toml::from_str(
        r#"
        news2_freshness_secs = 0
        [[rules]]
        id = "a"
        metric = "spo2"
        below = 150
        priority = "high"
        [[rules]]
        id = "a"
        metric = "acvpu"
        above = 1
        priority = "low"
        [[rules]]
        id = "b"
        metric = "pulse_rate"
        above = 120
        below = 40
        hysteresis = -1
        priority = "medium"
        "#,
    )
    .unwrap();
    let Err(AlertConfigError::Invalid(problems)) = c.validate() else {
        panic!("must be invalid")
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "news2_freshness_secs",
            "rules[0].below",
            "rules[1].id",
            "rules[1].metric",
            "rules[2].above",
            "rules[2].hysteresis"
        ]
    );
    assert!(
        problems[1].reason.contains("plausible range"),
        "{}",
        problems[1]
    );
}

// ---- issue 13 point 3: threshold defaults follow the patient's SpO2 scale -----------------------

fn scale2(rules: &str) -> PatientAlertConfig {
    toml::from_str(&format!("spo2_scale = \"scale_2\"\n{rules}")).unwrap()
}

#[test]
fn config_scale2_without_rules_gets_spo2_low_below_the_88_to_92_target() {
    let c = scale2("");
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(c.rules, default_rules(Spo2Scale::Scale2));
    let spo2: Vec<_> = c
        .rules
        .iter()
        .filter(|r| r.metric == Metric::Spo2)
        .collect();
    assert_eq!(spo2.len(), 1);
    assert_eq!(
        (spo2[0].id.as_str(), spo2[0].below),
        ("spo2_low", Some(88.0))
    );
    let c: PatientAlertConfig = toml::from_str("spo2_scale = \"scale_1\"").unwrap();
    assert_eq!(
        c.rules,
        default_home_rules(),
        "Scale 1 keeps the home rules"
    );
}

#[test]
fn scale2_patient_in_target_on_air_raises_nothing_from_default_rules() {
    // The issue's case: 90 % on air, NEWS2 SpO2 0 on Scale 2; before, spo2_low (< 93) raised high.
    for v in [88.0, 89.0, 90.0, 91.0, 92.0] {
        let mut e = engine(scale2(""));
        let mut ev = Vec::new();
        for s in (0..=600).step_by(5) {
            ev.extend(feed(&mut e, at(s), num(Metric::Spo2, v)));
            ev.extend(e.tick(at(s)).events);
        }
        assert!(ev.is_empty(), "SpO2 {v} % for 10 minutes: {ev:#?}");
    }
}

#[test]
fn scale2_patient_below_target_raises_spo2_low_once_readings_cover_60_s() {
    let mut e = engine(scale2(""));
    let mut ev = Vec::new();
    for s in (0..=60).step_by(15) {
        ev.extend(threshold_events(feed(
            &mut e,
            at(s),
            num(Metric::Spo2, 86.0),
        )));
    }
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0].time, at(60));
    assert!(
        ev[0]
            .text
            .contains("below 88 %: 5 readings over 60 s, latest 86 %"),
        "{}",
        ev[0].text
    );
}

#[test]
fn config_refuses_a_scale1_spo2_rule_for_a_scale2_patient_naming_both_settings() {
    let c = scale2(
        "[[rules]]\nid = \"spo2_low\"\nmetric = \"spo2\"\nbelow = 93\npersist_secs = 60\npriority = \"high\"\n",
    );
    let Err(AlertConfigError::Invalid(problems)) = c.validate() else {
        panic!("must be refused")
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "rules[0].below");
    assert_eq!(problems[0].value, "93");
    let text = problems[0].to_string();
    assert!(text.contains("spo2_scale = \"scale_2\""), "{text}");
    assert!(text.contains("88-92 %"), "{text}");
    assert!(text.contains("inside_scale2_target = true"), "{text}");
}

#[test]
fn config_refuses_an_above_rule_that_alarms_inside_the_scale2_target() {
    let c =
        scale2("[[rules]]\nid = \"spo2_hi\"\nmetric = \"spo2\"\nabove = 90\npriority = \"low\"\n");
    let Err(AlertConfigError::Invalid(problems)) = c.validate() else {
        panic!("must be refused")
    };
    assert_eq!(problems[0].key, "rules[0].above");
}

#[test]
fn config_accepts_scale2_rules_at_the_target_edges_or_explicitly_intended_inside() {
    let edges = scale2(
        "[[rules]]\nid = \"lo\"\nmetric = \"spo2\"\nbelow = 88\npriority = \"high\"\n\
         [[rules]]\nid = \"hi\"\nmetric = \"spo2\"\nabove = 92\npriority = \"low\"\n",
    );
    assert_eq!(edges.validate(), Ok(()));
    let intended = scale2(
        "[[rules]]\nid = \"lo\"\nmetric = \"spo2\"\nbelow = 90\npriority = \"medium\"\ninside_scale2_target = true\n",
    );
    assert_eq!(intended.validate(), Ok(()));
    let scale1: PatientAlertConfig = toml::from_str(
        "[[rules]]\nid = \"lo\"\nmetric = \"spo2\"\nbelow = 93\npriority = \"high\"\n",
    )
    .unwrap();
    assert_eq!(scale1.validate(), Ok(()), "Scale 1 has no such target");
}

// ---- event schema ------------------------------------------------------------------------------

/// A deliberately small JSON Schema checker for the keywords our schema uses (type, const, enum,
/// required, properties, additionalProperties: false, items, maxItems, minimum, maximum,
/// minLength, dependentRequired, allOf, anyOf, not, if/then/else, $ref to #/$defs). Returns
/// every violation as "path: problem". (The daemon tests check events with Python's
/// `jsonschema`, an independent full validator.)
fn check_schema(
    root: &serde_json::Value,
    schema: &serde_json::Value,
    v: &serde_json::Value,
    path: &str,
    errs: &mut Vec<String>,
) {
    use serde_json::Value as J;
    if let Some(r) = schema.get("$ref").and_then(J::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        match root.get("$defs").and_then(|d| d.get(name)) {
            Some(s) => check_schema(root, s, v, path, errs),
            None => errs.push(format!("{path}: unresolved $ref {r}")),
        }
    }
    if let Some(c) = schema.get("const") {
        if v != c {
            errs.push(format!("{path}: {v} != const {c}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(J::as_array) {
        if !e.contains(v) {
            errs.push(format!("{path}: {v} not in enum"));
        }
    }
    if let Some(t) = schema.get("type").and_then(J::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_u64() || v.is_i64(),
            "boolean" => v.is_boolean(),
            _ => false,
        };
        if !ok {
            errs.push(format!("{path}: {v} is not {t}"));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(J::as_f64), v.as_f64()) {
        if n < min {
            errs.push(format!("{path}: {n} < {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema.get("maximum").and_then(J::as_f64), v.as_f64()) {
        if n > max {
            errs.push(format!("{path}: {n} > {max}"));
        }
    }
    if let (Some(min), Some(s)) = (schema.get("minLength").and_then(J::as_u64), v.as_str()) {
        if (s.chars().count() as u64) < min {
            errs.push(format!("{path}: shorter than {min}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for req in schema
            .get("required")
            .and_then(J::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = req.as_str() {
                if !obj.contains_key(k) {
                    errs.push(format!("{path}: missing required {k}"));
                }
            }
        }
        let props = schema.get("properties").and_then(J::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check_schema(root, s, val, &format!("{path}.{k}"), errs),
                None if schema.get("additionalProperties") == Some(&J::Bool(false)) => {
                    errs.push(format!("{path}: unexpected property {k}"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check_schema(root, items, x, &format!("{path}[{i}]"), errs);
        }
    }
    if let (Some(max), Some(arr)) = (schema.get("maxItems").and_then(J::as_u64), v.as_array()) {
        if arr.len() as u64 > max {
            errs.push(format!("{path}: more than {max} items"));
        }
    }
    if let (Some(deps), Some(obj)) = (
        schema.get("dependentRequired").and_then(J::as_object),
        v.as_object(),
    ) {
        for (k, needs) in deps {
            for n in needs.as_array().into_iter().flatten().filter_map(J::as_str) {
                if obj.contains_key(k) && !obj.contains_key(n) {
                    errs.push(format!("{path}: {k} without {n}"));
                }
            }
        }
    }
    let holds = |s: &serde_json::Value| {
        let mut e = Vec::new();
        check_schema(root, s, v, path, &mut e);
        e.is_empty()
    };
    for sub in schema
        .get("allOf")
        .and_then(J::as_array)
        .into_iter()
        .flatten()
    {
        check_schema(root, sub, v, path, errs);
    }
    if let Some(any) = schema.get("anyOf").and_then(J::as_array) {
        if !any.iter().any(holds) {
            errs.push(format!("{path}: matches none of anyOf"));
        }
    }
    if let Some(not) = schema.get("not") {
        if holds(not) {
            errs.push(format!("{path}: matches `not` {not}"));
        }
    }
    if let Some(cond) = schema.get("if") {
        let branch = if holds(cond) { "then" } else { "else" };
        if let Some(s) = schema.get(branch) {
            check_schema(root, s, v, path, errs);
        }
    }
}

fn schema() -> serde_json::Value {
    let text = include_str!("../../schemas/alert-event.v2.json");
    serde_json::from_str(text).unwrap()
}

#[test]
fn schema_checker_catches_a_missing_required_field_and_an_unknown_one() {
    let s = schema();
    let mut e = engine(no_rules());
    let ev = feed(&mut e, T0, num(Metric::RespiratoryRate, 7.0));
    let mut v = serde_json::to_value(&ev[0]).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("alert_id");
    obj.insert("nhs_number".into(), "9434765919".into());
    let mut errs = Vec::new();
    check_schema(&s, &s, &v, "$", &mut errs);
    assert_eq!(
        errs,
        vec![
            "$: missing required alert_id",
            "$: unexpected property nhs_number"
        ]
    );
}

#[test]
fn schema_accepts_every_kind_of_event_the_engine_produces() {
    let s = schema();
    let mut e = engine(PatientAlertConfig::default());
    e.register_device(T0, "ox", Duration::minutes(5));
    let mut events = Vec::new();
    events.extend(
        feed_set(
            &mut e,
            T0,
            &set(25.0, 90.0, true, 185.0, 125.0, Acvpu::V, 38.6),
        )
        .0,
    );
    events.extend(e.tick(at(600)).events);
    events.extend(
        e.on_reading(
            at(600),
            "ox",
            &num(Metric::Spo2, 97.0).with_flags([Flag::LowBattery]),
            "lb",
        )
        .events,
    );
    for i in 0..3 {
        events.extend(e.on_rejected(at(600 + i), "ox", Metric::Spo2, "spo2 = 140 %"));
    }
    events.extend(e.on_outbox_depth(at(700), 99, 100));
    events.extend(e.on_clock_sync(at(700), false));
    events.extend(e.tick(at(1400)).events);
    events.extend(feed_set(&mut e, at(1500), &normal()).0);
    events.extend(e.tick(at(1500 + 1800)).events);
    let kinds: std::collections::BTreeSet<_> = events
        .iter()
        .map(|e| (format!("{:?}", e.kind), e.transition.as_str()))
        .collect();
    assert!(kinds.len() >= 5, "{kinds:?}");
    for ev in &events {
        let v = serde_json::to_value(ev).unwrap();
        let mut errs = Vec::new();
        check_schema(&s, &s, &v, "$", &mut errs);
        assert!(errs.is_empty(), "{}: {errs:?}\n{v:#}", ev.rule);
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
    }
}

// ---- a deteriorating patient -------------------------------------------------------------------

#[test]
fn deteriorating_patient_raises_alerts_in_clinical_order() {
    // A COPD-free home patient with an oximeter, BP cuff, thermometer and an app for RR/ACVPU,
    // observed every 30 minutes as they develop sepsis. Default home rules.
    let mut e = engine(PatientAlertConfig::default());
    let rounds = [
        set(16.0, 97.0, false, 128.0, 78.0, Acvpu::A, 37.1), // 0:00 well: NEWS2 0
        set(19.0, 96.0, false, 120.0, 92.0, Acvpu::A, 38.3), // 0:30 fever: temperature_high; NEWS2 2
        set(21.0, 96.0, false, 112.0, 112.0, Acvpu::A, 38.9), // 1:00 NEWS2 2+0+0+0+2+0+1 = 5: medium
        set(26.0, 92.0, false, 96.0, 124.0, Acvpu::C, 39.3), // 1:30 RR 26 and new confusion (red), SpO2 92: NEWS2 14 high
    ];
    let mut timeline: Vec<(i64, String, Transition, Priority)> = Vec::new();
    for (i, s) in rounds.iter().enumerate() {
        let t0 = i as i64 * 1800;
        let (ev, _) = feed_set(&mut e, at(t0), s);
        // continuous oximeter/pulse between rounds, every 30 s for 10 minutes
        let mut more = ev;
        for k in 1..=20 {
            let t = at(t0 + k * 30);
            more.extend(
                e.on_reading(t, "ox", &num(Metric::Spo2, s.spo2), &format!("s{i}-{k}"))
                    .events,
            );
            more.extend(
                e.on_reading(t, "ox", &num(Metric::PulseRate, s.hr), &format!("p{i}-{k}"))
                    .events,
            );
            more.extend(e.tick(t).events);
        }
        for x in more {
            timeline.push((t0 / 60, x.rule.clone(), x.transition, x.priority));
        }
    }
    let raised: Vec<(i64, &str, Priority)> = timeline
        .iter()
        .filter(|x| x.2 == Transition::Raised)
        .map(|x| (x.0, x.1.as_str(), x.3))
        .collect();
    assert_eq!(
        raised,
        vec![
            (30, "threshold:temperature_high", Priority::Medium),
            (60, "news2:aggregate", Priority::Medium),
            (90, "news2:red:respiration_rate", Priority::Medium),
            (90, "news2:red:consciousness", Priority::Medium),
            (90, "threshold:spo2_low", Priority::High),
            (90, "threshold:pulse_high", Priority::Medium),
        ],
        "{timeline:#?}"
    );
    let escalated: Vec<_> = timeline
        .iter()
        .filter(|x| x.2 == Transition::Escalated)
        .collect();
    assert_eq!(escalated.len(), 1, "{timeline:#?}");
    assert_eq!(
        (escalated[0].0, escalated[0].1.as_str(), escalated[0].3),
        (90, "news2:aggregate", Priority::High)
    );
    assert!(
        timeline.iter().all(|x| x.2 != Transition::Cleared),
        "nothing clears while worsening"
    );
}

// ---- robustness --------------------------------------------------------------------------------

fn any_reading() -> impl Strategy<Value = Reading> {
    let metric = prop::sample::select(Metric::ALL.to_vec());
    let value = prop_oneof![
        (any::<i64>(), any::<i8>())
            .prop_map(|(m, e)| crate::reading::Value::Number(Decimal::new(m, e))),
        (-2000i64..2000, -3i8..2)
            .prop_map(|(m, e)| crate::reading::Value::Number(Decimal::new(m, e))),
        prop::sample::select(vec![Acvpu::A, Acvpu::C, Acvpu::V, Acvpu::P, Acvpu::U])
            .prop_map(crate::reading::Value::Code),
        prop::sample::select(vec![
            Absent::Nan,
            Absent::Nres,
            Absent::PosInf,
            Absent::NegInf,
            Absent::Missing
        ])
        .prop_map(crate::reading::Value::Absent),
    ];
    let unit = prop::option::of(prop::sample::select(vec![
        Unit::PerMinute,
        Unit::Percent,
        Unit::Celsius,
        Unit::Fahrenheit,
        Unit::MmHg,
        Unit::KiloPascal,
        Unit::Kilogram,
        Unit::MgPerDl,
        Unit::LitrePerMinute,
    ]));
    let flags = prop::collection::vec(
        prop::sample::select(vec![
            Flag::SensorOff,
            Flag::ProbeDisconnected,
            Flag::LowBattery,
            Flag::Motion,
            Flag::DeviceClockSuspect,
            Flag::Searching,
        ]),
        0..3,
    );
    let time = prop::option::of(-400_000_000_000i64..400_000_000_000);
    (metric, value, unit, flags, time).prop_map(|(metric, value, unit, flags, t)| {
        let r = Reading {
            metric,
            value,
            unit,
            device_time: t.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok()),
            flags: Vec::new(),
        };
        r.with_flags(flags)
    })
}

proptest! {
    #[test]
    fn on_reading_never_panics_for_any_reading(
        readings in prop::collection::vec((any_reading(), 0i64..100_000, "[a-z]{1,3}"), 1..30)
    ) {
        let mut e = engine(PatientAlertConfig::default());
        e.register_device(T0, "ox", Duration::seconds(60));
        for (r, dt, dev) in &readings {
            let out = e.on_reading(at(*dt), dev, r, "ref");
            for ev in &out.events {
                prop_assert!(!ev.alert_id.is_empty());
            }
            e.tick(at(*dt));
            let _ = e.news2(at(*dt));
        }
        let json = serde_json::to_string(e.state()).unwrap();
        let back: EngineState = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, e.state());
    }
}

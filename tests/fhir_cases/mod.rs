//! Every kind of Observation the FHIR mapping emits, by name: shared by the golden-file test
//! (`tests/fhir_golden.rs`) and the independent validators (`tests/fhir_validate.rs`).

use serde_json::Value;
use time::macros::datetime;
use time::OffsetDateTime;
use vitalgate::fhir::{
    news2_observation, observation, observation_id, observation_with_clock, HubClock, News2Score,
    News2SubScores, ObservationContext, ObservationKey, RecordingSetting, Spo2Scale,
};
use vitalgate::nhs_number::NhsNumber;
use vitalgate::reading::{Absent, Acvpu, Decimal, Flag, Metric, Reading, Unit};

pub const GATEWAY: &str = "hub-0001";
pub const EFFECTIVE: OffsetDateTime = datetime!(2025-06-20 09:15:00 +01:00);

fn nhs() -> NhsNumber {
    NhsNumber::parse("943 476 5919").expect("clinical.md §3.3 valid vector")
}

fn ctx<'a>(
    nhs: Option<&'a NhsNumber>,
    device: &'a str,
    setting: RecordingSetting,
) -> ObservationContext<'a> {
    ObservationContext {
        gateway_id: GATEWAY,
        device_id: device,
        device_display: Some("Home monitoring device"),
        nhs_number: nhs,
        setting,
        effective: EFFECTIVE,
    }
}

/// A plausible value for each metric in its canonical unit.
pub fn sample(m: Metric) -> Reading {
    let d = match m {
        Metric::HeartRate => Decimal::int(72),
        Metric::PulseRate => Decimal::int(74),
        Metric::Spo2 => Decimal::int(97),
        Metric::RespiratoryRate => Decimal::int(16),
        Metric::BodyTemperature => Decimal::new(3760, -2),
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

fn obs(
    name: &str,
    nhs: Option<&NhsNumber>,
    setting: RecordingSetting,
    readings: &[Reading],
) -> (String, Value) {
    let device = format!("dev-{name}");
    let v = observation(&ctx(nhs, &device, setting), readings)
        .unwrap_or_else(|e| panic!("case {name}: {e}"));
    (name.to_owned(), v)
}

/// (file stem, Observation JSON) for every case.
pub fn all() -> Vec<(String, Value)> {
    let n = nhs();
    let home = RecordingSetting::Residential;
    let mut out: Vec<(String, Value)> = Metric::ALL
        .iter()
        .map(|&m| obs(m.as_str(), Some(&n), home, &[sample(m)]))
        .collect();
    out.push(obs(
        "blood_pressure_panel",
        Some(&n),
        home,
        &[sample(Metric::SystolicBp), sample(Metric::DiastolicBp)],
    ));
    out.push(obs(
        "blood_pressure_panel_diastolic_absent",
        Some(&n),
        home,
        &[
            sample(Metric::SystolicBp),
            Reading::absent(Metric::DiastolicBp, Absent::Nres),
        ],
    ));
    out.push(obs(
        "absent_spo2_missing",
        Some(&n),
        home,
        &[Reading::absent(Metric::Spo2, Absent::Missing).with_flags([Flag::SensorOff])],
    ));
    out.push(obs(
        "absent_heart_rate_nan",
        Some(&n),
        home,
        &[Reading::absent(Metric::HeartRate, Absent::Nan)],
    ));
    out.push(obs(
        "absent_inspired_oxygen",
        Some(&n),
        home,
        &[Reading::absent(Metric::InspiredOxygen, Absent::Nan)],
    ));
    out.push(obs(
        "inspired_oxygen_room_air",
        Some(&n),
        home,
        &[Reading::canonical(Metric::InspiredOxygen, Decimal::int(0))],
    ));
    out.push(obs(
        "body_temperature_fahrenheit",
        Some(&n),
        home,
        &[Reading::number(
            Metric::BodyTemperature,
            Decimal::new(1004, -1),
            Unit::Fahrenheit,
        )],
    ));
    out.push(obs(
        "body_weight_pounds",
        Some(&n),
        home,
        &[Reading::number(
            Metric::BodyWeight,
            Decimal::new(1502, -1),
            Unit::Pound,
        )],
    ));
    out.push(obs(
        "spo2_flags_ward_no_nhs_number",
        None,
        RecordingSetting::Clinical,
        &[sample(Metric::Spo2).with_flags([Flag::LowPerfusion, Flag::Motion])],
    ));
    out.push(obs(
        "acvpu_new_confusion",
        Some(&n),
        home,
        &[Reading::acvpu(Acvpu::C)],
    ));

    // §2.6 case 08: 2/1/2/0/0/0/1 = 6, derived from the observations it scored.
    let from = |m: Metric| {
        observation_id(
            GATEWAY,
            &format!("dev-{}", m.as_str()),
            ObservationKey::Metric(m),
            EFFECTIVE,
        )
    };
    let score = News2Score {
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
        derived_from: [
            Metric::RespiratoryRate,
            Metric::Spo2,
            Metric::InspiredOxygen,
            Metric::HeartRate,
            Metric::Acvpu,
            Metric::BodyTemperature,
        ]
        .into_iter()
        .map(from)
        .chain([observation_id(
            GATEWAY,
            "dev-blood_pressure_panel",
            ObservationKey::BloodPressurePanel,
            EFFECTIVE,
        )])
        .collect(),
    };
    let news2 = news2_observation(&ctx(Some(&n), "news2", home), &score)
        .unwrap_or_else(|e| panic!("news2: {e}"));
    out.push(("news2".to_owned(), news2));
    out.extend(hub_clock_cases(&n));
    out
}

/// Readings received while the hub clock was not synchronised (issue 15 point 5): flagged,
/// corrected from the boot clock, or carrying the device's own time.
fn hub_clock_cases(n: &NhsNumber) -> Vec<(String, Value)> {
    let recorded = datetime!(1970-01-01 00:00:40 UTC);
    let cases = [
        (
            "heart_rate_hub_clock_unsynchronised",
            vec![sample(Metric::HeartRate)],
            HubClock::Unsynchronised,
        ),
        (
            "blood_pressure_panel_hub_clock_corrected",
            vec![sample(Metric::SystolicBp), sample(Metric::DiastolicBp)],
            HubClock::Corrected {
                corrected: datetime!(2025-06-20 08:14:40 UTC),
            },
        ),
        (
            "spo2_device_time_hub_clock_unsynchronised",
            vec![sample(Metric::Spo2).with_flags([Flag::Motion])],
            HubClock::DeviceTime,
        ),
    ];
    cases
        .into_iter()
        .map(|(name, readings, clock)| {
            let device = format!("dev-{name}");
            let mut c = ctx(Some(n), &device, RecordingSetting::Residential);
            if clock != HubClock::DeviceTime {
                c.effective = recorded;
            }
            let v = observation_with_clock(&c, &readings, clock)
                .unwrap_or_else(|e| panic!("case {name}: {e}"));
            (name.to_owned(), v)
        })
        .collect()
}

//! NEWS2 (Royal College of Physicians 2017) scoring: Chart 1 per-parameter scores, the aggregate,
//! the Chart 2 risk band and clinical response. Pure functions over already-chosen inputs;
//! picking *which* readings feed them (freshness, pulse vs heart rate, oxygen) is done by the
//! engine in `mod.rs` and documented there.
//!
//! # Banding non-integer device values (clinical.md §2.5)
//!
//! Chart 1 bands are integers, temperature to 0.1 °C. A device value is first converted to the
//! chart's unit **exactly** (°F to °C and kPa to mmHg as rational arithmetic on the device's
//! decimal digits, the same factors as [`Unit::to_canonical`]) and **rounded to the chart's
//! precision, half away from zero**: temperature to 0.1 °C, every other parameter to an integer.
//! The rounded value is then banded. So 35.05 °C -> 35.1 -> 1, 20.5 /min -> 21 -> 2,
//! 90.5 mmHg -> 91 -> 2, 95.5 % -> 96 -> 0 (matching the "≤ upper bound of band" table in
//! clinical.md §2.5). Doing this on the exact decimal matters: 35.05 as an `f64` is
//! 35.04999..., which naive float rounding would put in the 3-band.
//!
//! # What this module does not do
//!
//! It does not infer the SpO2 scale (a clinician's setting, clinical.md §2.2), does not score
//! partial sets (no RCP rule exists; the engine only reports a total when all seven parameters
//! are fresh) and does not apply to under-16s or pregnancy (RCP), which the deployment must
//! exclude.

use serde::{Deserialize, Serialize};

use crate::reading::{Acvpu, Decimal, Unit};

/// NEWS2 SpO2 scale (clinical.md §2.2). Scale 2 only for documented hypercapnic respiratory
/// failure with a target of 88–92 %, set by a clinician.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spo2Scale {
    #[default]
    #[serde(rename = "scale_1")]
    Scale1,
    #[serde(rename = "scale_2")]
    Scale2,
}

/// The seven NEWS2 parameters, in Chart 1 order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum News2Parameter {
    RespirationRate,
    OxygenSaturation,
    AirOrOxygen,
    SystolicBp,
    Pulse,
    Consciousness,
    Temperature,
}

impl News2Parameter {
    pub const ALL: [News2Parameter; 7] = [
        News2Parameter::RespirationRate,
        News2Parameter::OxygenSaturation,
        News2Parameter::AirOrOxygen,
        News2Parameter::SystolicBp,
        News2Parameter::Pulse,
        News2Parameter::Consciousness,
        News2Parameter::Temperature,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            News2Parameter::RespirationRate => "respiration_rate",
            News2Parameter::OxygenSaturation => "oxygen_saturation",
            News2Parameter::AirOrOxygen => "air_or_oxygen",
            News2Parameter::SystolicBp => "systolic_bp",
            News2Parameter::Pulse => "pulse",
            News2Parameter::Consciousness => "consciousness",
            News2Parameter::Temperature => "temperature",
        }
    }

    /// Human label for event text.
    pub fn label(self) -> &'static str {
        match self {
            News2Parameter::RespirationRate => "respiration rate",
            News2Parameter::OxygenSaturation => "SpO2",
            News2Parameter::AirOrOxygen => "air or oxygen",
            News2Parameter::SystolicBp => "systolic BP",
            News2Parameter::Pulse => "pulse",
            News2Parameter::Consciousness => "consciousness",
            News2Parameter::Temperature => "temperature",
        }
    }

    /// SNOMED CT sub-score code (clinical.md §2.4), for the FHIR total-score components.
    pub fn snomed_subscore_code(self, scale: Spo2Scale) -> &'static str {
        match self {
            News2Parameter::RespirationRate => "1104301000000104",
            News2Parameter::OxygenSaturation => match scale {
                Spo2Scale::Scale1 => "1104311000000102",
                Spo2Scale::Scale2 => "1104321000000108",
            },
            News2Parameter::AirOrOxygen => "1104331000000105",
            News2Parameter::SystolicBp => "1104341000000101",
            News2Parameter::Pulse => "1104351000000103",
            News2Parameter::Consciousness => "1104361000000100",
            News2Parameter::Temperature => "1104371000000107",
        }
    }
}

/// SNOMED CT code of the NEWS2 total score (clinical.md §2.4).
pub const NEWS2_TOTAL_SNOMED: &str = "1104051000000101";

/// Chart 1, respiration rate (breaths/min, rounded to an integer).
pub fn score_respiration_rate(per_min: i64) -> u8 {
    match per_min {
        i64::MIN..=8 => 3,
        9..=11 => 1,
        12..=20 => 0,
        21..=24 => 2,
        _ => 3,
    }
}

/// Chart 1, SpO2 (%, rounded to an integer) on the given scale. `on_oxygen` matters only on
/// Scale 2, where >= 93 % scores 0 on air but 1/2/3 on oxygen.
pub fn score_spo2(percent: i64, scale: Spo2Scale, on_oxygen: bool) -> u8 {
    match scale {
        Spo2Scale::Scale1 => match percent {
            i64::MIN..=91 => 3,
            92..=93 => 2,
            94..=95 => 1,
            _ => 0,
        },
        Spo2Scale::Scale2 => match (percent, on_oxygen) {
            (i64::MIN..=83, _) => 3,
            (84..=85, _) => 2,
            (86..=87, _) => 1,
            (88..=92, _) => 0,
            (_, false) => 0,
            (93..=94, true) => 1,
            (95..=96, true) => 2,
            (_, true) => 3,
        },
    }
}

/// Chart 1, air or oxygen: oxygen scores 2 on either scale.
pub fn score_air_or_oxygen(on_oxygen: bool) -> u8 {
    if on_oxygen {
        2
    } else {
        0
    }
}

/// Chart 1, systolic blood pressure (mmHg, rounded to an integer).
pub fn score_systolic_bp(mmhg: i64) -> u8 {
    match mmhg {
        i64::MIN..=90 => 3,
        91..=100 => 2,
        101..=110 => 1,
        111..=219 => 0,
        _ => 3,
    }
}

/// Chart 1, pulse (/min, rounded to an integer).
pub fn score_pulse(per_min: i64) -> u8 {
    match per_min {
        i64::MIN..=40 => 3,
        41..=50 => 1,
        51..=90 => 0,
        91..=110 => 1,
        111..=130 => 2,
        _ => 3,
    }
}

/// Chart 1, consciousness: Alert 0; new Confusion, Voice, Pain, Unresponsive 3.
pub fn score_consciousness(level: Acvpu) -> u8 {
    match level {
        Acvpu::A => 0,
        Acvpu::C | Acvpu::V | Acvpu::P | Acvpu::U => 3,
    }
}

/// Chart 1, temperature in tenths of a degree Celsius (361 = 36.1 °C).
pub fn score_temperature(tenths_celsius: i64) -> u8 {
    match tenths_celsius {
        i64::MIN..=350 => 3,
        351..=360 => 1,
        361..=380 => 0,
        381..=390 => 1,
        _ => 2,
    }
}

/// Chart 2 clinical risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskBand {
    /// Aggregate 0–4 with no single 3.
    Low,
    /// Any single parameter scoring 3, aggregate 0–4.
    LowMedium,
    /// Aggregate 5–6.
    Medium,
    /// Aggregate 7 or more.
    High,
}

/// Chart 2 band: total >= 7 High, else 5–6 Medium, else any 3 Low–medium, else Low
/// (clinical.md §2.3).
pub fn risk_band(total: u8, any_three: bool) -> RiskBand {
    if total >= 7 {
        RiskBand::High
    } else if total >= 5 {
        RiskBand::Medium
    } else if any_three {
        RiskBand::LowMedium
    } else {
        RiskBand::Low
    }
}

/// Chart 2 response and Chart 4 minimum observation frequency (clinical.md §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClinicalResponse {
    /// Aggregate 0.
    RoutineMonitoring,
    /// Aggregate 1–4.
    WardBasedResponse,
    /// A 3 in any single parameter.
    UrgentWardBasedResponse,
    /// Aggregate 5–6.
    UrgentResponse,
    /// Aggregate 7 or more.
    EmergencyResponse,
}

impl ClinicalResponse {
    /// The response for a total and band.
    pub fn for_score(total: u8, band: RiskBand) -> Self {
        match band {
            RiskBand::High => ClinicalResponse::EmergencyResponse,
            RiskBand::Medium => ClinicalResponse::UrgentResponse,
            RiskBand::LowMedium => ClinicalResponse::UrgentWardBasedResponse,
            RiskBand::Low if total == 0 => ClinicalResponse::RoutineMonitoring,
            RiskBand::Low => ClinicalResponse::WardBasedResponse,
        }
    }

    /// Chart 2 / Chart 4 wording.
    pub fn text(self) -> &'static str {
        match self {
            ClinicalResponse::RoutineMonitoring => {
                "ward-based response; minimum 12-hourly observations, continue routine monitoring"
            }
            ClinicalResponse::WardBasedResponse => {
                "ward-based response; minimum 4-6-hourly observations, registered nurse to assess and decide frequency or escalation"
            }
            ClinicalResponse::UrgentWardBasedResponse => {
                "urgent ward-based response; minimum 1-hourly observations, registered nurse to inform the medical team for review"
            }
            ClinicalResponse::UrgentResponse => {
                "key threshold for urgent response; minimum 1-hourly observations, urgent assessment by a clinician with acute-illness competencies"
            }
            ClinicalResponse::EmergencyResponse => {
                "urgent or emergency response; continuous monitoring, emergency assessment by a critical-care team, consider HDU/ICU"
            }
        }
    }
}

/// Converts a device decimal in `unit` to the chart unit exactly and rounds it to `places`
/// decimals, half away from zero, returning the value scaled by `10^places`
/// (`35.05 Cel, 1 place -> 351`). `None` for units NEWS2 never uses or values too large to hold.
pub fn round_to_chart(d: Decimal, unit: Unit, places: u32) -> Option<i64> {
    let mut num = i128::from(d.mantissa);
    let mut den: i128 = 1;
    let exp = i32::from(d.exponent);
    if exp >= 0 {
        num = num.checked_mul(10i128.checked_pow(exp.unsigned_abs())?)?;
    } else {
        den = 10i128.checked_pow(exp.unsigned_abs())?;
    }
    // Exact forms of `Unit::to_canonical` for the units NEWS2 inputs may arrive in.
    match unit {
        Unit::Celsius | Unit::PerMinute | Unit::Percent | Unit::MmHg | Unit::LitrePerMinute => {}
        Unit::Fahrenheit => {
            // (F - 32) * 5 / 9
            num = num.checked_sub(den.checked_mul(32)?)?.checked_mul(5)?;
            den = den.checked_mul(9)?;
        }
        Unit::KiloPascal => {
            // kPa * 7.50061575
            num = num.checked_mul(750_061_575)?;
            den = den.checked_mul(100_000_000)?;
        }
        _ => return None,
    }
    let n = num.checked_mul(10i128.checked_pow(places)?)?;
    let q = n / den;
    let r = n % den;
    let q = if r.checked_abs()?.checked_mul(2)? >= den {
        q + n.signum()
    } else {
        q
    };
    i64::try_from(q).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // clinical.md §2.1 Chart 1, respiration rate row; edges 8/9, 11/12, 20/21, 24/25.
    #[test]
    fn respiration_rate_scores_every_band_edge() {
        let cases = [
            (0, 3),
            (8, 3),
            (9, 1),
            (11, 1),
            (12, 0),
            (20, 0),
            (21, 2),
            (24, 2),
            (25, 3),
            (60, 3),
        ];
        for (rr, want) in cases {
            assert_eq!(score_respiration_rate(rr), want, "RR {rr}");
        }
    }

    // clinical.md §2.1 Chart 1, SpO2 Scale 1 row; edges 91/92, 93/94, 95/96; oxygen irrelevant.
    #[test]
    fn spo2_scale1_scores_every_band_edge_on_air_and_oxygen() {
        let cases = [
            (80, 3),
            (91, 3),
            (92, 2),
            (93, 2),
            (94, 1),
            (95, 1),
            (96, 0),
            (100, 0),
        ];
        for (s, want) in cases {
            assert_eq!(
                score_spo2(s, Spo2Scale::Scale1, false),
                want,
                "SpO2 {s} air"
            );
            assert_eq!(score_spo2(s, Spo2Scale::Scale1, true), want, "SpO2 {s} O2");
        }
    }

    // clinical.md §2.1 Chart 1, SpO2 Scale 2 row; edges 83/84, 85/86, 87/88, 92/93, 94/95, 96/97.
    #[test]
    fn spo2_scale2_scores_every_band_edge_on_air() {
        let cases = [
            (83, 3),
            (84, 2),
            (85, 2),
            (86, 1),
            (87, 1),
            (88, 0),
            (92, 0),
            (93, 0),
            (97, 0),
            (100, 0),
        ];
        for (s, want) in cases {
            assert_eq!(
                score_spo2(s, Spo2Scale::Scale2, false),
                want,
                "SpO2 {s} air"
            );
        }
    }

    // clinical.md §2.1 Chart 1, SpO2 Scale 2 row, "on oxygen" columns; §2.2 ">= 93 scores 1/2/3 on oxygen".
    #[test]
    fn spo2_scale2_scores_every_band_edge_on_oxygen() {
        let cases = [
            (83, 3),
            (84, 2),
            (85, 2),
            (86, 1),
            (87, 1),
            (88, 0),
            (92, 0),
            (93, 1),
            (94, 1),
            (95, 2),
            (96, 2),
            (97, 3),
            (100, 3),
        ];
        for (s, want) in cases {
            assert_eq!(score_spo2(s, Spo2Scale::Scale2, true), want, "SpO2 {s} O2");
        }
    }

    // clinical.md §2.1 Chart 1, "Air or oxygen?" row.
    #[test]
    fn air_or_oxygen_scores_two_on_oxygen_only() {
        assert_eq!(score_air_or_oxygen(false), 0);
        assert_eq!(score_air_or_oxygen(true), 2);
    }

    // clinical.md §2.1 Chart 1, systolic BP row; edges 90/91, 100/101, 110/111, 219/220.
    #[test]
    fn systolic_bp_scores_every_band_edge() {
        let cases = [
            (60, 3),
            (90, 3),
            (91, 2),
            (100, 2),
            (101, 1),
            (110, 1),
            (111, 0),
            (219, 0),
            (220, 3),
            (280, 3),
        ];
        for (v, want) in cases {
            assert_eq!(score_systolic_bp(v), want, "SBP {v}");
        }
    }

    // clinical.md §2.1 Chart 1, pulse row; edges 40/41, 50/51, 90/91, 110/111, 130/131.
    #[test]
    fn pulse_scores_every_band_edge() {
        let cases = [
            (30, 3),
            (40, 3),
            (41, 1),
            (50, 1),
            (51, 0),
            (90, 0),
            (91, 1),
            (110, 1),
            (111, 2),
            (130, 2),
            (131, 3),
            (200, 3),
        ];
        for (v, want) in cases {
            assert_eq!(score_pulse(v), want, "pulse {v}");
        }
    }

    // clinical.md §2.1 Chart 1, consciousness row: CVPU all score 3.
    #[test]
    fn consciousness_scores_alert_zero_and_cvpu_three() {
        assert_eq!(score_consciousness(Acvpu::A), 0);
        for c in [Acvpu::C, Acvpu::V, Acvpu::P, Acvpu::U] {
            assert_eq!(score_consciousness(c), 3, "{c:?}");
        }
    }

    // clinical.md §2.1 Chart 1, temperature row; edges 35.0/35.1, 36.0/36.1, 38.0/38.1, 39.0/39.1.
    #[test]
    fn temperature_scores_every_band_edge() {
        let cases = [
            (340, 3),
            (350, 3),
            (351, 1),
            (360, 1),
            (361, 0),
            (380, 0),
            (381, 1),
            (390, 1),
            (391, 2),
            (420, 2),
        ];
        for (v, want) in cases {
            assert_eq!(score_temperature(v), want, "temp {v}");
        }
    }

    // clinical.md §2.3: total >= 7 High, else 5-6 Medium, else any 3 Low-medium, else Low.
    #[test]
    fn risk_band_follows_chart2_including_single_three() {
        assert_eq!(risk_band(0, false), RiskBand::Low);
        assert_eq!(risk_band(4, false), RiskBand::Low);
        assert_eq!(risk_band(3, true), RiskBand::LowMedium);
        assert_eq!(risk_band(4, true), RiskBand::LowMedium);
        assert_eq!(risk_band(5, false), RiskBand::Medium);
        assert_eq!(risk_band(6, true), RiskBand::Medium);
        assert_eq!(risk_band(7, true), RiskBand::High);
        assert_eq!(risk_band(20, true), RiskBand::High);
    }

    // clinical.md §2.3 Chart 2/4: total 0 routine, 1-4 ward-based.
    #[test]
    fn clinical_response_distinguishes_zero_from_one_to_four() {
        assert_eq!(
            ClinicalResponse::for_score(0, RiskBand::Low),
            ClinicalResponse::RoutineMonitoring
        );
        assert_eq!(
            ClinicalResponse::for_score(1, RiskBand::Low),
            ClinicalResponse::WardBasedResponse
        );
        assert_eq!(
            ClinicalResponse::for_score(3, RiskBand::LowMedium),
            ClinicalResponse::UrgentWardBasedResponse
        );
        assert_eq!(
            ClinicalResponse::for_score(7, RiskBand::High),
            ClinicalResponse::EmergencyResponse
        );
    }

    // clinical.md §2.5: 35.05 °C -> 1 (rounds to 35.1), 20.5/min -> 2, 90.5 mmHg -> 2.
    #[test]
    fn round_to_chart_rounds_half_away_from_zero_on_exact_digits() {
        assert_eq!(
            round_to_chart(Decimal::new(3505, -2), Unit::Celsius, 1),
            Some(351)
        );
        assert_eq!(score_temperature(351), 1);
        assert_eq!(
            round_to_chart(Decimal::new(205, -1), Unit::PerMinute, 0),
            Some(21)
        );
        assert_eq!(
            round_to_chart(Decimal::new(905, -1), Unit::MmHg, 0),
            Some(91)
        );
        assert_eq!(
            round_to_chart(Decimal::new(3504, -2), Unit::Celsius, 1),
            Some(350)
        );
        assert_eq!(
            round_to_chart(Decimal::new(-15, -1), Unit::Celsius, 0),
            Some(-2)
        );
    }

    // 95.09 °F is exactly 35.05 °C: the exact path rounds it to 35.1 like the Celsius value.
    #[test]
    fn round_to_chart_converts_fahrenheit_exactly() {
        assert_eq!(
            round_to_chart(Decimal::new(9509, -2), Unit::Fahrenheit, 1),
            Some(351)
        );
        assert_eq!(
            round_to_chart(Decimal::new(1004, -1), Unit::Fahrenheit, 1),
            Some(380)
        );
        // agrees with Unit::to_canonical away from ties
        let f = Decimal::new(1013, -1);
        let c = Unit::Fahrenheit.to_canonical(f.to_f64());
        assert_eq!(
            round_to_chart(f, Unit::Fahrenheit, 1),
            Some((c * 10.0).round() as i64)
        );
    }

    #[test]
    fn round_to_chart_converts_kilopascal_to_mmhg() {
        // 12 kPa = 90.0073890 mmHg -> 90
        assert_eq!(
            round_to_chart(Decimal::int(12), Unit::KiloPascal, 0),
            Some(90)
        );
        assert_eq!(
            round_to_chart(Decimal::new(1215, -2), Unit::KiloPascal, 0),
            Some(91)
        );
    }

    #[test]
    fn round_to_chart_refuses_overflow_and_foreign_units() {
        assert_eq!(
            round_to_chart(Decimal::new(i64::MAX, 127), Unit::Celsius, 1),
            None
        );
        assert_eq!(
            round_to_chart(Decimal::new(1, -128), Unit::Celsius, 1),
            None
        );
        assert_eq!(round_to_chart(Decimal::int(70), Unit::Kilogram, 0), None);
    }
}

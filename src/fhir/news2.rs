//! The NEWS2 total score as a `UKCore-Observation-EarlyWarningTotalScore` (clinical.md §1.2, §2.4).
//!
//! It maps a score someone else computed (the alert engine); it does not score. It does refuse a
//! score that cannot be right (a sub-score outside RCP Chart 1, a total that is not the sum),
//! because a wrong NEWS2 sent to a clinical team is worse than none.

use serde_json::Value;
use uuid::Uuid;

use super::codes::{self, Category, Code};
use super::doc::{CodeableConcept, Component, Part, Reference};
use super::{common, quantity_score, to_value, FhirError, ObservationContext, ObservationKey};

/// Which SpO2 scale the patient is scored on: the alert engine's own type (one definition).
pub use crate::alerts::news2::Spo2Scale;

/// Per-parameter sub-scores (RCP NEWS2 Chart 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct News2SubScores {
    pub respiration_rate: u8,
    pub spo2: u8,
    pub air_or_oxygen: u8,
    pub systolic_bp: u8,
    pub pulse: u8,
    pub consciousness: u8,
    pub temperature: u8,
}

/// A computed NEWS2, ready to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct News2Score {
    pub total: u8,
    pub sub_scores: News2SubScores,
    pub spo2_scale: Spo2Scale,
    /// Ids ([`super::observation_id`]) of the Observations the score was computed from; they
    /// become `derivedFrom` references `Observation/{id}`.
    pub derived_from: Vec<Uuid>,
}

const ZERO_TO_THREE: &[u8] = &[0, 1, 2, 3];

/// One Observation for `score`. `ctx.device_id` names the scoring source (e.g. `news2`) and only
/// feeds the id: a computed score has no measuring device, so `device` is omitted.
pub fn news2_observation(ctx: &ObservationContext, score: &News2Score) -> Result<Value, FhirError> {
    let s = score.sub_scores;
    let spo2_code = match score.spo2_scale {
        Spo2Scale::Scale1 => codes::NEWS2_SPO2_SCALE1,
        Spo2Scale::Scale2 => codes::NEWS2_SPO2_SCALE2,
    };
    // (code, parameter name, score, allowed values per Chart 1)
    let parts: [(Code, &'static str, u8, &'static [u8]); 7] = [
        (
            codes::NEWS2_RR,
            "respiration rate",
            s.respiration_rate,
            ZERO_TO_THREE,
        ),
        (spo2_code, "SpO2", s.spo2, ZERO_TO_THREE),
        (
            codes::NEWS2_AIR_OXYGEN,
            "air or oxygen",
            s.air_or_oxygen,
            &[0, 2],
        ),
        (
            codes::NEWS2_SYSTOLIC,
            "systolic BP",
            s.systolic_bp,
            ZERO_TO_THREE,
        ),
        (codes::NEWS2_PULSE, "pulse", s.pulse, ZERO_TO_THREE),
        (
            codes::NEWS2_CONSCIOUSNESS,
            "consciousness",
            s.consciousness,
            &[0, 3],
        ),
        (
            codes::NEWS2_TEMPERATURE,
            "temperature",
            s.temperature,
            ZERO_TO_THREE,
        ),
    ];
    for (_, parameter, score, allowed) in parts {
        if !allowed.contains(&score) {
            return Err(FhirError::News2SubScore {
                parameter,
                score,
                allowed,
            });
        }
    }
    let sum: u32 = parts.iter().map(|p| u32::from(p.2)).sum();
    if sum != u32::from(score.total) {
        return Err(FhirError::News2Total {
            total: score.total,
            sum,
        });
    }

    let mut obs = common(
        ctx,
        codes::NEWS2_PROFILE,
        Category::Survey,
        ObservationKey::News2,
        Part::Built(CodeableConcept::new(
            &[codes::NEWS2_TOTAL],
            Some("NEWS2 total score"),
        )),
    )?;
    obs.value_quantity = Some(quantity_score(score.total));
    obs.component = parts
        .iter()
        .map(|(code, _, sub, _)| Component {
            code: CodeableConcept::new(&[*code], None),
            data_absent_reason: None,
            value_quantity: Some(quantity_score(*sub)),
        })
        .collect();
    obs.derived_from = score
        .derived_from
        .iter()
        .map(|id| Reference {
            reference: format!("Observation/{id}"),
            kind: "Observation",
        })
        .collect();
    to_value(&obs)
}

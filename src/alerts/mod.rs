//! The local alert rules engine: NEWS2, per-patient threshold rules and technical alarms, with
//! an alert lifecycle that emits exactly one event per transition.
//!
//! This is the part of vitalgate a regulator reviews (it makes the gateway a medical device,
//! see peers.md §7), so it is self-contained, versioned ([`RULES_VERSION`]) and pure: no IO, no
//! tasks, no clock. Every entry point takes `now: OffsetDateTime`; the same inputs in the same
//! order always give the same events and the same alert ids. Rationale and defaults for the
//! clinical safety case: `docs/alerts.md`. Event contract: `schemas/alert-event.v2.json`.
//!
//! # Map
//!
//! - [`news2`]: Chart 1 scores, Chart 2 band and response, exact rounding of device values.
//! - [`threshold`]: one value -> the level a threshold rule asks for (hysteresis).
//! - [`technical`]: technical conditions, their keys and priorities.
//! - [`lifecycle`]: level over time -> raised / escalated / de-escalated / cleared, alert ids.
//! - [`event`]: [`AlertEvent`], the emitted contract.
//! - [`config`]: [`PatientAlertConfig`], [`default_home_rules`], validation.
//! - [`engine`]: [`AlertEngine`], which ties them together per patient.
//!
//! # How the engine reads its inputs
//!
//! - **Observation sets.** [`AlertEngine::on_observation_set`] takes the readings that arrived
//!   together (the daemon passes each patient's readings of one committed ingest batch; a
//!   device message with one effective time is one frame and always committed whole). Every
//!   reading becomes the latest value first (threshold rules see each, in order), then NEWS2 is
//!   evaluated once, so no event of the set claims a parameter of the set is missing.
//!   [`AlertEngine::on_reading`] is a set of one: spot-check devices sending one parameter at a
//!   time combine within the freshness window as before, and a red score is never held back
//!   waiting for the rest of a set.
//! - **Which value counts.** Only readings that pass [`crate::reading::Reading::validate`], carry a
//!   number or ACVPU code (never a [`crate::reading::Value::Absent`]) and no
//!   [`engine::DISQUALIFYING_FLAGS`] (sensor off, probe disconnected, sensor fault, searching,
//!   out of track). Observation time is the device time (clamped to `now`; receipt time when
//!   absent or flagged `device_clock_suspect`). A value is *fresh* when observed at most
//!   `news2_freshness_secs` (default 30 min) before `now`. Older readings (late uploads of
//!   stored records) are history: they reach the platform but drive no local alert.
//! - **NEWS2 inputs.** Respiration from `respiratory_rate`; SpO2 from `spo2` on the patient's
//!   configured scale (never inferred); air/oxygen = oxygen if the config says `on_oxygen` **or**
//!   the latest fresh `inspired_oxygen` is > 0 l/min (the more cautious of the two; a 0 l/min
//!   reading cannot override a prescription); systolic from `systolic_bp`; pulse from the more
//!   recent of `pulse_rate` and `heart_rate`, `pulse_rate` winning a tie (NEWS2 charts the
//!   pulse); consciousness from `acvpu`; temperature from `body_temperature` (°F converted).
//!   Values are rounded to the chart's precision before banding (see [`news2`]).
//! - **NEWS2 total only when complete.** A total, band and response exist only when all seven
//!   parameters are fresh (clinical.md §2.5). A single-parameter score of 3 raises its own
//!   alert (`news2:red:{parameter}`, medium) whether or not the set is complete, and its event
//!   names the parameters that are missing. Every NEWS2 event of a complete set carries the
//!   total, band and response (a red event names the band that results, e.g. low-medium) and
//!   the observed values behind the score. The aggregate alert (`news2:aggregate`) is medium
//!   for 5–6 and high for >= 7 (escalating and de-escalating in place); totals 0–4 raise nothing
//!   (ward-based response, i.e. routine review).
//! - **Threshold persistence is what the readings show.** A rule raises when consecutive
//!   breaching readings span `persist_secs` by their observation times, and clears when
//!   consecutive clearing readings span `clear_after_secs`; time alone never moves it, so a
//!   single spot reading never satisfies a persistence. Texts state the readings and the span
//!   ("2 readings over 75 s"). Defaults follow the patient's SpO2 scale
//!   ([`config::default_rules`]).
//! - **Absence never clears.** A stale or missing parameter keeps the last evidence: clinical
//!   alerts clear only on fresh normal values (after the settle / clear delay). Silence is a
//!   technical alarm of its own.
//!
//! # NEWS2 scores for publication
//!
//! [`AlertEngine::on_observation_set`] returns a [`ReadingOutcome`] whose `news2` is set when the
//! set held a NEWS2 input and leaves a complete fresh picture whose sub-scores changed (or whose last
//! published score is older than the freshness window). It carries the sub-scores, SNOMED codes
//! and the ObsRefs it was derived from, for the FHIR total-score Observation.
//! [`AlertEngine::news2`] gives the current picture at any time.
//!
//! # What this module deliberately does not do
//!
//! Decide who is notified or how (the platform does), deliver events (the outbox and uplink do),
//! validate units and ranges (ingest does, and reports rejections here), or store anything (the
//! caller persists [`EngineState`]). It has no notion of acknowledging or silencing an alarm:
//! on a remote-monitoring gateway nobody is at the bedside to press a button, so that belongs
//! to the platform's workflow.

pub mod config;
pub mod engine;
pub mod event;
pub mod lifecycle;
pub mod news2;
pub mod technical;
pub mod threshold;

#[cfg(test)]
mod tests;

pub use config::{
    default_home_rules, default_rules, AlertConfigError, ConfigProblem, Direction,
    PatientAlertConfig, Priority, TechnicalConfig, ThresholdRule,
};
pub use engine::{
    ActiveAlert, AlertEngine, EngineState, News2Partial, News2Score, News2Status, ReadingOutcome,
    SetReading,
};
pub use event::{AlertEvent, AlertKind, TechnicalCondition, SCHEMA_VERSION};
pub use lifecycle::Transition;
pub use news2::{ClinicalResponse, News2Parameter, RiskBand, Spo2Scale};

/// Version of the rule set (scoring, defaults, lifecycle semantics). Carried in every event.
/// Bump it on any change that could change an event for the same inputs, and record the
/// change in docs/alerts.md.
pub const RULES_VERSION: &str = "vitalgate-alerts/2.0.0";

/// An opaque reference the caller gives each reading (e.g. the FHIR Observation id).
pub type ObsRef = String;

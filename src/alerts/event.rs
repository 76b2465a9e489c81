//! [`AlertEvent`]: what the engine emits, one per lifecycle transition. Its JSON form is a
//! public contract (the payload on `rpm/v1/gw/{gw}/alert`), described by
//! `schemas/alert-event.v2.json`; a field is only ever added as optional within `v2`.
//! v2 keeps every v1 field as it was and adds `threshold.evidence` and the presence rules for
//! NEWS2 (docs/alerts.md "Event contract" has the compatibility note).
//!
//! Events identify the patient by the pseudonymous id the engine was built with, never by
//! NHS Number (the engine refuses ids that look like one). They carry everything a reviewer
//! needs to see why the alert fired without re-running the rules: values with their units,
//! the thresholds, the NEWS2 breakdown, the opaque references of the readings involved and the
//! rules version.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::reading::Metric;

use super::config::{Direction, Priority};
use super::lifecycle::Transition;
use super::news2::{ClinicalResponse, News2Parameter, RiskBand, Spo2Scale};

/// Schema identifier carried in every event (`schema_version`).
pub const SCHEMA_VERSION: &str = "alert-event.v2";

/// What raised the alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A NEWS2 aggregate band or single-parameter red score.
    News2,
    /// A per-patient threshold rule.
    Threshold,
    /// An equipment problem (no clinical judgement).
    Technical,
}

/// One value involved, exactly as the device gave it plus its canonical equivalent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservedValue {
    pub metric: Metric,
    /// The device's digits (`"37.60"`), or the ACVPU code.
    pub value: String,
    /// UCUM code as sent, absent for ACVPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The value in the metric's canonical unit (what rules compare), absent for ACVPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical: Option<f64>,
    /// When it was observed (device time, or receipt time when the device gave none).
    #[serde(with = "time::serde::rfc3339")]
    pub observed_at: OffsetDateTime,
    pub obs_ref: String,
}

/// The rule behind a threshold alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdDetail {
    pub rule_id: String,
    pub direction: Direction,
    /// In the metric's canonical unit.
    pub limit: f64,
    pub hysteresis: f64,
    /// The value at which the alert may clear (`limit -/+ hysteresis`).
    pub clear_at: f64,
    pub persist_secs: u64,
    pub clear_after_secs: u64,
    /// Canonical unit of `limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// What the readings behind this transition show (absent only when the rule was removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<ThresholdEvidence>,
}

/// The run of consecutive readings behind a threshold transition: beyond the limit for a
/// raise, in the clearing zone for a clear. A rule with persistence raises only when
/// `span_secs >= persist_secs` (the data covers the window); the text says exactly this.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdEvidence {
    pub readings: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub first_observed_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_observed_at: OffsetDateTime,
    /// Seconds from the first to the last reading (observation times).
    pub span_secs: u64,
}

/// One scored NEWS2 parameter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubScore {
    pub parameter: News2Parameter,
    pub score: u8,
    /// The banded value as used: rounded chart value (`"36.1"`, `"92"`), `"A"`, `"air"`/`"oxygen"`.
    pub value: String,
    /// SNOMED CT sub-score code (clinical.md §2.4).
    pub snomed: &'static str,
    /// Reading the value came from; absent for air/oxygen taken from the patient config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub obs_ref: Option<String>,
}

/// The NEWS2 picture at the time of an event: complete (with total) or partial.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct News2Breakdown {
    pub scale: Spo2Scale,
    /// Only when all seven parameters are fresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub band: Option<RiskBand>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ClinicalResponse>,
    /// The RCP Chart 2 / Chart 4 wording of `response`, for a person reading the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_text: Option<&'static str>,
    pub sub_scores: Vec<SubScore>,
    /// Parameters without a fresh valid value (empty when complete).
    pub missing: Vec<News2Parameter>,
}

/// Which technical condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TechnicalCondition {
    DeviceSilent,
    SensorOff,
    ProbeDisconnected,
    LowBattery,
    RepeatedRejections,
    OutboxNearFull,
    ClockNotSynchronised,
    /// The outbox's file system is full: nothing new can be stored.
    StorageFull,
    /// A batch could not be stored for a permanent reason (a constraint, the schema).
    StorageError,
    /// The audit log is not what the hub wrote (see `crate::audit`).
    AuditChainBroken,
    /// The outbox is near `store.max_bytes` with only undelivered rows left (`store::cap`).
    StorageCap,
}

/// Facts behind a technical alarm; only the fields relevant to the condition are present.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TechnicalDetail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<TechnicalCondition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_interval_secs: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_seen: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejections_in_window: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_depth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_capacity: Option<u64>,
}

/// One lifecycle transition of one alert. See `schemas/alert-event.v2.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: &'static str,
    /// [`super::RULES_VERSION`] of the engine that produced it.
    pub rules_version: &'static str,
    /// Unique per event, deterministic (UUID v5 of alert id, transition, priority, time).
    pub event_id: String,
    /// Stable for the whole episode raised -> ... -> cleared (UUID v5 of patient, rule, raise time).
    pub alert_id: String,
    pub transition: Transition,
    /// Priority after the transition; for `cleared`, the priority it had.
    pub priority: Priority,
    /// Priority before, for escalations, de-escalations and clears.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_priority: Option<Priority>,
    pub kind: AlertKind,
    /// Stable rule key, e.g. `threshold:spo2_low`, `news2:aggregate`,
    /// `news2:red:respiration_rate`, `technical:device_silent:ox-1`.
    pub rule: String,
    /// Pseudonymous patient id (never an NHS Number).
    pub patient: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// Values behind this transition: for NEWS2, one per scored parameter from a reading (the
    /// red parameter first); for thresholds, the first and latest reading of the run; may be
    /// empty for technical alarms.
    pub values: Vec<ObservedValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<ThresholdDetail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub news2: Option<News2Breakdown>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub technical: Option<TechnicalDetail>,
    /// Opaque references (e.g. FHIR Observation ids) of the readings that caused it.
    pub obs_refs: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub raised_at: OffsetDateTime,
    /// When this transition happened (the engine's `now`).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// One line for a person: what, how bad, what to do.
    pub text: String,
}

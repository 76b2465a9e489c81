//! Per-patient alert configuration: the NEWS2 patient context, threshold rules and the
//! technical-alarm settings, with validation that names the offending key.
//!
//! The types mirror what a clinician (or the platform, over fleet config) writes, so they are
//! `serde` types with `deny_unknown_fields`: a misspelt key (`persit_secs`) is an error, never a
//! silently ignored setting. [`PatientAlertConfig::validate`] collects every problem at once,
//! each one naming the key (`rules[2].below`), the value and what to do.
//!
//! Durations are whole seconds (`*_secs`) so the TOML is unambiguous and the state machine in
//! [`super::lifecycle`] needs no clock arithmetic that could overflow (every duration is capped
//! at [`MAX_DURATION_SECS`]).
//!
//! This module does not decide what the defaults mean clinically beyond the documented
//! rationale below: the clinical safety case (docs/alerts.md) is where they are signed off.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::reading::Metric;

use super::news2::Spo2Scale;

/// The longest duration any setting may take (7 days). Anything longer is a typo or a
/// misunderstanding (for example milliseconds given as seconds) and is refused.
pub const MAX_DURATION_SECS: u64 = 7 * 24 * 3600;

/// Alarm priority, after IEC 60601-1-8: `high` needs an immediate response, `medium` a prompt
/// one, `low` awareness. Ordered `low < medium < high`, so "escalation" is "priority goes up".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Medium,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of the limit is abnormal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Abnormal when the value is strictly greater than the limit.
    Above,
    /// Abnormal when the value is strictly less than the limit.
    Below,
}

/// One per-patient threshold rule, as written in config:
///
/// ```toml
/// [[rules]]
/// id = "spo2_low"
/// metric = "spo2"
/// below = 93            # abnormal when SpO2 < 93 %
/// persist_secs = 60     # readings must show it over 60 s before the alert is raised
/// hysteresis = 2        # clears only at SpO2 >= 95 %
/// clear_after_secs = 300
/// priority = "high"
/// ```
///
/// Exactly one of `above` / `below` is given, in the metric's canonical unit
/// ([`Metric::canonical_unit`]); readings in other units are converted before comparing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    /// Stable name of the rule, `[a-z0-9_-]`, unique per patient; part of the alert id.
    pub id: String,
    pub metric: Metric,
    /// Abnormal when the value is strictly above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Abnormal when the value is strictly below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// How long consecutive abnormal readings (no normal one in between) must span, by their
    /// observation times, before the alert is raised: the data must cover it, so a single
    /// reading never does. 0 = on the first abnormal reading (spot-check devices).
    #[serde(default)]
    pub persist_secs: u64,
    /// Distance back past the limit the value must reach before the alert can clear
    /// (`above = 130, hysteresis = 10` clears at <= 120). Same unit as the limit.
    #[serde(default)]
    pub hysteresis: f64,
    /// How long consecutive readings in the clearing zone must span before the alert clears
    /// (0 = one reading).
    #[serde(default)]
    pub clear_after_secs: u64,
    pub priority: Priority,
    /// For an SpO2 rule of a Scale 2 patient only: a clinician intends this rule to alarm
    /// inside the prescribed 88–92 % target range. Without it such a rule is refused (see
    /// [`PatientAlertConfig::validate`] and docs/alerts.md "SpO2 Scale 2").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inside_scale2_target: bool,
}

impl ThresholdRule {
    /// The direction and the limit; `None` only for a rule that failed validation.
    pub fn limit(&self) -> Option<(Direction, f64)> {
        match (self.above, self.below) {
            (Some(a), None) => Some((Direction::Above, a)),
            (None, Some(b)) => Some((Direction::Below, b)),
            _ => None,
        }
    }
}

/// Technical alarm settings (alarms about the equipment, not the patient).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TechnicalConfig {
    /// A sensor-off / probe-disconnected flag must persist this long before it alarms, so a
    /// patient adjusting the probe is not an alarm.
    pub sensor_off_after_secs: u64,
    /// This many rejected (implausible) readings from one device and metric ...
    pub rejections_to_alarm: u32,
    /// ... within this window raise the "implausible values" alarm.
    pub rejection_window_secs: u64,
    /// Outbox fill (percent of capacity) that raises a medium alarm ...
    pub outbox_warn_percent: u8,
    /// ... that escalates it to high ...
    pub outbox_high_percent: u8,
    /// ... and below which it clears (hysteresis).
    pub outbox_clear_percent: u8,
    /// The clock must be unsynchronised this long before it alarms (a Pi has no RTC and is
    /// unsynchronised for a while after every boot).
    pub clock_unsynced_after_secs: u64,
    /// How long a resolved technical condition (battery, sensor, rejections, outbox) must stay
    /// resolved before its alarm clears, so a flag that flickers does not flap.
    pub clear_after_secs: u64,
}

impl Default for TechnicalConfig {
    fn default() -> Self {
        TechnicalConfig {
            sensor_off_after_secs: 120,
            rejections_to_alarm: 3,
            rejection_window_secs: 600,
            outbox_warn_percent: 80,
            outbox_high_percent: 95,
            outbox_clear_percent: 70,
            clock_unsynced_after_secs: 600,
            clear_after_secs: 300,
        }
    }
}

/// Everything the engine needs to know about one patient.
///
/// ```toml
/// spo2_scale = "scale_1"        # "scale_2" only on documented hypercapnic respiratory failure
/// on_oxygen = false
/// news2_freshness_secs = 1800
/// news2_settle_secs = 1800
/// news2_set_hold_secs = 2     # one device's set sent as several messages: wait this long for the rest
/// # rules omitted: default_rules(spo2_scale); `rules = []` means no threshold rules at all
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawPatientAlertConfig")]
pub struct PatientAlertConfig {
    /// NEWS2 SpO2 scale. Set by a clinician; the engine never infers it (clinical.md §2.2).
    #[serde(default)]
    pub spo2_scale: Spo2Scale,
    /// The patient is prescribed supplemental oxygen (NEWS2 "air or oxygen?").
    #[serde(default)]
    pub on_oxygen: bool,
    /// A reading counts towards NEWS2 (and threshold rules) only if observed at most this long
    /// before `now`.
    #[serde(default = "default_news2_freshness_secs")]
    pub news2_freshness_secs: u64,
    /// How long a lower NEWS2 band (or a sub-score below 3) must hold before a NEWS2 alert
    /// de-escalates or clears.
    #[serde(default = "default_news2_settle_secs")]
    pub news2_settle_secs: u64,
    /// How long (gateway time) readings from one device with one device time wait for the
    /// rest of their observation set before NEWS2 scores what arrived (0 = never wait).
    /// Threshold rules never wait.
    #[serde(default = "default_news2_set_hold_secs")]
    pub news2_set_hold_secs: u64,
    /// Threshold rules. Omitted in config: [`default_rules`] for the patient's `spo2_scale`.
    pub rules: Vec<ThresholdRule>,
    pub technical: TechnicalConfig,
}

/// [`PatientAlertConfig`] as written: `rules` omitted is told apart from `rules = []`, so the
/// defaults can follow the patient's SpO2 scale (issue 13 point 3).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPatientAlertConfig {
    #[serde(default)]
    spo2_scale: Spo2Scale,
    #[serde(default)]
    on_oxygen: bool,
    #[serde(default = "default_news2_freshness_secs")]
    news2_freshness_secs: u64,
    #[serde(default = "default_news2_settle_secs")]
    news2_settle_secs: u64,
    #[serde(default = "default_news2_set_hold_secs")]
    news2_set_hold_secs: u64,
    #[serde(default)]
    rules: Option<Vec<ThresholdRule>>,
    #[serde(default)]
    technical: TechnicalConfig,
}

impl From<RawPatientAlertConfig> for PatientAlertConfig {
    fn from(r: RawPatientAlertConfig) -> Self {
        PatientAlertConfig {
            spo2_scale: r.spo2_scale,
            on_oxygen: r.on_oxygen,
            news2_freshness_secs: r.news2_freshness_secs,
            news2_settle_secs: r.news2_settle_secs,
            news2_set_hold_secs: r.news2_set_hold_secs,
            rules: r.rules.unwrap_or_else(|| default_rules(r.spo2_scale)),
            technical: r.technical,
        }
    }
}

fn default_news2_freshness_secs() -> u64 {
    30 * 60
}

fn default_news2_settle_secs() -> u64 {
    30 * 60
}

/// Longest accepted `news2_set_hold_secs`: a red score may wait for the rest of its set, not
/// for a clinician's attention span.
pub const MAX_SET_HOLD_SECS: u64 = 60;

fn default_news2_set_hold_secs() -> u64 {
    2
}

impl Default for PatientAlertConfig {
    /// Scale 1, on air, 30-minute freshness and settle, [`default_home_rules`].
    fn default() -> Self {
        PatientAlertConfig {
            spo2_scale: Spo2Scale::Scale1,
            on_oxygen: false,
            news2_freshness_secs: default_news2_freshness_secs(),
            news2_settle_secs: default_news2_settle_secs(),
            news2_set_hold_secs: default_news2_set_hold_secs(),
            rules: default_home_rules(),
            technical: TechnicalConfig::default(),
        }
    }
}

/// One problem in a [`PatientAlertConfig`], naming the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct ConfigProblem {
    /// Path of the key, e.g. `rules[2].below`.
    pub key: String,
    /// The offending value as written.
    pub value: String,
    /// What is wrong and what to do.
    pub reason: String,
}

/// Why an [`super::AlertEngine`] could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlertConfigError {
    #[error("invalid alert configuration: {}", join(.0))]
    Invalid(Vec<ConfigProblem>),
    #[error("patient id {0:?}: must be a pseudonymous id, not empty and never an NHS Number (10 digits); use the platform's pseudonym")]
    PatientId(String),
}

fn join(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl PatientAlertConfig {
    /// Checks every key; returns all problems, not just the first.
    pub fn validate(&self) -> Result<(), AlertConfigError> {
        let mut problems = Vec::new();
        let mut dur = |key: &str, v: u64, min: u64| {
            if v < min || v > MAX_DURATION_SECS {
                problems.push(ConfigProblem {
                    key: key.to_string(),
                    value: v.to_string(),
                    reason: format!("must be between {min} and {MAX_DURATION_SECS} seconds"),
                });
            }
        };
        dur("news2_freshness_secs", self.news2_freshness_secs, 60);
        dur("news2_settle_secs", self.news2_settle_secs, 0);
        let t = &self.technical;
        dur(
            "technical.sensor_off_after_secs",
            t.sensor_off_after_secs,
            0,
        );
        dur(
            "technical.rejection_window_secs",
            t.rejection_window_secs,
            1,
        );
        dur(
            "technical.clock_unsynced_after_secs",
            t.clock_unsynced_after_secs,
            0,
        );
        dur("technical.clear_after_secs", t.clear_after_secs, 0);
        if !(1..=10_000).contains(&t.rejections_to_alarm) {
            problems.push(ConfigProblem {
                key: "technical.rejections_to_alarm".into(),
                value: t.rejections_to_alarm.to_string(),
                reason: "must be 1..=10000 rejections".into(),
            });
        }
        let pct_ok = t.outbox_clear_percent < t.outbox_warn_percent
            && t.outbox_warn_percent <= t.outbox_high_percent
            && t.outbox_high_percent <= 100;
        if !pct_ok {
            problems.push(ConfigProblem {
                key: "technical.outbox_warn_percent".into(),
                value: format!(
                    "clear {} / warn {} / high {}",
                    t.outbox_clear_percent, t.outbox_warn_percent, t.outbox_high_percent
                ),
                reason:
                    "need outbox_clear_percent < outbox_warn_percent <= outbox_high_percent <= 100"
                        .into(),
            });
        }
        if self.news2_set_hold_secs > MAX_SET_HOLD_SECS {
            problems.push(ConfigProblem {
                key: "news2_set_hold_secs".into(),
                value: self.news2_set_hold_secs.to_string(),
                reason: format!(
                    "must be at most {MAX_SET_HOLD_SECS} seconds: it delays NEWS2 alerts of a set still arriving"
                ),
            });
        }
        let mut seen = BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            validate_rule(i, r, &mut seen, &mut problems);
            if self.spo2_scale == Spo2Scale::Scale2 {
                check_scale2_target(i, r, &mut problems);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AlertConfigError::Invalid(problems))
        }
    }
}

fn validate_rule(
    i: usize,
    r: &ThresholdRule,
    seen: &mut BTreeSet<String>,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut bad = |field: &str, value: String, reason: String| {
        problems.push(ConfigProblem {
            key: format!("rules[{i}].{field}"),
            value,
            reason,
        });
    };
    let id_ok = !r.id.is_empty()
        && r.id.len() <= 64
        && r.id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !id_ok {
        bad(
            "id",
            format!("{:?}", r.id),
            "use 1 to 64 characters from a-z, 0-9, '_' and '-'".into(),
        );
    } else if !seen.insert(r.id.clone()) {
        bad(
            "id",
            format!("{:?}", r.id),
            "duplicate rule id; each rule needs its own id (it is part of the alert id)".into(),
        );
    }
    let Some((lo, hi)) = r.metric.plausible_range() else {
        bad(
            "metric",
            r.metric.to_string(),
            "threshold rules need a numeric metric; ACVPU is scored by NEWS2".into(),
        );
        return;
    };
    match (r.above, r.below) {
        (Some(_), Some(_)) => bad(
            "above",
            "(both above and below)".into(),
            "give exactly one of `above` or `below`; write two rules for a band".into(),
        ),
        (None, None) => bad(
            "above",
            "(missing)".into(),
            "give exactly one of `above` or `below`".into(),
        ),
        (Some(v), None) | (None, Some(v)) => {
            let field = if r.above.is_some() { "above" } else { "below" };
            if !(v.is_finite() && v >= lo && v <= hi) {
                bad(
                    field,
                    v.to_string(),
                    format!(
                        "must be a number within the plausible range of {} ({lo}..={hi} {})",
                        r.metric,
                        r.metric.canonical_unit().map(|u| u.ucum()).unwrap_or("")
                    ),
                );
            }
        }
    }
    if !(r.hysteresis.is_finite() && r.hysteresis >= 0.0 && r.hysteresis <= (hi - lo)) {
        bad(
            "hysteresis",
            r.hysteresis.to_string(),
            "must be a non-negative number in the metric's canonical unit".into(),
        );
    }
    for (field, v) in [
        ("persist_secs", r.persist_secs),
        ("clear_after_secs", r.clear_after_secs),
    ] {
        if v > MAX_DURATION_SECS {
            bad(
                field,
                v.to_string(),
                format!("must be at most {MAX_DURATION_SECS} seconds"),
            );
        }
    }
}

/// The prescribed SpO2 target range of a NEWS2 Scale 2 patient (clinical.md §2.2: hypercapnic
/// respiratory failure, target 88–92 %); Scale 2 scores 0 anywhere in it.
pub const SCALE2_TARGET: (f64, f64) = (88.0, 92.0);

/// Refuses an SpO2 rule that would alarm inside the Scale 2 target range, unless the rule says
/// a clinician intends it (`inside_scale2_target = true`). Why refuse rather than warn:
/// docs/alerts.md "SpO2 Scale 2". The problem names both settings.
fn check_scale2_target(i: usize, r: &ThresholdRule, problems: &mut Vec<ConfigProblem>) {
    if r.metric != Metric::Spo2 || r.inside_scale2_target {
        return;
    }
    let (lo, hi) = SCALE2_TARGET;
    let (field, v, alarms_at) = match (r.above, r.below) {
        (None, Some(b)) if b.is_finite() && b > lo => ("below", b, format!("{lo} %")),
        (Some(a), None) if a.is_finite() && a < hi => ("above", a, format!("{hi} %")),
        _ => return,
    };
    problems.push(ConfigProblem {
        key: format!("rules[{i}].{field}"),
        value: v.to_string(),
        reason: format!(
            "contradicts spo2_scale = \"scale_2\": rule {:?} would alarm at {alarms_at}, inside the prescribed Scale 2 target range of {lo}-{hi} % where NEWS2 scores 0; \
             use {field} = {} (or omit `rules` to get the Scale 2 defaults), or set rules[{i}].inside_scale2_target = true if a clinician intends alarms inside the target range",
            r.id,
            if field == "below" { lo } else { hi },
        ),
    });
}

/// The default threshold rules for a patient on `scale`: [`default_home_rules`] for Scale 1;
/// for Scale 2 the same rules with `spo2_low` moved to the bottom of the prescribed target
/// range (SpO2 < 88 %, clears at >= 90 %), so no default rule alarms inside 88–92 %.
pub fn default_rules(scale: Spo2Scale) -> Vec<ThresholdRule> {
    let mut rules = default_home_rules();
    if scale == Spo2Scale::Scale2 {
        for r in rules.iter_mut().filter(|r| r.id == "spo2_low") {
            // Below the prescribed target, sustained: the Scale 2 counterpart of the Scale 1
            // rule (one band above the NEWS2 Scale 2 red score, <= 83 %). Same persistence,
            // hysteresis and priority.
            r.below = Some(SCALE2_TARGET.0);
        }
    }
    rules
}

/// Threshold rules a clinician would accept for a home hub, **for a NEWS2 Scale 1 patient**
/// ([`default_rules`] gives Scale 2 patients, whose target is 88–92 %, their own `spo2_low`).
///
/// They complement NEWS2 rather than repeat it: the engine already raises every NEWS2
/// single-parameter "red" score (RR <= 8 or >= 25, SpO2 <= 91 on Scale 1, SBP <= 90 or >= 220,
/// pulse <= 40 or >= 131, temperature <= 35.0 °C, any CVPU) even when the other parameters are
/// missing, and the aggregate bands when the set is complete. These rules catch what matters at
/// home below the red scores, with the devices a home patient actually has (often just an
/// oximeter, a BP cuff and a thermometer), tuned against alarm fatigue: persistence on
/// continuous signals, hysteresis and a clear delay on every rule. Rationale per rule below and
/// in docs/alerts.md.
pub fn default_home_rules() -> Vec<ThresholdRule> {
    let rule = |id: &str, metric: Metric, dir: Direction, limit: f64| ThresholdRule {
        id: id.to_string(),
        metric,
        above: (dir == Direction::Above).then_some(limit),
        below: (dir == Direction::Below).then_some(limit),
        persist_secs: 0,
        hysteresis: 0.0,
        clear_after_secs: 0,
        priority: Priority::Medium,
        inside_scale2_target: false,
    };
    vec![
        // SpO2 <= 92 %: NHS England "pulse oximetry at home" tells patients at 92 % or less
        // to seek urgent help, one point above the NEWS2 Scale 1 red score. High. 60 s of
        // persistence rejects motion dips on a continuous oximeter; clears only at >= 95 %
        // (hysteresis 2) held for 5 minutes.
        ThresholdRule {
            persist_secs: 60,
            hysteresis: 2.0,
            clear_after_secs: 300,
            priority: Priority::High,
            ..rule("spo2_low", Metric::Spo2, Direction::Below, 93.0)
        },
        // Pulse >= 121 /min (NEWS2 scores 2) sustained 5 minutes: a patient at rest at home
        // with a sustained tachycardia needs a prompt look even when the other NEWS2
        // parameters are unknown. Medium; clears at <= 110 held 5 minutes.
        ThresholdRule {
            persist_secs: 300,
            hysteresis: 10.0,
            clear_after_secs: 300,
            ..rule("pulse_high", Metric::PulseRate, Direction::Above, 120.0)
        },
        // Systolic >= 180 mmHg: NICE NG136 threshold for same-day specialist review (NEWS2
        // only scores >= 220). Cuffs are spot checks: no persistence; clears at <= 170.
        ThresholdRule {
            hysteresis: 10.0,
            ..rule("systolic_high", Metric::SystolicBp, Direction::Above, 179.0)
        },
        // Temperature >= 38.1 °C: fever (NEWS2 scores only 1, but at home fever may be sepsis
        // or, after chemotherapy, neutropenic sepsis, which needs same-day action). Spot
        // check; clears at <= 37.5 °C.
        ThresholdRule {
            hysteresis: 0.5,
            ..rule(
                "temperature_high",
                Metric::BodyTemperature,
                Direction::Above,
                38.0,
            )
        },
    ]
}

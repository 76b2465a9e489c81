//! [`AlertEngine`]: one per patient. Feeds readings, rejections, outbox depth and clock state
//! through NEWS2, the threshold rules and the technical conditions, and drives one lifecycle
//! [`Tracker`] per alert key. All state is in [`EngineState`] (serde), so the daemon persists it
//! with the readings and a restart neither loses nor re-raises an alert.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::reading::{Acvpu, Decimal, Flag, Metric, Reading, Unit, Value};

use super::config::{AlertConfigError, PatientAlertConfig, Priority};
use super::event::{
    AlertEvent, AlertKind, News2Breakdown, ObservedValue, SubScore, TechnicalCondition,
    TechnicalDetail, ThresholdDetail, ThresholdEvidence, SCHEMA_VERSION,
};
use super::lifecycle::{event_id, Change, Timing, Tracker, Transition};
use super::news2::{
    risk_band, round_to_chart, score_air_or_oxygen, score_consciousness, score_pulse,
    score_respiration_rate, score_spo2, score_systolic_bp, score_temperature, ClinicalResponse,
    News2Parameter, RiskBand, Spo2Scale,
};
use super::threshold::Evidence;
use super::{technical, threshold, RULES_VERSION};

/// Flags that make a value not count at all (not fresh for NEWS2, not evaluated by threshold
/// rules): the device itself says there is no valid measurement. Other flags (motion, low
/// perfusion, questionable, ...) keep the value: a possibly-wrong abnormal value is shown to a
/// clinician rather than silently dropped.
pub const DISQUALIFYING_FLAGS: [Flag; 5] = [
    Flag::SensorOff,
    Flag::ProbeDisconnected,
    Flag::SensorFault,
    Flag::Searching,
    Flag::OutOfTrack,
];

/// At most this many observation references are kept per alert (first and latest ones).
const MAX_REFS: usize = 8;
/// At most this many rejection times are kept per device and metric.
const MAX_REJECTIONS: usize = 256;

/// Which rule an alert key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuleRef {
    News2Aggregate,
    News2Red {
        parameter: News2Parameter,
    },
    Threshold {
        rule_id: String,
    },
    Technical {
        condition: TechnicalCondition,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metric: Option<Metric>,
    },
}

impl RuleRef {
    /// The stable key (part of the alert id, and `rule` in events).
    pub fn key(&self) -> String {
        match self {
            RuleRef::News2Aggregate => "news2:aggregate".into(),
            RuleRef::News2Red { parameter } => format!("news2:red:{}", parameter.as_str()),
            RuleRef::Threshold { rule_id } => format!("threshold:{rule_id}"),
            RuleRef::Technical {
                condition,
                device,
                metric,
            } => technical::key(*condition, device.as_deref(), *metric),
        }
    }

    pub fn kind(&self) -> AlertKind {
        match self {
            RuleRef::News2Aggregate | RuleRef::News2Red { .. } => AlertKind::News2,
            RuleRef::Threshold { .. } => AlertKind::Threshold,
            RuleRef::Technical { .. } => AlertKind::Technical,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Slot {
    rule: RuleRef,
    tracker: Tracker,
    timing: Timing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metric: Option<Metric>,
    /// Readings behind the current evidence (reset when the desired level changes).
    #[serde(default)]
    refs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LatestValue {
    Number(Decimal),
    Code(Acvpu),
}

/// The latest valid reading of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Latest {
    value: LatestValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unit: Option<Unit>,
    #[serde(with = "time::serde::rfc3339")]
    observed_at: OffsetDateTime,
    obs_ref: String,
    device: String,
}

impl Latest {
    fn observed(&self, metric: Metric) -> ObservedValue {
        let (value, canonical) = match self.value {
            LatestValue::Number(d) => {
                (d.to_string(), self.unit.map(|u| u.to_canonical(d.to_f64())))
            }
            LatestValue::Code(c) => (format!("{c:?}"), None),
        };
        ObservedValue {
            metric,
            value,
            unit: self.unit.map(|u| u.ucum().to_string()),
            canonical,
            observed_at: self.observed_at,
            obs_ref: self.obs_ref.clone(),
        }
    }

    fn number(&self) -> Option<(Decimal, Unit)> {
        match (self.value, self.unit) {
            (LatestValue::Number(d), Some(u)) => Some((d, u)),
            _ => None,
        }
    }
}

/// Consecutive readings of one threshold rule's metric that all point the same way, with no
/// reading in between that does not and no gap longer than the freshness window. A rule
/// with persistence raises (and clears) only when such a run spans the rule's time: the data
/// must cover the window, a lone spot reading cannot (issue 13 point 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Run {
    kind: Evidence,
    first: Latest,
    last: Latest,
    readings: u32,
    /// References of the run's readings: the first and the latest ones, at most [`MAX_REFS`].
    #[serde(default)]
    refs: Vec<String>,
}

impl Run {
    fn span(&self) -> Duration {
        self.last.observed_at - self.first.observed_at
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DeviceState {
    expected_interval_secs: u64,
    #[serde(with = "time::serde::rfc3339")]
    registered_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    last_seen: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RejectionLog {
    device: String,
    metric: Metric,
    times: Vec<OffsetDateTime>,
    last_reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LastNews2 {
    sub_scores: Vec<u8>,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
}

/// Everything the engine remembers. Opaque; persist it with serde and hand it back to
/// [`AlertEngine::with_state`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EngineState {
    #[serde(default)]
    latest: BTreeMap<Metric, Latest>,
    #[serde(default)]
    slots: BTreeMap<String, Slot>,
    #[serde(default)]
    devices: BTreeMap<String, DeviceState>,
    #[serde(default)]
    rejections: BTreeMap<String, RejectionLog>,
    #[serde(default)]
    last_news2: Option<LastNews2>,
    #[serde(default)]
    outbox: Option<(u64, u64)>,
    /// Per threshold rule id: the current run of readings (see [`Run`]).
    #[serde(default)]
    runs: BTreeMap<String, Run>,
    /// A set from one device with one device time, waiting for the rest of its readings.
    #[serde(default)]
    open_set: Option<OpenSet>,
}

/// An observation set held open: NEWS2 is evaluated when it closes (see
/// [`AlertEngine::on_observation_set`]). Threshold rules are never held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenSet {
    device: String,
    #[serde(with = "time::serde::rfc3339")]
    effective: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    /// NEWS2 input metrics received so far.
    metrics: BTreeSet<Metric>,
}

/// A raised alert, for status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveAlert {
    pub rule: String,
    pub kind: AlertKind,
    pub alert_id: String,
    pub priority: Priority,
    #[serde(with = "time::serde::rfc3339")]
    pub raised_at: OffsetDateTime,
}

/// A complete NEWS2: all seven parameters fresh. What the caller publishes as the FHIR
/// `UKCore-Observation-EarlyWarningTotalScore` (`derived_from` -> `Observation.derivedFrom`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct News2Score {
    pub total: u8,
    pub band: RiskBand,
    pub response: ClinicalResponse,
    /// A 3 in any single parameter.
    pub any_three: bool,
    pub scale: Spo2Scale,
    /// In Chart 1 order, all seven.
    pub sub_scores: Vec<SubScore>,
    /// ObsRefs of the readings the score was derived from.
    pub derived_from: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub computed_at: OffsetDateTime,
}

/// NEWS2 with parameters missing: no total (clinical.md §2.5), the scored ones and what is missing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct News2Partial {
    pub scale: Spo2Scale,
    pub sub_scores: Vec<SubScore>,
    pub missing: Vec<News2Parameter>,
    pub any_three: bool,
}

/// What [`AlertEngine::news2`] reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum News2Status {
    Complete(News2Score),
    Partial(News2Partial),
}

/// What [`AlertEngine::on_reading`] returns.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ReadingOutcome {
    /// Alert transitions this reading caused, in key order.
    pub events: Vec<AlertEvent>,
    /// NEWS2 scores to publish, oldest first: one for each observation set scored here (a held
    /// set closed by this input, then this set) whose picture is complete and fresh and whose
    /// sub-scores changed since the last published score, or whose last one is older than the
    /// freshness window (so a new observation round gets its own score, but a 1 Hz oximeter
    /// does not produce a score per second).
    pub news2: Vec<News2Score>,
}

/// One reading of an observation set: the readings that arrived together (one committed
/// ingest batch, e.g. a full set written in one line by one device), evaluated as a whole by
/// [`AlertEngine::on_observation_set`].
#[derive(Debug, Clone, Copy)]
pub struct SetReading<'a> {
    pub device: &'a str,
    pub reading: &'a Reading,
    /// The caller's opaque reference to it (e.g. the FHIR Observation id).
    pub obs_ref: &'a str,
}

/// The per-patient rules engine. Pure: no IO, no clock (every method takes `now`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEngine {
    patient_id: String,
    cfg: PatientAlertConfig,
    state: EngineState,
}

fn secs(s: u64) -> Duration {
    Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX))
}

/// Whether `id` could be an NHS Number (10 digits once spaces and hyphens are removed). Such
/// ids are refused: events leave the gateway and must carry a pseudonym only.
fn looks_like_nhs_number(id: &str) -> bool {
    let digits: Vec<char> = id.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    digits.len() == 10 && digits.iter().all(|c| c.is_ascii_digit())
}

impl AlertEngine {
    /// A fresh engine. Refuses an invalid config (every problem named) and a patient id that is
    /// empty or looks like an NHS Number.
    pub fn new(
        patient_id: impl Into<String>,
        cfg: PatientAlertConfig,
    ) -> Result<Self, AlertConfigError> {
        Self::with_state(patient_id, cfg, EngineState::default())
    }

    /// An engine resuming from persisted state (alert ids and pending timers carry over), with
    /// the current configuration.
    pub fn with_state(
        patient_id: impl Into<String>,
        cfg: PatientAlertConfig,
        state: EngineState,
    ) -> Result<Self, AlertConfigError> {
        let patient_id = patient_id.into();
        if patient_id.trim().is_empty() || looks_like_nhs_number(&patient_id) {
            return Err(AlertConfigError::PatientId(patient_id));
        }
        cfg.validate()?;
        Ok(AlertEngine {
            patient_id,
            cfg,
            state,
        })
    }

    pub fn patient_id(&self) -> &str {
        &self.patient_id
    }

    pub fn config(&self) -> &PatientAlertConfig {
        &self.cfg
    }

    /// The state to persist.
    pub fn state(&self) -> &EngineState {
        &self.state
    }

    /// Alerts currently raised, in key order.
    pub fn active_alerts(&self) -> Vec<ActiveAlert> {
        self.state
            .slots
            .iter()
            .filter_map(|(k, s)| {
                s.tracker.active.as_ref().map(|a| ActiveAlert {
                    rule: k.clone(),
                    kind: s.rule.kind(),
                    alert_id: a.alert_id.clone(),
                    priority: a.priority,
                    raised_at: a.raised_at,
                })
            })
            .collect()
    }

    /// Declares a device and how often it should send (its interval plus any grace the
    /// caller wants). From `now` on, [`AlertEngine::tick`] raises `device_silent` when it has
    /// been quiet for longer. Re-registering updates the interval and keeps the last-seen time.
    /// Intervals below one second are taken as one second.
    pub fn register_device(
        &mut self,
        now: OffsetDateTime,
        device_id: &str,
        expected_interval: Duration,
    ) {
        let secs = u64::try_from(expected_interval.whole_seconds())
            .unwrap_or(0)
            .max(1);
        let entry = self
            .state
            .devices
            .entry(device_id.to_string())
            .or_insert(DeviceState {
                expected_interval_secs: secs,
                registered_at: now,
                last_seen: None,
            });
        entry.expected_interval_secs = secs;
    }

    /// The devices whose silence this engine tracks (see [`AlertEngine::register_device`]).
    pub fn tracked_devices(&self) -> Vec<String> {
        self.state.devices.keys().cloned().collect()
    }

    /// Stops silence tracking for a device (it was removed from the patient); a raised
    /// `device_silent` alarm for it clears.
    pub fn unregister_device(&mut self, now: OffsetDateTime, device_id: &str) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        if self.state.devices.remove(device_id).is_some() {
            let rule = technical_rule(TechnicalCondition::DeviceSilent, Some(device_id), None);
            self.drive(
                now,
                rule,
                Some(None),
                Timing::default(),
                Some(device_id),
                None,
                None,
                &mut out,
            );
        }
        out
    }

    /// Evaluates one reading that ingest accepted, as an observation set of its own (a
    /// spot-check device sending one parameter at a time). See
    /// [`AlertEngine::on_observation_set`].
    pub fn on_reading(
        &mut self,
        now: OffsetDateTime,
        device_id: &str,
        reading: &Reading,
        obs_ref: &str,
    ) -> ReadingOutcome {
        self.on_observation_set(
            now,
            &[SetReading {
                device: device_id,
                reading,
                obs_ref,
            }],
        )
    }

    /// Evaluates readings that arrived together (one committed batch, or one device's set with
    /// one effective time) **as a whole**: every reading first becomes the patient's latest
    /// value (threshold rules see each reading in order, as persistence needs), then NEWS2 is
    /// evaluated once on the result. So no event of the set claims a parameter is missing
    /// when its reading was in the set, and a set yields at most one NEWS2 score.
    ///
    /// A reading whose value is absent, that fails [`Reading::validate`], or that carries one of
    /// [`DISQUALIFYING_FLAGS`] counts as device activity and feeds the technical alarms, but is
    /// not a value: it neither updates NEWS2 nor the threshold rules. A valid reading observed
    /// more than `news2_freshness_secs` before `now` (e.g. a stored record uploaded late) is
    /// kept out of the rules too: it is history, not the patient's current state.
    pub fn on_observation_set(
        &mut self,
        now: OffsetDateTime,
        set: &[SetReading<'_>],
    ) -> ReadingOutcome {
        let mut out = Vec::new();
        let mut news2 = Vec::new();
        let same_time = one_device_one_time(set);
        // A set held open for the rest of its readings closes when anything else arrives:
        // it is scored on what it had, before this set's readings are in.
        let continues = match (&self.state.open_set, &same_time) {
            (Some(open), Some((device, t))) => open.device == *device && open.effective == *t,
            _ => false,
        };
        if self.state.open_set.is_some() && !continues {
            self.state.open_set = None;
            news2.extend(self.score_news2(now, &mut out));
        }
        let mut inputs = BTreeSet::new();
        for r in set {
            if let Some(metric) = self.accept(now, r, &mut out) {
                if is_news2_input(metric) {
                    inputs.insert(metric);
                }
            }
        }
        if inputs.is_empty() {
            return ReadingOutcome { events: out, news2 };
        }
        // Readings from one device with one device time are one observation set even when
        // the device sent them in several messages: hold its NEWS2 evaluation (at most
        // `news2_set_hold_secs`) until the rest arrives, unless it already holds every
        // measured parameter.
        let hold = self.cfg.news2_set_hold_secs > 0;
        if let Some((device, effective)) = same_time.filter(|_| hold) {
            let (since, mut seen) = match self.state.open_set.take() {
                Some(open) if continues => (open.since, open.metrics),
                _ => (now, BTreeSet::new()),
            };
            seen.extend(inputs);
            if !covers_measured_news2(&seen) {
                self.state.open_set = Some(OpenSet {
                    device: device.to_string(),
                    effective,
                    since,
                    metrics: seen,
                });
                return ReadingOutcome { events: out, news2 };
            }
        }
        news2.extend(self.score_news2(now, &mut out));
        ReadingOutcome { events: out, news2 }
    }

    /// Evaluates NEWS2 on the latest values (alerts into `out`) and returns the score to
    /// publish, when complete and due (changed, or the last one older than the freshness window).
    fn score_news2(
        &mut self,
        now: OffsetDateTime,
        out: &mut Vec<AlertEvent>,
    ) -> Option<News2Score> {
        self.evaluate_news2(now, out);
        let News2Status::Complete(score) = self.news2(now) else {
            return None;
        };
        let subs: Vec<u8> = score.sub_scores.iter().map(|s| s.score).collect();
        let due = match &self.state.last_news2 {
            None => true,
            Some(last) => {
                last.sub_scores != subs || now - last.at >= secs(self.cfg.news2_freshness_secs)
            }
        };
        if !due {
            return None;
        }
        self.state.last_news2 = Some(LastNews2 {
            sub_scores: subs,
            at: now,
        });
        Some(score)
    }

    /// Whether a set is held open waiting for the rest of its readings (the caller should
    /// persist the state, so a restart still scores it).
    pub fn has_open_set(&self) -> bool {
        self.state.open_set.is_some()
    }

    /// One reading of a set: device activity, flag alarms, and, when it is a usable fresh
    /// value newer than the metric's latest, the new latest value and its threshold rules.
    /// Returns the metric when it became the latest value.
    fn accept(
        &mut self,
        now: OffsetDateTime,
        r: &SetReading<'_>,
        out: &mut Vec<AlertEvent>,
    ) -> Option<Metric> {
        let (device_id, reading, obs_ref) = (r.device, r.reading, r.obs_ref);
        self.device_seen(now, device_id, out);
        self.flag_alarms(now, device_id, reading, obs_ref, out);

        let usable = reading.validate().is_ok()
            && !matches!(reading.value, Value::Absent(_))
            && !reading
                .flags
                .iter()
                .any(|f| DISQUALIFYING_FLAGS.contains(f));
        if !usable {
            return None;
        }
        // A valid value from this device and metric ends a run of rejections.
        let rej_rule = technical_rule(
            TechnicalCondition::RepeatedRejections,
            Some(device_id),
            Some(reading.metric),
        );
        self.state.rejections.remove(&rej_rule.key());
        let t = &self.cfg.technical;
        let timing = Timing {
            raise_after_secs: 0,
            settle_after_secs: t.clear_after_secs,
        };
        self.drive(
            now,
            rej_rule,
            Some(None),
            timing,
            Some(device_id),
            Some(reading.metric),
            Some(obs_ref),
            out,
        );

        let observed_at = match reading.device_time {
            Some(t) if !reading.flags.contains(&Flag::DeviceClockSuspect) => t.min(now),
            _ => now,
        };
        if now - observed_at > secs(self.cfg.news2_freshness_secs) {
            return None;
        }
        let value = match reading.value {
            Value::Number(d) => LatestValue::Number(d),
            Value::Code(c) => LatestValue::Code(c),
            Value::Absent(_) => return None,
        };
        if let Some(prev) = self.state.latest.get(&reading.metric) {
            if prev.observed_at > observed_at {
                // An older reading arriving late: the newer one stays the patient's state.
                return None;
            }
        }
        self.state.latest.insert(
            reading.metric,
            Latest {
                value,
                unit: reading.unit,
                observed_at,
                obs_ref: obs_ref.to_string(),
                device: device_id.to_string(),
            },
        );
        self.evaluate_thresholds(now, reading.metric, device_id, obs_ref, out);
        Some(reading.metric)
    }

    /// Records that ingest rejected a reading from `device_id` for `metric` (implausible value,
    /// wrong unit, ...). `rejections_to_alarm` of them within `rejection_window_secs` raise the
    /// `repeated_rejections` alarm, whose text carries `why` of the latest one.
    pub fn on_rejected(
        &mut self,
        now: OffsetDateTime,
        device_id: &str,
        metric: Metric,
        why: &str,
    ) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        self.device_seen(now, device_id, &mut out);
        let rule = technical_rule(
            TechnicalCondition::RepeatedRejections,
            Some(device_id),
            Some(metric),
        );
        let key = rule.key();
        let window = secs(self.cfg.technical.rejection_window_secs);
        let log = self
            .state
            .rejections
            .entry(key)
            .or_insert_with(|| RejectionLog {
                device: device_id.to_string(),
                metric,
                times: Vec::new(),
                last_reason: String::new(),
            });
        log.times.push(now);
        log.times.retain(|t| now - *t <= window);
        if log.times.len() > MAX_REJECTIONS {
            let excess = log.times.len() - MAX_REJECTIONS;
            log.times.drain(..excess);
        }
        log.last_reason = why.chars().take(500).collect();
        let count = log.times.len();
        self.drive_rejections(now, rule, count, &mut out);
        out
    }

    /// Lets time pass: a set held longer than `news2_set_hold_secs` is scored (its
    /// events and NEWS2 score are in the outcome), then device silence, NEWS2 settle delays
    /// and technical-alarm delays that elapsed, rejections leaving their window, alerts of
    /// removed threshold rules. Threshold rules otherwise move only on readings (the data
    /// must cover their windows). Call it regularly (every second or so); it is idempotent for
    /// the same `now`.
    pub fn tick(&mut self, now: OffsetDateTime) -> ReadingOutcome {
        let mut out = Vec::new();
        let mut news2 = Vec::new();
        if self
            .state
            .open_set
            .as_ref()
            .is_some_and(|open| now - open.since >= secs(self.cfg.news2_set_hold_secs))
        {
            self.state.open_set = None;
            news2.extend(self.score_news2(now, &mut out));
        }
        // Device silence.
        let devices: Vec<(String, DeviceState)> = self
            .state
            .devices
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, d) in devices {
            let since = d.last_seen.unwrap_or(d.registered_at);
            let silent = technical::is_silent(now, since, d.expected_interval_secs);
            let rule = technical_rule(TechnicalCondition::DeviceSilent, Some(&id), None);
            let desired = silent.then_some(TechnicalCondition::DeviceSilent.priority());
            self.drive(
                now,
                rule,
                Some(desired),
                Timing::default(),
                Some(&id),
                None,
                None,
                &mut out,
            );
        }
        // Rejections leaving the window.
        let window = secs(self.cfg.technical.rejection_window_secs);
        let logs: Vec<(String, usize)> = self
            .state
            .rejections
            .iter_mut()
            .map(|(k, log)| {
                log.times.retain(|t| now - *t <= window);
                (k.clone(), log.times.len())
            })
            .collect();
        for (key, count) in logs {
            let Some(log) = self.state.rejections.get(&key) else {
                continue;
            };
            let rule = technical_rule(
                TechnicalCondition::RepeatedRejections,
                Some(&log.device.clone()),
                Some(log.metric),
            );
            if count == 0 {
                self.state.rejections.remove(&key);
            }
            self.drive_rejections(now, rule, count, &mut out);
        }
        // Everything else: thresholds (with staleness), NEWS2, flags, outbox, clock.
        let keys: Vec<String> = self.state.slots.keys().cloned().collect();
        for key in keys {
            let Some(slot) = self.state.slots.get(&key) else {
                continue;
            };
            let rule = slot.rule.clone();
            let (device, metric) = (slot.device.clone(), slot.metric);
            match &rule {
                RuleRef::Threshold { rule_id } => {
                    if !self.cfg.rules.iter().any(|r| &r.id == rule_id) {
                        // Rule removed from the configuration: its alert clears now.
                        self.drive(
                            now,
                            rule,
                            Some(None),
                            Timing::default(),
                            device.as_deref(),
                            metric,
                            None,
                            &mut out,
                        );
                        continue;
                    }
                    // Threshold rules move only on readings (the data must cover persistence
                    // and clear delays), never on time alone: a raised alert holds, and a
                    // slot without one (pending evidence from state written by an older
                    // version, which raised on time) is dropped.
                    let raised = slot.tracker.active.is_some();
                    self.drive(
                        now,
                        rule,
                        (!raised).then_some(None),
                        Timing::default(),
                        device.as_deref(),
                        metric,
                        None,
                        &mut out,
                    );
                }
                _ => {
                    let timing = slot.timing;
                    self.drive(
                        now,
                        rule,
                        None,
                        timing,
                        device.as_deref(),
                        metric,
                        None,
                        &mut out,
                    );
                }
            }
        }
        ReadingOutcome { events: out, news2 }
    }

    /// Reports the outbox depth (undelivered items) and capacity.
    pub fn on_outbox_depth(
        &mut self,
        now: OffsetDateTime,
        depth: u64,
        capacity: u64,
    ) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        self.state.outbox = Some((depth, capacity));
        let rule = technical_rule(TechnicalCondition::OutboxNearFull, None, None);
        let raised = self
            .state
            .slots
            .get(&rule.key())
            .is_some_and(|s| s.tracker.active.is_some());
        let desired = technical::outbox_level(depth, capacity, raised, &self.cfg.technical);
        let timing = Timing {
            raise_after_secs: 0,
            settle_after_secs: self.cfg.technical.clear_after_secs,
        };
        self.drive(now, rule, Some(desired), timing, None, None, None, &mut out);
        out
    }

    /// Reports whether the gateway clock is synchronised (e.g. from timedatectl / chrony).
    pub fn on_clock_sync(&mut self, now: OffsetDateTime, synced: bool) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        let c = TechnicalCondition::ClockNotSynchronised;
        let rule = technical_rule(c, None, None);
        let timing = Timing {
            raise_after_secs: self.cfg.technical.clock_unsynced_after_secs,
            settle_after_secs: 0,
        };
        let desired = (!synced).then_some(c.priority());
        self.drive(now, rule, Some(desired), timing, None, None, None, &mut out);
        out
    }

    /// Reports whether the audit log's start check found a new break (raised at once, cleared
    /// at once when a later start finds the break already recorded).
    pub fn on_audit_chain(&mut self, now: OffsetDateTime, broken: bool) -> Vec<AlertEvent> {
        self.on_storage(now, TechnicalCondition::AuditChainBroken, broken)
    }

    /// Reports a storage condition of the gateway (`StorageFull`, `StorageError`): raised
    /// at once when `active`, cleared at once when not.
    pub fn on_storage(
        &mut self,
        now: OffsetDateTime,
        condition: TechnicalCondition,
        active: bool,
    ) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        let rule = technical_rule(condition, None, None);
        let timing = Timing {
            raise_after_secs: 0,
            settle_after_secs: 0,
        };
        let desired = active.then_some(condition.priority());
        self.drive(now, rule, Some(desired), timing, None, None, None, &mut out);
        out
    }

    /// NEWS2 at `now` from the latest fresh valid reading of each parameter: complete with a
    /// total, or partial naming what is missing.
    pub fn news2(&self, now: OffsetDateTime) -> News2Status {
        let params = self.news2_params(now);
        let scale = self.cfg.spo2_scale;
        let sub_scores: Vec<SubScore> = params.values().cloned().collect();
        let any_three = sub_scores.iter().any(|s| s.score == 3);
        let missing: Vec<News2Parameter> = News2Parameter::ALL
            .iter()
            .copied()
            .filter(|p| !params.contains_key(p))
            .collect();
        if !missing.is_empty() {
            return News2Status::Partial(News2Partial {
                scale,
                sub_scores,
                missing,
                any_three,
            });
        }
        let total: u8 = sub_scores.iter().map(|s| s.score).sum();
        let band = risk_band(total, any_three);
        let mut derived_from: Vec<String> = sub_scores
            .iter()
            .filter_map(|s| s.obs_ref.clone())
            .collect();
        derived_from.dedup();
        News2Status::Complete(News2Score {
            total,
            band,
            response: ClinicalResponse::for_score(total, band),
            any_three,
            scale,
            sub_scores,
            derived_from,
            computed_at: now,
        })
    }

    // ----- internals -------------------------------------------------------------------

    fn fresh(&self, metric: Metric, now: OffsetDateTime) -> Option<&Latest> {
        self.state
            .latest
            .get(&metric)
            .filter(|l| now - l.observed_at <= secs(self.cfg.news2_freshness_secs))
    }

    /// Scored parameters (fresh and usable only), keyed in Chart 1 order.
    fn news2_params(&self, now: OffsetDateTime) -> BTreeMap<News2Parameter, SubScore> {
        let scale = self.cfg.spo2_scale;
        let mut out = BTreeMap::new();
        let mut put = |p: News2Parameter, score: u8, value: String, obs_ref: Option<String>| {
            out.insert(
                p,
                SubScore {
                    parameter: p,
                    score,
                    value,
                    snomed: p.snomed_subscore_code(scale),
                    obs_ref,
                },
            );
        };
        let int = |m: Metric| -> Option<(i64, &Latest)> {
            let l = self.fresh(m, now)?;
            let (d, u) = l.number()?;
            Some((round_to_chart(d, u, 0)?, l))
        };
        // Oxygen: the patient context says so, or a fresh inspired_oxygen reading > 0 l/min.
        // Either is enough (a 0 l/min reading cannot override a documented prescription).
        let o2_reading = self.fresh(Metric::InspiredOxygen, now).and_then(|l| {
            let (d, _) = l.number()?;
            Some((d.mantissa > 0, l))
        });
        let on_oxygen = self.cfg.on_oxygen || o2_reading.is_some_and(|(on, _)| on);
        let o2_ref = match o2_reading {
            Some((on, l)) if on || !self.cfg.on_oxygen => Some(l.obs_ref.clone()),
            _ => None,
        };
        put(
            News2Parameter::AirOrOxygen,
            score_air_or_oxygen(on_oxygen),
            if on_oxygen { "oxygen" } else { "air" }.into(),
            o2_ref,
        );
        if let Some((v, l)) = int(Metric::RespiratoryRate) {
            put(
                News2Parameter::RespirationRate,
                score_respiration_rate(v),
                v.to_string(),
                Some(l.obs_ref.clone()),
            );
        }
        if let Some((v, l)) = int(Metric::Spo2) {
            put(
                News2Parameter::OxygenSaturation,
                score_spo2(v, scale, on_oxygen),
                v.to_string(),
                Some(l.obs_ref.clone()),
            );
        }
        if let Some((v, l)) = int(Metric::SystolicBp) {
            put(
                News2Parameter::SystolicBp,
                score_systolic_bp(v),
                v.to_string(),
                Some(l.obs_ref.clone()),
            );
        }
        // Pulse: the more recent of pulse_rate and heart_rate; on equal times pulse_rate wins,
        // because NEWS2 charts the pulse.
        let pulse = match (int(Metric::PulseRate), int(Metric::HeartRate)) {
            (Some(p), Some(h)) => Some(if h.1.observed_at > p.1.observed_at {
                h
            } else {
                p
            }),
            (p, h) => p.or(h),
        };
        if let Some((v, l)) = pulse {
            put(
                News2Parameter::Pulse,
                score_pulse(v),
                v.to_string(),
                Some(l.obs_ref.clone()),
            );
        }
        if let Some(l) = self.fresh(Metric::Acvpu, now) {
            if let LatestValue::Code(c) = l.value {
                put(
                    News2Parameter::Consciousness,
                    score_consciousness(c),
                    format!("{c:?}"),
                    Some(l.obs_ref.clone()),
                );
            }
        }
        if let Some(l) = self.fresh(Metric::BodyTemperature, now) {
            if let Some(tenths) = l.number().and_then(|(d, u)| round_to_chart(d, u, 1)) {
                let shown = Decimal::new(tenths, -1).to_string();
                put(
                    News2Parameter::Temperature,
                    score_temperature(tenths),
                    shown,
                    Some(l.obs_ref.clone()),
                );
            }
        }
        out
    }

    fn breakdown(&self, now: OffsetDateTime) -> News2Breakdown {
        match self.news2(now) {
            News2Status::Complete(s) => News2Breakdown {
                scale: s.scale,
                total: Some(s.total),
                band: Some(s.band),
                response: Some(s.response),
                response_text: Some(s.response.text()),
                sub_scores: s.sub_scores,
                missing: Vec::new(),
            },
            News2Status::Partial(p) => News2Breakdown {
                scale: p.scale,
                total: None,
                band: None,
                response: None,
                response_text: None,
                sub_scores: p.sub_scores,
                missing: p.missing,
            },
        }
    }

    fn evaluate_news2(&mut self, now: OffsetDateTime, out: &mut Vec<AlertEvent>) {
        let timing = Timing {
            raise_after_secs: 0,
            settle_after_secs: self.cfg.news2_settle_secs,
        };
        let params = self.news2_params(now);
        for p in News2Parameter::ALL {
            let rule = RuleRef::News2Red { parameter: p };
            // Fresh value: its score decides. No fresh value: keep the last evidence (never
            // clear a red score because the parameter went unmeasured).
            let desired = params
                .get(&p)
                .map(|s| (s.score == 3).then_some(Priority::Medium));
            let r = params.get(&p).and_then(|s| s.obs_ref.clone());
            let metric = news2_source(p, &self.state.latest);
            let device = metric
                .and_then(|m| self.state.latest.get(&m))
                .map(|l| l.device.clone());
            self.drive(
                now,
                rule,
                desired,
                timing,
                device.as_deref(),
                metric,
                r.as_deref(),
                out,
            );
        }
        let desired = match self.news2(now) {
            News2Status::Complete(s) => Some(match s.band {
                RiskBand::High => Some(Priority::High),
                RiskBand::Medium => Some(Priority::Medium),
                // A single 3 is alerted per parameter; aggregate 0-4 is routine monitoring.
                RiskBand::LowMedium | RiskBand::Low => None,
            }),
            News2Status::Partial(_) => None,
        };
        self.drive(
            now,
            RuleRef::News2Aggregate,
            desired,
            timing,
            None,
            None,
            None,
            out,
        );
    }

    /// Feeds the metric's new latest value to each of its threshold rules. A rule is driven
    /// by its [`Run`]: not raised, it raises once a run of breaching readings spans
    /// `persist_secs`; raised, it clears once a run of readings in the clearing zone spans
    /// `clear_after_secs`; any reading that does not continue the run restarts it.
    fn evaluate_thresholds(
        &mut self,
        now: OffsetDateTime,
        metric: Metric,
        device: &str,
        obs_ref: &str,
        out: &mut Vec<AlertEvent>,
    ) {
        let Some(latest) = self.state.latest.get(&metric).cloned() else {
            return;
        };
        let Some(value) = latest.number().map(|(d, u)| u.to_canonical(d.to_f64())) else {
            return;
        };
        let rules: Vec<_> = self
            .cfg
            .rules
            .iter()
            .filter(|r| r.metric == metric)
            .cloned()
            .collect();
        let max_gap = secs(self.cfg.news2_freshness_secs);
        for r in rules {
            let rule = RuleRef::Threshold {
                rule_id: r.id.clone(),
            };
            let raised = self
                .state
                .slots
                .get(&rule.key())
                .is_some_and(|s| s.tracker.active.is_some());
            let kind = threshold::evidence(&r, value, raised);
            let run = match (kind, self.state.runs.remove(&r.id)) {
                (None, _) => None,
                (Some(k), Some(mut run))
                    if run.kind == k && latest.observed_at - run.last.observed_at <= max_gap =>
                {
                    run.last = latest.clone();
                    run.readings = run.readings.saturating_add(1);
                    if run.refs.len() >= MAX_REFS {
                        run.refs.remove(1);
                    }
                    run.refs.push(latest.obs_ref.clone());
                    Some(run)
                }
                (Some(k), _) => Some(Run {
                    kind: k,
                    first: latest.clone(),
                    last: latest.clone(),
                    readings: 1,
                    refs: vec![latest.obs_ref.clone()],
                }),
            };
            let need = if raised {
                r.clear_after_secs
            } else {
                r.persist_secs
            };
            let covered = run.as_ref().is_some_and(|run| run.span() >= secs(need));
            // Raised: hold unless a clearing run covers the clear delay. Not raised: raise
            // only when a breaching run covers the persistence.
            let desired = (raised != covered).then_some(r.priority);
            if let Some(run) = run {
                self.state.runs.insert(r.id.clone(), run);
            }
            self.drive(
                now,
                rule,
                Some(desired),
                Timing::default(),
                Some(device),
                Some(metric),
                Some(obs_ref),
                out,
            );
        }
    }

    fn device_seen(&mut self, now: OffsetDateTime, device_id: &str, out: &mut Vec<AlertEvent>) {
        if let Some(d) = self.state.devices.get_mut(device_id) {
            d.last_seen = Some(d.last_seen.map_or(now, |t| t.max(now)));
            let rule = technical_rule(TechnicalCondition::DeviceSilent, Some(device_id), None);
            self.drive(
                now,
                rule,
                Some(None),
                Timing::default(),
                Some(device_id),
                None,
                None,
                out,
            );
        }
    }

    fn flag_alarms(
        &mut self,
        now: OffsetDateTime,
        device_id: &str,
        reading: &Reading,
        obs_ref: &str,
        out: &mut Vec<AlertEvent>,
    ) {
        let t = &self.cfg.technical;
        let checks = [
            (
                TechnicalCondition::SensorOff,
                Flag::SensorOff,
                t.sensor_off_after_secs,
            ),
            (
                TechnicalCondition::ProbeDisconnected,
                Flag::ProbeDisconnected,
                t.sensor_off_after_secs,
            ),
            (TechnicalCondition::LowBattery, Flag::LowBattery, 0),
        ];
        let settle = t.clear_after_secs;
        for (condition, flag, raise_after) in checks {
            let rule = technical_rule(condition, Some(device_id), None);
            let desired = reading
                .flags
                .contains(&flag)
                .then_some(condition.priority());
            let timing = Timing {
                raise_after_secs: raise_after,
                settle_after_secs: settle,
            };
            self.drive(
                now,
                rule,
                Some(desired),
                timing,
                Some(device_id),
                Some(reading.metric),
                Some(obs_ref),
                out,
            );
        }
    }

    fn drive_rejections(
        &mut self,
        now: OffsetDateTime,
        rule: RuleRef,
        count: usize,
        out: &mut Vec<AlertEvent>,
    ) {
        let t = &self.cfg.technical;
        let enough = u32::try_from(count).unwrap_or(u32::MAX) >= t.rejections_to_alarm;
        let desired = enough.then_some(TechnicalCondition::RepeatedRejections.priority());
        let timing = Timing {
            raise_after_secs: 0,
            settle_after_secs: t.clear_after_secs,
        };
        let (device, metric) = match &rule {
            RuleRef::Technical { device, metric, .. } => (device.clone(), *metric),
            _ => (None, None),
        };
        self.drive(
            now,
            rule,
            Some(desired),
            timing,
            device.as_deref(),
            metric,
            None,
            out,
        );
    }

    /// Feeds one alert key: `desired = Some(level)` is new evidence, `None` only lets time pass.
    /// Creates the slot lazily (only when something is wanted), removes it when idle again, and
    /// turns a transition into an event.
    #[allow(clippy::too_many_arguments)]
    fn drive(
        &mut self,
        now: OffsetDateTime,
        rule: RuleRef,
        desired: Option<Option<Priority>>,
        timing: Timing,
        device: Option<&str>,
        metric: Option<Metric>,
        obs_ref: Option<&str>,
        out: &mut Vec<AlertEvent>,
    ) {
        let key = rule.key();
        let mut slot = match self.state.slots.remove(&key) {
            Some(s) => s,
            None if matches!(desired, Some(Some(_))) => Slot {
                rule,
                tracker: Tracker::default(),
                timing,
                device: None,
                metric: None,
                refs: Vec::new(),
            },
            None => return,
        };
        slot.timing = timing;
        if device.is_some() {
            slot.device = device.map(str::to_string);
        }
        if metric.is_some() {
            slot.metric = metric;
        }
        let change = match desired {
            Some(level) => {
                if level != slot.tracker.desired {
                    slot.refs.clear();
                }
                if let Some(r) = obs_ref {
                    if !slot.refs.iter().any(|x| x == r) {
                        if slot.refs.len() >= MAX_REFS {
                            slot.refs.remove(1);
                        }
                        slot.refs.push(r.to_string());
                    }
                }
                slot.tracker
                    .observe(now, level, timing, &self.patient_id, &key)
            }
            None => slot.tracker.step(now, timing, &self.patient_id, &key),
        };
        if let Some(change) = change {
            let event = self.build_event(now, &key, &slot, change);
            out.push(event);
        }
        let idle = slot.tracker.active.is_none()
            && slot.tracker.desired.is_none()
            && slot.tracker.up_since.is_none();
        if !idle {
            self.state.slots.insert(key, slot);
        }
    }

    fn build_event(
        &self,
        now: OffsetDateTime,
        key: &str,
        slot: &Slot,
        change: Change,
    ) -> AlertEvent {
        let mut ev = AlertEvent {
            schema_version: SCHEMA_VERSION,
            rules_version: RULES_VERSION,
            event_id: event_id(&change.alert_id, change.transition, change.priority, now),
            alert_id: change.alert_id.clone(),
            transition: change.transition,
            priority: change.priority,
            previous_priority: change.previous,
            kind: slot.rule.kind(),
            rule: key.to_string(),
            patient: self.patient_id.clone(),
            device: slot.device.clone(),
            metric: slot.metric,
            values: Vec::new(),
            threshold: None,
            news2: None,
            technical: None,
            obs_refs: slot.refs.clone(),
            raised_at: change.raised_at,
            time: now,
            text: String::new(),
        };
        let head = match change.transition {
            Transition::Raised => format!("RAISED ({})", change.priority),
            Transition::Escalated => format!(
                "ESCALATED ({} -> {})",
                change.previous.map_or("none", Priority::as_str),
                change.priority
            ),
            Transition::DeEscalated => format!(
                "DE-ESCALATED ({} -> {})",
                change.previous.map_or("none", Priority::as_str),
                change.priority
            ),
            Transition::Cleared => format!("CLEARED (was {})", change.priority),
        };
        let body = match &slot.rule {
            RuleRef::Threshold { rule_id } => self.threshold_body(&mut ev, rule_id, slot),
            RuleRef::News2Aggregate => {
                let b = self.breakdown(now);
                ev.obs_refs = b
                    .sub_scores
                    .iter()
                    .filter_map(|s| s.obs_ref.clone())
                    .collect();
                ev.values = self.news2_values(&b, None);
                let text = match (b.total, b.band, b.response) {
                    (Some(total), Some(band), Some(resp)) => format!(
                        "NEWS2 total {total} ({} clinical risk): {}. Sub-scores: {}",
                        band_label(band),
                        resp.text(),
                        sub_score_list(&b.sub_scores)
                    ),
                    _ => format!(
                        "NEWS2 set incomplete (no fresh value for: {}); last complete score stands",
                        param_list(&b.missing)
                    ),
                };
                ev.news2 = Some(b);
                text
            }
            RuleRef::News2Red { parameter } => {
                let b = self.breakdown(now);
                ev.values = self.news2_values(&b, Some(*parameter));
                let sub = b.sub_scores.iter().find(|s| s.parameter == *parameter);
                let mut text = match sub {
                    Some(s) => format!(
                        "NEWS2 {} scores {} (value {})",
                        parameter.label(),
                        s.score,
                        s.value,
                    ),
                    None => format!("NEWS2 {} not measured recently", parameter.label()),
                };
                let red = sub.is_some_and(|s| s.score == 3);
                match (b.total, b.band, b.response) {
                    (Some(total), Some(band), Some(resp)) => {
                        if red {
                            text.push_str(": a 3 in a single parameter");
                        }
                        text.push_str(&format!(
                            "; NEWS2 total {total} ({} clinical risk): {}. Sub-scores: {}",
                            band_label(band),
                            resp.text(),
                            sub_score_list(&b.sub_scores)
                        ));
                    }
                    _ => {
                        if red {
                            text.push_str(&format!(
                                ": a 3 in a single parameter means at least low-medium clinical risk, {}",
                                ClinicalResponse::UrgentWardBasedResponse.text()
                            ));
                        }
                        text.push_str(&format!(
                            ". No NEWS2 total: no fresh value for {}",
                            param_list(&b.missing)
                        ));
                    }
                }
                ev.news2 = Some(b);
                text
            }
            RuleRef::Technical {
                condition, device, ..
            } => self.technical_body(&mut ev, *condition, device.as_deref()),
        };
        ev.text = format!("{head}: {body}");
        ev
    }

    fn threshold_body(&self, ev: &mut AlertEvent, rule_id: &str, slot: &Slot) -> String {
        let Some(r) = self.cfg.rules.iter().find(|r| r.id == rule_id) else {
            if let Some((m, l)) = slot
                .metric
                .and_then(|m| self.state.latest.get(&m).map(|l| (m, l)))
            {
                ev.values.push(l.observed(m));
            }
            return format!("threshold rule {rule_id} is no longer configured");
        };
        let Some((dir, limit)) = r.limit() else {
            return format!("threshold rule {rule_id} has no limit");
        };
        let unit = r.metric.canonical_unit().map(|u| u.ucum().to_string());
        let clear_at = threshold::clear_at(dir, limit, r.hysteresis);
        // The run behind this transition: breaching readings for a raise, clearing ones for a
        // clear (see `evaluate_thresholds`).
        let want = if ev.transition == Transition::Cleared {
            Evidence::Clearing
        } else {
            Evidence::Breach
        };
        let run = self.state.runs.get(rule_id).filter(|run| run.kind == want);
        let evidence = run.map(|run| ThresholdEvidence {
            readings: run.readings,
            first_observed_at: run.first.observed_at,
            last_observed_at: run.last.observed_at,
            span_secs: u64::try_from(run.span().whole_seconds()).unwrap_or(0),
        });
        match run {
            Some(run) => {
                ev.values.push(run.first.observed(r.metric));
                if run.readings > 1 {
                    ev.values.push(run.last.observed(r.metric));
                }
                ev.obs_refs = run.refs.clone();
            }
            None => {
                if let Some(l) = self.state.latest.get(&r.metric) {
                    ev.values.push(l.observed(r.metric));
                }
            }
        }
        ev.threshold = Some(ThresholdDetail {
            rule_id: r.id.clone(),
            direction: dir,
            limit,
            hysteresis: r.hysteresis,
            clear_at,
            persist_secs: r.persist_secs,
            clear_after_secs: r.clear_after_secs,
            unit: unit.clone(),
            evidence: evidence.clone(),
        });
        let u = unit.unwrap_or_default();
        let shown = |l: &Latest| match (l.value, l.unit) {
            (LatestValue::Number(d), Some(du)) => format!("{d} {}", du.ucum()),
            _ => "?".into(),
        };
        let latest = run
            .map(|run| shown(&run.last))
            .or_else(|| self.state.latest.get(&r.metric).map(shown))
            .unwrap_or_else(|| "?".into());
        let (word, back) = match dir {
            super::config::Direction::Above => ("above", "at or below"),
            super::config::Direction::Below => ("below", "at or above"),
        };
        let seen = match &evidence {
            Some(e) => readings_over(e.readings, e.span_secs),
            None => "no readings".into(),
        };
        match ev.transition {
            Transition::Cleared => format!(
                "{} back {back} {clear_at} {u}: {seen}, latest {latest} (rule {}: clears when readings cover {} s)",
                r.metric, r.id, r.clear_after_secs
            ),
            _ => {
                let needs = if r.persist_secs == 0 {
                    "raises on a single reading".to_string()
                } else {
                    format!("raises when readings cover {} s", r.persist_secs)
                };
                format!(
                    "{} {word} {limit} {u}: {seen}, latest {latest} (rule {}: {needs}; clears {back} {clear_at} {u})",
                    r.metric, r.id
                )
            }
        }
    }

    /// The observed values behind a NEWS2 breakdown (one per scored parameter that came from
    /// a reading, in Chart 1 order), `first` first.
    fn news2_values(
        &self,
        b: &News2Breakdown,
        first: Option<News2Parameter>,
    ) -> Vec<ObservedValue> {
        let mut order: Vec<&SubScore> = b.sub_scores.iter().collect();
        order.sort_by_key(|s| Some(s.parameter) != first);
        order
            .into_iter()
            .filter_map(|s| {
                let r = s.obs_ref.as_deref()?;
                news2_candidates(s.parameter).iter().find_map(|m| {
                    let l = self.state.latest.get(m)?;
                    (l.obs_ref == r).then(|| l.observed(*m))
                })
            })
            .collect()
    }

    fn technical_body(
        &self,
        ev: &mut AlertEvent,
        condition: TechnicalCondition,
        device: Option<&str>,
    ) -> String {
        let mut d = TechnicalDetail {
            condition: Some(condition),
            ..TechnicalDetail::default()
        };
        let dev = device.unwrap_or("gateway");
        let text = match condition {
            TechnicalCondition::DeviceSilent => {
                let st = device.and_then(|x| self.state.devices.get(x));
                d.expected_interval_secs = st.map(|s| s.expected_interval_secs);
                d.last_seen = st.and_then(|s| s.last_seen);
                match (ev.transition, st) {
                    (Transition::Cleared, _) => format!("device {dev} is sending again"),
                    (_, Some(s)) => format!(
                        "device {dev} silent: no reading for more than {} s (last seen {}); check the device, its battery and that the patient is using it",
                        s.expected_interval_secs,
                        s.last_seen.map_or_else(|| "never".into(), rfc3339)
                    ),
                    (_, None) => format!("device {dev} silent"),
                }
            }
            TechnicalCondition::SensorOff => on_off(ev.transition, &format!("sensor off on device {dev}: no measurement; check the sensor is on the patient"), &format!("sensor back on for device {dev}")),
            TechnicalCondition::ProbeDisconnected => on_off(ev.transition, &format!("probe disconnected on device {dev}: no measurement; reconnect the probe"), &format!("probe reconnected on device {dev}")),
            TechnicalCondition::LowBattery => on_off(ev.transition, &format!("low battery on device {dev}: charge or replace it before readings stop"), &format!("battery of device {dev} no longer low")),
            TechnicalCondition::RepeatedRejections => {
                let log = ev
                    .metric
                    .and_then(|m| self.state.rejections.get(&technical::key(condition, device, Some(m))));
                d.rejections_in_window = Some(log.map_or(0, |l| u32::try_from(l.times.len()).unwrap_or(u32::MAX)));
                d.last_rejection = log.map(|l| l.last_reason.clone());
                let metric = ev.metric.map_or("?", Metric::as_str);
                on_off(
                    ev.transition,
                    &format!(
                        "device {dev} keeps sending implausible {metric} values ({} rejected in {} s; latest: {}); check the device and its placement",
                        d.rejections_in_window.unwrap_or(0),
                        self.cfg.technical.rejection_window_secs,
                        d.last_rejection.as_deref().unwrap_or("?")
                    ),
                    &format!("device {dev} sends valid {metric} values again"),
                )
            }
            TechnicalCondition::OutboxNearFull => {
                let (depth, cap) = self.state.outbox.unwrap_or((0, 0));
                d.outbox_depth = Some(depth);
                d.outbox_capacity = Some(cap);
                on_off(
                    ev.transition,
                    &format!("outbox holds {depth} of {cap} undelivered items; readings will be lost when full: check the network link to the platform"),
                    &format!("outbox down to {depth} of {cap}"),
                )
            }
            TechnicalCondition::ClockNotSynchronised => on_off(
                ev.transition,
                "gateway clock not synchronised: reading times may be wrong; check network time (NTP)",
                "gateway clock synchronised",
            ),
            TechnicalCondition::StorageFull => on_off(
                ev.transition,
                "gateway storage full: new readings cannot be stored and are held back; free space on the gateway's disk now",
                "gateway storage available again: readings are stored",
            ),
            TechnicalCondition::StorageError => on_off(
                ev.transition,
                "gateway storage error: readings could not be stored and were lost; see the gateway's journal",
                "gateway storage working again",
            ),
            TechnicalCondition::StorageCap => on_off(
                ev.transition,
                "gateway outbox near its size cap (store.max_bytes) with only undelivered data left: restore the link to the platform or raise the cap; with store.when_full = \"drop_oldest_readings\" the oldest readings are being dropped (audited)",
                "gateway outbox back under its size cap",
            ),
            TechnicalCondition::AuditChainBroken => on_off(
                ev.transition,
                "audit log altered: entries were changed, removed or reordered; run `vitalgate audit verify` and report to information governance",
                "audit log break recorded in the chain; `vitalgate audit verify` still names it",
            ),
        };
        ev.technical = Some(d);
        text
    }
}

fn on_off(t: Transition, on: &str, off: &str) -> String {
    if t == Transition::Cleared {
        off.to_string()
    } else {
        on.to_string()
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn technical_rule(
    condition: TechnicalCondition,
    device: Option<&str>,
    metric: Option<Metric>,
) -> RuleRef {
    RuleRef::Technical {
        condition,
        device: device.map(str::to_string),
        metric,
    }
}

fn is_news2_input(m: Metric) -> bool {
    matches!(
        m,
        Metric::RespiratoryRate
            | Metric::Spo2
            | Metric::InspiredOxygen
            | Metric::SystolicBp
            | Metric::PulseRate
            | Metric::HeartRate
            | Metric::Acvpu
            | Metric::BodyTemperature
    )
}

/// The metric a parameter is read from (pulse: `pulse_rate`, see [`news2_source`]).
fn news2_metric(p: News2Parameter) -> Option<Metric> {
    Some(match p {
        News2Parameter::RespirationRate => Metric::RespiratoryRate,
        News2Parameter::OxygenSaturation => Metric::Spo2,
        News2Parameter::AirOrOxygen => return None,
        News2Parameter::SystolicBp => Metric::SystolicBp,
        News2Parameter::Pulse => Metric::PulseRate,
        News2Parameter::Consciousness => Metric::Acvpu,
        News2Parameter::Temperature => Metric::BodyTemperature,
    })
}

/// For pulse, whichever of pulse_rate / heart_rate is newer (pulse_rate on a tie).
fn news2_source(p: News2Parameter, latest: &BTreeMap<Metric, Latest>) -> Option<Metric> {
    if p != News2Parameter::Pulse {
        return news2_metric(p);
    }
    match (
        latest.get(&Metric::PulseRate),
        latest.get(&Metric::HeartRate),
    ) {
        (Some(pr), Some(hr)) if hr.observed_at > pr.observed_at => Some(Metric::HeartRate),
        (None, Some(_)) => Some(Metric::HeartRate),
        _ => Some(Metric::PulseRate),
    }
}

/// `(device, device time)` when every reading of `set` comes from one device with one
/// explicit, trusted device time: one device's observation set, possibly split over messages.
fn one_device_one_time<'a>(set: &[SetReading<'a>]) -> Option<(&'a str, OffsetDateTime)> {
    let first = set.first()?;
    let t = first.reading.device_time?;
    set.iter()
        .all(|r| {
            r.device == first.device
                && r.reading.device_time == Some(t)
                && !r.reading.flags.contains(&Flag::DeviceClockSuspect)
        })
        .then_some((first.device, t))
}

/// Whether `metrics` hold every NEWS2 parameter measured by a device (all but air or oxygen,
/// which the patient config always gives).
fn covers_measured_news2(metrics: &BTreeSet<Metric>) -> bool {
    News2Parameter::ALL
        .iter()
        .filter(|p| **p != News2Parameter::AirOrOxygen)
        .all(|p| news2_candidates(*p).iter().any(|m| metrics.contains(m)))
}

/// The metrics a parameter may be read from.
fn news2_candidates(p: News2Parameter) -> &'static [Metric] {
    match p {
        News2Parameter::RespirationRate => &[Metric::RespiratoryRate],
        News2Parameter::OxygenSaturation => &[Metric::Spo2],
        News2Parameter::AirOrOxygen => &[Metric::InspiredOxygen],
        News2Parameter::SystolicBp => &[Metric::SystolicBp],
        News2Parameter::Pulse => &[Metric::PulseRate, Metric::HeartRate],
        News2Parameter::Consciousness => &[Metric::Acvpu],
        News2Parameter::Temperature => &[Metric::BodyTemperature],
    }
}

/// "1 reading" / "2 readings over 75 s": what the data shows, never more.
fn readings_over(n: u32, span_secs: u64) -> String {
    if n == 1 {
        "1 reading".into()
    } else {
        format!("{n} readings over {span_secs} s")
    }
}

fn band_label(b: RiskBand) -> &'static str {
    match b {
        RiskBand::Low => "low",
        RiskBand::LowMedium => "low-medium",
        RiskBand::Medium => "medium",
        RiskBand::High => "high",
    }
}

fn param_list(ps: &[News2Parameter]) -> String {
    ps.iter().map(|p| p.label()).collect::<Vec<_>>().join(", ")
}

fn sub_score_list(s: &[SubScore]) -> String {
    s.iter()
        .map(|s| format!("{} {} ({})", s.parameter.label(), s.score, s.value))
        .collect::<Vec<_>>()
        .join(", ")
}

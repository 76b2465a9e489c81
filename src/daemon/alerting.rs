//! Alerting in the ingest transaction: runs the rules engine (`crate::alerts`, pure) on every
//! committed reading and turns its output into outbox records in the SAME transaction, so an
//! alert can never exist without the reading that caused it, nor a reading be stored while its
//! alert is lost. Also the local annunciator: every alert event goes to the journal at a
//! priority matching its own, and while the uplink is down to an optional configured command.
//!
//! The engines' state is persisted with the outbox (device state `patient:<id>`), so a
//! restart neither forgets a raised alert nor raises it a second time.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::alerts::{self, AlertEngine, AlertEvent, EngineState, News2Parameter, Priority};
use crate::config::Config;
use crate::fhir::{self, News2SubScores, ObservationContext, RecordingSetting};
use crate::ingest::{CommitHook, HookOutput, Rejection};
use crate::nhs_number::NhsNumber;
use crate::store::outbox::DeviceStateUpdate;
use crate::store::{AlertRecord, DerivedRecord, Outbox, Record, StoreError};
use crate::uplink::UplinkStatus;

/// Device-state key under which a patient's engine state is kept.
pub const STATE_KEY: &str = "alerts_state";
/// Engine state is written at most this often when nothing was raised (it always is when an
/// alert changes).
const PERSIST_EVERY: Duration = Duration::from_secs(10);

/// The device-state id of a patient's engine.
pub fn state_owner(patient: &str) -> String {
    format!("patient:{patient}")
}

/// Reads every patient's saved engine state (before ingest starts).
pub fn load_states(
    outbox: &Outbox,
    config: &Config,
) -> Result<HashMap<String, EngineState>, StoreError> {
    let mut out = HashMap::new();
    for p in &config.patients {
        if let Some(json) = outbox.device_state(&state_owner(&p.id), STATE_KEY)? {
            match serde_json::from_str(&json) {
                Ok(state) => {
                    out.insert(p.id.clone(), state);
                }
                Err(e) => {
                    tracing::error!(patient = %p.id, error = %e, "saved alert state unreadable; starting fresh")
                }
            }
        }
    }
    Ok(out)
}

pub struct AlertHook {
    gateway: String,
    setting: RecordingSetting,
    capacity: u64,
    engines: HashMap<String, AlertEngine>,
    nhs: HashMap<String, NhsNumber>,
    dirty: HashSet<String>,
    last_persist: Instant,
    uplink: Option<watch::Receiver<UplinkStatus>>,
    annunciator: Option<Vec<String>>,
    /// Every alert transition is audited; a broken audit chain is a technical alarm.
    audit: Option<std::sync::Arc<crate::audit::AuditLog>>,
    /// A configuration applied live (`daemon::live_apply`), taken up at the next call.
    reconfigure: Option<ReconfigureSlot>,
}

/// A new configuration for the running engines, handed over by `daemon::live_apply` and
/// taken up by the ingest writer at its next call (a tick at the latest), so it never races
/// a batch: readings committed before it are scored under the old rules, after it under the
/// new ones.
pub struct Reconfigure {
    pub config: Config,
    /// Saved engine state of patients that have no engine yet (read from the outbox).
    pub saved: HashMap<String, EngineState>,
    /// Told once the engines follow `config` (`Err`: a patient's engine could not, e.g. its
    /// rules; the caller restarts the pipeline, which refuses or runs it whole).
    pub done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Where a [`Reconfigure`] waits for the writer.
pub type ReconfigureSlot = std::sync::Arc<std::sync::Mutex<Option<Reconfigure>>>;

impl AlertHook {
    pub fn new(
        config: &Config,
        gateway: String,
        mut saved: HashMap<String, EngineState>,
        uplink: Option<watch::Receiver<UplinkStatus>>,
        now: OffsetDateTime,
    ) -> Result<AlertHook, alerts::AlertConfigError> {
        let mut engines = HashMap::new();
        let mut nhs = HashMap::new();
        for p in &config.patients {
            let state = saved.remove(&p.id).unwrap_or_default();
            let mut engine = AlertEngine::with_state(p.id.clone(), p.alerts.clone(), state)?;
            for d in config.devices.iter().filter(|d| d.patient == p.id) {
                if let Some(interval) = expected_interval(d) {
                    engine.register_device(now, &d.id, interval);
                }
            }
            engines.insert(p.id.clone(), engine);
            if let Some(n) = p
                .nhs_number
                .as_deref()
                .and_then(|n| NhsNumber::parse(n).ok())
            {
                nhs.insert(p.id.clone(), n);
            }
        }
        Ok(AlertHook {
            gateway,
            setting: match config.gateway.setting {
                crate::config::Setting::Residential => RecordingSetting::Residential,
                crate::config::Setting::Clinical => RecordingSetting::Clinical,
            },
            capacity: config.store.capacity,
            engines,
            nhs,
            dirty: HashSet::new(),
            last_persist: Instant::now(),
            uplink,
            annunciator: config.alerts.annunciator_command.clone(),
            audit: None,
            reconfigure: None,
        })
    }

    /// Takes up configurations handed over in `slot` (see [`Reconfigure`]).
    pub fn with_reconfigure(mut self, slot: ReconfigureSlot) -> Self {
        self.reconfigure = Some(slot);
        self
    }

    /// Applies a waiting [`Reconfigure`], if any: what it produced (alarms cleared for devices
    /// no longer bound, engine state of removed patients) goes into the current transaction.
    fn take_reconfigure(&mut self, now: OffsetDateTime) -> HookOutput {
        let waiting = self
            .reconfigure
            .as_ref()
            .and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).take());
        let Some(r) = waiting else {
            return HookOutput::default();
        };
        let mut refused = Vec::new();
        let out = self.follow(&r.config, r.saved, now, &mut refused);
        let _ = r.done.send(if refused.is_empty() {
            Ok(())
        } else {
            Err(refused.join("; "))
        });
        out
    }

    /// Makes the engines follow `config`: a removed patient's engine stops (its state
    /// persisted, so a later rebind resumes it), an added one starts from its saved state, a
    /// patient whose rules changed keeps its state under the new rules, and each engine
    /// tracks exactly the devices now bound to its patient (a device rebound away clears its
    /// `device_silent` alarm with the old patient).
    fn follow(
        &mut self,
        config: &Config,
        mut saved: HashMap<String, EngineState>,
        now: OffsetDateTime,
        refused: &mut Vec<String>,
    ) -> HookOutput {
        let keep: HashSet<&str> = config.patients.iter().map(|p| p.id.as_str()).collect();
        let gone: Vec<String> = self
            .engines
            .keys()
            .filter(|p| !keep.contains(p.as_str()))
            .cloned()
            .collect();
        self.dirty.extend(gone.iter().cloned());
        let mut state = self.persist(true);
        for p in &gone {
            self.engines.remove(p);
            self.nhs.remove(p);
        }
        let mut records = Vec::new();
        for p in &config.patients {
            let engine = match self.engines.remove(&p.id) {
                Some(e) if e.config() == &p.alerts => Ok(e),
                Some(e) => {
                    let kept = e.state().clone();
                    AlertEngine::with_state(p.id.clone(), p.alerts.clone(), kept)
                        .map_err(|err| (err, Some(e)))
                }
                None => AlertEngine::with_state(
                    p.id.clone(),
                    p.alerts.clone(),
                    saved.remove(&p.id).unwrap_or_default(),
                )
                .map_err(|err| (err, None)),
            };
            let mut engine = match engine {
                Ok(e) => e,
                Err((err, old)) => {
                    // Validated before it got here; kept running under its old rules if not.
                    let why = crate::redact::scrub(&err.to_string()).into_owned();
                    tracing::error!(error = %why, "alert rules not applied");
                    refused.push(why);
                    match old {
                        Some(e) => e,
                        None => continue,
                    }
                }
            };
            let bound: Vec<&crate::config::DeviceConfig> = config
                .devices
                .iter()
                .filter(|d| d.patient == p.id)
                .collect();
            let mut events = Vec::new();
            for tracked in engine.tracked_devices() {
                if !bound.iter().any(|d| d.id == tracked) {
                    events.extend(engine.unregister_device(now, &tracked));
                }
            }
            for d in &bound {
                if let Some(interval) = expected_interval(d) {
                    engine.register_device(now, &d.id, interval);
                }
            }
            self.engines.insert(p.id.clone(), engine);
            match p
                .nhs_number
                .as_deref()
                .and_then(|n| NhsNumber::parse(n).ok())
            {
                Some(n) => self.nhs.insert(p.id.clone(), n),
                None => self.nhs.remove(&p.id),
            };
            self.dirty.insert(p.id.clone());
            records.extend(self.alert_records(&p.id, events));
        }
        self.annunciator = config.alerts.annunciator_command.clone();
        state.extend(self.persist(true));
        HookOutput { records, state }
    }

    /// Audits every alert transition in `audit`, and raises the audit-chain alarm from it.
    pub fn with_audit(mut self, audit: std::sync::Arc<crate::audit::AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    fn alert_records(&mut self, patient: &str, events: Vec<AlertEvent>) -> Vec<Record> {
        if !events.is_empty() {
            self.dirty.insert(patient.to_string());
        }
        events
            .into_iter()
            .filter_map(|event| {
                self.annunciate(&event);
                if let Some(audit) = &self.audit {
                    let (name, details) = crate::audit::events::alert(&event);
                    audit.note(&name, details);
                }
                match serde_json::to_value(&event) {
                    Ok(json) => Some(Record::Alert(AlertRecord {
                        patient_id: patient.to_string(),
                        event: json,
                    })),
                    Err(e) => {
                        tracing::error!(error = %e, "BUG: alert event cannot be serialized");
                        None
                    }
                }
            })
            .collect()
    }

    /// The journal always; the configured command while the uplink is not connected.
    fn annunciate(&self, event: &AlertEvent) {
        let json = serde_json::to_string(event).unwrap_or_default();
        match event.priority {
            Priority::High => {
                tracing::error!(target: "vitalgate::alert", alert = %json, "ALERT (high priority)")
            }
            Priority::Medium => {
                tracing::warn!(target: "vitalgate::alert", alert = %json, "alert (medium priority)")
            }
            Priority::Low => {
                tracing::info!(target: "vitalgate::alert", alert = %json, "alert (low priority)")
            }
        }
        let connected = self
            .uplink
            .as_ref()
            .map(|u| u.borrow().connected)
            .unwrap_or(false);
        if let (false, Some(cmd)) = (connected, &self.annunciator) {
            run_annunciator(cmd.clone(), json);
        }
    }

    fn news2_record(&self, patient: &str, score: &alerts::News2Score) -> Option<Record> {
        let mut sub = News2SubScores {
            respiration_rate: 0,
            spo2: 0,
            air_or_oxygen: 0,
            systolic_bp: 0,
            pulse: 0,
            consciousness: 0,
            temperature: 0,
        };
        for s in &score.sub_scores {
            let slot = match s.parameter {
                News2Parameter::RespirationRate => &mut sub.respiration_rate,
                News2Parameter::OxygenSaturation => &mut sub.spo2,
                News2Parameter::AirOrOxygen => &mut sub.air_or_oxygen,
                News2Parameter::SystolicBp => &mut sub.systolic_bp,
                News2Parameter::Pulse => &mut sub.pulse,
                News2Parameter::Consciousness => &mut sub.consciousness,
                News2Parameter::Temperature => &mut sub.temperature,
            };
            *slot = s.score;
        }
        let score = fhir::News2Score {
            total: score.total,
            sub_scores: sub,
            spo2_scale: score.scale,
            derived_from: score
                .derived_from
                .iter()
                .filter_map(|s| uuid::Uuid::parse_str(s).ok())
                .collect(),
        };
        let device = format!("news2-{patient}");
        let ctx = ObservationContext {
            gateway_id: &self.gateway,
            device_id: &device,
            device_display: None,
            nhs_number: self.nhs.get(patient),
            setting: self.setting,
            effective: OffsetDateTime::now_utc(),
        };
        match fhir::news2_observation(&ctx, &score) {
            Ok(observation) => Some(Record::Derived(DerivedRecord {
                patient_id: patient.to_string(),
                observation,
            })),
            Err(e) => {
                tracing::error!(patient, error = %e, "NEWS2 score cannot be rendered; not published");
                None
            }
        }
    }

    fn persist(&mut self, force: bool) -> Vec<DeviceStateUpdate> {
        if self.dirty.is_empty() || (!force && self.last_persist.elapsed() < PERSIST_EVERY) {
            return Vec::new();
        }
        self.last_persist = Instant::now();
        let dirty: Vec<String> = self.dirty.drain().collect();
        dirty
            .into_iter()
            .filter_map(|p| {
                let engine = self.engines.get(&p)?;
                let value = serde_json::to_string(engine.state()).ok()?;
                Some(DeviceStateUpdate {
                    device_id: state_owner(&p),
                    key: STATE_KEY.into(),
                    value,
                })
            })
            .collect()
    }
}

/// One reading of a committed batch, with its device and Observation id.
struct BatchReading<'a> {
    device: &'a str,
    reading: &'a crate::reading::Reading,
    obs_ref: String,
}

impl CommitHook for AlertHook {
    /// Each patient's readings in the batch are one observation set, evaluated as a whole
    /// (`AlertEngine::on_observation_set`): a full set written at once is scored together.
    fn on_batch(&mut self, accepted: &[Record], now: OffsetDateTime) -> HookOutput {
        let mut out = self.take_reconfigure(now);
        let mut raised = false;
        // Patients in order of first appearance; each with its readings and their Observation ids.
        let mut sets: Vec<(&str, Vec<BatchReading<'_>>)> = Vec::new();
        for rec in accepted {
            let Record::Reading(r) = rec else { continue };
            if !self.engines.contains_key(&*r.patient_id) {
                continue;
            }
            let obs_ref = super::publish::observation_id(&self.gateway, r).to_string();
            let set = match sets.iter_mut().position(|(p, _)| *p == &*r.patient_id) {
                Some(i) => &mut sets[i].1,
                None => {
                    sets.push((&r.patient_id, Vec::new()));
                    &mut sets.last_mut().expect("just pushed").1
                }
            };
            for reading in &r.readings {
                set.push(BatchReading {
                    device: &r.device_id,
                    reading,
                    obs_ref: obs_ref.clone(),
                });
            }
        }
        for (patient, set) in sets {
            let Some(engine) = self.engines.get_mut(patient) else {
                continue;
            };
            let set: Vec<alerts::SetReading<'_>> = set
                .iter()
                .map(|b| alerts::SetReading {
                    device: b.device,
                    reading: b.reading,
                    obs_ref: &b.obs_ref,
                })
                .collect();
            let outcome = engine.on_observation_set(now, &set);
            // A set held open for the rest of its readings is persisted with this
            // transaction, so a restart still scores it.
            raised |= !outcome.events.is_empty() || engine.has_open_set();
            self.dirty.insert(patient.to_string());
            out.records
                .extend(self.alert_records(patient, outcome.events));
            for s in &outcome.news2 {
                out.records.extend(self.news2_record(patient, s));
            }
        }
        out.state.extend(self.persist(raised));
        out
    }

    fn on_reject(&mut self, r: &Rejection) -> HookOutput {
        let Some(engine) = self.engines.get_mut(&*r.patient_id) else {
            return HookOutput::default();
        };
        let events = engine.on_rejected(r.at, &r.device_id, r.metric, &r.reason);
        let raised = !events.is_empty();
        let records = self.alert_records(&r.patient_id, events);
        HookOutput {
            records,
            state: self.persist(raised),
        }
    }

    fn on_storage(
        &mut self,
        now: OffsetDateTime,
        alarm: crate::ingest::StorageAlarm,
        active: bool,
    ) -> HookOutput {
        let condition = match alarm {
            crate::ingest::StorageAlarm::Full => alerts::TechnicalCondition::StorageFull,
            crate::ingest::StorageAlarm::PermanentFailure => {
                alerts::TechnicalCondition::StorageError
            }
            crate::ingest::StorageAlarm::Cap => alerts::TechnicalCondition::StorageCap,
        };
        let mut records = Vec::new();
        let patients: Vec<String> = self.engines.keys().cloned().collect();
        for p in patients {
            let Some(engine) = self.engines.get_mut(&p) else {
                continue;
            };
            let events = engine.on_storage(now, condition, active);
            records.extend(self.alert_records(&p, events));
        }
        HookOutput {
            records,
            state: self.persist(true),
        }
    }

    fn on_tick(&mut self, now: OffsetDateTime, backlog: u64) -> HookOutput {
        let mut out = self.take_reconfigure(now);
        let synced = super::clock_synced();
        let audit_broken = self.audit.as_ref().is_some_and(|a| a.chain_broken());
        let mut records = Vec::new();
        let patients: Vec<String> = self.engines.keys().cloned().collect();
        for p in patients {
            let Some(engine) = self.engines.get_mut(&p) else {
                continue;
            };
            let ticked = engine.tick(now);
            let mut events = ticked.events;
            events.extend(engine.on_outbox_depth(now, backlog, self.capacity));
            events.extend(engine.on_clock_sync(now, synced));
            events.extend(engine.on_audit_chain(now, audit_broken));
            self.dirty.insert(p.clone());
            records.extend(self.alert_records(&p, events));
            // A held observation set scored now (`news2_set_hold_secs` passed).
            for s in &ticked.news2 {
                records.extend(self.news2_record(&p, s));
            }
        }
        let raised = !records.is_empty();
        out.extend(HookOutput {
            records,
            state: self.persist(raised),
        });
        out
    }
    fn on_stalled(&mut self, _now: OffsetDateTime) {}
}

/// A device silent for longer than this raises `device_silent`: the configured value, or for
/// the simulator ten of its intervals (at least 10 s).
fn expected_interval(d: &crate::config::DeviceConfig) -> Option<time::Duration> {
    if let Some(s) = d.expected_interval_s {
        return Some(time::Duration::seconds(s as i64));
    }
    if d.driver == "sim" {
        let ms = d.interval_ms.unwrap_or(1000).saturating_mul(10).max(10_000);
        return Some(time::Duration::milliseconds(ms as i64));
    }
    None
}

/// Runs the annunciator command with the event on stdin, off the ingest thread, and never
/// lets it hang around: it is killed after 10 s.
fn run_annunciator(cmd: Vec<String>, json: String) {
    let spawned = std::thread::Builder::new().name("annunciator".into()).spawn(move || {
        let Some((program, args)) = cmd.split_first() else { return };
        let child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(command = %program, error = %e, "annunciator command cannot start");
                return;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(json.as_bytes());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    tracing::error!(command = %program, %status, "annunciator command failed");
                    return;
                }
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    tracing::error!(command = %program, "annunciator command did not finish in 10 s; killed");
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => return,
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the annunciator thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = "[gateway]\nid = \"gw\"\n\
        [[patient]]\nid = \"p1\"\n[[patient]]\nid = \"p2\"\n\
        [[device]]\nid = \"d1\"\npatient = \"p1\"\ndriver = \"sim\"\n";

    fn hook(text: &str, slot: &ReconfigureSlot) -> AlertHook {
        let c = Config::parse(text, Path::new("t.toml")).unwrap();
        AlertHook::new(
            &c,
            "gw".into(),
            HashMap::new(),
            None,
            OffsetDateTime::now_utc(),
        )
        .unwrap()
        .with_reconfigure(slot.clone())
    }

    /// Hands `text` over as a live change and lets the writer take it up at a tick.
    fn reconfigure(h: &mut AlertHook, slot: &ReconfigureSlot, text: &str) -> Result<(), String> {
        let (done, mut rx) = tokio::sync::oneshot::channel();
        *slot.lock().unwrap() = Some(Reconfigure {
            config: Config::parse(text, Path::new("t.toml")).unwrap(),
            saved: HashMap::new(),
            done,
        });
        h.on_tick(OffsetDateTime::now_utc(), 0);
        rx.try_recv().expect("taken up at the tick")
    }

    #[test]
    fn a_rebound_device_is_tracked_by_its_new_patients_engine_only() {
        let slot = ReconfigureSlot::default();
        let mut h = hook(CONFIG, &slot);
        assert_eq!(h.engines["p1"].tracked_devices(), vec!["d1".to_string()]);
        let rebound = CONFIG.replace("patient = \"p1\"\ndriver", "patient = \"p2\"\ndriver");
        reconfigure(&mut h, &slot, &rebound).unwrap();
        assert!(h.engines["p1"].tracked_devices().is_empty());
        assert_eq!(h.engines["p2"].tracked_devices(), vec!["d1".to_string()]);
    }

    #[test]
    fn changed_rules_apply_and_a_removed_patients_state_is_persisted() {
        let slot = ReconfigureSlot::default();
        let mut h = hook(CONFIG, &slot);
        let text = CONFIG.replace("[[patient]]\nid = \"p2\"\n", "").replace(
            "[[patient]]\nid = \"p1\"\n",
            "[[patient]]\nid = \"p1\"\n[patient.alerts]\nnews2_freshness_secs = 600\n",
        );
        let (done, mut rx) = tokio::sync::oneshot::channel();
        *slot.lock().unwrap() = Some(Reconfigure {
            config: Config::parse(&text, Path::new("t.toml")).unwrap(),
            saved: HashMap::new(),
            done,
        });
        let out = h.on_tick(OffsetDateTime::now_utc(), 0);
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert_eq!(h.engines["p1"].config().news2_freshness_secs, 600);
        assert!(!h.engines.contains_key("p2"));
        assert!(
            out.state.iter().any(|s| s.device_id == "patient:p2"),
            "the removed patient's engine state is written with the change"
        );
    }

    #[test]
    fn an_engine_that_cannot_follow_says_so() {
        let slot = ReconfigureSlot::default();
        let mut h = hook(CONFIG, &slot);
        // Not a config `Config::problems` lets through; the engine's own check is the net.
        let mut c = Config::parse(CONFIG, Path::new("t.toml")).unwrap();
        c.patients[1].id = "9434765919".into();
        let (done, mut rx) = tokio::sync::oneshot::channel();
        *slot.lock().unwrap() = Some(Reconfigure {
            config: c,
            saved: HashMap::new(),
            done,
        });
        h.on_tick(OffsetDateTime::now_utc(), 0);
        let e = rx.try_recv().unwrap().unwrap_err();
        assert!(!e.contains("9434765919"), "{e}");
    }
}

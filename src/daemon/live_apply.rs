//! Applying a changed configuration as a diff, inside the running pipeline.
//!
//! A fleet document or a SIGHUP reload that changes only what the fleet may set is applied
//! live (see docs/fleet.md, "Applying is a diff"):
//! - an added device starts, a removed one stops (its committed state, the file offset and
//!   the alert engine's state, stays in the outbox), a device whose settings changed
//!   (driver, path, baud, interval...) is stopped and started again;
//! - a device rebound to another patient (or whose patient's NHS Number changed) keeps its
//!   task and its connection: its shared [`Binding`] is switched, so every frame decoded
//!   after the switch carries the new patient and none before it does;
//! - the alert engines follow the new patients, rules and bindings first
//!   ([`alerting::Reconfigure`], taken up by the ingest writer between two transactions), so
//!   a reading of the new patient is never scored by an engine that does not know the device;
//! - `store.retention_days` goes to the retention task, which purges under it at once;
//! - untouched devices are not touched at all: no reopen, no lost reading.
//!
//! Anything else ([`plan`] returns `None`) restarts the pipeline at a safe point, as before:
//! the store, the uplink, the gateway, ingest settings, `[ble]`, `[hl7]`, `[status]`, BLE
//! devices (one central serves them all), and a change of a device's `display` (the publisher
//! renders FHIR from it).

use crate::task::TrackBoxed;
use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::alerting::{self, Reconfigure, ReconfigureSlot};
use super::devices::{self, Binding, SharedBinding};
use super::offset_key;
use crate::config::{Config, DeviceConfig};
use crate::ingest::IngestHandle;
use crate::status::Registry;
use crate::store::Outbox;

/// How long a live change waits for the ingest writer to take up new alert rules (it does at
/// its next batch or tick, about once a second; longer only while a commit is being retried).
const ALERTS_TAKEN_UP_WITHIN: Duration = Duration::from_secs(10);
/// How long a stopped device's task may take to end before its replacement starts.
const DEVICE_STOP_GRACE: Duration = Duration::from_secs(3);

/// A new effective config for the running pipeline; `done` says whether it was applied live
/// (`Err`: nothing or not all of it was, and the caller restarts the pipeline instead).
pub struct LiveChange {
    pub config: Config,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// What a live change does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Devices to stop (removed, or settings changed), by id.
    pub stop: Vec<String>,
    /// Devices to start (added, or settings changed).
    pub start: Vec<DeviceConfig>,
    /// Devices whose binding changes (patient, or the patient's NHS Number), settings the same.
    pub rebind: Vec<String>,
    /// Whether the alert engines must follow (patients, rules or bindings changed).
    pub alerts: bool,
    /// The new retention, when it changed.
    pub retention_days: Option<u32>,
}

impl Plan {
    /// Devices neither stopped, started nor rebound (for the log).
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

/// The live plan from `old` to `new`, or `None` when the change needs the pipeline restarted.
pub fn plan(old: &Config, new: &Config) -> Option<Plan> {
    // Everything outside the live part must be equal.
    let mut probe = new.clone();
    probe.devices.clone_from(&old.devices);
    probe.patients.clone_from(&old.patients);
    probe.store.retention_days = old.store.retention_days;
    probe.logging.clone_from(&old.logging);
    if probe != *old {
        return None;
    }
    if new.hl7.is_some() && new.patients != old.patients {
        return None; // the HL7 listener binds beds to patients when it starts
    }
    let find = |c: &Config, id: &str| c.devices.iter().find(|d| d.id == id).cloned();
    let mut p = Plan::default();
    for d in &old.devices {
        match find(new, &d.id) {
            None => p.stop.push(d.id.clone()),
            Some(n) => {
                if d.is_ble() || n.is_ble() {
                    if *d != n || Binding::of(old, d) != Binding::of(new, &n) {
                        return None;
                    }
                    continue;
                }
                if d.display != n.display {
                    return None;
                }
                let same_settings = DeviceConfig {
                    patient: n.patient.clone(),
                    ..d.clone()
                } == n;
                if !same_settings {
                    p.stop.push(d.id.clone());
                    p.start.push(n);
                } else if Binding::of(old, d) != Binding::of(new, &n) {
                    p.rebind.push(d.id.clone());
                }
            }
        }
    }
    for n in &new.devices {
        if find(old, &n.id).is_none() {
            if n.is_ble() || n.display.is_some() {
                return None;
            }
            p.start.push(n.clone());
        }
    }
    if old
        .devices
        .iter()
        .any(|d| d.is_ble() && find(new, &d.id).is_none())
    {
        return None;
    }
    p.alerts = old.patients != new.patients
        || !p.rebind.is_empty()
        || !p.start.is_empty()
        || !p.stop.is_empty();
    if old.store.retention_days != new.store.retention_days {
        p.retention_days = Some(new.store.retention_days);
    }
    Some(p)
}

/// A running device task, as the live applier controls it.
struct Running {
    token: CancellationToken,
    binding: Option<SharedBinding>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The running pipeline's parts a live change touches. Built by `daemon::run`.
pub struct Applier {
    pub config: Config,
    pub ingest: IngestHandle,
    pub registry: Registry,
    pub tracker: TaskTracker,
    /// The parent of every device task's token (cancelled when the pipeline stops).
    pub devices_token: CancellationToken,
    /// Read-only outbox connection: saved alert state and file offsets of devices started.
    pub outbox: Outbox,
    pub alerts: ReconfigureSlot,
    pub retention_days: watch::Sender<u32>,
}

impl Applier {
    /// Starts every configured device (as `devices::spawn_all` does, each under its own token).
    fn start_all(&self, cursors: &HashMap<String, Option<u64>>) -> HashMap<String, Running> {
        self.config
            .devices
            .iter()
            .map(|d| {
                let resume = cursors.get(&d.id).copied().flatten();
                (d.id.clone(), self.start(&self.config, d, resume))
            })
            .collect()
    }

    fn start(&self, config: &Config, d: &DeviceConfig, resume: Option<u64>) -> Running {
        let token = self.devices_token.child_token();
        let local = TaskTracker::new();
        let binding = devices::spawn_one(
            config,
            d,
            &self.ingest,
            &self.registry,
            resume,
            &token,
            &local,
        );
        local.close();
        // The device's task runs on its own tracker, watched from the pipeline's, so a stop
        // (live or whole) waits for it.
        let task = binding
            .is_some()
            .then(|| self.tracker.spawn_boxed(async move { local.wait().await }));
        Running {
            token,
            binding,
            task,
        }
    }

    /// Runs until the pipeline's devices stop, applying each change sent on `changes`.
    pub async fn run(
        self,
        cursors: HashMap<String, Option<u64>>,
        mut changes: Option<mpsc::Receiver<LiveChange>>,
    ) {
        let mut running = self.start_all(&cursors);
        let mut me = self;
        loop {
            let change = tokio::select! {
                _ = me.devices_token.cancelled() => return,
                c = async { match changes.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => c,
            };
            let Some(LiveChange { config, done }) = change else {
                changes = None;
                continue;
            };
            let result = me.apply(&mut running, config).await;
            let _ = done.send(result);
        }
    }

    async fn apply(
        &mut self,
        running: &mut HashMap<String, Running>,
        new: Config,
    ) -> Result<(), String> {
        let Some(plan) = plan(&self.config, &new) else {
            return Err("the change needs the pipeline restarted".into());
        };
        // Alert engines first: a frame of the new binding must find its engine ready.
        if plan.alerts {
            let saved = alerting::load_states(&self.outbox, &new)
                .map_err(|e| format!("cannot read saved alert state: {e}"))?;
            let (tx, mut rx) = oneshot::channel();
            *self.alerts.lock().unwrap_or_else(|p| p.into_inner()) = Some(Reconfigure {
                config: new.clone(),
                saved,
                done: tx,
            });
            let deadline = tokio::time::Instant::now() + ALERTS_TAKEN_UP_WITHIN;
            loop {
                let _ = self.ingest.tick().await;
                tokio::select! {
                    r = &mut rx => { r.map_err(|_| "ingest has stopped".to_string())??; break; }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                if tokio::time::Instant::now() > deadline {
                    // Not taken: take it back, so it cannot apply after the restart's config.
                    self.alerts.lock().unwrap_or_else(|p| p.into_inner()).take();
                    return Err("the ingest writer did not take up the new alert rules".into());
                }
            }
        }
        for id in &plan.stop {
            if let Some(r) = running.remove(id) {
                r.token.cancel();
                if let Some(task) = r.task {
                    let _ = tokio::time::timeout(DEVICE_STOP_GRACE, task).await;
                }
                self.registry.remove(id);
                tracing::info!(device = %id, "device stopped (configuration changed)");
            }
        }
        for id in &plan.rebind {
            let Some(d) = new.devices.iter().find(|d| &d.id == id) else {
                continue;
            };
            if let Some(b) = running.get(id).and_then(|r| r.binding.as_ref()) {
                *b.write().unwrap_or_else(|p| p.into_inner()) = Binding::of(&new, d);
            }
            self.registry
                .update(id, |s| s.patient.clone_from(&d.patient));
            tracing::info!(device = %id, patient = %d.patient, "device rebound");
        }
        for d in &plan.start {
            let resume = match &d.path {
                Some(p) => self
                    .outbox
                    .device_state(&d.id, &offset_key(p))
                    .ok()
                    .flatten()
                    .and_then(|v| v.parse::<u64>().ok()),
                None => None,
            };
            running.insert(d.id.clone(), self.start(&new, d, resume));
            tracing::info!(device = %d.id, "device started (configuration changed)");
        }
        if let Some(days) = plan.retention_days {
            let _ = self.retention_days.send(days);
        }
        tracing::info!(
            stopped = plan.stop.len(),
            started = plan.start.len(),
            rebound = plan.rebind.len(),
            alerts = plan.alerts,
            "configuration applied live"
        );
        self.config = new;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "[gateway]\nid = \"gw\"\n\
        [[patient]]\nid = \"p1\"\nnhs_number = \"9434765919\"\n[[patient]]\nid = \"p2\"\n\
        [[device]]\nid = \"a\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"/tmp/a\"\n\
        [[device]]\nid = \"b\"\npatient = \"p1\"\ndriver = \"sim\"\n";

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn unchanged_config_is_an_empty_plan() {
        assert!(plan(&cfg(BASE), &cfg(BASE)).unwrap().is_empty());
    }

    #[test]
    fn rebinding_a_device_is_a_rebind_not_a_restart() {
        let new = BASE.replace(
            "id = \"b\"\npatient = \"p1\"",
            "id = \"b\"\npatient = \"p2\"",
        );
        let p = plan(&cfg(BASE), &cfg(&new)).unwrap();
        assert_eq!(p.rebind, vec!["b".to_string()]);
        assert!(p.stop.is_empty() && p.start.is_empty() && p.alerts);
    }

    #[test]
    fn a_new_nhs_number_rebinds_the_patients_devices() {
        let new = BASE.replace("nhs_number = \"9434765919\"", "nhs_number = \"4010232137\"");
        let mut p = plan(&cfg(BASE), &cfg(&new)).unwrap().rebind;
        p.sort();
        assert_eq!(p, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn changed_device_settings_stop_and_start_that_device_only() {
        let new = BASE.replace("path = \"/tmp/a\"", "path = \"/tmp/a2\"");
        let p = plan(&cfg(BASE), &cfg(&new)).unwrap();
        assert_eq!(p.stop, vec!["a".to_string()]);
        assert_eq!(p.start.len(), 1);
        assert!(p.rebind.is_empty());
    }

    #[test]
    fn added_and_removed_devices_start_and_stop() {
        let new = BASE.replace(
            "[[device]]\nid = \"b\"\npatient = \"p1\"\ndriver = \"sim\"\n",
            "[[device]]\nid = \"c\"\npatient = \"p2\"\ndriver = \"sim\"\n",
        );
        let p = plan(&cfg(BASE), &cfg(&new)).unwrap();
        assert_eq!(p.stop, vec!["b".to_string()]);
        assert_eq!(p.start[0].id, "c");
    }

    #[test]
    fn retention_and_rules_are_live() {
        let new = format!("{BASE}[store]\nretention_days = 30\n").replace(
            "[[patient]]\nid = \"p2\"\n",
            "[[patient]]\nid = \"p2\"\n[patient.alerts]\nnews2_freshness_secs = 60\n",
        );
        let p = plan(&cfg(BASE), &cfg(&new)).unwrap();
        assert_eq!(p.retention_days, Some(30));
        assert!(p.alerts && p.rebind.is_empty());
    }

    #[test]
    fn a_store_or_gateway_change_needs_a_restart() {
        let new = format!("{BASE}[ingest]\nmax_batch = 7\n");
        assert_eq!(plan(&cfg(BASE), &cfg(&new)), None);
        let new = BASE.replace("id = \"gw\"", "id = \"gw2\"");
        assert_eq!(plan(&cfg(BASE), &cfg(&new)), None);
    }

    #[test]
    fn a_display_change_needs_a_restart() {
        let new = BASE.replace(
            "driver = \"sim\"\n",
            "driver = \"sim\"\ndisplay = \"Ward sim\"\n",
        );
        assert_eq!(plan(&cfg(BASE), &cfg(&new)), None);
    }
}

//! The hub's fleet agent: judges what arrives on `config/desired` (and `cmd`), persists and
//! applies an accepted document, answers on `config/reported`, audits every decision.
//!
//! It lives beside the pipeline, not inside it (started by `daemon::supervisor::serve`), so an
//! apply that restarts the pipeline keeps the agent and its MQTT session.
//!
//! An accepted document goes: persisted (atomic rename, [`super::state::save`]) -> audited
//! `fleet_config_applied` -> handed to the supervisor as an [`ApplyRequest`] -> reported
//! `applied` once the new configuration runs. A crash before the rename leaves the old
//! configuration, after it the new one (at the next start). A refused document changes
//! nothing, is audited `fleet_config_rejected` and reported `rejected` with its reason.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::command::{self, AcceptedCommand, RefusedCommand};
use super::document::{Judge, Rejected, Rejection, Running, Verdict};
use super::keys::PublicKey;
use super::overlay::Overlay;
use super::replay::ReplayStore;
use super::report::Report;
use super::state::{self, Applied};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::uplink::fleet_link::{Inbound, Outbound};

/// The configuration the hub is built from, shared by the agent (which judges documents
/// against the local config) and the supervisor (which re-lays the overlay over a local
/// config reloaded on SIGHUP).
#[derive(Debug, Clone)]
pub struct FleetView {
    /// The local config file, as last loaded.
    pub local: Config,
    /// The stored document (its version is the high-water mark even when not in force).
    pub applied: Option<Applied>,
    /// Its overlay, when in force.
    pub overlay: Option<Overlay>,
}

impl FleetView {
    /// The effective config for a (re)loaded local config: the overlay in force laid over it.
    pub fn effective_for(&self, local: &Config) -> Result<Config, String> {
        match &self.overlay {
            None => Ok(local.clone()),
            Some(o) => o.effective(local).map_err(|e| {
                let v = self.applied.as_ref().map_or(0, |a| a.version);
                super::redact(&format!(
                    "the local config conflicts with fleet configuration version {v}: {e}"
                ))
            }),
        }
    }
}

/// A new effective config for the supervisor; `done` is answered once it runs.
pub struct ApplyRequest {
    pub config: Config,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// The agent. Build with [`Agent::new`], run with [`Agent::run`].
pub struct Agent {
    gateway: String,
    trusted: Vec<PublicKey>,
    /// Holds `fleet-applied.json`.
    state_dir: PathBuf,
    /// The process's one audit writer.
    audit: Arc<AuditLog>,
    view: Arc<Mutex<FleetView>>,
    apply: mpsc::Sender<ApplyRequest>,
    /// The last report, re-published on every (re)connection (it is retained, but a broker
    /// may have lost it).
    last_report: Option<Report>,
    /// Nonces of accepted commands; `Err` when the store cannot be read (every command is
    /// then refused: an empty store would let remembered commands run again).
    replay: Result<ReplayStore, String>,
    /// Notified by `reload` (the SIGHUP path).
    reload: Arc<Notify>,
    /// Notified by `restart-uplink` (the publisher reloads its TLS files and reconnects).
    restart_uplink: Arc<Notify>,
    keys: Option<Arc<crate::keyops::Live>>,
    /// Seals the stored document.
    master: Arc<crate::store::MasterKey>,
}

/// What the agent can make the daemon do for a command.
#[derive(Clone)]
pub struct Controls {
    pub reload: Arc<Notify>,
    pub restart_uplink: Arc<Notify>,
    /// The process's one audit writer (`daemon::supervisor`): the agent never opens its own.
    pub audit: Arc<AuditLog>,
    /// Runs `rotate-key` and `erase-patient` (`crate::keyops::Live`).
    pub keys: Option<Arc<crate::keyops::Live>>,
    /// Seals the stored document (`fleet-applied.json`, see `state.rs`).
    pub master: Arc<crate::store::MasterKey>,
}

impl Agent {
    pub fn new(
        gateway: String,
        trusted: Vec<PublicKey>,
        state_dir: PathBuf,
        view: Arc<Mutex<FleetView>>,
        apply: mpsc::Sender<ApplyRequest>,
        controls: Controls,
    ) -> Agent {
        let last_report = {
            let v = view.lock().unwrap_or_else(|p| p.into_inner());
            v.applied
                .as_ref()
                .filter(|_| v.overlay.is_some())
                .map(|a| Report::applied(&gateway, a))
        };
        let replay = ReplayStore::open(&state_dir).map_err(|e| e.to_string());
        if let Err(e) = &replay {
            tracing::error!(error = %e, "fleet: the command replay store is unreadable; every command will be refused");
        }
        Agent {
            gateway,
            trusted,
            state_dir,
            view,
            apply,
            last_report,
            replay,
            reload: controls.reload,
            restart_uplink: controls.restart_uplink,
            audit: controls.audit,
            keys: controls.keys,
            master: controls.master,
        }
    }

    /// Runs until `shutdown` or until the link's channel closes.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        outbound: mpsc::Sender<Outbound>,
        shutdown: CancellationToken,
        mut start_failed: mpsc::Receiver<String>,
    ) {
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = inbound.recv() => match m { Some(m) => m, None => return },
                Some(why) = start_failed.recv() => {
                    let report = self.failed_to_start(&why);
                    if outbound.send(Outbound::Reported(report.to_json())).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let out = match msg {
                Inbound::Connected { gateway } => {
                    if gateway != self.gateway {
                        warn!(link = %gateway, agent = %self.gateway, "fleet link gateway id differs from the configured one");
                    }
                    self.last_report
                        .as_ref()
                        .map(|r| Outbound::Reported(r.to_json()))
                }
                Inbound::Desired(doc) if doc.is_empty() => None,
                Inbound::Desired(doc) => self
                    .on_desired(&doc, &shutdown)
                    .await
                    .map(|r| Outbound::Reported(r.to_json())),
                Inbound::Command(doc) => Some(Outbound::CommandResult(self.on_command(&doc))),
            };
            if let Some(out) = out {
                if outbound.send(out).await.is_err() {
                    return;
                }
            }
        }
    }

    fn running(&self) -> (u64, Option<String>) {
        let v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        (
            v.applied.as_ref().map_or(0, |a| a.version),
            v.applied.as_ref().map(|a| a.sha256.clone()),
        )
    }

    /// Judges, and applies or refuses, one document; the report to publish, if any.
    pub async fn on_desired(&mut self, doc: &[u8], shutdown: &CancellationToken) -> Option<Report> {
        let now = OffsetDateTime::now_utc();
        let (running_version, running_sha) = self.running();
        let local = self
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .local
            .clone();
        let verdict = Judge {
            gateway: &self.gateway,
            trusted: &self.trusted,
            local: &local,
            running: Running {
                version: running_version,
                sha256: running_sha.as_deref(),
            },
            now,
        }
        .judge(doc);
        let accepted = match verdict {
            Verdict::AlreadyRunning => return None,
            Verdict::Reject(r) => return Some(self.refuse(&r, running_version)),
            Verdict::Apply(a) => a,
        };
        let applied = Applied {
            version: accepted.version,
            sha256: accepted.sha256.clone(),
            key_id: accepted.key_id.clone(),
            applied_at: now,
            document: String::from_utf8_lossy(doc)
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        };
        // fsync off the runtime's worker threads (the publisher shares them).
        let saved = {
            let (dir, a, key) = (self.state_dir.clone(), applied.clone(), self.master.clone());
            crate::task::spawn_blocking(move || {
                state::save(&dir, &a, &key).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        };
        if let Err(e) = saved {
            let r = Rejected {
                reason: Rejection::Storage(e),
                version: Some(accepted.version),
                sha256: Some(accepted.sha256.clone()),
                key_id: Some(accepted.key_id.clone()),
            };
            return Some(self.refuse(&r, running_version));
        }
        let overlay = Overlay::parse(&accepted.payload.overlay).ok();
        let previous_overlay = {
            let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner());
            v.applied = Some(applied.clone());
            std::mem::replace(&mut v.overlay, overlay)
        };
        self.audit.note(
            "fleet_config_applied",
            serde_json::json!({
                "version": applied.version,
                "sha256": applied.sha256,
                "key_id": applied.key_id,
                "previous_version": running_version,
            }),
        );
        info!(version = applied.version, key_id = %applied.key_id, "fleet configuration accepted; applying");
        let (done, ran) = oneshot::channel();
        let request = ApplyRequest {
            config: accepted.effective,
            done,
        };
        if self.apply.send(request).await.is_err() {
            return None; // shutting down: the stored document is applied at the next start
        }
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = ran => r,
        };
        match result {
            Ok(Ok(())) => {
                let report = Report::applied(&self.gateway, &applied);
                self.remember(&report);
                Some(report)
            }
            Ok(Err(e)) => {
                // The supervisor went back to the configuration that ran; so does the view
                // (a SIGHUP lays the old overlay again). The stored version stays the
                // high-water mark: the same document is not tried again.
                self.view.lock().unwrap_or_else(|p| p.into_inner()).overlay = previous_overlay;
                Some(self.failed_to_start(&e))
            }
            Err(_) => None,
        }
    }

    /// Judges and runs one command; the `cmd/result` payload.
    pub fn on_command(&mut self, doc: &[u8]) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        let judged = match &self.replay {
            Ok(store) => command::judge(doc, &self.gateway, &self.trusted, now, |n| store.seen(n)),
            Err(e) => Err(Box::new(RefusedCommand {
                refusal: command::CommandRefusal::Payload(format!("replay store unavailable: {e}")),
                id: None,
                claimed_id: None,
                key_id: None,
            })),
        };
        let accepted = match judged {
            Ok(c) => c,
            Err(r) => return self.refuse_command(&r, now),
        };
        let recorded = match &mut self.replay {
            Ok(store) => store
                .record(&accepted.payload.nonce, accepted.payload.expires_at, now)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        if let Err(e) = recorded {
            let r = RefusedCommand {
                refusal: command::CommandRefusal::Payload(format!(
                    "cannot remember the command, so it is not run: {e}"
                )),
                id: Some(accepted.payload.id.clone()),
                claimed_id: None,
                key_id: Some(accepted.key_id.clone()),
            };
            return self.refuse_command(&r, now);
        }
        self.run_command(&accepted, now)
    }

    fn run_command(&mut self, c: &AcceptedCommand, now: OffsetDateTime) -> Vec<u8> {
        let p = &c.payload;
        let answer = match p.name.as_str() {
            "ping" => {
                let (running, _) = self.running();
                serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "running_version": running, "time": crate::status::rfc3339(now)})
            }
            "reload" => {
                self.reload.notify_one();
                serde_json::json!({"reloading": true})
            }
            "restart-uplink" => {
                self.restart_uplink.notify_one();
                serde_json::json!({"restarting": true})
            }
            "rotate-key" | "erase-patient" => match self.run_key_command(p, now) {
                Ok(answer) => answer,
                Err(e) => return self.command_failed(c, &e, now),
            },
            "resync" => {
                let outbox = self
                    .view
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .local
                    .outbox_path();
                match super::resync::run(&outbox, &p.args, &p.id, &self.audit) {
                    // The publisher re-reads the outbox from its start after a reconnect.
                    Ok(answer) => {
                        self.restart_uplink.notify_one();
                        answer
                    }
                    Err(e) => return self.command_failed(c, &e, now),
                }
            }
            // `command::judge` accepts only known names.
            other => serde_json::json!({"ignored": other}),
        };
        info!(id = %p.id, name = %p.name, key_id = %c.key_id, "fleet command run");
        self.audit.note(
            "fleet_command",
            serde_json::json!({"id": p.id, "name": p.name, "args": p.args, "key_id": c.key_id}),
        );
        serde_json::to_vec(&serde_json::json!({
            "gateway": self.gateway, "id": p.id, "name": p.name, "result": "ok",
            "answer": answer, "at": crate::status::rfc3339(now),
        }))
        .unwrap_or_default()
    }

    /// `rotate-key` and `erase-patient`, through the daemon's keyring (`crate::keyops`).
    fn run_key_command(
        &self,
        p: &command::CommandPayload,
        now: OffsetDateTime,
    ) -> Result<serde_json::Value, String> {
        let keys = self.keys.as_ref().ok_or("no outbox in this process")?;
        let answer = match (p.name.as_str(), p.args.first()) {
            ("erase-patient", Some(patient)) => keys
                .erase_patient(patient)
                .map(|e| serde_json::json!(e))
                .map_err(|e| e.to_string())?,
            _ => keys
                .rotate_data(now)
                .map(|r| serde_json::json!(r))
                .map_err(|e| e.to_string())?,
        };
        Ok(answer)
    }

    /// A command that was accepted and could not be carried out (e.g. the outbox is busy):
    /// answered `failed`, audited, nothing changed.
    fn command_failed(&mut self, c: &AcceptedCommand, error: &str, now: OffsetDateTime) -> Vec<u8> {
        let p = &c.payload;
        let detail = super::redact(error);
        warn!(id = %p.id, name = %p.name, error = %detail, "fleet command failed");
        self.audit.note("fleet_command_failed",
            serde_json::json!({"id": p.id, "name": p.name, "args": p.args, "key_id": c.key_id, "detail": detail}),
        );
        serde_json::to_vec(&serde_json::json!({
            "gateway": self.gateway, "id": p.id, "name": p.name, "result": "failed",
            "detail": detail, "at": crate::status::rfc3339(now),
        }))
        .unwrap_or_default()
    }

    fn refuse_command(&mut self, r: &RefusedCommand, now: OffsetDateTime) -> Vec<u8> {
        let detail = super::redact(&r.refusal.to_string());
        warn!(reason = r.refusal.code(), detail = %detail, "fleet command refused");
        self.audit.note("fleet_command_refused",
            serde_json::json!({"reason": r.refusal.code(), "detail": detail, "id": r.id, "claimed_id": r.claimed_id, "key_id": r.key_id}),
        );
        serde_json::to_vec(&serde_json::json!({
            "gateway": self.gateway,
            "id": r.id.as_ref().or(r.claimed_id.as_ref()),
            "id_verified": r.id.is_some(),
            "result": "refused", "reason": r.refusal.code(), "detail": detail,
            "at": crate::status::rfc3339(now),
        }))
        .unwrap_or_default()
    }

    fn refuse(&mut self, r: &Rejected, running_version: u64) -> Report {
        let detail = r.reason.detail();
        warn!(reason = r.reason.code(), detail = %detail, "fleet configuration rejected; the running configuration stays");
        self.audit.note(
            "fleet_config_rejected",
            serde_json::json!({
                "reason": r.reason.code(),
                "detail": detail,
                "version": r.version,
                "sha256": r.sha256,
                "key_id": r.key_id,
                "running_version": running_version,
            }),
        );
        let report = Report::rejected(&self.gateway, r, OffsetDateTime::now_utc(), running_version);
        self.remember(&report);
        report
    }

    /// The stored document's pipeline refused to start (`why`); the hub runs the last good
    /// configuration: audited and reported `rejected` with `failed_to_start`.
    fn failed_to_start(&mut self, why: &str) -> Report {
        let stored = self
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .applied
            .clone();
        let r = Rejected {
            reason: Rejection::FailedToStart(why.to_owned()),
            version: stored.as_ref().map(|a| a.version),
            sha256: stored.as_ref().map(|a| a.sha256.clone()),
            key_id: stored.as_ref().map(|a| a.key_id.clone()),
        };
        let (running, _) = self.running();
        self.refuse(&r, running)
    }

    /// Keeps `report` for re-publishing and for `vitalgate status` (`fleet-reported.json`).
    fn remember(&mut self, report: &Report) {
        if let Err(e) = write_atomic(&self.state_dir.join(REPORT_FILE), &report.to_json()) {
            warn!(error = %e, "cannot write {REPORT_FILE}");
        }
        self.last_report = Some(report.clone());
    }
}

/// The fleet side of a starting daemon.
pub struct Started {
    /// Local config with the stored overlay, when it still holds.
    pub effective: Config,
    pub view: Arc<Mutex<FleetView>>,
    /// Apply requests from the agent; closed when no agent runs.
    pub apply: mpsc::Receiver<ApplyRequest>,
    /// Tells the agent that the stored overlay's pipeline refused to start at this start
    /// (the supervisor runs the local config instead): reported and audited.
    pub start_failed: mpsc::Sender<String>,
}

/// Lays the stored document over `local` and, when `[fleet] trusted_keys` and `[uplink]` are
/// configured, starts the agent and its MQTT session (stopped by `shutdown`).
pub fn start(local: Config, controls: Controls, shutdown: &CancellationToken) -> Started {
    let state_dir = local.gateway.state_dir.clone();
    let trusted = match local.fleet.load_keys() {
        Ok(k) => k,
        Err(problems) => {
            for p in problems {
                tracing::error!(key = %p.key(), problem = %p.message(), "fleet: trusted key unusable; remote configuration is off");
            }
            Vec::new()
        }
    };
    if !state_dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir);
    }
    let at = match state::at_start(local.clone(), &trusted, &controls.master) {
        Ok(at) => at,
        Err(e) => {
            // Only a failing disk gets here (the file is replaced by rename): set it aside,
            // keep it for inspection, and run the local config.
            let aside = state_dir.join(format!(
                "{}.unreadable-{}",
                state::STATE_FILE,
                OffsetDateTime::now_utc().unix_timestamp()
            ));
            let _ = std::fs::rename(state_dir.join(state::STATE_FILE), &aside);
            tracing::error!(error = %e, moved_to = %aside.display(), "fleet: stored configuration unreadable; running the local configuration");
            controls.audit.note(
                "fleet_state_unreadable",
                serde_json::json!({"error": e.to_string(), "moved_to": aside}),
            );
            state::AtStart {
                config: local.clone(),
                applied: None,
                dropped: None,
            }
        }
    };
    if let Some(why) = &at.dropped {
        tracing::error!(version = at.version(), reason = %why, "fleet: stored configuration not in force; running the local configuration");
        controls.audit.note(
            "fleet_config_not_in_force",
            serde_json::json!({"version": at.version(), "reason": why}),
        );
    }
    let overlay = match (&at.applied, &at.dropped) {
        (Some(a), None) => jws_overlay(a, &trusted),
        _ => None,
    };
    let view = Arc::new(Mutex::new(FleetView {
        local: local.clone(),
        applied: at.applied.clone(),
        overlay,
    }));
    let (apply_tx, apply_rx) = mpsc::channel(1);
    let (failed_tx, failed_rx) = mpsc::channel(1);
    let gateway = local.gateway_id();
    match (&local.uplink, trusted.is_empty(), gateway) {
        (Some(up), false, Ok(gateway)) => {
            let mut up = up.clone();
            up.gateway_id = Some(gateway.clone());
            let (in_tx, in_rx) = mpsc::channel(16);
            let (out_tx, out_rx) = mpsc::channel(16);
            crate::task::spawn(crate::uplink::fleet_link::run(
                up,
                in_tx,
                out_rx,
                shutdown.clone(),
            ));
            let agent = Agent::new(
                gateway,
                trusted,
                state_dir,
                view.clone(),
                apply_tx,
                controls,
            );
            crate::task::spawn(agent.run(in_rx, out_tx, shutdown.clone(), failed_rx));
        }
        (None, false, _) => {
            tracing::warn!(
                "[fleet] trusted_keys is set but there is no [uplink]: remote configuration is off"
            )
        }
        (_, false, Err(e)) => {
            tracing::error!(error = %e, "fleet: no gateway id; remote configuration is off")
        }
        (_, true, _) => drop(apply_tx),
    }
    Started {
        effective: at.config,
        view,
        apply: apply_rx,
        start_failed: failed_tx,
    }
}

/// The overlay of a stored document (already verified by `state::at_start`).
fn jws_overlay(a: &Applied, trusted: &[PublicKey]) -> Option<Overlay> {
    let v = super::jws::verify(a.document.as_bytes(), super::jws::TYPE_CONFIG, trusted).ok()?;
    let p: super::document::ConfigPayload = serde_json::from_slice(&v.payload).ok()?;
    Overlay::parse(&p.overlay).ok()
}

/// The last report, for `vitalgate status`.
pub const REPORT_FILE: &str = "fleet-reported.json";

pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The `fleet` part of `vitalgate status`: the document in force and the last report.
pub fn status_json(state_dir: &std::path::Path) -> serde_json::Value {
    let applied = state::load_meta(state_dir).ok().flatten().map(|a| {
        serde_json::json!({"version": a.version, "sha256": a.sha256, "key_id": a.key_id,
            "applied_at": crate::status::rfc3339(a.applied_at)})
    });
    let reported = std::fs::read(state_dir.join(REPORT_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    serde_json::json!({"applied": applied, "last_report": reported})
}

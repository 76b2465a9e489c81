//! Reload without restart: SIGHUP re-reads the config file and the uplink's certificates.
//!
//! - The new config is validated whole first. If it has any problem, it is refused (logged
//!   with every problem, audited) and the running configuration stays.
//! - If it is valid and unchanged, only certificates and keys are re-read (the uplink
//!   reconnects with them; nothing beyond its in-flight window is re-sent).
//! - If it changed only in what can change live (devices, bindings, patients, alert rules,
//!   retention, log level; see [`super::live_apply`]), the change is applied as a diff inside
//!   the running pipeline: untouched devices keep their connections.
//! - Otherwise the pipeline is stopped at a safe point (devices stop, ingest commits
//!   what it holds, the uplink closes cleanly) and started again with the new config; the
//!   outbox, alert state and file offsets carry over because they live in the outbox.
//! - A pipeline that refuses to start under a new config (`run` returns an error) never
//!   becomes a crash loop: the supervisor goes back to the last config that ran (at start, the
//!   local config without the fleet overlay), audits `config_fallback`, and the agent reports
//!   the document `rejected` (`failed_to_start`).
//! - A fleet configuration document accepted by the agent ([`crate::fleet::agent`]) arrives
//!   as an [`ApplyRequest`] and takes the same path as a changed config; the agent is told
//!   once the new pipeline runs. The effective config is always the local file with the
//!   fleet overlay in force laid over it, also after a SIGHUP: a local config that conflicts
//!   with the overlay is refused like an invalid one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::live_apply::{self, LiveChange};
use super::{run, DaemonError, RunOptions};
use crate::audit::AuditLog;
use crate::config::{Config, ConfigError, Problem};
use crate::fleet::agent::{self, ApplyRequest};
use crate::store::MasterKey;

type Done = oneshot::Sender<Result<(), String>>;

/// Runs the daemon from the config at `path` until `shutdown`, reloading on `reload`.
/// `ready` is told once, when the first pipeline is up.
pub async fn serve(
    path: PathBuf,
    local: Config,
    master: MasterKey,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
    notifier: Option<Arc<dyn super::systemd::Notifier>>,
) -> Result<(), DaemonError> {
    // One daemon per state dir (taken before the audit log is opened, so a second instance
    // writes nothing into the first one's log), and one audit writer for the whole process:
    // every generation and reload shares it.
    super::create_private_dir(&local.gateway.state_dir)?;
    let mut _instance = super::instance_lock::InstanceLock::acquire(&local.gateway.state_dir)?;
    let mut audit = Arc::new(AuditLog::open(&local.gateway.state_dir, &master)?);
    recover_from_crash(&local.gateway.state_dir, &audit);
    let hl7 = Arc::new(super::hl7::Hl7Shared::default()); // held readings outlive a reload
                                                          // Lives across generations: `restart-uplink` notifies it whichever pipeline runs.
    let certs = Arc::new(Notify::new());
    let controls = agent::Controls {
        reload: reload.clone(),
        restart_uplink: certs.clone(),
        audit: audit.clone(),
        keys: Some(Arc::new(crate::keyops::Live::new(
            &local,
            &master,
            audit.clone(),
        ))),
        master: Arc::new(master.duplicate()),
    };
    let fleet = agent::start(local, controls, &shutdown);
    let mut config = fleet.effective;
    let view = fleet.view;
    let start_failed = fleet.start_failed;
    note_log_level(&config, &audit);
    // The last config a pipeline came up with (or was changed to live): what a generation that
    // refuses to start goes back to.
    // With it, the local config it was built from (restored too: a SIGHUP'd local file that
    // made `run` refuse must not come back under the next fleet document).
    let good: Arc<Mutex<Option<Good>>> = Arc::default();
    let applies = Arc::new(tokio::sync::Mutex::new(fleet.apply));
    // The agent's request waiting for the next generation to be up.
    let pending: Arc<Mutex<Option<Done>>> = Arc::default();
    let result = loop {
        if audit.path().parent() != Some(config.gateway.state_dir.as_path()) {
            super::create_private_dir(&config.gateway.state_dir)?;
            _instance = super::instance_lock::InstanceLock::acquire(&config.gateway.state_dir)?;
            audit = Arc::new(AuditLog::open(&config.gateway.state_dir, &master)?);
        }
        let generation = shutdown.child_token();
        let next: Arc<Mutex<Option<Config>>> = Arc::default();
        let (live_tx, live_rx) = tokio::sync::mpsc::channel(1);
        let watcher = {
            let (path, reload, certs, next, generation) = (
                path.clone(),
                reload.clone(),
                certs.clone(),
                next.clone(),
                generation.clone(),
            );
            let (view, applies, pending) = (view.clone(), applies.clone(), pending.clone());
            let mut current = config.clone();
            let audit = audit.clone();
            let good = good.clone();
            crate::task::spawn(async move {
                let mut applies = applies.lock().await;
                let mut agent_alive = true;
                loop {
                    let mut from_fleet = None;
                    tokio::select! {
                        _ = generation.cancelled() => return,
                        _ = reload.notified() => {}
                        request = applies.recv(), if agent_alive => {
                            let Some(ApplyRequest { config: new, done }) = request else {
                                agent_alive = false;
                                continue;
                            };
                            if new == current {
                                let _ = done.send(Ok(()));
                                continue;
                            }
                            from_fleet = Some((new, done));
                        }
                    }
                    let new = match from_fleet {
                        Some((new, done)) => {
                            tracing::info!("fleet configuration accepted; applying it");
                            audit_changes(&audit, &current, &new);
                            if apply_live(&live_tx, &current, &new).await {
                                note_log_level(&new, &audit);
                                *good.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(Good::now(&new, &view));
                                current = new;
                                let _ = done.send(Ok(()));
                                continue;
                            }
                            tracing::info!("restarting the pipeline at a safe point for the fleet configuration");
                            *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(done);
                            *next.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
                            generation.cancel();
                            return;
                        }
                        None => match reload_local(&path, &view) {
                            Err(e) => {
                                tracing::error!(config = %path.display(), problems = %e, "reload refused: the new config is invalid; keeping the running one");
                                audit.note("config_reload_refused", serde_json::json!({"file": path, "problems": e.problems.iter().map(ToString::to_string).collect::<Vec<_>>()}));
                                continue;
                            }
                            Ok(new) if new == current => {
                                tracing::info!("config unchanged; reloading certificates and keys");
                                certs.notify_one();
                                continue;
                            }
                            Ok(new) => new,
                        },
                    };
                    audit.note("config_applied", serde_json::json!({"file": path}));
                    audit_changes(&audit, &current, &new);
                    if apply_live(&live_tx, &current, &new).await {
                        note_log_level(&new, &audit);
                        *good.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Good::now(&new, &view));
                        current = new;
                        continue;
                    }
                    tracing::info!("config changed; restarting the pipeline at a safe point");
                    *next.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
                    generation.cancel();
                    return;
                }
            })
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let opts = RunOptions {
            reload: Some(certs.clone()),
            ready: Some(tx),
            notifier: notifier.clone(),
            process_shutdown: Some(shutdown.clone()),
            audit: Some(audit.clone()),
            hl7: Some(hl7.clone()),
            live_changes: Some(live_rx),
            ..Default::default()
        };
        {
            let first = ready.take();
            let pending = pending.clone();
            // The local config this generation's config was built from, taken now: a SIGHUP
            // may replace the view's before the pipeline is up.
            let up = Good::now(&config, &view);
            let good = good.clone();
            crate::task::spawn(async move {
                if rx.await.is_ok() {
                    *good.lock().unwrap_or_else(|p| p.into_inner()) = Some(up);
                    if let Some(ready) = first {
                        let _ = ready.send(());
                    }
                    if let Some(done) = pending.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        let _ = done.send(Ok(()));
                    }
                }
            });
        }
        note_log_level(&config, &audit);
        let result = run(config.clone(), master.duplicate(), generation.clone(), opts).await;
        generation.cancel();
        let _ = watcher.await;
        if shutdown.is_cancelled() {
            break result;
        }
        if let Err(e) = &result {
            // Never a crash loop: back to the last config that ran; at start (none ran yet),
            // the local config without the fleet overlay.
            let last_good = good.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let first_start = last_good.is_none();
            let fallback = match last_good {
                Some(g) => {
                    view.lock().unwrap_or_else(|p| p.into_inner()).local = g.local;
                    g.effective
                }
                None => view.lock().unwrap_or_else(|p| p.into_inner()).local.clone(),
            };
            if fallback == config {
                break result;
            }
            let why = crate::redact::scrub(&e.to_string()).into_owned();
            tracing::error!(error = %why, "the pipeline refused to start under the new configuration; going back to the last good one");
            audit.note(
                "config_fallback",
                serde_json::json!({"error": why, "to": if first_start { "local configuration" } else { "last good configuration" }}),
            );
            let done = pending.lock().unwrap_or_else(|p| p.into_inner()).take();
            match done {
                Some(done) => {
                    let _ = done.send(Err(why));
                }
                None if first_start => {
                    view.lock().unwrap_or_else(|p| p.into_inner()).overlay = None;
                    let _ = start_failed.try_send(why);
                }
                None => {}
            }
            next.lock().unwrap_or_else(|p| p.into_inner()).take();
            config = fallback;
            continue;
        }
        let new = next.lock().unwrap_or_else(|p| p.into_inner()).take();
        match new {
            Some(new) => config = new,
            None => break Ok(()),
        }
    };
    let stopped = match &result {
        Ok(()) => serde_json::json!({}),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    audit.note("daemon_stopped", stopped);
    audit.detach();
    result
}

/// A config a pipeline ran under, and the local config it was built from.
#[derive(Clone)]
struct Good {
    effective: Config,
    local: Config,
}

impl Good {
    fn now(effective: &Config, view: &Mutex<agent::FleetView>) -> Good {
        Good {
            effective: effective.clone(),
            local: view.lock().unwrap_or_else(|p| p.into_inner()).local.clone(),
        }
    }
}

/// Audits what changed between two effective configs.
fn audit_changes(audit: &AuditLog, current: &Config, new: &Config) {
    for (event, details) in crate::audit::events::config_changes(current, new) {
        audit.note(event, details);
    }
}

/// The local config file reloaded (SIGHUP), with the fleet overlay in force laid over it.
fn reload_local(
    path: &std::path::Path,
    view: &Mutex<agent::FleetView>,
) -> Result<Config, ConfigError> {
    let local = Config::load_and_check(path, None)?;
    let v = view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let effective = v.effective_for(&local).map_err(|why| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem::new("fleet", why)],
    })?;
    view.lock().unwrap_or_else(|p| p.into_inner()).local = local;
    Ok(effective)
}

/// Applies `new` inside the running pipeline when only live parts changed; `false`: the
/// pipeline must restart for it (or the live apply did not complete).
async fn apply_live(
    live: &tokio::sync::mpsc::Sender<LiveChange>,
    current: &Config,
    new: &Config,
) -> bool {
    if live_apply::plan(current, new).is_none() {
        return false;
    }
    let (done, applied) = oneshot::channel();
    let change = LiveChange {
        config: new.clone(),
        done,
    };
    if live.send(change).await.is_err() {
        return false;
    }
    match applied.await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "live apply incomplete; restarting the pipeline instead");
            false
        }
        Err(_) => false,
    }
}

/// Applies the config's log level to the running subscriber; a change is logged and audited.
fn note_log_level(config: &Config, audit: &AuditLog) {
    if let Some(level) = crate::logging::apply(&config.logging) {
        tracing::info!(%level, "log level changed");
        audit.note("log_level_changed", serde_json::json!({"level": level}));
    }
}

/// Acts on the breadcrumb of a run that ended on a panic ([`crate::crash`]): says what struck
/// and what is done about it in the journal and the audit log, then arms the hook so a panic
/// in this run leaves a breadcrumb in turn. Called with the instance lock held.
fn recover_from_crash(state_dir: &std::path::Path, audit: &AuditLog) {
    use crate::crash::{self, Work};
    let recovery = crash::recover(state_dir);
    for problem in &recovery.problems {
        tracing::warn!(%problem, "crash records");
    }
    if let Some(last) = &recovery.last {
        let now = time::OffsetDateTime::now_utc();
        let action = match &last.work {
            Some(Work::RenderingRow(id)) => {
                format!("row {id} is quarantined: {}", crash::RENDER_PANIC_REASON)
            }
            Some(Work::DecodingDevice(device)) => match recovery.device_paused_until(device, now) {
                Some(until) => format!(
                    "device {device:?} crashed the gateway {} times within {} min: paused until {}",
                    crash::DEVICE_CRASHES_TO_PAUSE,
                    crash::DEVICE_CRASH_WINDOW.whole_minutes(),
                    crate::status::rfc3339(until)
                ),
                None => format!(
                    "device {device:?} runs again; a second crash within {} min pauses it",
                    crash::DEVICE_CRASH_WINDOW.whole_minutes()
                ),
            },
            Some(Work::DecodingHl7(_)) => {
                "that HL7 message is refused (AR/CR) if it is sent again".into()
            }
            None => "none (the panic was in no row, device or message): restarted".into(),
        };
        let day = recovery.crashes_since(now - time::Duration::hours(24));
        let work = last.work.as_ref().map(crash::describe);
        tracing::error!(
            at = %crate::status::rfc3339(last.at),
            location = %last.location,
            thread = %last.thread,
            work = work.as_deref().unwrap_or("unnamed"),
            %action,
            crashes_last_24h = day,
            "the previous run stopped on a panic (a bug: please report it)"
        );
        let details = serde_json::json!({
            "at": crate::status::rfc3339(last.at),
            "location": last.location,
            "thread": last.thread,
            "work": last.work,
            "action": action,
            "crashes_last_24h": day,
        });
        if let Err(e) = audit.record("crash_recovered", details) {
            tracing::error!(error = %e, "cannot audit the crash recovery");
        }
    }
    crash::arm(state_dir, recovery);
}

//! Reload without restart: SIGHUP re-reads the config file and the uplink's certificates.
//!
//! - The new config is validated whole first. If it has any problem, it is refused (logged
//!   with every problem, audited) and the running configuration stays.
//! - If it is valid and unchanged, only certificates and keys are re-read (the uplink
//!   reconnects with them; nothing beyond its in-flight window is re-sent).
//! - If it changed, the pipeline is stopped at a safe point (devices stop, ingest commits
//!   what it holds, the uplink closes cleanly) and started again with the new config; the
//!   outbox, alert state and file offsets carry over because they live in the outbox.
//! - A fleet configuration document accepted by the agent ([`crate::fleet::agent`]) arrives
//!   as an [`ApplyRequest`] and takes the same path as a changed config; the agent is told
//!   once the new pipeline runs. The effective config is always the local file with the
//!   fleet overlay in force laid over it, also after a SIGHUP: a local config that conflicts
//!   with the overlay is refused like an invalid one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

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
    };
    let fleet = agent::start(local, controls, &shutdown);
    let mut config = fleet.effective;
    let view = fleet.view;
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
        let watcher = {
            let (path, reload, certs, next, generation) = (
                path.clone(),
                reload.clone(),
                certs.clone(),
                next.clone(),
                generation.clone(),
            );
            let (view, applies, pending) = (view.clone(), applies.clone(), pending.clone());
            let current = config.clone();
            let audit = audit.clone();
            tokio::spawn(async move {
                let mut applies = applies.lock().await;
                let mut agent_alive = true;
                loop {
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
                            tracing::info!("fleet configuration accepted; restarting the pipeline at a safe point");
                            for (event, details) in
                                crate::audit::events::config_changes(&current, &new)
                            {
                                audit.note(event, details);
                            }
                            *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(done);
                            *next.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
                            generation.cancel();
                            return;
                        }
                    }
                    let loaded = Config::load_and_check(&path, None).and_then(|local| {
                        let v = view.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let effective = v.effective_for(&local).map_err(|why| ConfigError {
                            file: path.clone(),
                            problems: vec![Problem::new("fleet", why)],
                        })?;
                        view.lock().unwrap_or_else(|p| p.into_inner()).local = local;
                        Ok(effective)
                    });
                    match loaded {
                        Err(e) => {
                            tracing::error!(config = %path.display(), problems = %e, "reload refused: the new config is invalid; keeping the running one");
                            audit.note("config_reload_refused", serde_json::json!({"file": path, "problems": e.problems.iter().map(ToString::to_string).collect::<Vec<_>>()}));
                        }
                        Ok(new) if new == current => {
                            tracing::info!("config unchanged; reloading certificates and keys");
                            certs.notify_one();
                        }
                        Ok(new) => {
                            tracing::info!(
                                "config changed; restarting the pipeline at a safe point"
                            );
                            audit.note("config_applied", serde_json::json!({"file": path}));
                            for (event, details) in
                                crate::audit::events::config_changes(&current, &new)
                            {
                                audit.note(event, details);
                            }
                            *next.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
                            generation.cancel();
                            return;
                        }
                    }
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
            ..Default::default()
        };
        {
            let first = ready.take();
            let pending = pending.clone();
            tokio::spawn(async move {
                if rx.await.is_ok() {
                    if let Some(ready) = first {
                        let _ = ready.send(());
                    }
                    if let Some(done) = pending.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        let _ = done.send(Ok(()));
                    }
                }
            });
        }
        let result = run(config.clone(), master.duplicate(), generation.clone(), opts).await;
        generation.cancel();
        let _ = watcher.await;
        if result.is_err() || shutdown.is_cancelled() {
            break result;
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

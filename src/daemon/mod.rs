//! The daemon: wires the long-lived tasks together for `vitalgate run` and `vitalgate demo`
//! (the demo's own parts live in [`crate::demo`]).
//!
//! One task per concern, each stopped by a `CancellationToken` at a safe point:
//! - one task per device (transport + decoder, or the simulator), feeding ingest;
//! - the ingest writer thread (the only writer of readings);
//! - the retention task (purges delivered rows after `retention_days`, audited);
//! - the status task (writes `status.json` when it changes).
//!
//! Shutdown order matters for durability: devices stop first, then every ingest handle is
//! dropped so the writer commits what it holds and ends, then the final status is written.
//! A failing device task is logged and retried; it never stops ingest.

use crate::task::TrackBoxed;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::ingest::{self, CommitHook, GroupCommit, HookOutput};
use crate::status::{self, Registry};
use crate::store::{MasterKey, Outbox, Record, StoreError};

/// How long shutdown waits for tasks before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
const STATUS_EVERY: Duration = Duration::from_secs(2);
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("{path}: cannot create the state directory: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the ingest writer: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    GatewayId(String),
    #[error("{0}")]
    Alerts(String),
    #[error("uplink: {0}")]
    Uplink(#[from] crate::uplink::UplinkError),
    #[error(transparent)]
    Lock(#[from] instance_lock::LockError),
    /// Debug builds only: a refusal the tests ask for, so the supervisor's fallback from a
    /// configuration the pipeline refuses is exercised end to end (tests/fleet.rs).
    #[cfg(debug_assertions)]
    #[error(
        "refused by fault injection: device {0:?} is configured (VITALGATE_INJECT_RUN_REFUSAL)"
    )]
    Injected(String),
}

/// Extras for `run`: the demo's live view hooks in here, as do tests.
#[derive(Default)]
pub struct RunOptions {
    /// Extra commit hooks, run inside each ingest transaction after the built-in ones.
    pub hooks: Vec<Box<dyn CommitHook>>,
    /// Told when the outbox is open and devices are starting (systemd READY).
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// Notified on SIGHUP: certificates and keys are re-read by the uplink.
    pub reload: Option<Arc<Notify>>,
    /// systemd notifications (READY, STATUS, WATCHDOG, STOPPING); see `systemd.rs`.
    pub notifier: Option<Arc<dyn systemd::Notifier>>,
    /// The process's own shutdown, when `run` is one generation of a reloading supervisor:
    /// a generation that ends for a reload does not tell systemd it is stopping.
    pub process_shutdown: Option<CancellationToken>,
    /// The live state (`live.sock`, `status`, `top`); the demo passes its own to read the tally.
    pub live: Option<crate::live::Live>,
    /// The process's one audit writer, shared across reloads (opened here when `None`).
    pub audit: Option<Arc<AuditLog>>,
    /// HL7 counters and readings held from unbound monitors, kept across reloads (a new
    /// generation releases what its config now binds); `None` starts afresh.
    pub hl7: Option<Arc<hl7::Hl7Shared>>,
    /// Where readings' times come from (`crate::clock`); `None`: the system's clocks.
    pub clock: Option<Arc<dyn crate::clock::ClockSource>>,
    /// Configuration changes applied live, as a diff (`live_apply.rs`); `None`: none come.
    pub live_changes: Option<tokio::sync::mpsc::Receiver<live_apply::LiveChange>>,
}

/// Calls several hooks in order.
struct Hooks(Vec<Box<dyn CommitHook>>);

impl CommitHook for Hooks {
    fn on_batch(&mut self, accepted: &[Record], now: OffsetDateTime) -> HookOutput {
        let mut out = HookOutput::default();
        for h in &mut self.0 {
            out.extend(h.on_batch(accepted, now));
        }
        out
    }
    fn on_reject(&mut self, r: &ingest::Rejection) -> HookOutput {
        let mut out = HookOutput::default();
        for h in &mut self.0 {
            out.extend(h.on_reject(r));
        }
        out
    }
    fn on_tick(&mut self, now: OffsetDateTime, backlog: u64) -> HookOutput {
        let mut out = HookOutput::default();
        for h in &mut self.0 {
            out.extend(h.on_tick(now, backlog));
        }
        out
    }
    fn on_storage(
        &mut self,
        now: OffsetDateTime,
        alarm: ingest::StorageAlarm,
        active: bool,
    ) -> HookOutput {
        let mut out = HookOutput::default();
        for h in &mut self.0 {
            out.extend(h.on_storage(now, alarm, active));
        }
        out
    }
    fn on_stalled(&mut self, now: OffsetDateTime) {
        self.0.iter_mut().for_each(|h| h.on_stalled(now));
    }
}

/// Whether the system clock is known to be synchronised: systemd-timesyncd's flag file, or
/// a step of the wall clock the ingest writer's clock watch saw (`crate::clock`).
pub fn clock_synced() -> bool {
    crate::clock::process_synced()
}

/// The state-file key under which a stream device's committed offset is kept.
pub(crate) fn offset_key(path: &std::path::Path) -> String {
    format!("offset:{}", path.display())
}

/// Runs the gateway until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    master: MasterKey,
    shutdown: CancellationToken,
    mut opts: RunOptions,
) -> Result<(), DaemonError> {
    #[cfg(debug_assertions)]
    if let Ok(id) = std::env::var("VITALGATE_INJECT_RUN_REFUSAL") {
        if config.devices.iter().any(|d| d.id == id) {
            return Err(DaemonError::Injected(id));
        }
    }
    let state_dir = config.gateway.state_dir.clone();
    create_private_dir(&state_dir)?;
    // One daemon per state dir, before anything in it is opened (instance_lock.rs). Under
    // `serve` the supervisor holds the lock (it opens the audit log first); a run that opens
    // its own audit log (demo, tests) takes it here.
    let own_audit = opts.audit.is_none();
    let _instance = if own_audit {
        Some(instance_lock::InstanceLock::acquire(&state_dir)?)
    } else {
        None
    };
    let audit = match opts.audit.take() {
        Some(a) => a,
        None => Arc::new(AuditLog::open(&state_dir, &master)?),
    };

    let outbox_path = config.outbox_path();
    let (mut outbox, report) = match Outbox::open(&outbox_path, &master) {
        Ok(x) => x,
        Err(e) => {
            if matches!(e, StoreError::WrongKey { .. }) {
                audit.note(
                    "wrong_key_refused",
                    serde_json::json!({"outbox": outbox_path, "key_source": master.source()}),
                );
            }
            return Err(e.into());
        }
    };
    // The audit chain is checked against its head in the outbox (a break is an alarm and an
    // audit entry, never a reason not to run).
    if let Err(e) = audit.attach(Box::new(Outbox::open_secondary(&outbox_path, &master)?)) {
        tracing::error!(error = %e, "audit log cannot be checked at start");
    }
    if let Some(aside) = &report.corrupt_moved_to {
        audit.note(
            "outbox_corrupt_set_aside",
            serde_json::json!({"outbox": outbox_path, "moved_to": aside}),
        );
    }
    if report.created {
        audit.note(
            "outbox_created",
            serde_json::json!({"outbox": outbox_path, "key_source": master.source()}),
        );
    }
    outbox.set_key_rotation_days(config.store.key_rotation_days);
    // A row the previous run crashed rendering is quarantined, not rendered again
    // (crate::crash). A later generation finds it moved already.
    if let Some(row) = crate::crash::recovered().row_to_quarantine() {
        if let Err(e) = outbox.quarantine_row(row, crate::crash::RENDER_PANIC_REASON) {
            tracing::error!(row_id = row, error = %e, "cannot quarantine the row that crashed rendering; it will be tried again");
        }
    }
    if let Some(h) = outbox.master_handover() {
        audit.note("master_key_handover", serde_json::json!({ "outcome": h }));
    }
    let started_at = OffsetDateTime::now_utc();
    let gateway_id = config.gateway_id().map_err(DaemonError::GatewayId)?;
    audit.note_started(crate::audit::events::started(&config, &gateway_id));

    // Offsets of followed files, committed with their readings.
    let mut cursors = std::collections::HashMap::new();
    for d in &config.devices {
        if let Some(p) = &d.path {
            if let Some(v) = outbox.device_state(&d.id, &offset_key(p))? {
                cursors.insert(d.id.clone(), v.parse::<u64>().ok());
            }
        }
    }

    let committed = Arc::new(Notify::new());
    // Delivery marks ride on the writer's commits (store/delivery/deferred.rs).
    let marks = crate::store::DeferredMarks::default();
    // The uplink: its own outbox connection, woken by every commit.
    let uplink_token = CancellationToken::new();
    let mut uplink_to_run = None;
    let mut uplink_status = None;
    if let Some(up_cfg) = &config.uplink {
        let mut up_cfg = up_cfg.clone();
        up_cfg.gateway_id = Some(gateway_id.clone());
        let handing = |mut o: Outbox| {
            o.hand_marks_to(marks.clone());
            o
        };
        outbox.carry_marks_from(marks.clone());
        let source = publish::PublishSource::with_reader(
            handing(Outbox::open_secondary(&outbox_path, &master)?),
            handing(Outbox::open_secondary(&outbox_path, &master)?),
            gateway_id.clone(),
            &config,
        );
        let uplink = crate::uplink::Uplink::new(up_cfg, source, committed.clone())?;
        uplink_status = Some(uplink.status());
        if let Some(reload) = opts.reload.clone() {
            let target = uplink.reload_handle();
            let audit = audit.clone();
            let token = uplink_token.clone();
            crate::task::spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = reload.notified() => {
                            audit.note("reload_requested", serde_json::json!({"what": "uplink certificates and keys"}));
                            target.notify_one();
                        }
                    }
                }
            });
        }
        uplink_to_run = Some(uplink);
    } else {
        tracing::warn!(
            "no [uplink] configured: readings are kept encrypted in the outbox until one is"
        );
    }

    let policy = GroupCommit {
        max_batch: config.ingest.max_batch,
        max_wait: Duration::from_millis(config.ingest.max_batch_wait_ms),
    };
    let saved = alerting::load_states(&outbox, &config)?;
    let live = opts.live.take().unwrap_or_default();
    live.clinical()
        .seed(&config, &saved, OffsetDateTime::now_utc());
    let ble_devices = devices::ble_devices(&config);
    let ble_seqs = crate::transport::ble::load_last_seqs(&outbox, &ble_devices);
    let alerts_slot = alerting::ReconfigureSlot::default();
    let alert_hook = alerting::AlertHook::new(
        &config,
        gateway_id.clone(),
        saved,
        uplink_status.clone(),
        OffsetDateTime::now_utc(),
    )
    .map_err(|e| DaemonError::Alerts(format!("alert configuration: {e}")))?
    .with_audit(audit.clone())
    .with_reconfigure(alerts_slot.clone());
    let heartbeat = systemd::Heartbeat::new(); // the writer's liveness, for the watchdog
    let mut hooks: Vec<Box<dyn CommitHook>> = vec![
        Box::new(crate::live::Tap::new(Box::new(alert_hook), live.clinical())),
        Box::new(heartbeat.hook()),
    ];
    hooks.extend(std::mem::take(&mut opts.hooks));
    let extras = ingest::WriterExtras {
        cap: config
            .store
            .max_bytes
            .map(|max_bytes| crate::store::StorageCap {
                max_bytes,
                when_full: config.store.when_full,
            }),
        audit: Some(audit.clone()),
        clock: Some(
            opts.clock
                .take()
                .unwrap_or_else(|| Arc::new(crate::clock::SystemClock::default())),
        ),
    };
    let (ingest, writer) = ingest::start_with(
        outbox,
        policy,
        committed.clone(),
        Box::new(Hooks(hooks)),
        extras,
    )
    .map_err(DaemonError::Thread)?;

    let registry = Registry::default();
    let devices_token = shutdown.child_token();
    let tracker = TaskTracker::new();
    let (retention_days, mut retention_changed) =
        tokio::sync::watch::channel(config.store.retention_days);
    let applier = live_apply::Applier {
        config: config.clone(),
        ingest: ingest.clone(),
        registry: registry.clone(),
        tracker: tracker.clone(),
        devices_token: devices_token.clone(),
        outbox: Outbox::open_secondary(&outbox_path, &master)?,
        alerts: alerts_slot,
        retention_days,
    };
    tracker.spawn_boxed(applier.run(cursors, opts.live_changes.take()));
    devices::spawn_ble(
        &config,
        ble_devices,
        ble_seqs,
        &ingest,
        &registry,
        &devices_token,
        &tracker,
    );
    let hl7_shared = opts.hl7.clone().unwrap_or_default();
    hl7::spawn(
        &config,
        &ingest,
        &registry,
        hl7_shared.clone(),
        &devices_token,
        &tracker,
    );
    // Time-based alert rules (device silent, persistence, outbox depth) run once a second.
    {
        let ingest = ingest.clone();
        let token = devices_token.clone();
        tracker.spawn_boxed(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = every.tick() => {
                        if ingest.tick().await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    // The status telemetry (live/telemetry.rs) and the audit log (audit/forward.rs) ride on
    // the uplink: the retained `status` and `audit` topics.
    let uplink_to_run = match uplink_to_run {
        Some(u) => {
            let sources = crate::live::telemetry::Sources::new(
                live.clone(),
                audit.clone(),
                state_dir.clone(),
            );
            let every = Duration::from_secs(config.status.telemetry_interval_s);
            let feed =
                crate::live::telemetry::spawn(sources, every, shutdown.child_token(), &tracker);
            let cursor = Outbox::open_secondary(&outbox_path, &master)?;
            let log = crate::audit::forward::LogFeed::new(audit.path(), cursor);
            Some(u.with_status_feed(feed).with_audit(Box::new(log)))
        }
        None => None,
    };
    let uplink_task = uplink_to_run.map(|u| crate::task::spawn(u.run(uplink_token.clone())));
    let counters = ingest.counters.clone();
    drop(ingest); // device tasks hold the only handles now
    tracing::info!(devices = config.devices.len(), outbox = %outbox_path.display(), "vitalgate running");
    if let Some(ready) = opts.ready.take() {
        let _ = ready.send(());
    }

    // Retention: purge rows delivered more than retention_days ago, audited.
    let retention_token = shutdown.child_token();
    {
        let path = outbox_path.clone();
        let audit = audit.clone();
        let secondary = Outbox::open_secondary(&path, &master)?;
        let token = retention_token.clone();
        tracker.spawn_boxed(async move {
            let secondary = Arc::new(std::sync::Mutex::new(secondary));
            loop {
                // A live change (live_apply.rs) wakes it to purge under the new retention.
                let days = *retention_changed.borrow_and_update();
                // Checked: a cut-off before the earliest date means nothing is purged, never a panic.
                let cutoff = OffsetDateTime::now_utc()
                    .checked_sub(time::Duration::days(i64::from(days)))
                    .unwrap_or(time::PrimitiveDateTime::MIN.assume_utc());
                let ob = secondary.clone();
                let purged = crate::task::spawn_blocking(move || ob.lock().unwrap_or_else(|p| p.into_inner()).purge_delivered_before(cutoff)).await;
                match purged {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => audit.note("retention_purge", serde_json::json!({"rows": n, "delivered_before": status::rfc3339(cutoff), "retention_days": days})),
                    Ok(Err(e)) => tracing::error!(error = %e, "retention purge failed"),
                    Err(e) => tracing::error!(error = %e, "retention task did not finish"),
                }
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(RETENTION_EVERY) => {}
                    Ok(()) = retention_changed.changed() => {}
                }
            }
        });
    }

    // Keys the writer creates are audited; spent ones destroyed (key_housekeeping.rs).
    tracker.spawn_boxed(
        key_housekeeping::KeyHousekeeping::new(&outbox_path, &master, audit.clone())?
            .run(retention_token.clone()),
    );

    // Rows the publisher quarantines are audited (audit/watch.rs).
    tracker.spawn_boxed(crate::audit::watch::quarantine(
        Outbox::open_secondary(&outbox_path, &master)?,
        audit.clone(),
        retention_token.clone(),
    ));

    // Status snapshot.
    let snapshot = {
        let registry = registry.clone();
        let counters = counters.clone();
        let gateway = gateway_id.clone();
        let uplink_status = uplink_status.clone();
        let key_source = serde_json::to_value(master.source()).unwrap_or_default();
        let audit = audit.clone();
        let hl7_listen = config.hl7.as_ref().map(|h| h.listen.clone());
        move |running: bool| {
            serde_json::json!({
                "gateway": gateway,
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "running": running,
                "started_at": status::rfc3339(started_at),
                "updated_at": status::rfc3339(OffsetDateTime::now_utc()),
                "clock_synced": clock_synced(),
                "key_source": key_source,
                "devices": registry.snapshot(OffsetDateTime::now_utc()),
                "ingest": counters.snapshot(),
                "uplink": uplink_status.as_ref().map(|s| serde_json::to_value(&*s.borrow()).unwrap_or_default()),
                "audit": audit.status(),
                "hl7": hl7_listen.as_ref().map(|l| hl7_shared.status(l)),
            })
        }
    };
    {
        let snapshot = snapshot.clone();
        let dir = state_dir.clone();
        let token = retention_token.clone();
        tracker.spawn_boxed(async move {
            // Checked in memory every STATUS_EVERY; written only on change (status.rs).
            let mut writer = status::SnapshotWriter::default();
            loop {
                if let Err(e) = writer.write_if_changed(&dir, &snapshot(true)) {
                    tracing::warn!(error = %e, "cannot write status snapshot");
                }
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(STATUS_EVERY) => {}
                }
            }
        });
    }

    // The live state and its socket (live/): `vitalgate status` and `top` read it.
    crate::live::spawn(
        live,
        crate::live::Sources {
            gateway: gateway_id.clone(),
            started_at,
            registry: registry.clone(),
            counters: counters.clone(),
            uplink: uplink_status.clone(),
            outbox_path: outbox_path.clone(),
            state_dir: state_dir.clone(),
            capacity: config.store.capacity,
        },
        retention_token.clone(),
        &tracker,
    );

    // systemd (systemd.rs): READY=1, then STATUS= and WATCHDOG=1 while the writer ticks.
    if let Some(n) = opts.notifier.clone() {
        systemd::notify_ready(n.as_ref(), "outbox open, devices starting");
        let watchdog = sd_notify::watchdog_enabled();
        let (registry, uplink_status) = (registry.clone(), uplink_status.clone());
        let token = retention_token.clone();
        tracker.spawn_boxed(systemd::supervise(
            n,
            watchdog,
            heartbeat,
            registry,
            uplink_status,
            token,
        ));
    }

    shutdown.cancelled().await;
    let stopping = opts
        .process_shutdown
        .as_ref()
        .is_none_or(|t| t.is_cancelled());
    if let (Some(n), true) = (&opts.notifier, stopping) {
        systemd::notify_stopping(n.as_ref());
    }
    tracing::info!("stopping: devices first, then committing what ingest holds");
    counters.begin_shutdown(); // a failing commit is not waited for any more
    devices_token.cancel();
    retention_token.cancel();
    tracker.close();
    // Set only when every connection to the outbox is known to be closed (clean stop marker).
    let mut all_stopped = true;
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}");
        all_stopped = false;
    }
    // Every ingest handle is gone once the device tasks ended: the writer drains and stops.
    // Bounded: a task that never let go of its handle must not keep SIGTERM from completing
    // (what the writer still holds then dies with the process, as with SIGKILL; WAL keeps
    // every committed transaction).
    let outbox = match tokio::time::timeout(
        SHUTDOWN_GRACE,
        crate::task::spawn_blocking(move || writer.join()),
    )
    .await
    {
        Ok(Ok(Ok(outbox))) => Some(outbox),
        Ok(_) => {
            tracing::error!("ingest writer ended abnormally");
            None
        }
        Err(_) => {
            tracing::error!("ingest writer still running {SHUTDOWN_GRACE:?} after the devices stopped (a task still holds ingest): stopping without it; what it holds was NOT stored");
            None
        }
    };
    marks.writer_stopped(); // the uplink's last marks are its own commits

    // Last, the uplink: it stops sending, waits briefly for outstanding PUBACKs, publishes
    // its retained offline status and disconnects.
    uplink_token.cancel();
    if let Some(task) = uplink_task {
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            tracing::warn!("uplink did not stop within {SHUTDOWN_GRACE:?}");
            all_stopped = false;
        }
    }
    // Last write to the outbox: the next start may skip the full-file check (store::outbox).
    if let (Some(outbox), true) = (outbox, all_stopped) {
        if let Err(e) = outbox.close_clean() {
            tracing::warn!(error = %e, "outbox not marked cleanly stopped; the next start checks it in full");
        }
    }
    let _ = status::write_snapshot(&state_dir, &snapshot(false));
    // The owner of the writer records the stop while the head still follows the file.
    if own_audit {
        audit.note("daemon_stopped", serde_json::json!({}));
        audit.detach();
    }
    tracing::info!("stopped");
    Ok(())
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DaemonError::StateDir {
            path: dir.to_path_buf(),
            source,
        })
}

pub mod alerting;
pub mod devices;
pub mod hl7;
pub mod instance_lock;
pub mod key_housekeeping;
pub mod live_apply;
pub mod publish;
pub mod supervisor;
pub mod systemd;

/// The `vitalgate status` document: outbox counts (read without the key) and the daemon's
/// last snapshot (devices, ingest), marked stale when its process is gone.
pub fn status_json(config: &Config) -> Result<serde_json::Value, StoreError> {
    let path = config.outbox_path();
    let stats = if path.exists() {
        Some(crate::store::outbox::stats_readonly(&path)?)
    } else {
        None
    };
    let snapshot = status::read_snapshot(&config.gateway.state_dir);
    let running = snapshot
        .as_ref()
        .and_then(|s| s.get("pid").and_then(|p| p.as_u64()))
        .map(status::pid_alive)
        .unwrap_or(false)
        && snapshot
            .as_ref()
            .and_then(|s| s.get("running"))
            .and_then(|r| r.as_bool())
            .unwrap_or(false);
    let s = stats.unwrap_or_default();
    Ok(serde_json::json!({
        "gateway": config.gateway_id().ok(),
        "daemon": {
            "running": running,
            "pid": snapshot.as_ref().and_then(|s| s.get("pid")).cloned(),
            "updated_at": snapshot.as_ref().and_then(|s| s.get("updated_at")).cloned(),
            "clock_synced": clock_synced(),
        },
        "outbox": {
            "path": path,
            "exists": path.exists(),
            "capacity": config.store.capacity,
            "delivered_held": s.delivered_held,
            "refused": s.refused,
            "quarantined": s.quarantined,
            "corrupt_files_set_aside": s.corrupt_files_set_aside,
            "schema_version": s.schema_version,
        },
        "backlog": {
            "alerts": s.backlog_alerts,
            "readings": s.backlog_readings,
            "total": s.backlog_alerts + s.backlog_readings,
        },
        "oldest_undelivered": s.oldest_undelivered.map(status::rfc3339),
        "last_ack": s.last_ack.map(status::rfc3339),
        "keys": {
            "source": snapshot.as_ref().and_then(|s| s.get("key_source")).cloned(),
            "current_key_id": s.current_key_id,
            "key_ids": s.key_ids,
            "data_keys": s.data_keys,
        },
        "devices": snapshot.as_ref().and_then(|s| s.get("devices")).cloned().unwrap_or_else(|| {
            serde_json::Value::Array(config.devices.iter().map(|d| serde_json::json!({
                "id": d.id, "patient": d.patient, "driver": d.driver, "state": "not_running"
            })).collect())
        }),
        "ingest": snapshot.as_ref().and_then(|s| s.get("ingest")).cloned(),
        "uplink": snapshot.as_ref().and_then(|s| s.get("uplink")).cloned(),
        "audit": snapshot.as_ref().and_then(|s| s.get("audit")).cloned(),
        "hl7": snapshot.as_ref().and_then(|s| s.get("hl7")).cloned(),
        "fleet": crate::fleet::agent::status_json(&config.gateway.state_dir),
        "crashes": crate::crash::status_json(&config.gateway.state_dir, OffsetDateTime::now_utc()),
    }))
}

//! Ward monitors into ingest: the MLLP listener's handler.
//!
//! For each message: decode (`crate::hl7`), bind to a patient (`[[hl7.bed]]` by device or
//! PV1-3, PID-3 only with `trust_pid`), submit the readings to ingest and wait until they are
//! committed, and only then answer `CA`/`AA`. Anything else gets `AE`/`AR` with an ERR segment
//! naming the reason. A crash between commit and ACK makes the monitor re-send; the
//! deterministic Observation ids make the duplicate harmless on the platform.
//!
//! Readings from a monitor no bed binds are **held** (in memory, never published under a
//! guess), counted and shown in status with the sender and its location, and answered `AE`
//! (not stored: the monitor keeps its own copy). They are released (committed under the bound
//! patient) as soon as a binding arrives: the held store outlives a SIGHUP reload, and each
//! new pipeline first releases what its config now binds.

use crate::task::TrackBoxed;
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::clock_synced;
use crate::config::Config;
use crate::hl7::config::{device_id, Binding, Hl7Config};
use crate::hl7::{self, ack, MonitorZone, Oru, Refusal, Verdict};
use crate::ingest::{Frame, IngestHandle, RateLimit};
use crate::status::Registry;
use crate::transport::mllp_server::{self, Limits, ListenerCounters, Reply};
use crate::transport::LinkState;

/// Message counters (cumulative over reloads).
#[derive(Debug, Default)]
pub struct Hl7Counters {
    pub messages: AtomicU64,
    pub stored: AtomicU64,
    pub readings_committed: AtomicU64,
    pub rows_skipped: AtomicU64,
    pub demo_rejected: AtomicU64,
    pub malformed: AtomicU64,
    pub unsupported: AtomicU64,
    pub not_hl7: AtomicU64,
    pub unbound: AtomicU64,
    pub identity_conflicts: AtomicU64,
    pub ingest_failures: AtomicU64,
    /// Messages refused because decoding them crashed the gateway before (`crate::crash`).
    pub crashed_decoding: AtomicU64,
    pub released_readings: AtomicU64,
}

/// One message held from an unbound monitor.
#[derive(Debug)]
struct Held {
    oru: Arc<Oru>,
    at: OffsetDateTime,
}

/// What the listener keeps across pipeline generations: counters and held messages.
#[derive(Debug, Default)]
pub struct Hl7Shared {
    pub counters: Hl7Counters,
    pub listener: Arc<ListenerCounters>,
    held: Mutex<VecDeque<Held>>,
    held_dropped: AtomicU64,
}

impl Hl7Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, VecDeque<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Readings currently held.
    pub fn held_readings(&self) -> usize {
        self.held().iter().map(|h| h.oru.readings().count()).sum()
    }

    /// Holds a message (a re-sent one, same sender and control id, replaces the first);
    /// beyond `max` readings the oldest messages are dropped and counted.
    fn hold(&self, oru: Arc<Oru>, at: OffsetDateTime, max: usize) {
        let mut held = self.held();
        held.retain(|h| {
            !(h.oru.header.sending_application == oru.header.sending_application
                && h.oru.header.control_id == oru.header.control_id)
        });
        held.push_back(Held { oru, at });
        let mut total: usize = held.iter().map(|h| h.oru.readings().count()).sum();
        while total > max {
            let Some(old) = held.pop_front() else { break };
            let n = old.oru.readings().count();
            total -= n;
            self.held_dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// The `hl7` section of `status.json`.
    pub fn status(&self, listen: &str) -> serde_json::Value {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let held = self.held();
        // One entry per sender and location, so an operator sees which bed to bind.
        let mut monitors: Vec<serde_json::Value> = Vec::new();
        let mut seen: Vec<(String, Option<String>)> = Vec::new();
        for h in held.iter() {
            let key = (
                h.oru.header.sending_application.clone(),
                h.oru.location.clone(),
            );
            let same =
                |x: &&Held| x.oru.header.sending_application == key.0 && x.oru.location == key.1;
            if seen.contains(&key) {
                continue;
            }
            let of_this: Vec<&Held> = held.iter().filter(same).collect();
            monitors.push(serde_json::json!({
                "sender": key.0,
                "location": key.1,
                "device": h.oru.equipment().next(),
                "messages": of_this.len(),
                "readings": of_this.iter().map(|x| x.oru.readings().count()).sum::<usize>(),
                "first_held_at": of_this.first().map(|x| crate::status::rfc3339(x.at)),
                "last_held_at": of_this.last().map(|x| crate::status::rfc3339(x.at)),
            }));
            seen.push(key);
        }
        serde_json::json!({
            "listen": listen,
            "connections": self.listener.snapshot(),
            "messages": {
                "received": g(&c.messages),
                "stored": g(&c.stored),
                "demo_rejected": g(&c.demo_rejected),
                "malformed": g(&c.malformed),
                "unsupported": g(&c.unsupported),
                "not_hl7": g(&c.not_hl7),
                "unbound": g(&c.unbound),
                "identity_conflicts": g(&c.identity_conflicts),
                "ingest_failures": g(&c.ingest_failures),
                "crashed_decoding": g(&c.crashed_decoding),
            },
            "readings_committed": g(&c.readings_committed),
            "rows_skipped": g(&c.rows_skipped),
            "held": {
                "readings": held.iter().map(|h| h.oru.readings().count()).sum::<usize>(),
                "released": g(&c.released_readings),
                "dropped": self.held_dropped.load(Ordering::Relaxed),
                "monitors": monitors,
            },
        })
    }
}

/// One pipeline generation's HL7 service.
struct Service {
    cfg: Hl7Config,
    config: Config,
    zone: MonitorZone,
    ingest: IngestHandle,
    registry: Registry,
    registered: Mutex<HashSet<String>>,
    shared: Arc<Hl7Shared>,
    log_limit: Mutex<RateLimit>,
}

impl Service {
    fn log_allowed(&self) -> bool {
        self.log_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow()
    }

    /// Commits a bound message's readings; returns how many were committed.
    async fn commit(&self, oru: &Oru, patient: &str) -> Result<usize, String> {
        let now = OffsetDateTime::now_utc();
        let nhs = self
            .config
            .patient(patient)
            .and_then(|p| p.nhs_number.clone())
            .map(Arc::from);
        // One frame per channel (MDS.VMD), in message order.
        let mut frames: Vec<(String, Vec<crate::reading::Reading>)> = Vec::new();
        for (channel, r) in oru.readings() {
            let id = device_id(oru, &channel);
            match frames.iter_mut().find(|(d, _)| *d == id) {
                Some((_, v)) => v.push(r.clone()),
                None => frames.push((id, vec![r.clone()])),
            }
        }
        let mut waits = Vec::new();
        for (id, readings) in &frames {
            if self
                .registered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone())
            {
                self.registry.add(id, patient, "hl7", None);
            }
            waits.push(self.ingest.submit_and_wait(Frame {
                device_id: Arc::from(id.as_str()),
                patient_id: Arc::from(patient),
                nhs_number: nhs.clone(),
                readings: readings.clone(),
                received_at: now,
                clock_synced: clock_synced(),
                cursor: None,
                done: None,
            }));
        }
        let results = futures::future::join_all(waits).await;
        let mut committed = 0;
        for ((id, readings), r) in frames.iter().zip(results) {
            match r {
                Ok(rows) => {
                    committed += rows.len();
                    self.registry.update(id, |d| {
                        d.state = LinkState::Connected;
                        d.last_data_at = Some(now);
                        d.frames += 1;
                        d.readings += readings.len() as u64;
                    });
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(committed)
    }

    /// Handles one frame's payload; the reply is the ACK.
    async fn handle(&self, payload: Vec<u8>, peer: SocketAddr) -> Reply {
        let c = &self.shared.counters;
        c.messages.fetch_add(1, Ordering::Relaxed);
        let now = OffsetDateTime::now_utc();
        let stamp = hl7::time::format_timestamp(now, self.zone);
        let text = String::from_utf8_lossy(&payload);
        let header = match hl7::header(&text) {
            Ok(h) => h,
            Err(e) => {
                c.not_hl7.fetch_add(1, Ordering::Relaxed);
                if self.log_allowed() {
                    tracing::warn!(%peer, reason = %e, "hl7: unreadable frame refused");
                }
                return Reply {
                    ack: Some(ack::build_for_unreadable(&e.to_string(), &stamp).into_bytes()),
                    strike: true,
                };
            }
        };
        // A message that crashed decoding (a bug) is named by its digest only; sent again, it
        // is refused instead of crashing the gateway again (crate::crash).
        let digest = crate::crash::hl7_digest(&payload);
        if crate::crash::recovered().hl7_message_crashed(&digest) {
            c.crashed_decoding.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%peer, sender = %header.sending_application, control_id = %header.control_id, %digest, "hl7: message refused: decoding it crashed the gateway before (a bug: please report it)");
            let verdict = Verdict::Reject {
                code: ("207", "Application internal error"),
                text: "decoding this message crashed the gateway (a bug): not stored; please report it".into(),
            };
            return Reply {
                ack: ack::build(&header, &verdict, &stamp).map(String::into_bytes),
                strike: false,
            };
        }
        let decoded = crate::crash::during(crate::crash::Current::Hl7(digest), || {
            hl7::decode(&text, self.zone)
        });
        let verdict = match decoded {
            Err(refusal) => {
                let counter = match &refusal {
                    Refusal::DemoData(_) => &c.demo_rejected,
                    Refusal::Malformed { .. } => &c.malformed,
                    Refusal::UnsupportedEvent(_) => &c.unsupported,
                    Refusal::NotHl7(_) => &c.not_hl7,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if self.log_allowed() {
                    tracing::warn!(%peer, sender = %header.sending_application, control_id = %header.control_id, reason = %refusal, "hl7: message refused");
                }
                Verdict::from(&refusal)
            }
            Ok(oru) => self.store(oru, peer, now).await,
        };
        Reply {
            ack: ack::build(&header, &verdict, &stamp).map(String::into_bytes),
            strike: false,
        }
    }

    async fn store(&self, oru: Oru, peer: SocketAddr, now: OffsetDateTime) -> Verdict {
        let c = &self.shared.counters;
        for row in &oru.rows {
            if let hl7::RowOutcome::Skipped(why) = &row.outcome {
                c.rows_skipped.fetch_add(1, Ordering::Relaxed);
                if self.log_allowed() {
                    tracing::info!(%peer, sender = %oru.header.sending_application, reason = %why, "hl7: observation not turned into a reading");
                }
            }
        }
        if oru.readings().next().is_none() {
            c.stored.fetch_add(1, Ordering::Relaxed);
            return Verdict::Stored; // nothing to store (containment only, no values)
        }
        match self.cfg.bind(&oru, &self.config.patients) {
            Binding::Patient(p) => match self.commit(&oru, &p).await {
                Ok(n) => {
                    c.stored.fetch_add(1, Ordering::Relaxed);
                    c.readings_committed.fetch_add(n as u64, Ordering::Relaxed);
                    Verdict::Stored
                }
                Err(e) => {
                    c.ingest_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%peer, error = %e, "hl7: readings not stored; the monitor will re-send");
                    Verdict::Error {
                        code: ("207", "Application internal error"),
                        text: format!("not stored: {e}"),
                    }
                }
            },
            Binding::Conflict => {
                c.identity_conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%peer, sender = %oru.header.sending_application, location = ?oru.location, "hl7: PID-3 names another patient than the bed's binding; refused");
                Verdict::Reject {
                    code: ("204", "Unknown key identifier"),
                    text: "patient identity conflict: PID-3 names another patient than this bed's binding".into(),
                }
            }
            Binding::Unbound => {
                c.unbound.fetch_add(1, Ordering::Relaxed);
                let n = oru.readings().count();
                let text = format!(
                    "no [[hl7.bed]] binds location {} or device {}; {n} readings held until one does",
                    oru.location.as_deref().unwrap_or("(none)"),
                    oru.equipment().next().unwrap_or(&oru.header.sending_application),
                );
                if self.log_allowed() {
                    tracing::warn!(%peer, sender = %oru.header.sending_application, location = ?oru.location, readings = n, "hl7: unbound monitor; readings held");
                }
                self.shared
                    .hold(Arc::new(oru), now, self.cfg.max_held_readings);
                Verdict::Error {
                    code: ("204", "Unknown key identifier"),
                    text,
                }
            }
        }
    }

    /// Commits every held message this config now binds.
    async fn release_held(&self) {
        let candidates: Vec<Arc<Oru>> = self.shared.held().iter().map(|h| h.oru.clone()).collect();
        for oru in candidates {
            let Binding::Patient(p) = self.cfg.bind(&oru, &self.config.patients) else {
                continue;
            };
            match self.commit(&oru, &p).await {
                Ok(n) => {
                    self.shared.held().retain(|h| !Arc::ptr_eq(&h.oru, &oru));
                    self.shared
                        .counters
                        .released_readings
                        .fetch_add(n as u64, Ordering::Relaxed);
                    self.shared
                        .counters
                        .readings_committed
                        .fetch_add(n as u64, Ordering::Relaxed);
                    tracing::info!(patient = %p, readings = n, location = ?oru.location, "hl7: held readings released to their bound patient");
                }
                Err(e) => {
                    tracing::error!(error = %e, "hl7: releasing held readings failed; kept held");
                    return;
                }
            }
        }
    }
}

/// Starts the HL7 listener for this pipeline generation (when `[hl7]` is configured): binds,
/// releases held readings the config now binds, then serves until `token`. A bind failure
/// is logged and retried; it never stops the rest of the gateway.
pub fn spawn(
    config: &Config,
    ingest: &IngestHandle,
    registry: &Registry,
    shared: Arc<Hl7Shared>,
    token: &CancellationToken,
    tracker: &TaskTracker,
) {
    let Some(cfg) = config.hl7.clone() else {
        return;
    };
    let tls = match &cfg.tls {
        None => None,
        Some(t) => match mllp_server::tls_acceptor(&t.cert_file, &t.key_file, &t.client_ca_file) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::error!(error = %e, "hl7: TLS set-up failed; the listener is not started");
                return;
            }
        },
    };
    let limits = Limits {
        max_frame: cfg.max_frame_bytes,
        max_connections: cfg.max_connections,
        idle_timeout: Duration::from_secs(cfg.idle_timeout_s),
    };
    let service = Arc::new(Service {
        zone: cfg.zone(),
        cfg,
        config: config.clone(),
        ingest: ingest.clone(),
        registry: registry.clone(),
        registered: Mutex::default(),
        shared,
        log_limit: Mutex::new(RateLimit::new(Duration::from_secs(10))),
    });
    let (token, inner_tracker) = (token.clone(), tracker.clone());
    tracker.spawn_boxed(async move {
        service.release_held().await;
        let listen = service.cfg.listen.clone();
        let listener = loop {
            match tokio::net::TcpListener::bind(&listen).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::error!(listen = %listen, error = %e, "hl7: cannot listen; retrying in 5 s");
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        };
        tracing::info!(listen = %listen, tls = tls.is_some(), "hl7: MLLP listener up");
        let counters = service.shared.listener.clone();
        let handler = move |payload: Vec<u8>, peer: SocketAddr| {
            let service = service.clone();
            async move { service.handle(payload, peer).await }
        };
        mllp_server::serve(listener, tls, limits, handler, counters, token, inner_tracker).await;
    });
}

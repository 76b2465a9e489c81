//! The fleet status telemetry: what the retained `{prefix}/gw/{gw}/status` topic says about a
//! running gateway (`schemas/gateway-status.v1.json`, docs/fleet.md).
//!
//! It is built from the live model ([`LiveState`], assembled once a second by the collector)
//! plus the two things the live model does not hold: the fleet configuration version in force
//! and the audit log's head. No second collector: the publisher renders the payload from the
//! latest live document at the moment it sends it ([`TelemetryReport`]), and a small task
//! ([`run`]) decides when to send besides each connection:
//!
//! - **on change**, debounced: a change of [`Substance`] (device states, open alerts by
//!   priority, clock sync, certificate days, configuration version, the audit head, the
//!   backlog's order of magnitude) is sent at most once per [`DEBOUNCE`], so a stream of
//!   readings never turns into a stream of status messages;
//! - **every `status.telemetry_interval_s`** (default 60 s) with fresh figures.
//!
//! The last will and a clean stop keep the short `offline` payload (DESIGN.md). Patients
//! appear by their pseudonymous ids only; nothing here can hold an NHS Number.

use crate::task::TrackBoxed;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::collector::Live;
use super::model::LiveState;
use crate::alerts::Priority;
use crate::audit::AuditLog;
use crate::uplink::status_feed::{StatusFeed, StatusReport};
use crate::uplink::topics::{status_payload, State};

/// The `schema` value of every status payload.
pub use crate::uplink::topics::STATUS_SCHEMA as SCHEMA;

/// A change is sent at most this often (the interval's publish is not held back by it).
pub const DEBOUNCE: Duration = Duration::from_secs(5);

/// How often [`run`] looks at the live document (the collector's own pace).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The retained `online` status payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// [`SCHEMA`].
    pub schema: String,
    /// Always `online` here (the last will says `offline`).
    pub state: String,
    pub gateway: String,
    /// vitalgate's version.
    pub version: String,
    /// Connected since (this connection's ConnAck).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// When this payload was rendered (gateway clock: see `clock.synced`).
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub uptime_s: u64,
    /// The fleet configuration document in force, or `null` (local configuration only).
    pub config_version: Option<u64>,
    pub clock: ClockTelemetry,
    pub outbox: OutboxTelemetry,
    /// Every configured device, in configuration order.
    pub devices: Vec<DeviceTelemetry>,
    pub alerts: AlertsTelemetry,
    /// The client certificate in use; `null` before it was loaded.
    pub certificate: Option<CertTelemetry>,
    pub disk: DiskTelemetry,
    /// The audit log's head; `null` before the first MACed entry.
    pub audit: Option<AuditTelemetry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockTelemetry {
    /// The system clock is synchronised (systemd-timesyncd); when false, every time in this
    /// payload, and `certificate.days_left`, comes from an unsynchronised clock.
    pub synced: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxTelemetry {
    /// Undelivered rows (alerts + readings).
    pub depth: u64,
    pub alerts: u64,
    pub readings: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_undelivered: Option<OffsetDateTime>,
    /// Age of the oldest undelivered row at `sent_at`, in whole seconds.
    pub oldest_undelivered_age_s: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_ack: Option<OffsetDateTime>,
    pub quarantined: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTelemetry {
    pub id: String,
    /// The patient's pseudonymous id (never an NHS Number).
    pub patient: String,
    /// `starting`, `connected`, `no_data`, `disconnected` or `unavailable`.
    pub state: String,
    /// When the device's latest reading was committed (the newest of its metrics).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_reading_at: Option<OffsetDateTime>,
}

/// Open (raised, not cleared) alerts, by priority.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AlertsTelemetry {
    pub open: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertTelemetry {
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Whole days from `sent_at` to `not_after` (negative once expired).
    pub days_left: i64,
    /// Whether `days_left` was counted on a synchronised clock.
    pub clock_synced: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskTelemetry {
    /// Free space of the state directory's file system (`null`: could not be read).
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
}

/// The audit log's last entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuditTelemetry {
    pub seq: u64,
    /// Its HMAC-SHA256, hex: the chain value the platform checks its copy against.
    pub mac: String,
    /// This process found the chain broken at start.
    pub chain_broken: bool,
}

/// What the live model does not hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extras {
    pub config_version: Option<u64>,
    pub audit: Option<AuditTelemetry>,
}

impl Telemetry {
    /// The payload for `live` as of `now`, connected since `since`. Pure.
    pub fn build(
        live: &LiveState,
        extras: &Extras,
        since: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Telemetry {
        let secs = |d: time::Duration| d.whole_seconds().max(0) as u64;
        let mut alerts = AlertsTelemetry::default();
        for a in live.patients.iter().flat_map(|p| &p.alerts) {
            alerts.open += 1;
            match a.priority {
                Priority::High => alerts.high += 1,
                Priority::Medium => alerts.medium += 1,
                Priority::Low => alerts.low += 1,
            }
        }
        let o = &live.outbox;
        Telemetry {
            schema: SCHEMA.to_owned(),
            state: "online".to_owned(),
            gateway: live.gateway.clone(),
            version: live.version.clone(),
            since,
            sent_at: now,
            started_at: live.started_at,
            uptime_s: secs(now - live.started_at),
            config_version: extras.config_version,
            clock: ClockTelemetry {
                synced: live.clock_synced,
            },
            outbox: OutboxTelemetry {
                depth: o.backlog(),
                alerts: o.backlog_alerts,
                readings: o.backlog_readings,
                oldest_undelivered: o.oldest_undelivered,
                oldest_undelivered_age_s: o.oldest_undelivered.map(|t| secs(now - t)),
                last_ack: o.last_ack,
                quarantined: o.quarantined,
            },
            devices: live
                .devices
                .iter()
                .map(|d| DeviceTelemetry {
                    id: d.id.clone(),
                    patient: d.patient.clone(),
                    state: d.state.clone(),
                    last_reading_at: d.last_values.iter().map(|v| v.at).max(),
                })
                .collect(),
            alerts,
            certificate: live
                .uplink
                .as_ref()
                .and_then(|u| u.cert_not_after)
                .map(|not_after| CertTelemetry {
                    not_after,
                    days_left: (not_after - now).whole_days(),
                    clock_synced: live.clock_synced,
                }),
            disk: DiskTelemetry {
                free_bytes: live.storage.free_bytes,
                total_bytes: live.storage.total_bytes,
            },
            audit: extras.audit.clone(),
        }
    }

    /// The JSON bytes sent on `status`.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain structs of strings and numbers: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// What makes a status worth sending before the interval: not the figures that move with
/// every reading (times, exact counts), but what an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substance {
    config_version: Option<u64>,
    clock_synced: bool,
    devices: Vec<(String, String)>,
    alerts: AlertsTelemetry,
    cert_days_left: Option<i64>,
    audit: Option<AuditTelemetry>,
    /// 0 for an empty outbox, else the bit length of the depth (changes at each power of 2).
    backlog_magnitude: u32,
    quarantined: u64,
}

impl Substance {
    pub fn of(t: &Telemetry) -> Substance {
        Substance {
            config_version: t.config_version,
            clock_synced: t.clock.synced,
            devices: t
                .devices
                .iter()
                .map(|d| (d.id.clone(), d.state.clone()))
                .collect(),
            alerts: t.alerts.clone(),
            cert_days_left: t.certificate.as_ref().map(|c| c.days_left),
            audit: t.audit.clone(),
            backlog_magnitude: u64::BITS - t.outbox.depth.leading_zeros(),
            quarantined: t.outbox.quarantined,
        }
    }
}

/// When to publish: on a change of substance (at most once per `debounce`, the last change
/// always sent) and every `interval`. Pure: the caller passes the time.
#[derive(Debug)]
pub struct Schedule {
    interval: Duration,
    debounce: Duration,
    last_sent: Option<Instant>,
    last_substance: Option<Substance>,
    pending: bool,
}

impl Schedule {
    pub fn new(interval: Duration, debounce: Duration) -> Schedule {
        Schedule {
            interval,
            debounce,
            last_sent: None,
            last_substance: None,
            pending: false,
        }
    }

    /// Whether to publish now, given the current substance.
    pub fn due(&mut self, now: Instant, substance: Substance) -> bool {
        if self.last_substance.as_ref() != Some(&substance) {
            self.pending = true;
            self.last_substance = Some(substance);
        }
        let since = self.last_sent.map(|t| now.saturating_duration_since(t));
        let due = match since {
            None => true,
            Some(s) => s >= self.interval || (self.pending && s >= self.debounce),
        };
        if due {
            self.last_sent = Some(now);
            self.pending = false;
        }
        due
    }
}

/// Where the telemetry reads from.
#[derive(Clone)]
pub struct Sources {
    pub live: Live,
    pub audit: Arc<AuditLog>,
    /// Holds `fleet-applied.json` (the fleet document in force).
    pub state_dir: PathBuf,
    config_version: Arc<Mutex<(Option<SystemTime>, Option<u64>)>>,
}

impl Sources {
    pub fn new(live: Live, audit: Arc<AuditLog>, state_dir: PathBuf) -> Sources {
        Sources {
            live,
            audit,
            state_dir,
            config_version: Arc::default(),
        }
    }

    /// The fleet version in force, re-read only when its file changed.
    fn config_version(&self) -> Option<u64> {
        let path = self.state_dir.join(crate::fleet::state::STATE_FILE);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let mut cache = self
            .config_version
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cache.0 != modified || modified.is_none() {
            let version = crate::fleet::state::load_meta(&self.state_dir)
                .ok()
                .flatten()
                .map(|a| a.version);
            *cache = (modified, version);
        }
        cache.1
    }

    fn audit_head(&self) -> Option<AuditTelemetry> {
        let s = self.audit.status();
        Some(AuditTelemetry {
            seq: s.get("last_seq")?.as_u64()?,
            mac: s.get("last_mac")?.as_str()?.to_owned(),
            chain_broken: s
                .get("chain_broken")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        })
    }

    fn extras(&self) -> Extras {
        Extras {
            config_version: self.config_version(),
            audit: self.audit_head(),
        }
    }

    /// The telemetry now, once the collector has assembled its first document.
    pub fn telemetry(&self, since: OffsetDateTime) -> Option<Telemetry> {
        let live = self.live.latest()?;
        Some(Telemetry::build(
            &live,
            &self.extras(),
            since,
            OffsetDateTime::now_utc(),
        ))
    }
}

/// The publisher's [`StatusReport`] over [`Sources`].
pub struct TelemetryReport(pub Sources);

impl StatusReport for TelemetryReport {
    fn online(&self, gateway: &str, since: OffsetDateTime) -> Vec<u8> {
        match self.0.telemetry(since) {
            Some(t) => t.to_json(),
            // Only in the first second after start: the schedule sends the telemetry as soon
            // as the first live document exists.
            None => status_payload(State::Online, gateway, since),
        }
    }
}

/// Starts the task that asks the publisher for a status on change and every `interval`;
/// returns the feed for [`crate::uplink::Uplink::with_status_feed`].
pub fn spawn(
    sources: Sources,
    interval: Duration,
    token: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> StatusFeed {
    let (tx, rx) = watch::channel(0u64);
    let report = Arc::new(TelemetryReport(sources.clone()));
    tracker.spawn_boxed(run(sources, interval, tx, token));
    StatusFeed {
        report,
        trigger: rx,
    }
}

/// Runs until `token`: looks at the live document every second and bumps `trigger` when a
/// status is due.
pub async fn run(
    sources: Sources,
    interval: Duration,
    trigger: watch::Sender<u64>,
    token: CancellationToken,
) {
    let mut schedule = Schedule::new(interval, DEBOUNCE);
    let mut every = tokio::time::interval(LOOK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = every.tick() => {}
        }
        // `since` does not enter the substance; any value will do here.
        let Some(t) = sources.telemetry(OffsetDateTime::UNIX_EPOCH) else {
            continue;
        };
        if schedule.due(Instant::now(), Substance::of(&t)) {
            trigger.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::model::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    fn live() -> LiveState {
        LiveState {
            protocol: PROTOCOL,
            gateway: "gw-1".into(),
            version: "9.9.9".into(),
            pid: 1,
            started_at: at(0),
            now: at(100),
            clock_synced: false,
            devices: vec![DeviceLive {
                id: "ox-1".into(),
                patient: "p1".into(),
                driver: "sim".into(),
                state: "connected".into(),
                last_data_at: Some(at(99)),
                frames: 5,
                readings: 5,
                decode_errors: 0,
                last_error: None,
                last_values: vec![
                    ValueLive {
                        metric: "spo2".into(),
                        value: "97".into(),
                        unit: "%".into(),
                        at: at(98),
                    },
                    ValueLive {
                        metric: "heart_rate".into(),
                        value: "70".into(),
                        unit: "/min".into(),
                        at: at(97),
                    },
                ],
            }],
            patients: vec![PatientLive {
                id: "p1".into(),
                news2: None,
                alerts: [Priority::High, Priority::Low, Priority::High]
                    .into_iter()
                    .enumerate()
                    .map(|(i, priority)| AlertLive {
                        alert_id: format!("a{i}"),
                        rule: "news2:aggregate".into(),
                        kind: "news2".into(),
                        priority,
                        raised_at: at(50),
                        text: String::new(),
                    })
                    .collect(),
            }],
            outbox: OutboxLive {
                backlog_readings: 7,
                backlog_alerts: 1,
                oldest_undelivered: Some(at(40)),
                ..OutboxLive::default()
            },
            rates: RateHistory::default(),
            uplink: Some(UplinkLive {
                connected: true,
                since: at(10),
                connects: 1,
                delivered: 0,
                refused: 0,
                in_flight: 0,
                last_ack: None,
                last_error: None,
                cert_not_after: Some(at(100 + 40 * 86_400 + 3_600)),
            }),
            storage: StorageLive {
                free_bytes: Some(1000),
                total_bytes: Some(4000),
                outbox_bytes: 10,
            },
            ingest: IngestLive::default(),
        }
    }

    fn extras() -> Extras {
        Extras {
            config_version: Some(7),
            audit: Some(AuditTelemetry {
                seq: 12,
                mac: "ab".repeat(32),
                chain_broken: false,
            }),
        }
    }

    #[test]
    fn telemetry_carries_what_an_operator_needs_from_the_live_model() {
        let t = Telemetry::build(&live(), &extras(), at(10), at(100));
        assert_eq!((t.uptime_s, t.config_version), (100, Some(7)));
        assert_eq!(
            (t.outbox.depth, t.outbox.oldest_undelivered_age_s),
            (8, Some(60))
        );
        assert_eq!(t.devices[0].last_reading_at, Some(at(98)));
        assert_eq!(
            t.alerts,
            AlertsTelemetry {
                open: 3,
                high: 2,
                medium: 0,
                low: 1
            }
        );
        let cert = t.certificate.unwrap();
        assert_eq!((cert.days_left, cert.clock_synced), (40, false));
        assert_eq!(t.disk.free_bytes, Some(1000));
        assert_eq!(t.audit.unwrap().seq, 12);
    }

    #[test]
    fn telemetry_json_names_patients_by_pseudonym_only() {
        let mut l = live();
        l.devices[0].last_error = Some("NHS 9434765919".into());
        let json =
            String::from_utf8(Telemetry::build(&l, &extras(), at(10), at(100)).to_json()).unwrap();
        assert!(json.contains("\"patient\":\"p1\""), "{json}");
        assert!(!json.contains("9434765919"), "{json}");
    }

    fn substance(l: &LiveState) -> Substance {
        Substance::of(&Telemetry::build(l, &extras(), at(10), l.now))
    }

    #[test]
    fn a_new_reading_is_not_a_change_of_substance_but_a_device_state_is() {
        let before = substance(&live());
        let mut l = live();
        l.now = at(160);
        l.devices[0].last_values[0].at = at(159);
        l.outbox.backlog_readings = 8; // 9 in all: same power of two as 8
        assert_eq!(substance(&l), before);
        l.devices[0].state = "no_data".into();
        assert_ne!(substance(&l), before);
    }

    #[test]
    fn a_backlog_growing_past_a_power_of_two_is_a_change() {
        let before = substance(&live());
        let mut l = live();
        l.outbox.backlog_readings = 15; // 16 in all
        assert_ne!(substance(&l), before);
    }

    #[test]
    fn schedule_sends_first_then_changes_debounced_then_on_interval() {
        let t0 = Instant::now();
        let s = |n: u64| Substance {
            quarantined: n,
            ..substance(&live())
        };
        let mut sch = Schedule::new(Duration::from_secs(60), Duration::from_secs(5));
        assert!(sch.due(t0, s(0)), "the first look publishes");
        assert!(!sch.due(t0 + Duration::from_secs(1), s(0)), "no change");
        assert!(
            !sch.due(t0 + Duration::from_secs(2), s(1)),
            "a change within the debounce waits"
        );
        assert!(
            sch.due(t0 + Duration::from_secs(5), s(1)),
            "and is sent once it passed"
        );
        assert!(!sch.due(t0 + Duration::from_secs(30), s(1)));
        assert!(
            sch.due(t0 + Duration::from_secs(65), s(1)),
            "the interval sends anyway"
        );
    }
}

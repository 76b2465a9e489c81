//! The live-state document: what the running daemon knows right now, as `status`, `top` and
//! the demo show it. One typed model, serialized as JSON over the live socket
//! ([`super::server`]); the fleet status telemetry extends this same type.
//!
//! Nothing here may ever hold an NHS Number: patients are their pseudonymous ids, devices
//! their configured ids.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::alerts::{Priority, RiskBand};

/// Bumped on any incompatible change to [`LiveState`]; a client refuses other versions.
pub const PROTOCOL: u32 = 1;

/// Rate history: one bucket per this many seconds...
pub const BUCKET_SECS: u64 = 60;
/// ...and this many buckets (the last hour).
pub const BUCKETS: usize = 60;

/// Everything `status` and `top` show, as of `now`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveState {
    /// [`PROTOCOL`].
    pub protocol: u32,
    pub gateway: String,
    pub version: String,
    pub pid: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When this document was assembled (gateway clock).
    #[serde(with = "time::serde::rfc3339")]
    pub now: OffsetDateTime,
    /// systemd-timesyncd reports the clock synchronised.
    pub clock_synced: bool,
    pub devices: Vec<DeviceLive>,
    pub patients: Vec<PatientLive>,
    pub outbox: OutboxLive,
    pub rates: RateHistory,
    /// `None` when no `[uplink]` is configured (readings are kept until one is).
    pub uplink: Option<UplinkLive>,
    pub storage: StorageLive,
    pub ingest: IngestLive,
}

/// One configured device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceLive {
    pub id: String,
    /// Pseudonymous patient id.
    pub patient: String,
    pub driver: String,
    /// `starting`, `connected`, `no_data`, `disconnected` or `unavailable` (see
    /// [`crate::transport::LinkState`]).
    pub state: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_data_at: Option<OffsetDateTime>,
    pub frames: u64,
    pub readings: u64,
    pub decode_errors: u64,
    pub last_error: Option<String>,
    /// The latest committed value of each metric this device sent, in metric order.
    pub last_values: Vec<ValueLive>,
}

/// A metric's latest value as committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueLive {
    /// snake_case metric name, as in the reading JSON.
    pub metric: String,
    /// The value as the device gave it (`"absent"` for a special value), or the ACVPU code.
    pub value: String,
    /// UCUM code; empty for coded values.
    pub unit: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One monitored patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientLive {
    /// Pseudonymous id (never an NHS Number).
    pub id: String,
    /// The latest complete NEWS2 the gateway scored, if any.
    pub news2: Option<News2Live>,
    /// Open alerts, highest priority first, then oldest first.
    pub alerts: Vec<AlertLive>,
}

/// A NEWS2 total and its Chart 2 band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct News2Live {
    pub total: u8,
    pub band: RiskBand,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// An open (raised and not cleared) alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertLive {
    pub alert_id: String,
    /// Stable rule key, e.g. `news2:aggregate`, `technical:low_battery:ox-1`.
    pub rule: String,
    /// `news2`, `threshold` or `technical`.
    pub kind: String,
    pub priority: Priority,
    #[serde(with = "time::serde::rfc3339")]
    pub raised_at: OffsetDateTime,
    /// The engine's one line for a person (empty for alerts restored from saved state).
    pub text: String,
}

/// The outbox as last counted (every few seconds, read-only, without the key).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OutboxLive {
    pub backlog_readings: u64,
    pub backlog_alerts: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_undelivered: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_ack: Option<OffsetDateTime>,
    pub quarantined: u64,
    pub capacity: u64,
    /// When these counts were taken; `None` before the first count.
    #[serde(with = "time::serde::rfc3339::option")]
    pub counted_at: Option<OffsetDateTime>,
}

impl OutboxLive {
    pub fn backlog(&self) -> u64 {
        self.backlog_readings + self.backlog_alerts
    }
}

/// Readings committed and rows delivered per [`BUCKET_SECS`], oldest first, the last bucket
/// being the current (partial) one.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RateHistory {
    pub bucket_secs: u64,
    pub ingest: Vec<u64>,
    pub delivery: Vec<u64>,
}

/// The MQTT uplink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkLive {
    pub connected: bool,
    /// Since when it has been in its current state (connected or not); the daemon's start
    /// when it never connected.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// Successful connections since start.
    pub connects: u64,
    pub delivered: u64,
    pub refused: u64,
    pub in_flight: usize,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_ack: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    /// notAfter of the client certificate in use.
    #[serde(with = "time::serde::rfc3339::option")]
    pub cert_not_after: Option<OffsetDateTime>,
}

/// The state directory's file system.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StorageLive {
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    /// Outbox database plus its WAL.
    pub outbox_bytes: u64,
}

/// Ingest counters since start.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct IngestLive {
    pub frames_received: u64,
    pub readings_committed: u64,
    pub readings_rejected: u64,
    pub transactions: u64,
    pub commit_failures: u64,
}

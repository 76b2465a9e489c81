//! The daemon's live state, one model for every view of the running gateway.
//!
//! ```text
//! registry, ingest counters, uplink status ─┐
//! alert hook ─(Tap: events, NEWS2)──────────┼─> collector (1 s) ─> LiveState ─> live.sock ─> status / top / demo
//! outbox counts (read-only, every 3 s) ─────┘
//! ```
//!
//! - [`model`]: [`LiveState`], the typed document (the fleet status telemetry extends it).
//! - [`tap`]: a commit hook wrapping the alert hook, so open alerts and NEWS2 are exactly
//!   what committed.
//! - [`collector`]: the daemon task that assembles the document once a second.
//! - [`server`] / [`client`]: the local Unix socket (0660, group `vitalgate`), line JSON.
//! - [`health`]: healthy / degraded / unreachable and the `[status]` thresholds.
//! - [`telemetry`]: the fleet status telemetry on the retained MQTT `status` topic.

pub mod client;
pub mod collector;
pub mod health;
pub mod model;
pub mod report;
pub mod server;
pub mod tap;
pub mod telemetry;

pub use client::{fetch, LiveClient, LiveError};
pub use collector::{Live, Sources};
pub use health::{evaluate, Health, StatusThresholds, Verdict};
pub use model::LiveState;
pub use server::socket_path;
pub use tap::{ClinicalCell, Tally, Tap};

/// Starts the collector and the socket server on `tracker`; both stop with `token`.
pub fn spawn(
    live: Live,
    sources: Sources,
    token: tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    let path = socket_path(&sources.state_dir);
    use crate::task::TrackBoxed;
    tracker.spawn_boxed(collector::run(live.clone(), sources, token.clone()));
    tracker.spawn_boxed(server::serve(live, path, token));
}

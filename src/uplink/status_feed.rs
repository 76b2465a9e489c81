//! What the publisher needs to send the gateway's status telemetry on the retained `status`
//! topic: a [`StatusReport`] that renders the `online` payload at the moment it is sent, and a
//! trigger that says when to send it besides each connection (a change worth telling, or the
//! periodic interval: `live::telemetry` decides). The last will and a clean stop keep the
//! short `offline` payload of [`super::topics::status_payload`].

use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::watch;

/// Renders the retained `online` status payload.
pub trait StatusReport: Send + Sync + 'static {
    /// The payload for `gateway`, connected since `since`, as of now.
    fn online(&self, gateway: &str, since: OffsetDateTime) -> Vec<u8>;
}

/// The report and its trigger (each change of the watched value asks for one publish).
#[derive(Clone)]
pub struct StatusFeed {
    pub report: Arc<dyn StatusReport>,
    pub trigger: watch::Receiver<u64>,
}

//! Which [`HubClock`] a reading is published with: synchronised at receipt, corrected from its
//! boot's anchor (kept in the outbox by the ingest writer when the clock synced), the device's
//! own time, or still unsynchronised (see `fhir::clock` for what the Observation says).

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use crate::clock::{corrected_time, Anchor, BootId};
use crate::fhir::HubClock;
use crate::store::{Outbox, ReadingRecord};

/// Every boot's anchor, re-read before each batch (a few rows in `meta`).
#[derive(Debug, Default)]
pub(crate) struct Anchors(RwLock<HashMap<BootId, Anchor>>);

impl Anchors {
    pub(crate) fn refresh(&self, outbox: &Outbox) {
        match outbox.clock_anchors() {
            Ok(a) => *self.0.write().unwrap_or_else(PoisonError::into_inner) = a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read clock anchors; unsynchronised readings stay flagged")
            }
        }
    }

    pub(crate) fn hub_clock(&self, r: &ReadingRecord) -> HubClock {
        hub_clock(r, &self.0.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// See the module docs.
pub fn hub_clock(r: &ReadingRecord, anchors: &HashMap<BootId, Anchor>) -> HubClock {
    if r.clock_synced {
        return HubClock::Synced;
    }
    if r.readings.iter().any(|x| x.device_time.is_some()) {
        return HubClock::DeviceTime;
    }
    r.boot
        .and_then(|stamp| {
            let anchor = anchors.get(&stamp.boot)?;
            corrected_time(&stamp, anchor)
        })
        .map_or(HubClock::Unsynchronised, |corrected| HubClock::Corrected {
            corrected,
        })
}

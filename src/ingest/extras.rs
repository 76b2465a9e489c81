//! What the writer does besides group commit when the daemon asks for it: the boot-clock
//! stamp and sync state of each record (`crate::clock`), and the outbox's byte cap
//! (`store.max_bytes`, `crate::store::cap`), checked once a second on the writer's tick so
//! purges and drops never race a commit.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::audit::AuditLog;
use crate::clock::{ClockSource, ClockWatch, Sample};
use crate::store::{CapGuard, StorageCap};

use super::{RateLimit, StorageAlarm, Writer};

/// Optional parts of the writer (the daemon sets them; `start` leaves them out).
#[derive(Debug, Default)]
pub struct WriterExtras {
    /// `store.max_bytes` and `store.when_full`.
    pub cap: Option<StorageCap>,
    /// Where cap purges and drops are audited.
    pub audit: Option<Arc<AuditLog>>,
    /// Stamps each record with boot id and boot-clock time and decides `clock_synced`.
    pub clock: Option<Arc<dyn ClockSource>>,
}

pub(super) struct ExtrasState {
    cap: Option<CapGuard>,
    audit: Option<Arc<AuditLog>>,
    watch: Option<ClockWatch>,
    failure_logged: RateLimit,
}

impl ExtrasState {
    pub(super) fn new(extras: WriterExtras) -> Self {
        ExtrasState {
            cap: extras.cap.map(CapGuard::new),
            audit: extras.audit,
            watch: extras.clock.map(ClockWatch::new),
            failure_logged: RateLimit::new(std::time::Duration::from_secs(30)),
        }
    }

    fn note(&self, event: &str, details: serde_json::Value) {
        if let Some(a) = &self.audit {
            a.note(event, details);
        }
    }
}

impl Writer {
    /// The clocks for the batch about to be built; keeps a new anchor in the outbox (before
    /// the batch: a reading is never committed without what corrects it).
    pub(super) fn clock_sample(&mut self) -> Option<Sample> {
        let sample = self.extras.watch.as_mut()?.sample();
        if let Some(anchor) = sample.new_anchor {
            match self.outbox.set_clock_anchor(&anchor) {
                Ok(()) => {
                    tracing::info!(
                        boot = %anchor.boot.hex(),
                        "clock synchronised: this boot's earlier readings will be published with corrected times"
                    );
                    self.extras.note(
                        "clock_synchronised",
                        serde_json::json!({"boot_id": anchor.boot.hex(), "wall_minus_boottime_ms": (anchor.wall_minus_boottime_ns / 1_000_000) as i64}),
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot keep the clock anchor; this boot's unsynchronised readings stay flagged")
                }
            }
        }
        Some(sample)
    }

    /// Applies `store.max_bytes` (see `store::cap`): audits what was purged or dropped and
    /// raises or clears `technical:storage_cap`.
    pub(super) fn enforce_cap(&mut self, now: OffsetDateTime) {
        let Some(guard) = self.extras.cap.as_mut() else {
            return;
        };
        let outcome = match guard.enforce(&mut self.outbox) {
            Ok(o) => o,
            Err(e) => {
                if self.extras.failure_logged.allow() {
                    tracing::error!(error = %e, "cannot apply the outbox size cap (store.max_bytes)");
                }
                return;
            }
        };
        if outcome.purged_delivered > 0 {
            tracing::info!(
                rows = outcome.purged_delivered,
                used_bytes = outcome.used_after,
                "outbox near store.max_bytes: delivered rows purged, oldest first"
            );
            self.extras.note(
                "storage_cap_purge",
                serde_json::json!({"delivered_rows": outcome.purged_delivered, "used_bytes_before": outcome.used_before, "used_bytes_after": outcome.used_after}),
            );
        }
        if outcome.dropped_readings > 0 {
            tracing::error!(
                rows = outcome.dropped_readings,
                "STORAGE CAP: undelivered readings dropped, oldest first, as store.when_full = \"drop_oldest_readings\" says (alerts kept)"
            );
            self.extras.note(
                "storage_cap_readings_dropped",
                serde_json::json!({"undelivered_reading_rows": outcome.dropped_readings, "used_bytes_before": outcome.used_before, "used_bytes_after": outcome.used_after}),
            );
        }
        if let Some(active) = outcome.alarm_change {
            if active {
                tracing::error!(
                    used_bytes = outcome.used_after,
                    "outbox near store.max_bytes with only undelivered rows left: technical:storage_cap raised"
                );
            } else {
                tracing::warn!(
                    used_bytes = outcome.used_after,
                    "outbox back under store.max_bytes"
                );
            }
            let out = self.hook.on_storage(now, StorageAlarm::Cap, active);
            self.commit_extra(out, now);
        }
    }
}

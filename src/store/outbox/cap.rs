//! The outbox's byte cap (`store.max_bytes`): what gives way, in which order, as the outbox
//! nears it.
//!
//! The outbox's footprint is the pages in use (all pages less the free list: a deleted row's
//! page is reused before the file grows) plus the WAL file. From [`HIGH_WATER_PERCENT`] of
//! the cap:
//! 1. delivered rows are purged, oldest first, down to [`LOW_WATER_PERCENT`] (they are
//!    acknowledged by the platform and kept only for `retention_days`);
//! 2. if undelivered rows alone keep the outbox near the cap, `technical:storage_cap` is
//!    raised (while raised, delivered rows are purged down to [`CLEAR_PERCENT`], and it
//!    clears below that, as the platform catches up) and, only when
//!    `store.when_full = "drop_oldest_readings"` is configured, the oldest undelivered
//!    readings are dropped down to the low-water mark. Alert events and derived records
//!    (NEWS2 scores) are never dropped; without that setting nothing undelivered ever is.
//!
//! The caller (the ingest writer, once a second) audits every purge and drop with its
//! counts and raises the alarm through the same hook as `storage_full`.

use serde::{Deserialize, Serialize};

use super::{Outbox, StoreError};
use crate::store::counts::Delta;

/// Work starts when the footprint reaches this share of the cap.
pub const HIGH_WATER_PERCENT: u64 = 90;
/// Purging and dropping stop at this share.
pub const LOW_WATER_PERCENT: u64 = 80;
/// The alarm clears below this share (delivered rows are purged down to it while raised).
pub const CLEAR_PERCENT: u64 = 70;
/// Rows deleted per transaction, so the writer never holds a long transaction.
const BATCH_ROWS: i64 = 500;
/// Deletions per check (once a second): at most 10 000 rows, so ingest never waits long.
const MAX_BATCHES_PER_CHECK: usize = 20;
/// `Record::Reading`'s `kind` column (`Record::kind`).
const READING_KIND: i64 = 1;

/// What happens when undelivered rows alone fill the cap (`store.when_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Keep every undelivered row and raise `technical:storage_cap` (the default).
    #[default]
    Alarm,
    /// Also drop the oldest undelivered readings (never alerts), each drop audited.
    DropOldestReadings,
}

/// The cap as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageCap {
    pub max_bytes: u64,
    pub when_full: WhenFull,
}

impl StorageCap {
    fn high(&self) -> u64 {
        self.max_bytes / 100 * HIGH_WATER_PERCENT
    }
    fn low(&self) -> u64 {
        self.max_bytes / 100 * LOW_WATER_PERCENT
    }
    fn clear(&self) -> u64 {
        self.max_bytes / 100 * CLEAR_PERCENT
    }
}

/// What one [`CapGuard::enforce`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapOutcome {
    /// Footprint before and after, in bytes.
    pub used_before: u64,
    pub used_after: u64,
    /// Delivered rows purged.
    pub purged_delivered: u64,
    /// Undelivered readings dropped (only with [`WhenFull::DropOldestReadings`]).
    pub dropped_readings: u64,
    /// `Some(true)` when the alarm is raised by this call, `Some(false)` when cleared.
    pub alarm_change: Option<bool>,
}

/// Applies a [`StorageCap`] and remembers whether its alarm is raised.
#[derive(Debug)]
pub struct CapGuard {
    cap: StorageCap,
    alarmed: bool,
    /// Purging started at the high-water mark and goes on, a bounded amount per check,
    /// down to the low-water mark.
    draining: bool,
}

impl CapGuard {
    pub fn new(cap: StorageCap) -> Self {
        CapGuard {
            cap,
            alarmed: false,
            draining: false,
        }
    }

    pub fn alarmed(&self) -> bool {
        self.alarmed
    }

    /// Checks the footprint and, near the cap, purges and (if configured) drops; see the
    /// module docs for the order. At most [`MAX_BATCHES_PER_CHECK`] deletions of
    /// [`BATCH_ROWS`] each per call, so the writer is never held for long: a large purge goes
    /// on at the next check.
    pub fn enforce(&mut self, outbox: &mut Outbox) -> Result<CapOutcome, StoreError> {
        let mut out = CapOutcome {
            used_before: outbox.used_bytes()?,
            ..CapOutcome::default()
        };
        let mut used = out.used_before;
        if used >= self.cap.high() && !self.draining && !self.alarmed {
            // The WAL first: its space is given back without deleting anything (not again
            // every second while alarmed: a checkpoint is disk work of its own).
            outbox.reclaim_wal_space();
            used = outbox.used_bytes()?;
            self.draining = used >= self.cap.high();
        }
        // While alarmed, delivered rows are purged further, so the alarm clears as the
        // platform catches up.
        let target = if self.alarmed {
            self.cap.clear()
        } else {
            self.cap.low()
        };
        let mut delivered_left = true;
        if self.draining || self.alarmed {
            let (n, exhausted) =
                delete_down_to(outbox, target, |o| o.purge_oldest_delivered(BATCH_ROWS))?;
            out.purged_delivered = n;
            delivered_left = !exhausted;
            used = outbox.used_bytes()?;
            if used <= target || exhausted {
                self.draining = false;
            }
        }
        if used >= self.cap.high() && !delivered_left {
            if !self.alarmed {
                self.alarmed = true;
                out.alarm_change = Some(true);
            }
            if self.cap.when_full == WhenFull::DropOldestReadings {
                // Never drop a reading for space the WAL gives back by itself.
                outbox.reclaim_wal_space();
                let (n, _) = delete_down_to(outbox, self.cap.low(), |o| {
                    o.drop_oldest_undelivered_readings(BATCH_ROWS)
                })?;
                out.dropped_readings = n;
                used = outbox.used_bytes()?;
            }
        } else if self.alarmed && used < self.cap.clear() {
            self.alarmed = false;
            out.alarm_change = Some(false);
        }
        out.used_after = used;
        Ok(out)
    }
}

/// Deletes with `delete` (a batch at a time, at most [`MAX_BATCHES_PER_CHECK`]) until the
/// pages in use plus the WAL as it was are at most `target`, then gives the WAL's space back.
/// The WAL is left out while deleting: each delete writes to it what it frees in the file.
/// Returns the rows deleted and whether `delete` ran out of rows.
fn delete_down_to(
    outbox: &mut Outbox,
    target: u64,
    mut delete: impl FnMut(&mut Outbox) -> Result<u64, StoreError>,
) -> Result<(u64, bool), StoreError> {
    let wal = outbox.wal_bytes();
    let mut deleted = 0;
    let mut exhausted = false;
    for _ in 0..MAX_BATCHES_PER_CHECK {
        if outbox.page_bytes()? + wal <= target {
            break;
        }
        let n = delete(outbox)?;
        deleted += n;
        if n < BATCH_ROWS as u64 {
            exhausted = true;
            break;
        }
    }
    if deleted > 0 {
        outbox.reclaim_wal_space();
    }
    Ok((deleted, exhausted))
}

impl Outbox {
    /// The outbox's footprint towards `store.max_bytes`: pages in use (the free list is
    /// reused before the file grows) plus the WAL file's length.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.page_bytes()? + self.wal_bytes())
    }

    /// Bytes of the database pages in use (all pages less the free list).
    fn page_bytes(&self) -> Result<u64, StoreError> {
        let pragma = |name: &str| -> Result<i64, StoreError> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(self.sql_err())
        };
        let pages = pragma("page_count")? - pragma("freelist_count")?;
        let page_size = pragma("page_size")?;
        Ok((pages.max(0) as u64) * (page_size.max(0) as u64))
    }

    /// The WAL file's length (0 when there is none).
    fn wal_bytes(&self) -> u64 {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0)
    }

    /// Deletes up to `limit` delivered rows, oldest (lowest id) first. Returns how many.
    pub fn purge_oldest_delivered(&mut self, limit: i64) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let purged = crate::store::delivery::purge_oldest(&tx, limit).map_err(err)?;
        Delta {
            delivered_held: -(purged as i64),
            ..Delta::default()
        }
        .apply(&tx)
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(purged as u64)
    }

    /// Deletes up to `limit` undelivered reading rows (kind 1: never an alert event, never a
    /// derived score), oldest first. Only for `store.when_full = "drop_oldest_readings"`.
    pub fn drop_oldest_undelivered_readings(&mut self, limit: i64) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut delta = Delta::default();
        let mut dropped = 0u64;
        {
            // Undelivered: not in a delivered range (`delivery.rs`), searched from the first
            // id not yet settled.
            let settled = crate::store::delivery::settled_through(&tx).map_err(err)?;
            let mut st = tx
                .prepare(&format!(
                    "DELETE FROM outbox WHERE id IN (SELECT o.id FROM outbox o
                         WHERE o.id > ?3 AND o.kind = ?1 AND NOT {} ORDER BY o.id LIMIT ?2)
                     RETURNING lane, refused_at IS NOT NULL",
                    crate::store::delivery::DELIVERED
                ))
                .map_err(err)?;
            let rows = st
                .query_map(rusqlite::params![READING_KIND, limit, settled], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?))
                })
                .map_err(err)?;
            for row in rows {
                let (lane, refused) = row.map_err(err)?;
                delta.undelivered(lane, -1);
                if refused {
                    delta.refused -= 1;
                }
                dropped += 1;
            }
        }
        delta.apply(&tx).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(dropped)
    }
}

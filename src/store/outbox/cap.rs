//! The outbox's byte cap (`store.max_bytes`): what gives way, in which order, as the outbox
//! nears it.
//!
//! The outbox's footprint is the pages in use (all pages less the free list: a deleted row's
//! page is reused before the file grows) plus the WAL file. From [`HIGH_WATER_PERCENT`] of
//! the cap:
//! 1. delivered rows are purged, oldest first, down to [`LOW_WATER_PERCENT`] (they are
//!    acknowledged by the platform and kept only for `retention_days`);
//! 2. if undelivered rows alone keep the outbox near the cap, `technical:storage_cap` is
//!    raised (cleared once the outbox is back under the low-water mark) and, only when
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
/// Purging and dropping stop at this share; the alarm clears below it.
pub const LOW_WATER_PERCENT: u64 = 80;
/// Rows deleted per transaction, so the writer never holds a long transaction.
const BATCH_ROWS: i64 = 500;
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
}

impl CapGuard {
    pub fn new(cap: StorageCap) -> Self {
        CapGuard {
            cap,
            alarmed: false,
        }
    }

    pub fn alarmed(&self) -> bool {
        self.alarmed
    }

    /// Checks the footprint and, near the cap, purges and (if configured) drops; see the
    /// module docs for the order.
    pub fn enforce(&mut self, outbox: &mut Outbox) -> Result<CapOutcome, StoreError> {
        let mut out = CapOutcome {
            used_before: outbox.used_bytes()?,
            ..CapOutcome::default()
        };
        let mut used = out.used_before;
        if used >= self.cap.high() {
            // The WAL first: its space is given back without deleting anything.
            outbox.reclaim_wal_space();
            used = outbox.used_bytes()?;
        }
        if used >= self.cap.high() {
            while used > self.cap.low() {
                let n = outbox.purge_oldest_delivered(BATCH_ROWS)?;
                if n == 0 {
                    break;
                }
                out.purged_delivered += n;
                outbox.reclaim_wal_space();
                used = outbox.used_bytes()?;
            }
        }
        if used >= self.cap.high() {
            if !self.alarmed {
                self.alarmed = true;
                out.alarm_change = Some(true);
            }
            if self.cap.when_full == WhenFull::DropOldestReadings {
                while used > self.cap.low() {
                    let n = outbox.drop_oldest_undelivered_readings(BATCH_ROWS)?;
                    if n == 0 {
                        break;
                    }
                    out.dropped_readings += n;
                    outbox.reclaim_wal_space();
                    used = outbox.used_bytes()?;
                }
            }
        } else if self.alarmed && used < self.cap.low() {
            self.alarmed = false;
            out.alarm_change = Some(false);
        }
        out.used_after = used;
        Ok(out)
    }
}

impl Outbox {
    /// The outbox's footprint towards `store.max_bytes`: pages in use (the free list is
    /// reused before the file grows) plus the WAL file's length.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let pragma = |name: &str| -> Result<i64, StoreError> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(self.sql_err())
        };
        let pages = pragma("page_count")? - pragma("freelist_count")?;
        let page_size = pragma("page_size")?;
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        Ok((pages.max(0) as u64) * (page_size.max(0) as u64) + wal_len)
    }

    /// Deletes up to `limit` delivered rows, oldest (lowest id) first. Returns how many.
    pub fn purge_oldest_delivered(&mut self, limit: i64) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let purged = tx
            .execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                     WHERE delivered_at IS NOT NULL ORDER BY id LIMIT ?1)",
                [limit],
            )
            .map_err(err)?;
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
        let tx = self.conn.transaction().map_err(err)?;
        let mut delta = Delta::default();
        let mut dropped = 0u64;
        {
            let mut st = tx
                .prepare(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                         WHERE delivered_at IS NULL AND kind = ?1 ORDER BY id LIMIT ?2)
                     RETURNING lane, refused_at IS NOT NULL",
                )
                .map_err(err)?;
            let rows = st
                .query_map([READING_KIND, limit], |r| {
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

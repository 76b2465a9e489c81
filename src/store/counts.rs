//! Row counts kept in `meta`, changed in the same transaction as the rows they count, so
//! `status`, the writer's once-a-second backlog and the outbox-depth alarm read a few
//! values instead of counting a backlog that can hold millions of rows (schema 3).
//!
//! Every statement that adds, delivers, refuses, purges or quarantines rows reports what
//! it changed (`RETURNING` or its change count) and the caller applies a [`Delta`] before
//! committing. The counts are therefore exact whatever connection wrote, and a rolled-back
//! transaction rolls them back with the rows.

use rusqlite::{params, Connection, OptionalExtension};

use super::record::Lane;

const UNDELIVERED: [&str; 2] = ["undelivered_alerts", "undelivered_readings"];
const DELIVERED_HELD: &str = "delivered_held";
const REFUSED: &str = "refused";

/// How a transaction changed the counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delta {
    /// Undelivered rows, by lane (`Lane as usize`).
    pub undelivered: [i64; 2],
    pub delivered_held: i64,
    /// Undelivered rows the broker refused.
    pub refused: i64,
}

impl Delta {
    /// One undelivered row of lane `lane` (an `outbox.lane` value) was added (`n = 1`) or
    /// removed (`n = -1`).
    pub fn undelivered(&mut self, lane: i64, n: i64) {
        if let Some(slot) = usize::try_from(lane)
            .ok()
            .and_then(|l| self.undelivered.get_mut(l))
        {
            *slot += n;
        }
    }

    /// Applies the delta inside the caller's transaction.
    pub fn apply(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut add = conn.prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
        )?;
        let changes = [
            (UNDELIVERED[0], self.undelivered[0]),
            (UNDELIVERED[1], self.undelivered[1]),
            (DELIVERED_HELD, self.delivered_held),
            (REFUSED, self.refused),
        ];
        for (key, n) in changes {
            if n != 0 {
                add.execute(params![key, n])?;
            }
        }
        Ok(())
    }
}

/// The counts as stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    pub undelivered: [u64; 2],
    pub delivered_held: u64,
    pub refused: u64,
}

impl Counts {
    pub fn read(conn: &Connection) -> rusqlite::Result<Counts> {
        let mut get = conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
        let mut value = |key: &str| -> rusqlite::Result<u64> {
            let v: Option<i64> = get.query_row([key], |r| r.get(0)).optional()?;
            Ok(v.unwrap_or(0).max(0) as u64)
        };
        Ok(Counts {
            undelivered: [value(UNDELIVERED[0])?, value(UNDELIVERED[1])?],
            delivered_held: value(DELIVERED_HELD)?,
            refused: value(REFUSED)?,
        })
    }

    pub fn backlog(&self, lane: Lane) -> u64 {
        self.undelivered[lane as usize]
    }
}

/// Adds `n` to the `meta` counter `<prefix>:<key_id>` in the caller's transaction (`meta`
/// is the page every append already writes): the per-key counts `sealed:` (values sealed,
/// for rotation) and `rows:` (rows still held, for destroying spent keys).
pub(super) fn add_per_key(
    tx: &rusqlite::Transaction<'_>,
    prefix: &str,
    key_id: u32,
    n: i64,
) -> rusqlite::Result<()> {
    if n > 0 {
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1 || ':' || ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
        )?
        .execute(params![prefix, key_id, n])?;
    }
    Ok(())
}

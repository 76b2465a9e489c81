//! Delivery state: which rows the platform acknowledged, kept as ranges of row ids in a
//! small table of its own (`delivered`), and re-opening the delivered readings of a time
//! range (the fleet's `resync` command, issue 14) with the per-minute tally of rows the
//! retention purge removed.
//!
//! Why ranges (issue 18, bytes written per reading): a mark in the row itself (the old
//! `delivered_at` column, with an index of undelivered rows and one of delivery times)
//! rewrote every page holding the acknowledged rows, both indexes' pages and `meta`, in the
//! WAL and again at the next checkpoint: as many bytes again as the readings themselves. A
//! drain acknowledges rows in id order, so extending the last range rewrites one small page.
//! A range carries the time of its latest delivery (the retention purge's clock); ranges
//! merge only within the same hour, so a row is purged at most an hour after its due time
//! and a long-running hub keeps a few ranges an hour, not one per row.
//!
//! The rows' own `delivered_at` is no longer written (schema 4 moved its values here).
//! Undelivered readings are found by row id from the first id not yet settled
//! ([`settled_through`]), each checked against the ranges by one index seek; alerts, rare,
//! have an index of their own (`outbox_alerts`).
//!
//! Why minutes for the purge tally: a purged row leaves nothing behind, so "how many of the
//! range are no longer held" must be remembered at purge time. One tally row per minute of
//! receive time costs about 17 KB a day at most (one per second would be a megabyte a day,
//! kept for ever), and a range on whole minutes is then counted exactly: [`MinuteRange`] only
//! admits such ranges.
//!
//! A resync's range is the hub's receive time (`outbox.created_at`, when the reading
//! committed), the only time the outbox holds in clear; for a live device it is the
//! reading's time within a second or two, for a stored-record download (RACP) it is when it
//! was fetched. Only the readings lane is re-opened (readings and the NEWS2 observations
//! derived from them): alert events are not resent. A re-opened row keeps its id, so the
//! publisher renders the same deterministic Observation id and the platform can recognise
//! the copy.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use time::OffsetDateTime;

use super::counts::Delta;
use super::outbox::StoreError;

pub mod deferred;
use super::record::Lane;

/// Schema step 3 -> 4 (migration number 4): the purge tally. Touches only its own table.
/// Each statement may run again over its own result (a database rolled back by hand to an
/// older version keeps schema 4's objects). Delivery marks move from the rows to `delivered` (consecutive ids delivered within the
/// same hour become one range), the two delivery indexes give way to an index of alert rows,
/// and the purge tally starts.
pub(super) const MIGRATE_TO_V4: &str = "CREATE TABLE IF NOT EXISTS purged_minutes (
         minute INTEGER NOT NULL,
         lane INTEGER NOT NULL,
         rows INTEGER NOT NULL,
         PRIMARY KEY (minute, lane)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS delivered (
         first INTEGER PRIMARY KEY,
         last INTEGER NOT NULL,
         at INTEGER NOT NULL);
     INSERT OR IGNORE INTO delivered (first, last, at)
         SELECT MIN(id), MAX(id), MAX(delivered_at) FROM (
             SELECT id, delivered_at, delivered_at / 3600000 AS hour,
                    id - ROW_NUMBER() OVER (PARTITION BY delivered_at / 3600000 ORDER BY id) AS island
             FROM outbox WHERE delivered_at IS NOT NULL)
         GROUP BY hour, island;
     DROP INDEX IF EXISTS outbox_undelivered;
     DROP INDEX IF EXISTS outbox_delivered;
     UPDATE outbox SET delivered_at = NULL WHERE delivered_at IS NOT NULL;
     CREATE INDEX IF NOT EXISTS outbox_alerts ON outbox(id) WHERE lane = 0;";

/// Whether the row `o.id` is delivered: the range starting at or before it reaches it. One
/// seek in `delivered`'s primary key.
pub(super) const DELIVERED: &str = "(COALESCE((SELECT d.last FROM delivered d WHERE d.first <= o.id
     ORDER BY d.first DESC LIMIT 1), 0) >= o.id)";

/// The rows of one run of acknowledged ids not yet delivered, by row id (a seek, never a
/// scan of the backlog; tested by its query plan).
pub(super) const MARK_ROWS: &str = "SELECT o.id, o.lane, o.refused_at IS NOT NULL FROM outbox o
     WHERE o.id BETWEEN ?1 AND ?2 AND NOT (COALESCE((SELECT d.last FROM delivered d
     WHERE d.first <= o.id ORDER BY d.first DESC LIMIT 1), 0) >= o.id) ORDER BY o.id";

const HOUR_MS: i64 = 3_600_000;

/// Whether the row with id `id` is marked delivered.
pub(super) fn is_delivered(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT last FROM delivered WHERE first <= ?1 ORDER BY first DESC LIMIT 1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(last.is_some_and(|l| l >= id))
}

/// The highest id up to which every row is delivered (0 when the first row is not): where
/// a search for undelivered readings starts. Walks the ranges from the oldest row, two
/// seeks per range passed (a few an hour of held history).
pub(super) fn settled_through(conn: &Connection) -> rusqlite::Result<i64> {
    let mut next_row = conn.prepare_cached("SELECT MIN(id) FROM outbox WHERE id > ?1")?;
    let mut covering = conn.prepare_cached(
        "SELECT last FROM delivered WHERE first <= ?1 ORDER BY first DESC LIMIT 1",
    )?;
    let mut h = 0i64;
    loop {
        let Some(n) = next_row.query_row([h], |r| r.get::<_, Option<i64>>(0))? else {
            return Ok(h);
        };
        match covering.query_row([n], |r| r.get::<_, i64>(0)).optional()? {
            Some(last) if last >= n => h = last,
            _ => return Ok(n - 1),
        }
    }
}

/// Marks runs of ids delivered at `at` (ms), adding what changed to `counts`. Ids already
/// delivered or without a row are skipped, so marking twice changes nothing.
pub(super) fn mark(
    tx: &Connection,
    runs: &[(i64, i64)],
    at: i64,
    counts: &mut Delta,
) -> rusqlite::Result<()> {
    let mut rows = tx.prepare_cached(MARK_ROWS)?;
    let mut fresh: Vec<i64> = Vec::new();
    for &(first, last) in runs {
        let mut it = rows.query(params![first, last])?;
        while let Some(row) = it.next()? {
            let (id, lane, refused): (i64, i64, bool) = (row.get(0)?, row.get(1)?, row.get(2)?);
            counts.undelivered(lane, -1);
            counts.delivered_held += 1;
            counts.refused -= i64::from(refused);
            fresh.push(id);
        }
    }
    for (x, y) in super::outbox::consecutive_runs(&fresh) {
        add_range(tx, x, y, at)?;
    }
    Ok(())
}

/// Records ids `x..=y` delivered at `at`, merging with the range before (ending at `x - 1`)
/// and the one after (starting at `y + 1`) when delivered within the same hour.
fn add_range(tx: &Connection, x: i64, y: i64, at: i64) -> rusqlite::Result<()> {
    let (mut first, mut last, mut stamp) = (x, y, at);
    let before: Option<(i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT first, last, at FROM delivered WHERE first < ?1 ORDER BY first DESC LIMIT 1",
        )?
        .query_row([x], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    if let Some((f, l, a)) = before {
        if l == x - 1 && a.div_euclid(HOUR_MS) == at.div_euclid(HOUR_MS) {
            first = f;
            stamp = stamp.max(a);
        }
    }
    let after: Option<(i64, i64)> = tx
        .prepare_cached("SELECT last, at FROM delivered WHERE first = ?1")?
        .query_row([y + 1], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((l, a)) = after {
        if a.div_euclid(HOUR_MS) == at.div_euclid(HOUR_MS) {
            tx.prepare_cached("DELETE FROM delivered WHERE first = ?1")?
                .execute([y + 1])?;
            last = l;
            stamp = stamp.max(a);
        }
    }
    tx.prepare_cached("INSERT OR REPLACE INTO delivered (first, last, at) VALUES (?1, ?2, ?3)")?
        .execute(params![first, last, stamp])?;
    Ok(())
}

/// Takes ids `x..=y` (all delivered) out of the ranges, splitting the ones they fall in.
fn remove_range(tx: &rusqlite::Transaction<'_>, x: i64, y: i64) -> rusqlite::Result<()> {
    let mut at_id = x;
    while at_id <= y {
        let covering: Option<(i64, i64, i64)> = tx
            .prepare_cached("SELECT first, last, at FROM delivered WHERE first <= ?1 ORDER BY first DESC LIMIT 1")?
            .query_row([at_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((f, l, a)) = covering.filter(|c| c.1 >= at_id) else {
            // Not delivered: go on from the next range, if it starts within the run.
            let next: Option<i64> = tx
                .prepare_cached("SELECT MIN(first) FROM delivered WHERE first > ?1")?
                .query_row([at_id], |r| r.get(0))?;
            match next {
                Some(n) if n <= y => {
                    at_id = n;
                    continue;
                }
                _ => return Ok(()),
            }
        };
        let cut = l.min(y);
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO delivered (first, last, at) VALUES (?1, ?2, ?3)",
        )?;
        tx.prepare_cached("DELETE FROM delivered WHERE first = ?1")?
            .execute([f])?;
        if f < at_id {
            put.execute(params![f, at_id - 1, a])?;
        }
        if cut < l {
            put.execute(params![cut + 1, l, a])?;
        }
        at_id = cut + 1;
    }
    Ok(())
}

/// The retention purge: deletes the rows delivered before `cutoff_ms` (tallied per minute
/// first) and their ranges. Returns the rows deleted.
pub(super) fn purge(tx: &rusqlite::Transaction<'_>, cutoff_ms: i64) -> rusqlite::Result<u64> {
    let due: Vec<(i64, i64)> = tx
        .prepare_cached("SELECT first, last FROM delivered WHERE at < ?1")?
        .query_map([cutoff_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let purged = delete_tallied(tx, &due)?;
    tx.prepare_cached("DELETE FROM delivered WHERE at < ?1")?
        .execute([cutoff_ms])?;
    Ok(purged)
}

/// Deletes the rows of each id range `(first, last)`, after adding them to the per-minute
/// tally of rows no longer held (`purged_minutes`, which `resync` counts). Both purges, by
/// retention and by the storage cap, go through here. Returns the rows deleted.
fn delete_tallied(tx: &rusqlite::Transaction<'_>, ranges: &[(i64, i64)]) -> rusqlite::Result<u64> {
    let mut tally = tx.prepare_cached(
        "INSERT INTO purged_minutes (minute, lane, rows)
             SELECT created_at / 60000, lane, COUNT(*) FROM outbox
             WHERE id BETWEEN ?1 AND ?2 GROUP BY 1, 2
         ON CONFLICT(minute, lane) DO UPDATE SET rows = rows + excluded.rows",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE id BETWEEN ?1 AND ?2")?;
    let mut purged = 0u64;
    for &(first, last) in ranges {
        tally.execute([first, last])?;
        purged += delete.execute([first, last])? as u64;
    }
    Ok(purged)
}

/// The storage cap's purge (`outbox/cap.rs`): deletes up to `limit` delivered rows, lowest
/// ids first, whatever their delivery time, tallied per minute like the retention purge (so
/// `resync` still counts them as no longer held), and takes their ids out of the ranges.
/// Returns the rows deleted.
pub(crate) fn purge_oldest(tx: &rusqlite::Transaction<'_>, limit: i64) -> rusqlite::Result<u64> {
    if limit <= 0 {
        return Ok(0);
    }
    // The highest id to purge: the limit-th delivered row, else every delivered row.
    let upto: Option<i64> = tx
        .prepare_cached(
            "SELECT o.id FROM delivered d JOIN outbox o ON o.id BETWEEN d.first AND d.last
             ORDER BY o.id LIMIT 1 OFFSET ?1",
        )?
        .query_row([limit - 1], |r| r.get(0))
        .optional()?;
    let upto = match upto {
        Some(id) => id,
        None => match tx
            .prepare_cached("SELECT MAX(last) FROM delivered")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))?
        {
            Some(id) => id,
            None => return Ok(0),
        },
    };
    let due: Vec<(i64, i64)> = tx
        .prepare_cached("SELECT first, MIN(last, ?1) FROM delivered WHERE first <= ?1")?
        .query_map([upto], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let purged = delete_tallied(tx, &due)?;
    tx.prepare_cached("DELETE FROM delivered WHERE last <= ?1")?
        .execute([upto])?;
    tx.prepare_cached("UPDATE delivered SET first = ?1 + 1 WHERE first <= ?1 AND last > ?1")?
        .execute([upto])?;
    Ok(purged)
}

/// The receive time (ms) of the oldest undelivered row of each lane.
pub(super) fn oldest_undelivered(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let alerts: Option<i64> = conn
        .prepare_cached(&format!(
            "SELECT o.created_at FROM outbox o
             WHERE o.lane = 0 AND NOT {DELIVERED} ORDER BY o.id LIMIT 1"
        ))?
        .query_row([], |r| r.get(0))
        .optional()?;
    let readings: Option<i64> = conn
        .prepare_cached(&format!(
            "SELECT o.created_at FROM outbox o
             WHERE o.id > ?1 AND o.lane = 1 AND NOT {DELIVERED} ORDER BY o.id LIMIT 1"
        ))?
        .query_row([settled_through(conn)?], |r| r.get(0))
        .optional()?;
    Ok(match (alerts, readings) {
        (Some(a), Some(r)) => Some(a.min(r)),
        (a, r) => a.or(r),
    })
}

/// The latest delivery (ms).
pub(super) fn last_delivery(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT MAX(at) FROM delivered")?
        .query_row([], |r| r.get(0))
}

/// The statement listing undelivered rows of `lane` after `?1`, oldest first, at most `?2`.
pub(super) fn pending_sql(lane: Lane) -> String {
    // `o.lane = 0` written out lets SQLite use the partial index of alert rows.
    format!(
        "SELECT o.id, o.kind, o.key_id, o.nonce, o.ciphertext FROM outbox o
         WHERE o.lane = {lane} AND o.id > ?1 AND NOT {DELIVERED} ORDER BY o.id LIMIT ?2",
        lane = lane as i64
    )
}

/// Where the search for undelivered rows of `lane` after `after` can start.
pub(super) fn pending_start(conn: &Connection, lane: Lane, after: i64) -> rusqlite::Result<i64> {
    Ok(match lane {
        Lane::Alert => after,
        Lane::Reading => after.max(settled_through(conn)?),
    })
}

const MINUTE_MS: i64 = 60_000;

/// A half-open range of receive times `[from, until)` on whole minutes (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteRange {
    from_minute: i64,
    until_minute: i64,
}

/// Why a range is not a [`MinuteRange`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("{which} {at} is not on a whole minute (seconds and fractions must be zero): purged readings are counted per minute")]
    NotWholeMinute { which: &'static str, at: String },
    #[error("the range is empty: until ({until}) must be after from ({from})")]
    Empty { from: String, until: String },
}

impl MinuteRange {
    pub fn new(from: OffsetDateTime, until: OffsetDateTime) -> Result<MinuteRange, RangeError> {
        let minute = |which: &'static str, t: OffsetDateTime| {
            let ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
            if t.unix_timestamp_nanos() % 1_000_000_000 != 0 || ms.rem_euclid(MINUTE_MS) != 0 {
                return Err(RangeError::NotWholeMinute {
                    which,
                    at: crate::status::rfc3339(t),
                });
            }
            Ok(ms.div_euclid(MINUTE_MS))
        };
        let (from_minute, until_minute) = (minute("from", from)?, minute("until", until)?);
        if until_minute <= from_minute {
            return Err(RangeError::Empty {
                from: crate::status::rfc3339(from),
                until: crate::status::rfc3339(until),
            });
        }
        Ok(MinuteRange {
            from_minute,
            until_minute,
        })
    }

    fn start_ms(&self) -> i64 {
        self.from_minute * MINUTE_MS
    }

    fn end_ms(&self) -> i64 {
        self.until_minute * MINUTE_MS
    }
}

/// What a resync did, counted over the readings lane of the range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reopened {
    /// Delivered rows made undelivered again: the publisher sends each once more.
    pub reopened: u64,
    /// Rows of the range not yet delivered anyway (sent in their turn, not counted above).
    pub already_pending: u64,
    /// Rows of the range the outbox no longer holds: `purged + quarantined`.
    pub not_held: u64,
    /// Removed by the retention purge (delivered, then older than `retention_days`).
    pub purged: u64,
    /// Failed authentication and moved to quarantine (kept, but never sent).
    pub quarantined: u64,
}

/// Re-opens the delivered readings of `range` still held in the outbox at `path` (the
/// publisher then sends them again, oldest first, after whatever alerts wait) and counts
/// what the range held. Its own connection: no key is needed (nothing is decrypted), and
/// the ingest writer is held up only for the update itself, never for the search: the
/// range's rows are first found by a read-only scan outside any write lock (receive time has
/// no index; a resync is rare, an index would be written with every reading), and the
/// update then seeks them by row id.
pub fn reopen_delivered(path: &Path, range: MinuteRange) -> Result<Reopened, StoreError> {
    let mut conn = super::outbox::connect(path)?;
    let err = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let lane = Lane::Reading as i64;
    let (from, until) = (range.start_ms(), range.end_ms());
    let span: (Option<i64>, Option<i64>) = conn
        .query_row(
            "SELECT MIN(id), MAX(id) FROM outbox
             WHERE lane = ?1 AND created_at >= ?2 AND created_at < ?3",
            params![lane, from, until],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let mut done = Reopened::default();
    let mut counts = Delta::default();
    if let (Some(first), Some(last)) = span {
        // Rows committed since the scan have later ids or receive times outside the range
        // (ids and receive times grow together); the conditions are repeated so a row is
        // re-opened only if it is in the range, whatever happened in between.
        let rows: Vec<(i64, bool, bool)> = tx
            .prepare(&format!(
                "SELECT o.id, {DELIVERED}, o.refused_at IS NOT NULL FROM outbox o
                 WHERE o.id BETWEEN ?1 AND ?2 AND o.lane = ?3 AND o.created_at >= ?4
                   AND o.created_at < ?5 ORDER BY o.id"
            ))
            .and_then(|mut st| {
                st.query_map(params![first, last, lane, from, until], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .map_err(err)?;
        let mut reopen = Vec::new();
        for (id, delivered, refused) in rows {
            if delivered {
                reopen.push(id);
                counts.refused += i64::from(refused);
            } else {
                done.already_pending += 1;
            }
        }
        for (x, y) in super::outbox::consecutive_runs(&reopen) {
            remove_range(&tx, x, y).map_err(err)?;
        }
        done.reopened = reopen.len() as u64;
    }
    done.purged = tx
        .query_row(
            "SELECT COALESCE(SUM(rows), 0) FROM purged_minutes
             WHERE lane = ?1 AND minute >= ?2 AND minute < ?3",
            params![lane, range.from_minute, range.until_minute],
            |r| r.get::<_, i64>(0),
        )
        .map_err(err)? as u64;
    done.quarantined = tx
        .query_row(
            "SELECT COUNT(*) FROM quarantine WHERE lane = ?1 AND created_at >= ?2 AND created_at < ?3",
            params![lane, from, until],
            |r| r.get::<_, i64>(0),
        )
        .map_err(err)? as u64;
    done.not_held = done.purged + done.quarantined;
    counts.undelivered(lane, done.reopened as i64);
    counts.delivered_held = -(done.reopened as i64);
    counts.apply(&tx).map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Decimal, Metric, Reading};
    use crate::store::{AlertRecord, MasterKey, Outbox, ReadingRecord, Record};
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);

    fn reading(value: i64) -> Record {
        Record::Reading(ReadingRecord {
            device_id: "ox1".into(),
            patient_id: "p1".into(),
            nhs_number: None,
            received_at: T0,
            clock_synced: true,
            boot: None,
            readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(value))],
        })
    }

    fn alert() -> Record {
        Record::Alert(AlertRecord {
            patient_id: "p1".into(),
            event: serde_json::json!({"alert_id": "a1"}),
        })
    }

    fn minutes(m: i64) -> time::Duration {
        time::Duration::minutes(m)
    }

    fn range(from: i64, until: i64) -> MinuteRange {
        MinuteRange::new(T0 + minutes(from), T0 + minutes(until)).unwrap()
    }

    /// An outbox on disk with two readings received in each of minutes 0, 1 and 2 and an
    /// alert in minute 1, everything delivered. Returns the reading ids per minute.
    fn delivered_outbox() -> (tempfile::TempDir, Outbox, Vec<Vec<i64>>, i64) {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        let mut per_minute = Vec::new();
        let mut alert_id = 0;
        for m in 0..3 {
            let at = T0 + minutes(m) + time::Duration::seconds(30);
            per_minute.push(outbox.append(&[reading(95), reading(96)], at).unwrap());
            if m == 1 {
                alert_id = outbox.append(&[alert()], at).unwrap()[0];
            }
        }
        let all: Vec<i64> = per_minute
            .iter()
            .flatten()
            .copied()
            .chain([alert_id])
            .collect();
        outbox.mark_delivered(&all, T0 + minutes(3)).unwrap();
        (dir, outbox, per_minute, alert_id)
    }

    fn pending(outbox: &mut Outbox, lane: Lane) -> Vec<i64> {
        outbox
            .pending(lane, 0, 100)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    #[test]
    fn resync_reopens_exactly_the_delivered_readings_received_in_the_range() {
        let (_d, mut outbox, ids, _) = delivered_outbox();
        let done = reopen_delivered(outbox.path(), range(1, 2)).unwrap();
        assert_eq!(
            done,
            Reopened {
                reopened: 2,
                ..Reopened::default()
            }
        );
        assert_eq!(
            pending(&mut outbox, Lane::Reading),
            ids[1],
            "same row ids again"
        );
        assert!(
            pending(&mut outbox, Lane::Alert).is_empty(),
            "alerts are not resent"
        );
        let stats = outbox.stats().unwrap();
        assert_eq!(stats.backlog_readings, 2);
        assert_eq!(stats.delivered_held, 5);
    }

    #[test]
    fn resync_counts_rows_still_undelivered_apart_and_reopens_nothing_twice() {
        let (_d, mut outbox, ids, _) = delivered_outbox();
        reopen_delivered(outbox.path(), range(0, 1)).unwrap();
        let again = reopen_delivered(outbox.path(), range(0, 2)).unwrap();
        assert_eq!((again.reopened, again.already_pending), (2, 2));
        let mut want = ids[0].clone();
        want.extend(&ids[1]);
        assert_eq!(pending(&mut outbox, Lane::Reading), want);
        assert_eq!(outbox.stats().unwrap().backlog_readings, 4);
    }

    #[test]
    fn resync_counts_readings_the_retention_purge_removed_as_no_longer_held() {
        let (_d, mut outbox, _, _) = delivered_outbox();
        // Re-open minute 2 so it survives the purge (undelivered rows are never purged).
        reopen_delivered(outbox.path(), range(2, 3)).unwrap();
        assert_eq!(outbox.purge_delivered_before(T0 + minutes(10)).unwrap(), 5);
        let done = reopen_delivered(outbox.path(), range(1, 3)).unwrap();
        assert_eq!(
            done,
            Reopened {
                reopened: 0,
                already_pending: 2,
                not_held: 2,
                purged: 2,
                quarantined: 0,
            },
            "minute 1's readings purged (its alert is not a reading), minute 2's held"
        );
        let wider = reopen_delivered(outbox.path(), range(-60, 60)).unwrap();
        assert_eq!((wider.purged, wider.not_held), (4, 4));
    }

    #[test]
    fn resync_counts_quarantined_readings_as_no_longer_held() {
        let (_d, mut outbox, ids, _) = delivered_outbox();
        outbox
            .connection()
            .execute(
                "UPDATE outbox SET ciphertext = zeroblob(40) WHERE id = ?1",
                [ids[1][0]],
            )
            .unwrap();
        let done = reopen_delivered(outbox.path(), range(1, 2)).unwrap();
        assert_eq!((done.reopened, done.not_held), (2, 0));
        assert_eq!(pending(&mut outbox, Lane::Reading), vec![ids[1][1]]);
        let after = reopen_delivered(outbox.path(), range(1, 2)).unwrap();
        assert_eq!(
            (after.already_pending, after.quarantined, after.not_held),
            (1, 1, 1)
        );
    }

    fn ranges(outbox: &Outbox) -> Vec<(i64, i64)> {
        outbox
            .connection()
            .prepare("SELECT first, last FROM delivered ORDER BY first")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn delivering_in_order_extends_one_range_and_never_rewrites_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        let ids = outbox
            .append(&(0..20).map(|v| reading(80 + v)).collect::<Vec<_>>(), T0)
            .unwrap();
        for chunk in ids.chunks(5) {
            outbox.mark_delivered(chunk, T0 + minutes(1)).unwrap();
        }
        assert_eq!(ranges(&outbox), vec![(ids[0], ids[19])]);
        let rows_with_a_mark: i64 = outbox
            .connection()
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows_with_a_mark, 0);
        // The next hour starts a new range (the retention purge's granularity).
        let later = outbox.append(&[reading(90)], T0).unwrap();
        outbox.mark_delivered(&later, T0 + minutes(61)).unwrap();
        assert_eq!(ranges(&outbox).len(), 2);
    }

    #[test]
    fn readings_left_behind_delivered_ones_and_alerts_are_still_pending() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let (mut outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        let ids = outbox
            .append(
                &[
                    reading(1),
                    reading(2),
                    alert(),
                    reading(3),
                    reading(4),
                    alert(),
                ],
                T0,
            )
            .unwrap();
        // Alerts first, then every reading but the second.
        outbox.mark_delivered(&[ids[2], ids[5]], T0).unwrap();
        outbox
            .mark_delivered(&[ids[0], ids[3], ids[4]], T0)
            .unwrap();
        assert_eq!(pending(&mut outbox, Lane::Reading), vec![ids[1]]);
        assert!(pending(&mut outbox, Lane::Alert).is_empty());
        let stats = outbox.stats().unwrap();
        assert_eq!((stats.backlog_readings, stats.backlog_alerts), (1, 0));
        assert_eq!(stats.oldest_undelivered, Some(T0));
        outbox.mark_delivered(&[ids[1]], T0).unwrap();
        assert!(pending(&mut outbox, Lane::Reading).is_empty());
        assert_eq!(ranges(&outbox), vec![(ids[0], ids[5])], "merged into one");
        assert_eq!(outbox.stats().unwrap().oldest_undelivered, None);
    }

    #[test]
    fn a_range_not_on_whole_minutes_or_empty_is_refused() {
        let half = T0 + time::Duration::seconds(30);
        assert!(matches!(
            MinuteRange::new(half, T0 + minutes(5)),
            Err(RangeError::NotWholeMinute { which: "from", .. })
        ));
        assert!(matches!(
            MinuteRange::new(T0, T0 + time::Duration::milliseconds(60_001)),
            Err(RangeError::NotWholeMinute { which: "until", .. })
        ));
        assert!(matches!(
            MinuteRange::new(T0, T0),
            Err(RangeError::Empty { .. })
        ));
        assert!(MinuteRange::new(T0 - minutes(1), T0).is_ok());
    }
}

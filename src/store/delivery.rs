//! Delivery state beyond the per-row mark: re-opening delivered readings of a time range
//! (the fleet's `resync` command, issue 14) and the per-minute tally of rows the retention
//! purge removed, which lets a resync say exactly how many rows of its range are gone.
//!
//! Why minutes: a purged row leaves nothing behind, so "how many of the range are no longer
//! held" must be remembered at purge time. One tally row per minute of receive time costs
//! about 17 KB a day at most (one per second would be a megabyte a day, kept for ever), and a
//! range on whole minutes is then counted exactly: [`MinuteRange`] only admits such ranges.
//!
//! The range is the hub's receive time (`outbox.created_at`, when the reading committed),
//! the only time the outbox holds in clear; for a live device it is the reading's time
//! within a second or two, for a stored-record download (RACP) it is when it was fetched.
//! Only the readings lane is re-opened (readings and the NEWS2 observations derived from
//! them): alert events are not resent. A re-opened row keeps its id, so the publisher renders
//! the same deterministic Observation id and the platform can recognise the copy.

use std::path::Path;

use rusqlite::{params, TransactionBehavior};
use time::OffsetDateTime;

use super::counts::Delta;
use super::outbox::StoreError;
use super::record::Lane;

/// Schema step 3 -> 4 (migration number 4): the purge tally. Touches only its own table.
pub(super) const MIGRATE_TO_V4: &str = "CREATE TABLE IF NOT EXISTS purged_minutes (
         minute INTEGER NOT NULL,
         lane INTEGER NOT NULL,
         rows INTEGER NOT NULL,
         PRIMARY KEY (minute, lane)) WITHOUT ROWID;";

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

/// Adds the rows a retention purge is about to delete (delivered before `cutoff_ms`) to the
/// per-minute tally, inside the purge's own transaction, so tally and rows never disagree.
pub(super) fn tally_purge(tx: &rusqlite::Transaction<'_>, cutoff_ms: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO purged_minutes (minute, lane, rows)
             SELECT created_at / 60000, lane, COUNT(*) FROM outbox
             WHERE delivered_at IS NOT NULL AND delivered_at < ?1 GROUP BY 1, 2
         ON CONFLICT(minute, lane) DO UPDATE SET rows = rows + excluded.rows",
    )?
    .execute([cutoff_ms])?;
    Ok(())
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
    if let (Some(first), Some(last)) = span {
        // Rows committed since the scan have later ids or receive times outside the range
        // (ids and receive times grow together); the conditions are repeated so a row is
        // re-opened only if it is in the range, whatever happened in between.
        done.reopened = tx
            .execute(
                "UPDATE outbox SET delivered_at = NULL, refused_at = NULL, refused_reason = NULL
                 WHERE id BETWEEN ?1 AND ?2 AND lane = ?3 AND created_at >= ?4 AND created_at < ?5
                   AND delivered_at IS NOT NULL",
                params![first, last, lane, from, until],
            )
            .map_err(err)? as u64;
        done.already_pending = tx
            .query_row(
                "SELECT COUNT(*) FROM outbox
                 WHERE id BETWEEN ?1 AND ?2 AND lane = ?3 AND created_at >= ?4 AND created_at < ?5
                   AND delivered_at IS NULL",
                params![first, last, lane, from, until],
                |r| r.get::<_, i64>(0),
            )
            .map_err(err)? as u64
            - done.reopened;
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
    let mut counts = Delta::default();
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

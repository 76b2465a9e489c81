//! Issue 18 (footprint), acceptance 7: the outbox's cost at rest does not grow with its
//! backlog. Counts are kept with the rows, in the same transactions, and stay exact through
//! every way a row changes state; the full-file start-up check runs only after an unclean
//! stop, and still finds a corrupt file then. Real SQLite files on disk.

use std::path::Path;

use time::OffsetDateTime;
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::{AlertRecord, Lane, MasterKey, Outbox, ReadingRecord, Record};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn reading(value: i64) -> Record {
    Record::Reading(ReadingRecord {
        device_id: "ox1".into(),
        patient_id: "p1".into(),
        nhs_number: None,
        received_at: now(),
        clock_synced: true,
        readings: vec![Reading::canonical(Metric::HeartRate, Decimal::int(value))],
        boot: None,
    })
}

fn alert() -> Record {
    Record::Alert(AlertRecord {
        patient_id: "p1".into(),
        event: serde_json::json!({"alert_id": "a1"}),
    })
}

/// What the counts say, and what counting the rows says: they must agree.
fn counted_and_kept(outbox: &Outbox) -> ([u64; 5], [u64; 5]) {
    let s = outbox.stats().unwrap();
    let kept = [
        s.backlog_alerts,
        s.backlog_readings,
        s.delivered_held,
        s.refused,
        outbox.backlog().unwrap(),
    ];
    let c = outbox.connection();
    let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64;
    // Delivery marks are id ranges in `delivered` (schema 4).
    const DELIVERED: &str =
        "EXISTS (SELECT 1 FROM delivered d WHERE outbox.id BETWEEN d.first AND d.last)";
    let counted = [
        count(&format!(
            "SELECT COUNT(*) FROM outbox WHERE NOT {DELIVERED} AND lane = 0"
        )),
        count(&format!(
            "SELECT COUNT(*) FROM outbox WHERE NOT {DELIVERED} AND lane = 1"
        )),
        count(&format!("SELECT COUNT(*) FROM outbox WHERE {DELIVERED}")),
        count(&format!(
            "SELECT COUNT(*) FROM outbox WHERE NOT {DELIVERED} AND refused_at IS NOT NULL"
        )),
        count(&format!(
            "SELECT COUNT(*) FROM outbox WHERE NOT {DELIVERED}"
        )),
    ];
    (counted, kept)
}

fn assert_exact(outbox: &Outbox, when: &str) {
    let (counted, kept) = counted_and_kept(outbox);
    assert_eq!(kept, counted, "counts kept vs rows counted, {when}");
}

fn fresh() -> (tempfile::TempDir, std::path::PathBuf, MasterKey) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    (dir, path, MasterKey::ephemeral().unwrap())
}

#[test]
fn counts_stay_exact_across_append_deliver_refuse_purge_quarantine_and_restart() {
    let (_dir, path, key) = fresh();
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    let ids = outbox
        .append(
            &[reading(60), alert(), reading(61), reading(62), alert()],
            now(),
        )
        .unwrap();
    assert_exact(&outbox, "after append");
    assert_eq!(outbox.backlog().unwrap(), 5);

    outbox.mark_refused(ids[2], "too large", now()).unwrap();
    outbox
        .mark_refused(ids[2], "too large again", now())
        .unwrap();
    assert_exact(&outbox, "after a row refused twice");
    assert_eq!(outbox.stats().unwrap().refused, 1);

    // Delivered: the refused row among them, and one id twice.
    outbox
        .mark_delivered(&[ids[0], ids[1], ids[2], ids[2]], now())
        .unwrap();
    outbox.mark_delivered(&[ids[0]], now()).unwrap(); // again: no change
    assert_exact(&outbox, "after delivery");
    assert_eq!(outbox.stats().unwrap().delivered_held, 3);

    // A tampered undelivered row and a tampered delivered one go to quarantine.
    for id in [ids[3], ids[1]] {
        outbox
            .connection()
            .execute(
                "UPDATE outbox SET ciphertext = zeroblob(length(ciphertext)) WHERE id = ?1",
                [id],
            )
            .unwrap();
        assert!(outbox.get(id).unwrap().is_none());
    }
    assert_exact(&outbox, "after quarantine");

    let purged = outbox
        .purge_delivered_before(now() + time::Duration::days(1))
        .unwrap();
    assert_eq!(purged, 2);
    assert_exact(&outbox, "after purge");
    drop(outbox);

    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    assert_exact(&outbox, "after restart");
    outbox.append(&[reading(63)], now()).unwrap();
    assert_exact(&outbox, "after restart and append");
    assert_eq!(outbox.backlog().unwrap(), 2);
}

#[test]
fn counts_of_a_failed_transaction_roll_back_with_its_rows() {
    let (_dir, path, key) = fresh();
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    outbox.append(&[reading(60)], now()).unwrap();
    // Another writer takes the next id: the append fails on its primary key, and retries.
    outbox
        .connection()
        .execute(
            "INSERT INTO quarantine (id, lane, kind, created_at, key_id, nonce, ciphertext, reason, quarantined_at)
             VALUES (2, 1, 1, 0, 1, x'00', x'00', 'test', 0)",
            [],
        )
        .unwrap();
    outbox
        .connection()
        .execute("INSERT INTO outbox (id, lane, kind, created_at, key_id, nonce, ciphertext) VALUES (3, 1, 1, 0, 1, x'00', x'00')", [])
        .unwrap();
    let before = outbox.stats().unwrap().backlog_readings;
    assert_eq!(
        before, 1,
        "a raw insert is not counted (the next append must fail)"
    );
    let failed = outbox.append(&[reading(61), reading(62)], now());
    assert!(failed.is_err(), "id 3 is taken");
    assert_eq!(outbox.stats().unwrap().backlog_readings, before);
}

#[test]
fn an_outbox_of_schema_2_is_counted_once_when_migrated() {
    let (_dir, path, key) = fresh();
    {
        let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
        let ids = outbox
            .append(&[reading(60), reading(61), alert()], now())
            .unwrap();
        // Back to schema 2 as it was written: the delivery mark in the row, its two
        // indexes, no counts in meta, none of schema 4's tables.
        outbox
            .connection()
            .execute(
                "UPDATE outbox SET delivered_at = 1764583200000 WHERE id = ?1",
                [ids[0]],
            )
            .unwrap();
        outbox
            .connection()
            .execute_batch(
                "DELETE FROM meta WHERE key IN ('undelivered_alerts', 'undelivered_readings', 'delivered_held', 'refused');
                 DROP TABLE delivered; DROP TABLE purged_minutes; DROP INDEX outbox_alerts;
                 CREATE INDEX outbox_undelivered ON outbox(lane, id) WHERE delivered_at IS NULL;
                 CREATE INDEX outbox_delivered ON outbox(delivered_at) WHERE delivered_at IS NOT NULL;
                 PRAGMA user_version = 2;",
            )
            .unwrap();
    }
    let (outbox, report) = Outbox::open(&path, &key).unwrap();
    assert_eq!(report.migrated_from, 2);
    assert_exact(&outbox, "after migration");
    assert_eq!(outbox.backlog().unwrap(), 2);
    assert_eq!(outbox.stats().unwrap().delivered_held, 1);
    let last_ack = outbox.stats().unwrap().last_ack.unwrap();
    assert_eq!(
        last_ack.unix_timestamp(),
        1_764_583_200,
        "the delivery time moved to its range"
    );
}

/// Bytes this thread has read through system calls so far (`/proc/thread-self/io`, rchar):
/// SQLite reads with `pread`, so this is what an open reads, whatever the page cache holds.
fn bytes_read_by_this_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// An outbox of `rows` readings, then closed as the daemon closes it (`clean`) or dropped
/// as by a crash.
fn outbox_with_backlog(path: &Path, key: &MasterKey, rows: usize, clean: bool) {
    let (mut outbox, _) = Outbox::open(path, key).unwrap();
    for chunk in 0..rows / 1000 {
        let batch: Vec<Record> = (0..1000)
            .map(|i| reading(40 + (i + chunk) as i64 % 100))
            .collect();
        outbox.append(&batch, now()).unwrap();
    }
    if clean {
        outbox.close_clean().unwrap();
    } else {
        outbox
            .connection()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
}

#[test]
fn a_restart_after_a_clean_stop_does_not_read_the_whole_file() {
    let (_dir, path, key) = fresh();
    outbox_with_backlog(&path, &key, 20_000, true);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 1_000_000, "a backlog worth checking: {size} bytes");
    let before = bytes_read_by_this_thread();
    let (outbox, report) = Outbox::open(&path, &key).unwrap();
    let read = bytes_read_by_this_thread() - before;
    assert!(!report.full_check);
    assert!(
        read < size / 10,
        "open read {read} bytes of a {size}-byte outbox after a clean stop"
    );
    assert_eq!(outbox.backlog().unwrap(), 20_000);
}

#[test]
fn a_restart_after_an_unclean_stop_checks_the_whole_file() {
    let (_dir, path, key) = fresh();
    outbox_with_backlog(&path, &key, 20_000, false);
    let size = std::fs::metadata(&path).unwrap().len();
    let before = bytes_read_by_this_thread();
    let (_outbox, report) = Outbox::open(&path, &key).unwrap();
    let read = bytes_read_by_this_thread() - before;
    assert!(report.full_check);
    assert!(
        read >= size / 2,
        "quick_check read only {read} of {size} bytes"
    );
}

#[test]
fn the_clean_stop_marker_lasts_for_one_start_only() {
    let (_dir, path, key) = fresh();
    outbox_with_backlog(&path, &key, 1000, true);
    let (_first, report) = Outbox::open(&path, &key).unwrap();
    assert!(!report.full_check, "first start after a clean stop");
    drop(_first); // a crash: no close_clean
    let (_second, report) = Outbox::open(&path, &key).unwrap();
    assert!(
        report.full_check,
        "the start after that crash checks in full"
    );
}

/// Scribbles over a 4 KiB run in the middle of the file (b-tree pages, past the header).
fn corrupt_middle(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 4096].fill(0xA5);
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn a_corrupt_file_after_an_unclean_stop_is_still_detected_and_set_aside() {
    let (_dir, path, key) = fresh();
    outbox_with_backlog(&path, &key, 5000, false);
    corrupt_middle(&path);
    let (outbox, report) = Outbox::open(&path, &key).unwrap();
    let aside = report.corrupt_moved_to.expect("corrupt file set aside");
    assert!(aside.exists());
    assert_eq!(outbox.backlog().unwrap(), 0, "a new outbox");
}

#[test]
fn a_row_damaged_at_rest_after_a_clean_stop_is_quarantined_when_read() {
    let (_dir, path, key) = fresh();
    let ids = {
        let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
        let ids = outbox.append(&[reading(60), reading(61)], now()).unwrap();
        outbox
            .connection()
            .execute(
                "UPDATE outbox SET ciphertext = zeroblob(length(ciphertext)) WHERE id = ?1",
                [ids[0]],
            )
            .unwrap();
        outbox.close_clean().unwrap();
        ids
    };
    let (mut outbox, report) = Outbox::open(&path, &key).unwrap();
    assert!(!report.full_check);
    let pending: Vec<i64> = outbox
        .pending(Lane::Reading, 0, 10)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(pending, vec![ids[1]]);
    assert_eq!(outbox.stats().unwrap().quarantined, 1);
    assert_exact(&outbox, "after quarantine on read");
}

//! The encrypted outbox on real SQLite files on disk (issue #2, acceptance 4, 5, 6, 9).

use std::path::Path;

use time::OffsetDateTime;
use vitalgate::reading::{Absent, Acvpu, Decimal, Flag, Metric, Reading, Unit};
use vitalgate::store::{AlertRecord, Lane, MasterKey, Outbox, ReadingRecord, Record, StoreError};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn record(readings: Vec<Reading>) -> Record {
    Record::Reading(ReadingRecord {
        device_id: "ox1".into(),
        patient_id: "p1".into(),
        nhs_number: Some("9434765919".into()),
        received_at: time::macros::datetime!(2026-11-23 10:00:00.123 UTC),
        clock_synced: true,
        readings,
        boot: None,
    })
}

/// A fresh outbox location and key. Keep the directory alive for the test's length.
fn fresh() -> (tempfile::TempDir, std::path::PathBuf, MasterKey) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    (dir, path, MasterKey::ephemeral().unwrap())
}

/// Ids of the undelivered readings, oldest first.
fn pending_ids(outbox: &mut Outbox) -> Vec<i64> {
    outbox
        .pending(Lane::Reading, 0, 10)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

fn alert() -> Record {
    Record::Alert(AlertRecord {
        patient_id: "p1".into(),
        event: serde_json::json!({"alert_id": "a1"}),
    })
}

fn spo2(value: i64) -> Record {
    record(vec![Reading::canonical(Metric::Spo2, Decimal::int(value))])
}

fn one_of_every_metric() -> Vec<Reading> {
    Metric::ALL
        .iter()
        .map(|&m| match m {
            Metric::Acvpu => Reading::acvpu(Acvpu::C),
            m => {
                let (lo, hi) = m.plausible_range().unwrap();
                let mid = Decimal::from_f64(((lo + hi) / 2.0 * 10.0).round() / 10.0).unwrap();
                Reading::canonical(m, mid)
                    .at(time::macros::datetime!(2026-11-23 09:59:58 +01:00))
                    .with_flags([Flag::Motion])
            }
        })
        .collect()
}

fn open(path: &Path, key: &MasterKey) -> Outbox {
    Outbox::open(path, key).unwrap().0
}

#[test]
fn outbox_round_trips_every_metric_exactly() {
    let (_dir, path, key) = fresh();
    let mut records: Vec<Record> = one_of_every_metric()
        .into_iter()
        .map(|r| record(vec![r]))
        .collect();
    records.push(record(vec![Reading::absent(
        Metric::HeartRate,
        Absent::Nres,
    )]));
    records.push(record(vec![Reading::number(
        Metric::BodyTemperature,
        Decimal::new(3760, -2),
        Unit::Celsius,
    )]));
    let ids = open(&path, &key).append(&records, now()).unwrap();

    // A fresh connection (as after a restart) reads back exactly what was stored.
    let mut reopened = open(&path, &key);
    let pending = reopened.pending(Lane::Reading, 0, 1000).unwrap();
    assert_eq!(pending.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    for ((_, got), want) in pending.iter().zip(&records) {
        assert_eq!(got, want);
    }
    // The device's UTC offset survives storage (FHIR effectiveDateTime carries it).
    let Record::Reading(first) = &pending[0].1 else {
        panic!()
    };
    assert_eq!(
        first.readings[0].device_time.unwrap().offset(),
        time::macros::offset!(+01:00)
    );
    // 37.60 keeps its two decimals (an exact decimal, not a float).
    let Record::Reading(r) = &pending.last().unwrap().1 else {
        panic!()
    };
    assert_eq!(
        r.readings[0].value,
        vitalgate::reading::Value::Number(Decimal::new(3760, -2))
    );
    assert!(
        matches!(r.readings[0].value, vitalgate::reading::Value::Number(d) if d.exponent == -2)
    );
}

#[test]
fn outbox_stores_ciphertext_not_plaintext() {
    let (dir, path, key) = fresh();
    let mut outbox = open(&path, &key);
    outbox.append(&[spo2(97)], now()).unwrap();
    drop(outbox);
    let raw = std::fs::read(&path).unwrap();
    let wal = std::fs::read(dir.path().join("outbox.db-wal")).unwrap_or_default();
    for haystack in [&raw, &wal] {
        assert!(
            !haystack.windows(10).any(|w| w == b"9434765919"),
            "NHS Number in clear on disk"
        );
        assert!(
            !haystack.windows(4).any(|w| w == b"spo2"),
            "metric name in clear on disk"
        );
    }
}

#[test]
fn outbox_database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    open(&path, &MasterKey::ephemeral().unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

fn tamper(path: &Path, key: &MasterKey, column: &str, id: i64) {
    tamper_at(path, key, column, id, |len| len / 2);
}

/// Flips one bit of `column` of row `id`, at the index `at` gives for the blob's length.
fn tamper_at(path: &Path, key: &MasterKey, column: &str, id: i64, at: impl Fn(usize) -> usize) {
    let outbox = open(path, key);
    let blob: Vec<u8> = outbox
        .connection()
        .query_row(
            &format!("SELECT {column} FROM outbox WHERE id = ?1"),
            [id],
            |r| r.get(0),
        )
        .unwrap();
    let mut blob = blob;
    let at = at(blob.len());
    blob[at] ^= 0x01;
    outbox
        .connection()
        .execute(
            &format!("UPDATE outbox SET {column} = ?1 WHERE id = ?2"),
            rusqlite::params![blob, id],
        )
        .unwrap();
}

fn three_readings(path: &Path, key: &MasterKey) -> Vec<i64> {
    let records: Vec<Record> = [95, 96, 97].into_iter().map(spo2).collect();
    open(path, key).append(&records, now()).unwrap()
}

#[test]
fn tampered_ciphertext_byte_is_quarantined_and_the_rest_still_flows() {
    let (_dir, path, key) = fresh();
    let ids = three_readings(&path, &key);
    tamper(&path, &key, "ciphertext", ids[1]);

    let mut outbox = open(&path, &key);
    let pending: Vec<i64> = pending_ids(&mut outbox);
    assert_eq!(pending, vec![ids[0], ids[2]]);
    let stats = outbox.stats().unwrap();
    assert_eq!(stats.quarantined, 1);
    assert_eq!(stats.backlog_readings, 2);
    assert_eq!(outbox.quarantined_now[0].id, ids[1]);
}

#[test]
fn tampered_nonce_byte_is_quarantined() {
    let (_dir, path, key) = fresh();
    let ids = three_readings(&path, &key);
    // A row's nonce leads its ciphertext since schema 7 (its twelve first bytes); rows
    // written before keep it in the nonce column (tests/store_inline_nonce.rs tampers those).
    tamper_at(&path, &key, "ciphertext", ids[0], |_| 5);

    let mut outbox = open(&path, &key);
    let pending: Vec<i64> = pending_ids(&mut outbox);
    assert_eq!(pending, vec![ids[1], ids[2]]);
    assert_eq!(outbox.stats().unwrap().quarantined, 1);
}

#[test]
fn ciphertext_moved_to_another_row_fails_authentication() {
    let (_dir, path, key) = fresh();
    let ids = three_readings(&path, &key);
    let outbox = open(&path, &key);
    // Copy row 1's nonce and ciphertext over row 2: both authentic bytes, wrong row.
    outbox
        .connection()
        .execute(
            "UPDATE outbox SET (nonce, ciphertext) = (SELECT nonce, ciphertext FROM outbox WHERE id = ?1) WHERE id = ?2",
            [ids[0], ids[1]],
        )
        .unwrap();
    drop(outbox);
    let mut outbox = open(&path, &key);
    let pending: Vec<i64> = pending_ids(&mut outbox);
    assert_eq!(pending, vec![ids[0], ids[2]]);
}

#[test]
fn wrong_master_key_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    three_readings(&path, &MasterKey::ephemeral().unwrap());
    let err = Outbox::open(&path, &MasterKey::ephemeral().unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
    assert!(
        err.to_string().contains("restore the original key"),
        "{err}"
    );
    // Nothing was destroyed: the file is still there with its rows.
    assert!(path.exists());
}

#[test]
fn corrupt_database_is_set_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    std::fs::write(
        &path,
        b"this is not an SQLite database, it is garbage from a bad SD card",
    )
    .unwrap();
    let key = MasterKey::ephemeral().unwrap();
    let (mut outbox, report) = Outbox::open(&path, &key).unwrap();
    let aside = report.corrupt_moved_to.expect("corrupt file set aside");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        b"this is not an SQLite database, it is garbage from a bad SD card"
    );
    assert_eq!(outbox.stats().unwrap().corrupt_files_set_aside, 1);
    assert_eq!(outbox.quick_check().unwrap(), "ok");
    // And the new outbox works.
    outbox.append(&[spo2(97)], now()).unwrap();
}

#[test]
fn database_with_corrupted_pages_is_set_aside() {
    let (_dir, path, key) = fresh();
    {
        let mut outbox = open(&path, &key);
        let records: Vec<Record> = (0..2000)
            .map(|i| {
                record(vec![Reading::canonical(
                    Metric::HeartRate,
                    Decimal::int(40 + i % 100),
                )])
            })
            .collect();
        outbox.append(&records, now()).unwrap();
        outbox
            .connection()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    // Scribble over the middle of the file (inside b-tree pages, past the header).
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let (_outbox, report) = Outbox::open(&path, &key).unwrap();
    assert!(report.corrupt_moved_to.is_some());
}

#[test]
fn alerts_live_in_their_own_lane() {
    let (_dir, path, key) = fresh();
    let mut outbox = open(&path, &key);
    let alert = alert();
    let ids = outbox.append(&[spo2(88), alert.clone()], now()).unwrap();
    assert_eq!(
        outbox.pending(Lane::Alert, 0, 10).unwrap(),
        vec![(ids[1], alert)]
    );
    assert_eq!(outbox.pending(Lane::Reading, 0, 10).unwrap().len(), 1);
}

#[test]
fn delivered_rows_leave_the_backlog_and_only_they_are_purged() {
    let (_dir, path, key) = fresh();
    let ids = three_readings(&path, &key);
    let mut outbox = open(&path, &key);
    let t0 = now();
    outbox.mark_delivered(&ids[..2], t0).unwrap();
    assert_eq!(outbox.backlog().unwrap(), 1);
    // Retention: only rows delivered before the cutoff go; the undelivered row stays.
    let purged = outbox
        .purge_delivered_before(t0 + time::Duration::seconds(1))
        .unwrap();
    assert_eq!(purged, 2);
    assert_eq!(outbox.pending(Lane::Reading, 0, 10).unwrap().len(), 1);
    assert_eq!(outbox.backlog().unwrap(), 1);
}

/// Acknowledgements arrive out of order and with gaps (a refused row, an alert between two
/// readings); marks are applied per run of consecutive ids, and must touch those ids only.
#[test]
fn marking_delivered_touches_exactly_the_given_rows_whatever_lies_between_them() {
    let (_dir, path, key) = fresh();
    let mut outbox = open(&path, &key);
    let alert = alert();
    let ids = outbox
        .append(
            &[
                spo2(90),
                spo2(91),
                alert,
                spo2(92),
                spo2(93),
                spo2(94),
                spo2(95),
            ],
            now(),
        )
        .unwrap();
    // Row 2 (the alert) and row 4 are not acknowledged; the others come back shuffled and
    // one twice.
    let acked = [ids[5], ids[0], ids[3], ids[1], ids[6], ids[3]];
    outbox.mark_delivered(&acked, now()).unwrap();
    assert_eq!(pending_ids(&mut outbox), vec![ids[4]]);
    assert_eq!(outbox.pending(Lane::Alert, 0, 10).unwrap().len(), 1);
    assert_eq!(outbox.backlog().unwrap(), 2);
}

#[test]
fn row_ids_are_never_reused_after_purge() {
    let (_dir, path, key) = fresh();
    let ids = three_readings(&path, &key);
    let mut outbox = open(&path, &key);
    outbox.mark_delivered(&ids, now()).unwrap();
    outbox
        .purge_delivered_before(now() + time::Duration::seconds(1))
        .unwrap();
    drop(outbox);
    let new_ids = three_readings(&path, &key);
    assert!(new_ids[0] > ids[2], "{new_ids:?} after {ids:?}");
}

#[test]
fn key_rotation_keeps_old_records_readable() {
    let (_dir, path, key) = fresh();
    let mut outbox = open(&path, &key);
    outbox.append(&[spo2(97)], now()).unwrap();
    assert_eq!(outbox.rotate_key().unwrap(), 2);
    outbox.append(&[spo2(96)], now()).unwrap();
    drop(outbox);
    let mut outbox = open(&path, &key);
    assert_eq!(outbox.current_key_id(), 2);
    assert_eq!(outbox.pending(Lane::Reading, 0, 10).unwrap().len(), 2);
    assert_eq!(outbox.stats().unwrap().key_ids, vec![1, 2]);
}

#[test]
fn schema_from_a_newer_build_is_refused() {
    let (_dir, path, key) = fresh();
    open(&path, &key)
        .connection()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Outbox::open(&path, &key).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
}

#[test]
fn new_database_is_migrated_to_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (outbox, report) = Outbox::open(&path, &MasterKey::ephemeral().unwrap()).unwrap();
    assert_eq!(report.migrated_from, 0);
    let v: i64 = outbox
        .connection()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, vitalgate::store::outbox::SCHEMA_VERSION);
}

#[test]
fn device_state_survives_reopen() {
    let (_dir, path, key) = fresh();
    open(&path, &key)
        .set_device_state("glucose1", "racp_last_seq", "41")
        .unwrap();
    assert_eq!(
        open(&path, &key)
            .device_state("glucose1", "racp_last_seq")
            .unwrap()
            .as_deref(),
        Some("41")
    );
}

/// The publisher leaves checkpoints to a thread of its own (`daemon::publish::read_ahead`):
/// with automatic checkpoints off, a commit leaves its pages in the WAL, and the second
/// connection's checkpoint copies every committed frame into the database file.
#[test]
fn checkpointer_copies_every_committed_wal_frame_into_the_database() {
    let (_dir, path, key) = fresh();
    let mut outbox = open(&path, &key);
    outbox.set_auto_checkpoint(false).unwrap();
    let checkpointer = outbox.checkpointer().unwrap();
    checkpointer.run().unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    let records: Vec<Record> = (0..2000).map(|i| spo2(90 + i % 10)).collect();
    outbox.append(&records, now()).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        before,
        "with automatic checkpoints off, the commit stays in the WAL"
    );
    let (frames, copied) = checkpointer.run().unwrap();
    assert!(frames > 0, "the commit wrote WAL frames");
    assert_eq!(copied, frames, "every committed frame checkpointed");
    assert!(std::fs::metadata(&path).unwrap().len() > before);
    assert_eq!(pending_ids(&mut open(&path, &key)).len(), 10);
}

/// Every byte of the database and its -wal, to search for plaintext.
fn raw_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    if let Ok(wal) = std::fs::read(path.with_file_name("outbox.db-wal")) {
        bytes.extend(wal);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Issue 12, acceptance 1: the alert engine's state (latest values, NEWS2 sub-scores) is
/// device state, and device state is sealed: the values never reach the file in clear.
#[test]
fn device_state_is_sealed_on_disk_and_read_back_in_clear() {
    let (_dir, path, key) = fresh();
    let state = r#"{"latest":{"body_temperature":"34.87"},"news2":{"temperature":3}}"#;
    let mut outbox = open(&path, &key);
    outbox
        .set_device_state("patient:p1", "alerts_state", state)
        .unwrap();
    assert!(!contains(&raw_bytes(&path), "34.87"));
    drop(outbox);
    assert_eq!(
        open(&path, &key)
            .device_state("patient:p1", "alerts_state")
            .unwrap()
            .as_deref(),
        Some(state)
    );
    assert!(!contains(&raw_bytes(&path), "34.87"));
}

/// A sealed state copied under another patient's name fails authentication: it reads as
/// absent (logged), never as that patient's state.
#[test]
fn device_state_moved_to_another_owner_is_not_accepted() {
    let (_dir, path, key) = fresh();
    let mut outbox = open(&path, &key);
    outbox
        .set_device_state("patient:p1", "alerts_state", "{\"spo2\":\"83\"}")
        .unwrap();
    outbox
        .connection()
        .execute("UPDATE sealed_state SET owner = 'patient:p2'", [])
        .unwrap();
    assert_eq!(
        outbox.device_state("patient:p2", "alerts_state").unwrap(),
        None
    );
}

/// An outbox written by schema 1 kept the alert engine's state as plain JSON in
/// `device_state`. Opening it seals every value and erases the plaintext from the database,
/// its free pages and its WAL.
#[test]
fn schema_1_plaintext_device_state_is_sealed_and_erased_on_open() {
    let (_dir, path, key) = fresh();
    let legacy = r#"{"latest":{"spo2":"83.61","body_temperature":"34.87"}}"#;
    {
        // Back to schema 1 as it was written: plaintext device_state, no sealed count.
        let outbox = open(&path, &key);
        let c = outbox.connection();
        c.execute_batch(
            "DROP TABLE sealed_state;
             ALTER TABLE keys DROP COLUMN sealed;
             CREATE TABLE device_state (
                 device_id TEXT NOT NULL,
                 key TEXT NOT NULL,
                 value TEXT NOT NULL,
                 PRIMARY KEY (device_id, key)) WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )
        .unwrap();
        c.execute(
            "INSERT INTO device_state VALUES ('patient:p1', 'alerts_state', ?1), ('ox1', 'offset:/dev/x', '42')",
            [legacy],
        )
        .unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    assert!(
        contains(&raw_bytes(&path), "34.87"),
        "the fixture holds plaintext"
    );

    let (outbox, report) = Outbox::open(&path, &key).unwrap();
    assert_eq!(report.migrated_from, 1);
    assert_eq!(
        outbox
            .device_state("patient:p1", "alerts_state")
            .unwrap()
            .as_deref(),
        Some(legacy)
    );
    assert_eq!(
        outbox
            .device_state("ox1", "offset:/dev/x")
            .unwrap()
            .as_deref(),
        Some("42")
    );
    let bytes = raw_bytes(&path);
    for value in ["34.87", "83.61", "latest"] {
        assert!(!contains(&bytes, value), "{value} still in clear on disk");
    }
}

/// Issue 12, acceptance 8: the count of values sealed under the current data key is kept
/// on disk, so neither a retention purge nor a restart resets it and rotation is reached.
#[test]
fn sealed_count_survives_purge_and_restart_so_the_key_rotates() {
    let (_dir, path, key) = fresh();
    let mut outbox = open(&path, &key);
    outbox.set_rotation_limit(10);
    let ids = outbox
        .append(&(0..6).map(|i| spo2(90 + i)).collect::<Vec<_>>(), now())
        .unwrap();
    let sealed = outbox.sealed_under_current_key();
    outbox.mark_delivered(&ids, now()).unwrap();
    assert_eq!(
        outbox
            .purge_delivered_before(now() + time::Duration::days(1))
            .unwrap(),
        6
    );
    drop(outbox);

    let mut outbox = open(&path, &key);
    assert_eq!(
        outbox.sealed_under_current_key(),
        sealed,
        "after purge and reopen"
    );
    outbox.set_rotation_limit(10);
    assert_eq!(outbox.current_key_id(), 1);
    outbox
        .append(&(0..6).map(|i| spo2(90 + i)).collect::<Vec<_>>(), now())
        .unwrap();
    assert_eq!(outbox.current_key_id(), 2, "10 sealed under key 1: rotated");
    assert_eq!(pending_ids(&mut outbox).len(), 6);
}

/// Issue 12, acceptance 4: a directory where the database should be is not corruption:
/// the open fails saying what to fix, and nothing is renamed or created.
#[test]
fn a_directory_at_the_outbox_path_stops_the_open_and_is_left_untouched() {
    let (dir, path, key) = fresh();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), b"x").unwrap();
    let err = Outbox::open(&path, &key).unwrap_err();
    assert!(matches!(err, StoreError::Unusable { .. }), "{err}");
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert!(path.join("keep").exists());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("outbox.db")]);
}

/// Issue 12, acceptance 4: a healthy outbox locked by another process is not corruption:
/// the open fails naming the lock, and the file keeps its name and its readings.
#[test]
fn a_locked_outbox_stops_the_open_and_is_not_set_aside() {
    let (dir, path, key) = fresh();
    let ids = three_readings(&path, &key);
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();
    let err = Outbox::open(&path, &key).unwrap_err();
    assert!(matches!(err, StoreError::Unusable { .. }), "{err}");
    assert!(err.to_string().contains("locked"), "{err}");
    drop(holder);
    let set_aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("corrupt")
        })
        .count();
    assert_eq!(set_aside, 0);
    assert_eq!(pending_ids(&mut open(&path, &key)), ids);
}

/// Issue 12, acceptance 6: another writer that took the next row ids (a second daemon)
/// makes one commit fail, not every commit for ever: the outbox re-reads its high-water mark.
#[test]
fn a_commit_after_another_writer_took_the_next_ids_succeeds_on_retry() {
    let (_dir, path, key) = fresh();
    let mut mine = open(&path, &key);
    let mut other = open(&path, &key);
    other.append(&[spo2(91)], now()).unwrap();
    let err = mine.append(&[spo2(92)], now()).unwrap_err();
    assert!(err.is_permanent(), "a constraint failure: {err}");
    let ids = mine.append(&[spo2(92)], now()).unwrap();
    assert_eq!(ids, vec![2]);
}

/// Found under real systemd (a Debian 12 container booted with systemd-nspawn): the retention
/// purge, on its own connection, read first and then wrote in a deferred transaction, so a
/// commit by the ingest writer in between left it a stale snapshot and SQLite refused the
/// upgrade at once ("database is locked") instead of waiting. Every write transaction on the
/// store's connections now takes the write lock when it begins, and waits its turn.
#[test]
fn retention_purge_waits_for_a_concurrent_writer_instead_of_failing_locked() {
    let (_dir, path, key) = fresh();
    let mut writer = open(&path, &key);
    writer.append(&[spo2(97)], now()).unwrap();
    let mut retention = Outbox::open_secondary(&path, &key).unwrap();

    // Another connection holds the write lock and commits a change a little later, as the
    // ingest writer does many times a second.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder_path = path.clone();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&holder_path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE; INSERT OR REPLACE INTO meta (key, value) VALUES ('test.concurrent_write', 1);")
            .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();

    let purged = retention.purge_delivered_before(now());
    holder.join().unwrap();
    assert_eq!(
        purged.unwrap(),
        0,
        "nothing delivered yet, so nothing to purge"
    );
}

//! Issue 18 (footprint), acceptance 1: delivery marks ride on the ingest writer's commits
//! (`store::delivery::deferred`) instead of a transaction of their own, on real SQLite files.
//! What a mark handed over is not yet committed hides from the publisher's reads, what a
//! crash loses is only sent again, and a drain, a stopped writer and a clean stop still
//! record at once.

use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::{DeferredMarks, Lane, MasterKey, Outbox, ReadingRecord, Record};

fn reading(v: i64) -> Record {
    Record::Reading(ReadingRecord {
        device_id: "ox1".into(),
        patient_id: "p1".into(),
        nhs_number: None,
        received_at: OffsetDateTime::now_utc(),
        clock_synced: true,
        boot: None,
        readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(v))],
    })
}

fn readings(n: i64) -> Vec<Record> {
    (0..n).map(|i| reading(90 + i % 10)).collect()
}

/// The writer's connection (carrying marks), the publisher's (handing them over) and the
/// shared queue, on a fresh outbox.
struct Pair {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    key: MasterKey,
    writer: Outbox,
    publisher: Outbox,
    marks: DeferredMarks,
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let key = MasterKey::ephemeral().unwrap();
    let (mut writer, _) = Outbox::open(&path, &key).unwrap();
    let mut publisher = Outbox::open_secondary(&path, &key).unwrap();
    let marks = DeferredMarks::default();
    writer.carry_marks_from(marks.clone());
    publisher.hand_marks_to(marks.clone());
    Pair {
        _dir: dir,
        path,
        key,
        writer,
        publisher,
        marks,
    }
}

impl Pair {
    /// Appends `n` readings through the writer; their row ids.
    fn append(&mut self, n: i64) -> Vec<i64> {
        self.writer
            .append(&readings(n), OffsetDateTime::now_utc())
            .unwrap()
    }

    /// The publisher records `ids` delivered.
    fn mark(&mut self, ids: &[i64]) {
        self.publisher
            .mark_delivered(ids, OffsetDateTime::now_utc())
            .unwrap()
    }
}

/// Undelivered readings as a fresh connection reads them from the file.
fn backlog_on_disk(path: &Path, key: &MasterKey) -> u64 {
    Outbox::open_secondary(path, key)
        .unwrap()
        .backlog()
        .unwrap()
}

/// SQLite's count of commits other connections made, as seen from `conn`.
fn data_version(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .unwrap()
}

fn pending_ids(o: &mut Outbox) -> Vec<i64> {
    o.pending(Lane::Reading, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn a_mark_at_live_pace_makes_no_commit_and_rides_on_the_writers_next_one() {
    let mut p = pair();
    let ids = p.append(10);
    let observer = rusqlite::Connection::open(&p.path).unwrap();
    let before = data_version(&observer);

    p.mark(&ids);
    assert_eq!(
        data_version(&observer),
        before,
        "the mark made a commit of its own"
    );
    assert_eq!(backlog_on_disk(&p.path, &p.key), 10, "not committed yet");

    p.append(3);
    assert_eq!(
        data_version(&observer),
        before + 1,
        "one commit: the writer's, with the mark"
    );
    assert_eq!(
        backlog_on_disk(&p.path, &p.key),
        3,
        "the 10 marked, the 3 new not"
    );
}

#[test]
fn rows_handed_over_are_not_read_as_undelivered_before_their_mark_commits() {
    let mut p = pair();
    let ids = p.append(10);
    p.mark(&ids[..6]);
    // After a reconnect the publisher reads again from the start: the 6 must not come back.
    assert_eq!(pending_ids(&mut p.publisher), ids[6..].to_vec());
    // A batch made only of such rows is not "nothing left": the read goes on after it.
    let first = p.publisher.pending(Lane::Reading, 0, 4).unwrap();
    assert_eq!(first.first().map(|r| r.0), Some(ids[6]));
}

#[test]
fn a_mark_lost_before_the_writer_commits_leaves_its_rows_to_send_again() {
    let mut p = pair();
    let ids = p.append(10);
    p.mark(&ids);
    // The process dies: the queue lives in memory only.
    let Pair {
        writer,
        publisher,
        marks,
        path,
        key,
        _dir,
    } = p;
    drop((writer, publisher, marks));
    let (mut reopened, _) = Outbox::open(&path, &key).unwrap();
    assert_eq!(pending_ids(&mut reopened), ids, "every row still to send");
    assert_eq!(reopened.backlog().unwrap(), 10);
}

#[test]
fn the_writers_tick_records_a_mark_that_no_commit_carried() {
    let mut p = pair();
    let ids = p.append(5);
    p.mark(&ids);
    p.writer.record_due_marks();
    assert_eq!(
        backlog_on_disk(&p.path, &p.key),
        5,
        "not due yet: waits for a commit"
    );
    std::thread::sleep(
        vitalgate::store::delivery::deferred::HOLD_AT_MOST + Duration::from_millis(50),
    );
    p.writer.record_due_marks();
    assert_eq!(
        backlog_on_disk(&p.path, &p.key),
        0,
        "recorded alone once due"
    );
}

#[test]
fn marks_of_a_drain_are_durable_on_return_once_past_the_limit() {
    let mut p = pair();
    let ids = p.append(600);
    let chunks: Vec<&[i64]> = ids.chunks(100).collect();
    // Records in quick succession: the first two wait (the limit is 256 rows); the one
    // that would pass it is committed at once, with them.
    for chunk in &chunks[..3] {
        p.mark(chunk);
    }
    assert_eq!(backlog_on_disk(&p.path, &p.key), 300);
}

#[test]
fn once_the_writer_stopped_a_mark_is_committed_at_once() {
    let mut p = pair();
    let ids = p.append(5);
    p.marks.writer_stopped();
    p.mark(&ids);
    assert_eq!(backlog_on_disk(&p.path, &p.key), 0);
}

#[test]
fn a_clean_stop_records_the_marks_still_waiting() {
    let mut p = pair();
    let ids = p.append(5);
    p.mark(&ids);
    let Pair {
        writer,
        publisher,
        path,
        key,
        _dir,
        ..
    } = p;
    drop(publisher);
    writer.close_clean().unwrap();
    assert_eq!(backlog_on_disk(&path, &key), 0);
}

#[test]
fn a_mark_that_cannot_be_written_never_holds_up_the_readings() {
    let mut p = pair();
    let ids = p.append(10);
    let raw = rusqlite::Connection::open(&p.path).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER refuse_marks BEFORE INSERT ON delivered
         BEGIN SELECT RAISE(ABORT, 'marks refused'); END;",
    )
    .unwrap();
    p.mark(&ids);

    let more = p.append(3);
    assert_eq!(more.len(), 3, "the readings committed");
    assert_eq!(backlog_on_disk(&p.path, &p.key), 13, "the marks did not");
    assert!(
        pending_ids(&mut p.publisher)
            .iter()
            .all(|id| !ids.contains(id)),
        "the rows given back stay out of the publisher's reads"
    );

    raw.execute_batch("DROP TRIGGER refuse_marks;").unwrap();
    p.append(1);
    assert_eq!(
        backlog_on_disk(&p.path, &p.key),
        4,
        "the marks given back ride on the next commit"
    );
}

//! The ingest path's per-batch bookkeeping (issue 18, acceptance 4), on real outbox files:
//! the writer takes frames from its queue many at a time and tells each waiting frame the
//! ids of its own rows; the rows sealed under each data key are counted once per batch by
//! the writer (the per-row insert trigger is gone from schema 6), exactly, also in an
//! outbox migrated from schema 5, where that trigger existed.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;
use vitalgate::ingest::{self, Frame, GroupCommit, NoHook};
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::outbox::SCHEMA_VERSION;
use vitalgate::store::{MasterKey, Outbox, ReadingRecord, Record};

/// An SpO2 the writer rejects (outside 0..=100 %), never stored.
const IMPLAUSIBLE: i64 = 250;

const T0: OffsetDateTime = time::macros::datetime!(2026-01-01 00:00 UTC);

fn frame(patient: &str, values: &[i64]) -> Frame {
    Frame {
        device_id: Arc::from(format!("ox-{patient}")),
        patient_id: Arc::from(patient),
        nhs_number: None,
        readings: values
            .iter()
            .map(|&v| Reading::canonical(Metric::Spo2, Decimal::int(v)))
            .collect(),
        received_at: OffsetDateTime::now_utc(),
        clock_synced: true,
        cursor: None,
        done: None,
    }
}

fn reading(patient: &str, value: i64) -> Record {
    Record::Reading(ReadingRecord {
        device_id: format!("ox-{patient}").into(),
        patient_id: patient.into(),
        nhs_number: None,
        received_at: T0,
        clock_synced: true,
        boot: None,
        readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(value))],
    })
}

/// The SpO2 values of the reading row `id`, in order.
fn values_of(outbox: &mut Outbox, id: i64) -> Vec<i64> {
    match outbox.get(id).unwrap() {
        Some(Record::Reading(r)) => r
            .readings
            .iter()
            .map(|r| match r.value {
                vitalgate::reading::Value::Number(d) => d.mantissa,
                ref other => panic!("row {id}: not a number: {other:?}"),
            })
            .collect(),
        other => panic!("row {id}: not a reading: {other:?}"),
    }
}

/// An ingest writer (batches of up to `max_batch` readings, 200 ms) on a new outbox file in
/// the returned temp dir.
fn writer_on_a_new_outbox(
    max_batch: usize,
) -> (
    tempfile::TempDir,
    ingest::IngestHandle,
    std::thread::JoinHandle<Outbox>,
) {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::ephemeral().unwrap();
    let (outbox, _) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
    let (ingest, writer) = ingest::start(
        outbox,
        GroupCommit {
            max_batch,
            max_wait: Duration::from_millis(200),
        },
        Arc::new(Notify::new()),
        Box::new(NoHook),
    )
    .unwrap();
    (dir, ingest, writer)
}

/// Each data key's counted rows (`rows:<key_id>` in `meta`, what key destruction reads)
/// beside the rows actually sealed under it, by key id.
fn counted_and_actual(outbox: &Outbox) -> Vec<(u32, i64, i64)> {
    let conn = outbox.connection();
    let mut st = conn
        .prepare(
            "SELECT k.key_id,
                    COALESCE((SELECT value FROM meta WHERE key = 'rows:' || k.key_id), 0),
                    (SELECT COUNT(*) FROM outbox o WHERE o.key_id = k.key_id)
             FROM data_keys k WHERE k.purpose IN ('patient', 'gateway') ORDER BY k.key_id",
        )
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiting_frame_is_told_the_ids_of_its_own_readings_when_frames_are_taken_together() {
    let (_dir, ingest, writer) = writer_on_a_new_outbox(2000);
    // Frames of one, none and several readings, of two patients, all queued at once: the
    // writer takes them from the queue together, and most share a transaction.
    let sent: Vec<(&str, Vec<i64>)> = (0..300)
        .map(|i| {
            let patient = if i % 3 == 0 { "p2" } else { "p1" };
            let mut values = match i % 4 {
                0 => vec![90 + i % 10],
                1 => vec![],
                _ => (0..(i % 4)).map(|k| 80 + k + i % 10).collect(),
            };
            if i % 7 == 0 {
                values.insert(0, IMPLAUSIBLE);
            }
            (patient, values)
        })
        .collect();
    let waits = sent.iter().map(|(patient, values)| {
        let ingest = ingest.clone();
        let f = frame(patient, values);
        async move {
            tokio::time::timeout(Duration::from_secs(60), ingest.submit_and_wait(f))
                .await
                .expect("committed within a minute")
                .expect("committed")
        }
    });
    let told = futures::future::join_all(waits).await;
    drop(ingest);
    let mut outbox = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();

    for ((patient, values), ids) in sent.iter().zip(&told) {
        let got: Vec<i64> = ids
            .iter()
            .flat_map(|&id| values_of(&mut outbox, id))
            .collect();
        let valid: Vec<i64> = values
            .iter()
            .copied()
            .filter(|&v| v != IMPLAUSIBLE)
            .collect();
        assert_eq!(got, valid, "frame of {patient} told ids {ids:?}");
    }
    let all: Vec<i64> = told.iter().flatten().copied().collect();
    let mut sorted = all.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "no id told to two frames");
}

/// A batch closes at `max_batch` readings part-way through what the writer took from its
/// queue at once: the frames taken after it stay in the writer's hands and open the next
/// batch, in order; ticks queued among them are run, not committed or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_taken_after_a_batch_closes_at_max_batch_are_committed_next_in_order() {
    let (_dir, ingest, writer) = writer_on_a_new_outbox(5);
    // One device sending as fast as the queue takes them: frames of one to three readings
    // (so batches close past their fifth reading, never at a take's end), a tick now and then.
    let frames: Vec<Vec<i64>> = (0..1500)
        .map(|i| (0..=(i % 3)).map(|k| 50 + (i * 3 + k) % 50).collect())
        .collect();
    let (last, rest) = frames.split_last().unwrap();
    for (i, values) in rest.iter().enumerate() {
        ingest.submit(frame("p1", values)).await.unwrap();
        if i % 97 == 0 {
            ingest.tick().await.unwrap();
        }
    }
    tokio::time::timeout(
        Duration::from_secs(60),
        ingest.submit_and_wait(frame("p1", last)),
    )
    .await
    .expect("committed within a minute")
    .expect("committed");
    let counters = ingest.counters.clone();
    drop(ingest);
    let mut outbox = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();

    let sent: Vec<i64> = frames.iter().flatten().copied().collect();
    let rows = outbox.stats().unwrap().backlog_readings;
    let stored: Vec<i64> = (1..=rows as i64)
        .flat_map(|id| values_of(&mut outbox, id))
        .collect();
    assert_eq!(stored, sent, "every reading stored once, in the order sent");
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&counters.readings_committed), sent.len() as u64);
    assert_eq!(load(&counters.frames_received), frames.len() as u64);
    assert!(
        load(&counters.transactions) >= (sent.len() as u64).div_ceil(7),
        "batches of about five readings: {} transactions",
        load(&counters.transactions)
    );
}

#[test]
fn rows_sealed_under_each_key_are_counted_exactly_when_patients_interleave_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let key = MasterKey::ephemeral().unwrap();
    let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
    let batch: Vec<Record> = ["p1", "p1", "p2", "p1", "", "p2", "p2", "p3", "p1"]
        .iter()
        .enumerate()
        .map(|(i, p)| reading(p, 90 + i as i64))
        .collect();
    outbox.append(&batch, T0).unwrap();
    outbox.append(&batch[2..5], T0).unwrap();

    let counts = counted_and_actual(&outbox);
    assert_eq!(counts.len(), 4, "p1, p2, p3 and the gateway: {counts:?}");
    for (key_id, counted, actual) in counts {
        assert!(actual > 0, "key {key_id} seals rows");
        assert_eq!(counted, actual, "key {key_id}");
    }
}

#[test]
fn an_outbox_of_schema_5_loses_its_insert_trigger_and_counts_each_new_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let key = MasterKey::ephemeral().unwrap();
    {
        let (mut outbox, _) = Outbox::open(&path, &key).unwrap();
        outbox
            .append(&[reading("p1", 91), reading("p2", 92)], T0)
            .unwrap();
    }
    // Back to schema 5 as it was on disk: the same tables, with the per-row insert trigger.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER key_rows_outbox_insert AFTER INSERT ON outbox BEGIN
             INSERT INTO meta (key, value) VALUES ('rows:' || NEW.key_id, 1)
                 ON CONFLICT(key) DO UPDATE SET value = value + 1;
         END;
         PRAGMA user_version = 5;",
    )
    .unwrap();
    drop(conn);

    let (mut outbox, report) = Outbox::open(&path, &key).unwrap();
    assert_eq!(report.migrated_from, 5);
    let version: i64 = outbox
        .connection()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let triggers: i64 = outbox
        .connection()
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name = 'key_rows_outbox_insert'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 0, "the insert trigger is dropped");
    outbox
        .append(
            &[reading("p1", 93), reading("p2", 94), reading("p1", 95)],
            T0,
        )
        .unwrap();
    for (key_id, counted, actual) in counted_and_actual(&outbox) {
        assert_eq!(counted, actual, "key {key_id}: each row counted once");
    }
}

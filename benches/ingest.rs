//! Ingest benchmark (issue #2, acceptance 10): readings/s committed, encrypted and durable
//! through the real ingest path (handle -> group-commit writer -> sealed SQLite rows, WAL,
//! synchronous=FULL), beside a raw baseline measured in the same run: plain rusqlite inserts
//! of unencrypted blobs of the same size, with the same batching and the same pragmas (WAL,
//! FULL, the outbox's page size, autocheckpoint and journal size limit).
//!
//! Run: `cargo bench --bench ingest` (optionally `-- 300000` for the reading count).
//! Prints figures; asserts nothing (timing belongs here, never in tests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use time::OffsetDateTime;
use tokio::sync::Notify;
use vitalgate::drivers::sim::{Scenario, SimPatient};
use vitalgate::ingest::{self, Frame, GroupCommit, NoHook};
use vitalgate::store::{outbox, MasterKey, Outbox};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let now = OffsetDateTime::now_utc();

    // Realistic readings from the simulator, one per frame (the common case: an oximeter).
    let mut sim = SimPatient::new(Scenario::Stable, 1);
    let mut readings = Vec::with_capacity(n);
    while readings.len() < n {
        for frame in sim.next(now) {
            for r in frame {
                if readings.len() < n {
                    readings.push(r);
                }
            }
        }
    }

    // --- vitalgate ingest ---
    let path = dir.path().join("outbox.db");
    let key = MasterKey::ephemeral().expect("key");
    let (outbox, _) = Outbox::open(&path, &key).expect("outbox");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (handle, writer) = ingest::start(
        outbox,
        GroupCommit::default(),
        Arc::new(Notify::new()),
        Box::new(NoHook),
    )
    .expect("writer");
    let device: Arc<str> = Arc::from("bench-oximeter");
    let patient: Arc<str> = Arc::from("bench-patient");
    let counters = handle.counters.clone();
    let started = Instant::now();
    rt.block_on(async {
        let last = readings.len() - 1;
        for (i, r) in readings.into_iter().enumerate() {
            let frame = Frame {
                device_id: device.clone(),
                patient_id: patient.clone(),
                nhs_number: Some(Arc::from("9434765919")),
                readings: vec![r],
                received_at: now,
                clock_synced: true,
                cursor: None,
                done: None,
            };
            if i == last {
                handle.submit_and_wait(frame).await.expect("commit");
            } else {
                handle.submit(frame).await.expect("submit");
            }
        }
    });
    let ours = started.elapsed();
    drop(handle);
    let outbox = writer.join().expect("writer thread");
    let txns = counters
        .transactions
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);
    let committed = counters
        .readings_committed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(committed as usize, n, "every reading committed");
    let avg_blob: f64 = outbox
        .connection()
        .query_row(
            "SELECT AVG(LENGTH(nonce) + LENGTH(ciphertext)) FROM outbox",
            [],
            |r| r.get(0),
        )
        .expect("avg");
    let batch = (n as u64 / txns).max(1) as usize;
    drop(outbox);

    // --- baseline: plain rusqlite, same blob size, same batching, same pragmas ---
    let base_path = dir.path().join("baseline.db");
    let conn = Connection::open(&base_path).expect("baseline db");
    conn.pragma_update(None, "page_size", outbox::PAGE_SIZE)
        .expect("page size");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("full");
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .expect("journal size limit");
    conn.pragma_update(None, "wal_autocheckpoint", outbox::AUTO_CHECKPOINT_PAGES)
        .expect("autocheckpoint");
    // The outbox's own shape (schema 4): delivery marks live elsewhere, and only alert rows
    // are indexed, so a reading row enters no index, here as there.
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, lane INTEGER, kind INTEGER, created_at INTEGER, key_id INTEGER, blob BLOB NOT NULL, delivered_at INTEGER);
         CREATE INDEX t_alerts ON t(id) WHERE lane = 0;",
    )
    .expect("schema");
    let blob = vec![0x5Au8; avg_blob.round() as usize];
    let base = baseline(conn, n, batch, &blob);

    let ours_rate = n as f64 / ours.as_secs_f64();
    let base_rate = n as f64 / base.as_secs_f64();
    println!("ingest benchmark: {n} readings, {txns} transactions (avg {batch} per group commit), {avg_blob:.0}-byte sealed rows");
    println!("  vitalgate ingest (validate + CBOR + AES-256-GCM + WAL/FULL commit): {ours_rate:>10.0} readings/s  ({:.2} s)", ours.as_secs_f64());
    println!("  raw rusqlite baseline (same blob size, batching, pragmas):          {base_rate:>10.0} rows/s      ({:.2} s)", base.as_secs_f64());
    println!(
        "  ratio: {:.2} of baseline (target >= 0.70; absolute target >= 100000/s)",
        ours_rate / base_rate
    );
}

fn baseline(mut conn: Connection, n: usize, batch: usize, blob: &[u8]) -> Duration {
    let started = Instant::now();
    let mut id = 1i64;
    let mut left = n;
    while left > 0 {
        let take = left.min(batch);
        let tx = conn.transaction().expect("tx");
        {
            let mut st = tx
                .prepare_cached("INSERT INTO t (id, lane, kind, created_at, key_id, blob) VALUES (?1, 1, 1, 0, 1, ?2)")
                .expect("prepare");
            for _ in 0..take {
                st.execute(params![id, blob]).expect("insert");
                id += 1;
            }
        }
        tx.commit().expect("commit");
        left -= take;
    }
    started.elapsed()
}

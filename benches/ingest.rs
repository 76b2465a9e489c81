//! Ingest benchmark (issue #2, acceptance 10; issue 18, acceptance 4): readings/s committed,
//! encrypted and durable through the real ingest path (handle -> group-commit writer ->
//! sealed SQLite rows, WAL, synchronous=FULL), beside a raw baseline measured in the same
//! run: plain rusqlite inserts of unencrypted blobs of the same size, with the same batching
//! and the same pragmas (WAL, FULL, the outbox's page size, autocheckpoint and journal size
//! limit) into a table made from the outbox's own `CREATE` statements (its columns and its
//! partial index), each row holding the values ours stored (lane, kind, creation time, key
//! id, an empty nonce column) and a blob as long as ours' row of the same id: the same rows,
//! byte for byte but the blob's content, so both files pack their pages alike (a blob of
//! the average length instead put 8 or 9 rows in a 1 KiB page as the average rounded, and
//! the baseline's rounds ran 12 % apart).
//!
//! What each side does per row is printed with the figures. Ours also keeps, in the same
//! transaction, what the outbox's design needs: the row counts and each data key's row
//! count in `meta` (once per batch, not per row), the id high-water mark, and the keyring
//! generation check before sealing.
//!
//! The two sides run in pairs (ours, then the baseline, each on a fresh file), several
//! rounds, and the medians are reported: the machine is shared, so a single pair says
//! little. CPU time per reading (process CPU, every thread) is steadier than rates there.
//!
//! Run: `cargo bench --bench ingest` (optionally `-- READINGS ROUNDS`, default 200000 5).
//! Prints figures; asserts nothing (timing belongs here, never in tests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use time::OffsetDateTime;
use tokio::sync::Notify;
use vitalgate::drivers::sim::{Scenario, SimPatient};
use vitalgate::ingest::{self, Frame, GroupCommit, NoHook};
use vitalgate::reading::Reading;
use vitalgate::store::{outbox, MasterKey, Outbox};

/// One side's run: wall time and process CPU time.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall: Duration,
    cpu: Duration,
}

impl Run {
    fn rate(&self, n: usize) -> f64 {
        n as f64 / self.wall.as_secs_f64()
    }
    fn cpu_us(&self, n: usize) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / n as f64
    }
}

/// What ours reports besides its run, so the baseline can store the same rows.
struct Shape {
    txns: u64,
    avg_blob: f64,
    /// Each row's stored blob length (nonce, ciphertext and tag), in id order.
    lengths: Vec<usize>,
    /// The outbox table's and its indexes' `CREATE` statements.
    schema: Vec<String>,
    /// The first row's lane, kind, creation time and key id (the run's rows all share
    /// them, but for a creation time a few milliseconds apart per batch).
    constants: [i64; 4],
}

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = numbers.first().copied().unwrap_or(200_000).max(1);
    let rounds = numbers.get(1).copied().unwrap_or(5).max(1);
    let readings = sim_readings(n);

    println!("ingest benchmark: {n} readings a side, {rounds} rounds (ours, then the baseline, each on a fresh file)");
    println!(
        "  vitalgate ingest: per reading a frame through the bounded queue to the writer thread,"
    );
    println!(
        "    validation, a sealed reading record (packed, AES-256-GCM under the patient's data key),"
    );
    println!("    inserted 16 rows per INSERT (id, lane, kind, key and the sealed value: nonce, ciphertext");
    println!("    and tag in one blob; the time once), the batch's last < 16 one per INSERT;");
    println!("    per batch: keyring generation check, row and per-key counts, id mark, commit");
    println!(
        "  raw rusqlite baseline: per row one INSERT binding id and a blob as long as ours' row (the other"
    );
    println!(
        "    columns the values ours stored, as constants; prepared once) into a table made from the"
    );
    println!(
        "    outbox's own CREATE statements (columns, partial index), the same batching and pragmas;"
    );
    println!("    per batch: commit; its close (a checkpoint) after the clock stops, as ours");
    let (mut rates, mut cpus) = (Vec::new(), Vec::new());
    let (mut ours_rates, mut base_rates, mut ours_cpus, mut base_cpus) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ours, shape) = run_ours(dir.path(), readings.clone());
        let batch = (n as u64 / shape.txns.max(1)).max(1) as usize;
        let base = run_baseline(dir.path(), n, batch, &shape);
        println!(
            "  round {round}: ours {:>8.0} readings/s {:>5.2} us CPU/reading | baseline {:>8.0} rows/s {:>5.2} us CPU/row | ratio {:.2} (CPU {:.2}) | {} txns, avg {batch}/commit, {:.0}-byte rows",
            ours.rate(n),
            ours.cpu_us(n),
            base.rate(n),
            base.cpu_us(n),
            ours.rate(n) / base.rate(n),
            base.cpu_us(n) / ours.cpu_us(n),
            shape.txns,
            shape.avg_blob,
        );
        rates.push(ours.rate(n) / base.rate(n));
        cpus.push(base.cpu_us(n) / ours.cpu_us(n));
        ours_rates.push(ours.rate(n));
        base_rates.push(base.rate(n));
        ours_cpus.push(ours.cpu_us(n));
        base_cpus.push(base.cpu_us(n));
    }
    println!(
        "  median: ours {:.0} readings/s, {:.2} us CPU/reading; baseline {:.0} rows/s, {:.2} us CPU/row",
        median(&mut ours_rates),
        median(&mut ours_cpus),
        median(&mut base_rates),
        median(&mut base_cpus),
    );
    println!(
        "  ratio (median of the rounds): {:.2} of baseline by rate, {:.2} by CPU time (target >= 0.70; absolute target >= 100000/s)",
        median(&mut rates),
        median(&mut cpus),
    );
}

/// Realistic readings from the simulator, one per frame (the common case: an oximeter).
fn sim_readings(n: usize) -> Vec<Reading> {
    let now = OffsetDateTime::now_utc();
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
    readings
}

#[inline(never)] // its own entry in a callgrind profile
fn run_ours(dir: &std::path::Path, readings: Vec<Reading>) -> (Run, Shape) {
    let n = readings.len();
    let now = OffsetDateTime::now_utc();
    let path = dir.join("outbox.db");
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
    let nhs: Arc<str> = Arc::from("9434765919");
    let counters = handle.counters.clone();
    let cpu0 = process_cpu();
    let started = Instant::now();
    rt.block_on(async {
        let last = n - 1;
        for (i, r) in readings.into_iter().enumerate() {
            let frame = Frame {
                device_id: device.clone(),
                patient_id: patient.clone(),
                nhs_number: Some(nhs.clone()),
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
    let run = Run {
        wall: started.elapsed(),
        cpu: process_cpu().saturating_sub(cpu0),
    };
    drop(handle);
    let outbox = writer.join().expect("writer thread");
    let txns = counters
        .transactions
        .load(std::sync::atomic::Ordering::Relaxed);
    let committed = counters
        .readings_committed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(committed as usize, n, "every reading committed");
    let conn = outbox.connection();
    let avg_blob: f64 = conn
        .query_row(
            "SELECT AVG(LENGTH(nonce) + LENGTH(ciphertext)) FROM outbox",
            [],
            |r| r.get(0),
        )
        .expect("avg");
    let lengths = conn
        .prepare("SELECT LENGTH(ciphertext) FROM outbox ORDER BY id")
        .and_then(|mut st| {
            st.query_map([], |r| r.get::<_, i64>(0).map(|len| len as usize))?
                .collect()
        })
        .expect("lengths");
    let schema = conn
        .prepare(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'outbox' AND type IN ('table', 'index')
             AND sql IS NOT NULL ORDER BY type = 'index', name",
        )
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .expect("schema");
    let constants = conn
        .query_row(
            "SELECT lane, kind, created_at, key_id FROM outbox ORDER BY id LIMIT 1",
            [],
            |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]),
        )
        .expect("first row");
    let empty_nonces: i64 = conn
        .query_row("SELECT COUNT(*) FROM outbox WHERE nonce = x''", [], |r| {
            r.get(0)
        })
        .expect("nonces");
    assert_eq!(
        empty_nonces as usize, n,
        "every row's nonce leads its ciphertext"
    );
    drop(outbox);
    drop(rt);
    (
        run,
        Shape {
            txns,
            avg_blob,
            lengths,
            schema,
            constants,
        },
    )
}

/// Plain rusqlite: the same rows (blob size and every other column's value), batching,
/// pragmas, columns and index.
#[inline(never)] // its own entry in a callgrind profile
fn run_baseline(dir: &std::path::Path, n: usize, batch: usize, shape: &Shape) -> Run {
    let mut conn = Connection::open(dir.join("baseline.db")).expect("baseline db");
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
    // The outbox's own table and partial index (delivery marks live elsewhere, and only
    // alert rows are indexed, so a reading row enters no index, here as there).
    for sql in &shape.schema {
        conn.execute_batch(sql).expect("schema");
    }
    let [lane, kind, created_at, key_id] = shape.constants;
    let insert = format!(
        "INSERT INTO outbox (id, lane, kind, created_at, key_id, nonce, ciphertext) VALUES (?1, {lane}, {kind}, {created_at}, {key_id}, x'', ?2)"
    );
    assert_eq!(shape.lengths.len(), n, "a row for each of ours");
    let blob = vec![0x5Au8; shape.lengths.iter().copied().max().unwrap_or(0)];
    let cpu0 = process_cpu();
    let started = Instant::now();
    insert_batches(&mut conn, &insert, &shape.lengths, batch, &blob);
    let run = Run {
        wall: started.elapsed(),
        cpu: process_cpu().saturating_sub(cpu0),
    };
    // Closed after the clock stops, as ours is: the last connection's close checkpoints the
    // WAL into the database and syncs it, which ours does not pay inside its run either.
    drop(conn);
    run
}

/// Inserts a row per entry of `lengths` (its blob that long), `batch` rows a transaction.
fn insert_batches(
    conn: &mut Connection,
    insert: &str,
    lengths: &[usize],
    batch: usize,
    blob: &[u8],
) {
    let mut id = 1i64;
    for rows in lengths.chunks(batch) {
        let tx = conn.transaction().expect("tx");
        {
            let mut st = tx.prepare_cached(insert).expect("prepare");
            for &len in rows {
                st.execute(params![id, &blob[..len]]).expect("insert");
                id += 1;
            }
        }
        tx.commit().expect("commit");
    }
}

/// CPU time used so far by this process, every thread (user + system). Zero under
/// valgrind (`callgrind` counts instructions instead), whose emulation of the vDSO rustix
/// reads the clock through crashes the process.
fn process_cpu() -> Duration {
    if under_valgrind() {
        return Duration::ZERO;
    }
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Whether the bench runs under valgrind (its preloaded core is in `LD_PRELOAD`).
fn under_valgrind() -> bool {
    std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

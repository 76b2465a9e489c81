//! Durability under SIGKILL (issue #2, acceptance 9): `vitalgate run` with a fast `sim`
//! device is killed at random moments; after each kill the outbox passes `quick_check`, every
//! reading the daemon reported committed is present and decrypts, and ingest resumes.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use vitalgate::store::{MasterKey, Outbox};

const KILLS: usize = 20;

fn write_config(dir: &Path) -> std::path::PathBuf {
    let cfg = format!(
        r#"
[gateway]
id = "crash-test-gw"
state_dir = "{dir}"
devices_dirs = []

[store]
key_file = "{dir}/master.key"

[[patient]]
id = "p1"
nhs_number = "9434765919"

[[device]]
id = "fast-sim-1"
patient = "p1"
driver = "sim"
scenario = "deteriorating"
interval_ms = 1

[[device]]
id = "fast-sim-2"
patient = "p1"
driver = "sim"
scenario = "faulty"
interval_ms = 1
"#,
        dir = dir.display()
    );
    let path = dir.join("vitalgate.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Parses `committed first_id=A last_id=B` log lines.
fn committed_range(line: &str) -> Option<(i64, i64)> {
    if !line.contains("committed") {
        return None;
    }
    let num = |key: &str| -> Option<i64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .ok()
    };
    Some((num("first_id=")?, num("last_id=")?))
}

fn start(bin: &str, config: &Path) -> (Child, mpsc::Receiver<(i64, i64)>) {
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn,vitalgate::ingest=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(r) = committed_range(&line) {
                if tx.send(r).is_err() {
                    break;
                }
            } else if line.contains("ERROR") {
                eprintln!("daemon: {line}");
            }
        }
    });
    (child, rx)
}

#[test]
fn outbox_keeps_every_committed_reading_across_sigkill() {
    let bin = env!("CARGO_BIN_EXE_vitalgate");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let key_path = dir.path().join("master.key");
    let status = Command::new(bin)
        .args(["keygen", "--out"])
        .arg(&key_path)
        .status()
        .unwrap();
    assert!(status.success());
    let key = MasterKey::load(&key_path).unwrap();

    let seed: u64 = rand::random();
    eprintln!("crash test seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut reported: BTreeSet<i64> = BTreeSet::new();
    let mut max_before = 0i64;

    for kill in 0..KILLS {
        let (mut child, commits) = start(bin, &config);
        // Wait for ingest to be committing, then kill at a random moment.
        let first = commits
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("kill {kill}: the daemon reported no commit within 60 s")
            });
        assert!(
            first.0 > max_before,
            "kill {kill}: ingest did not resume after the previous max id {max_before}: {first:?}"
        );
        let mut ranges = vec![first];
        let deadline = Instant::now() + Duration::from_millis(rng.gen_range(1..400));
        while Instant::now() < deadline {
            if let Ok(r) = commits.recv_timeout(Duration::from_millis(5)) {
                ranges.push(r);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines already written before the kill count as reported.
        ranges.extend(commits.try_iter());
        for (a, b) in ranges {
            reported.extend(a..=b);
        }
        max_before = *reported.last().unwrap();

        let (mut outbox, report) = Outbox::open(&dir.path().join("outbox.db"), &key).unwrap();
        assert!(
            report.corrupt_moved_to.is_none(),
            "kill {kill}: outbox set aside as corrupt"
        );
        assert_eq!(outbox.quick_check().unwrap(), "ok", "kill {kill}");
        let present: BTreeSet<i64> = outbox.verify_all().unwrap().into_iter().collect();
        let missing: Vec<_> = reported.difference(&present).take(10).collect();
        assert!(
            missing.is_empty(),
            "kill {kill}: reported committed but missing or unreadable: {missing:?}"
        );
        assert_eq!(outbox.stats().unwrap().quarantined, 0, "kill {kill}");
    }
    eprintln!("{KILLS} kills, {} committed rows checked", reported.len());
}

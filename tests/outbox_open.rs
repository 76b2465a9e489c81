//! Only corruption is treated as corruption (issue 12, acceptance 4): `vitalgate run` with a
//! healthy outbox it cannot use (no permission, a directory in its place, locked by another
//! process) stops at start with exit 1 and a message saying what to fix, and leaves the
//! outbox where it was, with every reading in it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::{MasterKey, Outbox, ReadingRecord, Record};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");

struct Setup {
    dir: tempfile::TempDir,
    key: PathBuf,
    config: PathBuf,
    state: PathBuf,
    outbox: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = dir.path().join("master.key");
    let st = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success(), "keygen: {st}");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = dir.path().join("vitalgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[gateway]
id = "open-test-gw"
state_dir = "{state}"
devices_dirs = []

[store]
key_file = "{key}"

[[patient]]
id = "p1"
"#,
            state = state.display(),
            key = key.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let outbox = state.join("outbox.db");
    Setup {
        dir,
        key,
        config,
        state,
        outbox,
    }
}

/// A healthy outbox with three undelivered readings.
fn healthy_outbox(s: &Setup) {
    let key = MasterKey::load(&s.key).unwrap();
    let (mut outbox, _) = Outbox::open(&s.outbox, &key).unwrap();
    let records: Vec<Record> = [95, 96, 97]
        .into_iter()
        .map(|v| {
            Record::Reading(ReadingRecord {
                device_id: "ox1".into(),
                patient_id: "p1".into(),
                nhs_number: None,
                received_at: time::OffsetDateTime::now_utc(),
                clock_synced: true,
                readings: vec![Reading::canonical(Metric::Spo2, Decimal::int(v))],
                boot: None,
            })
        })
        .collect();
    outbox
        .append(&records, time::OffsetDateTime::now_utc())
        .unwrap();
}

fn backlog(s: &Setup) -> u64 {
    vitalgate::store::outbox::stats_readonly(&s.outbox)
        .unwrap()
        .backlog_readings
}

/// Runs the daemon (optionally through `setpriv` as another user) and waits for its exit.
fn run(s: &Setup, as_nobody: bool) -> Output {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    let mut child = cmd
        .args(["run", "--config"])
        .arg(&s.config)
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill(); // still running: it went on as if nothing was wrong
    }
    child.wait_with_output().unwrap()
}

fn set_aside_files(state: &Path) -> Vec<String> {
    std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("corrupt"))
        .collect()
}

fn assert_stopped_with(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "stderr names {w:?}: {stderr}");
    }
    assert!(!stderr.contains("CORRUPT"), "not called corrupt: {stderr}");
}

#[test]
fn an_outbox_the_daemon_may_not_open_stops_start_up_and_is_not_set_aside() {
    let s = setup();
    healthy_outbox(&s); // owned by root, mode 0600
    let nobody = |p: &Path| {
        let st = Command::new("chown")
            .arg("65534:65534")
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    };
    nobody(&s.state);
    nobody(&s.key);

    let out = run(&s, true);
    assert_stopped_with(&out, &["outbox.db", "Permission denied", "chown"]);
    assert!(
        set_aside_files(&s.state).is_empty(),
        "{:?}",
        set_aside_files(&s.state)
    );
    assert_eq!(backlog(&s), 3, "the readings are where they were");
    drop(s.dir);
}

#[test]
fn a_directory_at_the_outbox_path_stops_start_up_and_is_left_as_it_is() {
    let s = setup();
    std::fs::create_dir(&s.outbox).unwrap();
    std::fs::write(s.outbox.join("notes.txt"), b"kept").unwrap();

    let out = run(&s, false);
    assert_stopped_with(&out, &["outbox.db", "is a directory", "store.path"]);
    assert!(s.outbox.is_dir());
    assert_eq!(std::fs::read(s.outbox.join("notes.txt")).unwrap(), b"kept");
    assert!(set_aside_files(&s.state).is_empty());
}

#[test]
fn an_outbox_locked_by_another_process_stops_start_up_and_is_not_set_aside() {
    let s = setup();
    healthy_outbox(&s);
    let holder = rusqlite::Connection::open(&s.outbox).unwrap();
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();

    let out = run(&s, false);
    drop(holder);
    assert_stopped_with(&out, &["outbox.db", "locked", "stop the process"]);
    assert!(
        set_aside_files(&s.state).is_empty(),
        "{:?}",
        set_aside_files(&s.state)
    );
    assert_eq!(backlog(&s), 3);
}

//! Issue 18 (footprint), acceptance 1 and 7, end to end on the real binary: a daemon stopped
//! with SIGTERM leaves its outbox marked cleanly stopped, so the next start skips the
//! full-file check; one killed with SIGKILL does not, so the next start checks in full. And
//! the status snapshot is not rewritten while nothing but timestamps or counts change.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::process::{live_committed, snapshot, spawn_run};
use vitalgate::store::{MasterKey, Outbox};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");

/// A state dir, a key file and a config of one simulated device every `interval_ms`.
fn setup(interval_ms: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let st = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let cfg = format!(
        r#"
[gateway]
id = "footprint-test-gw"
state_dir = "{dir}/state"
devices_dirs = []

[store]
key_file = "{key}"

[[patient]]
id = "p1"

[[device]]
id = "sim-1"
patient = "p1"
driver = "sim"
scenario = "stable"
interval_ms = {interval_ms}
"#,
        dir = dir.path().display(),
        key = key.display()
    );
    let path = dir.path().join("vitalgate.toml");
    std::fs::write(&path, cfg).unwrap();
    (dir, path, key)
}

/// Waits (generously) until the daemon's live state says a reading was committed.
fn wait_committed(state: &Path, child: &mut Child) {
    let t0 = Instant::now();
    while live_committed(state) == 0 {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
        assert!(t0.elapsed() < Duration::from_secs(60), "nothing committed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm_and_wait(child: &mut Child) {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let st = child.wait().unwrap();
    assert!(st.success(), "exit status {st}");
}

fn reopen(state: &Path, key: &Path) -> vitalgate::store::OpenReport {
    let key = MasterKey::load(key).unwrap();
    let (_outbox, report) = Outbox::open(&state.join("outbox.db"), &key).unwrap();
    report
}

#[test]
fn after_sigterm_the_next_start_skips_the_full_check_and_after_sigkill_it_does_not() {
    let (dir, config, key) = setup(100);
    let state = dir.path().join("state");

    let mut child = spawn_run(&config, None);
    wait_committed(&state, &mut child);
    sigterm_and_wait(&mut child);
    assert!(!reopen(&state, &key).full_check, "after a clean stop");

    let mut child = spawn_run(&config, None);
    wait_committed(&state, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reopen(&state, &key).full_check, "after SIGKILL");
}

/// When `status.json` in `state` was last written.
fn snapshot_written_at(state: &Path) -> std::time::SystemTime {
    std::fs::metadata(state.join("status.json"))
        .unwrap()
        .modified()
        .unwrap()
}

#[test]
fn the_status_snapshot_is_not_rewritten_while_only_timestamps_change() {
    // One reading set a minute: between two sets nothing but clocks move.
    let (dir, config, _key) = setup(60_000);
    let state = dir.path().join("state");
    let mut child = spawn_run(&config, None);
    wait_committed(&state, &mut child);
    // Let the first set's counts and the device's state settle into one snapshot.
    std::thread::sleep(Duration::from_secs(5));
    let before = snapshot_written_at(&state);
    std::thread::sleep(Duration::from_secs(6)); // three of the old 2 s rewrites
    let after = snapshot_written_at(&state);
    sigterm_and_wait(&mut child);
    assert_eq!(before, after, "status.json rewritten with nothing changed");
    let last = snapshot(&state).unwrap();
    assert_eq!(last["running"], false, "the snapshot at stop is written");
}

#[test]
fn the_status_snapshot_is_not_rewritten_while_only_counts_change() {
    // Ten reading sets a second: the counts double within seconds, the states stay put.
    let (dir, config, _key) = setup(100);
    let state = dir.path().join("state");
    let mut child = spawn_run(&config, None);
    wait_committed(&state, &mut child);
    // The device connected and the first counts are in: from here on only counts move.
    std::thread::sleep(Duration::from_secs(3));
    let before = snapshot_written_at(&state);
    let from = live_committed(&state);
    let t0 = Instant::now();
    // Past twice as many: a count crossing a power of two (the old rule's trigger) included.
    while live_committed(&state) <= 2 * from + 1 {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the count did not double from {from}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = snapshot_written_at(&state);
    let moved_to = live_committed(&state);
    sigterm_and_wait(&mut child);
    assert_eq!(
        before, after,
        "status.json rewritten while readings committed went from {from} to {moved_to}"
    );
    let last = snapshot(&state).unwrap();
    assert_eq!(last["running"], false, "the snapshot at stop is written");
    assert!(
        last["ingest"]["readings_committed"].as_u64().unwrap() >= moved_to,
        "the snapshot at stop carries the final counts: {last}"
    );
}

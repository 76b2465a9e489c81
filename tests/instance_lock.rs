//! One daemon per state dir (issue 12, acceptance 6): a second `vitalgate run` on the same
//! state dir exits 1 at start, naming the first one's pid, and the first one goes on
//! committing without a single failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");

fn setup(dir: &Path) -> PathBuf {
    let key = dir.join("master.key");
    let st = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success(), "keygen: {st}");
    let config = dir.join("vitalgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[gateway]
id = "lock-test-gw"
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
interval_ms = 20
"#,
            dir = dir.display(),
            key = key.display()
        ),
    )
    .unwrap();
    config
}

fn snapshot(state: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(state.join("status.json")).ok()?).ok()
}

/// The running daemon's live state (`vitalgate status` reads the same socket): its counts
/// move with every commit, while `status.json` is written only when a state changes.
fn live(state: &Path) -> Option<serde_json::Value> {
    let socket = vitalgate::live::server::socket_path(state);
    serde_json::to_value(vitalgate::live::fetch(&socket).ok()?).ok()
}

fn committed(state: &Path) -> u64 {
    live(state)
        .and_then(|s| s["ingest"]["readings_committed"].as_u64())
        .unwrap_or(0)
}

fn wait_committed_beyond(state: &Path, child: &mut Child, n: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the first vitalgate exited: {st}");
        }
        let c = committed(state);
        if c > n {
            return c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no commits within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the first daemon when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_1_naming_the_first_ones_pid() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let state = dir.path().join("state");
    let mut first = KillOnDrop(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let before = wait_committed_beyond(&state, &mut first.0, 0);

    let mut second = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while second.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if second.try_wait().unwrap().is_none() {
        let _ = second.kill();
    }
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "second daemon: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.0.id())),
        "the message names the holder's pid {}: {stderr}",
        first.0.id()
    );

    // The first one is untouched: it goes on committing, with no failed commit.
    wait_committed_beyond(&state, &mut first.0, before + 10);
    let snap = snapshot(&state).unwrap();
    assert_eq!(snap["pid"], serde_json::json!(first.0.id()), "{snap}");
    let now = live(&state).unwrap();
    assert_eq!(now["pid"], serde_json::json!(first.0.id()), "{now}");
    assert_eq!(
        now["ingest"]["commit_failures"],
        serde_json::json!(0),
        "{now}"
    );
}

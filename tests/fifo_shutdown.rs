//! Stop is always prompt with a FIFO device (issue 12 point 5): `vitalgate run` with one
//! `jsonl` device whose path is a named pipe, stopped with SIGTERM (the `kill` command), as
//! `systemctl stop` does. Before, the FIFO's blocking open (no writer) or blocking read (a
//! writer that stays open but says nothing) sat on tokio's blocking pool, which the runtime
//! waits for at exit: the daemon never exited and systemd had to kill it.
//!
//! The bound is the unit's `TimeoutStopSec=15s` (packaging/vitalgate.service): beyond it
//! systemd sends SIGKILL. It is an upper bound for a hang, not a performance figure.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::process::{live_committed, sigterm, snapshot, spawn_run, wait_exit};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");
/// `TimeoutStopSec=` of the shipped unit.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A key, a FIFO and a config with one jsonl device reading that FIFO (no uplink).
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let st = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "vitalgate keygen failed: {st}");
    let fifo = dir.path().join("manual.jsonl");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success(), "mkfifo: {st}");
    let cfg = format!(
        r#"
[gateway]
id = "fifo-shutdown-gw"
state_dir = "{dir}/state"
devices_dirs = []

[store]
key_file = "{key}"

[[patient]]
id = "p1"

[[device]]
id = "manual-entry"
patient = "p1"
driver = "jsonl"
path = "{fifo}"
"#,
        dir = dir.path().display(),
        key = key.display(),
        fifo = fifo.display(),
    );
    let config = dir.path().join("vitalgate.toml");
    std::fs::write(&config, cfg).unwrap();
    (dir, config, fifo)
}

/// Waits until the daemon's status snapshot satisfies `ready`.
fn wait_for(
    child: &mut Child,
    state: &Path,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("vitalgate run exited before {what}: {st}");
        }
        if snapshot(state).is_some_and(|s| ready(&s)) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not {what} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens `fifo` for writing from a thread (the open waits for the daemon to open it too).
fn open_writer(fifo: &Path) -> mpsc::Receiver<File> {
    let (tx, rx) = mpsc::channel();
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(fifo) {
            let _ = tx.send(f);
        }
    });
    rx
}

#[test]
fn sigterm_with_a_fifo_device_and_no_writer_exits_0_before_the_stop_timeout() {
    let (dir, config, _fifo) = setup();
    let state = dir.path().join("state");
    let mut child = spawn_run(&config, None);
    wait_for(&mut child, &state, "running", |s| s["running"] == true);

    sigterm(&child);
    let status = wait_exit(&mut child, STOP_TIMEOUT).unwrap_or_else(|| {
        panic!("vitalgate run still running {STOP_TIMEOUT:?} after SIGTERM (FIFO without writer)")
    });
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let snap = snapshot(&state).expect("status.json after shutdown");
    assert_eq!(snap["running"], false, "final snapshot: {snap}");
}

#[test]
fn sigterm_with_a_silent_fifo_writer_exits_0_and_keeps_what_it_sent() {
    use std::io::Write;
    let (dir, config, fifo) = setup();
    let state = dir.path().join("state");
    let mut child = spawn_run(&config, None);
    let mut writer = open_writer(&fifo)
        .recv_timeout(Duration::from_secs(60))
        .expect("the daemon never opened the FIFO");
    writer
        .write_all(b"{\"metric\":\"spo2\",\"value\":97,\"unit\":\"%\"}\n")
        .unwrap();
    writer.flush().unwrap();
    // Committed: the device task is back in its read, which now waits on a silent writer
    // that keeps its end open.
    let t0 = Instant::now();
    while live_committed(&state) != 1 {
        assert!(child.try_wait().unwrap().is_none(), "vitalgate run exited");
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not one reading committed within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    sigterm(&child);
    let status = wait_exit(&mut child, STOP_TIMEOUT).unwrap_or_else(|| {
        panic!("vitalgate run still running {STOP_TIMEOUT:?} after SIGTERM (silent FIFO writer)")
    });
    assert!(status.success(), "exit status after SIGTERM: {status}");
    drop(writer);
    let stats = vitalgate::store::outbox::stats_readonly(&state.join("outbox.db")).unwrap();
    assert_eq!(
        stats.backlog_readings, 1,
        "outbox after shutdown: {stats:?}"
    );
}

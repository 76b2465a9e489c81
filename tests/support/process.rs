//! `vitalgate run` as a plain child process, for the synchronous tests that signal it and time
//! its exit (shutdown, FIFO shutdown, full disk, footprint): spawned without systemd's
//! environment unless a notify socket is given, stopped with `kill -TERM`, waited for with a
//! limit (killed past it, as systemd would), and its `status.json` read back.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");

/// Spawns `vitalgate run --config CONFIG` with warnings on stderr. With `notify_socket`, as
/// systemd would: `NOTIFY_SOCKET` and a 1 s watchdog (`WATCHDOG_PID` left unset: the child's
/// pid is not known yet, and sd-notify then accepts `WATCHDOG_USEC` for itself).
pub fn spawn_run(config: &Path, notify_socket: Option<&Path>) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(sock) = notify_socket {
        cmd.env("NOTIFY_SOCKET", sock)
            .env("WATCHDOG_USEC", "1000000");
    }
    cmd.spawn().unwrap()
}

pub fn sigterm(child: &Child) {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -TERM failed: {st}");
}

/// Waits for the child to exit, at most `limit`; `None` if it is still running (then killed,
/// as systemd would).
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The daemon's `status.json` snapshot, if there is a readable one.
pub fn snapshot(state_dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(state_dir.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The running daemon's live state (`live.sock`, as `vitalgate status` reads it) as JSON, if
/// it answers: its counts move with every reading, while `status.json` is written only when a
/// state changes and at stop.
pub fn live(state_dir: &Path) -> Option<serde_json::Value> {
    let state = vitalgate::live::fetch(&vitalgate::live::server::socket_path(state_dir)).ok()?;
    serde_json::to_value(state).ok()
}

/// Readings the running daemon has committed since it started, from its live state (0 while
/// it does not answer yet).
pub fn live_committed(state_dir: &Path) -> u64 {
    live(state_dir)
        .and_then(|s| s["ingest"]["readings_committed"].as_u64())
        .unwrap_or(0)
}

//! Graceful shutdown and the systemd protocol, end to end on the real binary (issue
//! "Packaging and operations", rust-stack.md §7): `vitalgate run` with simulated devices, no
//! uplink, a temporary state dir and a key from `vitalgate keygen`, stopped with SIGTERM sent
//! by the `kill` command. A datagram socket stands in for systemd's `NOTIFY_SOCKET`.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::process::{live_committed, sigterm, snapshot, spawn_run as spawn, wait_exit};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");

/// A state dir with a fresh key and a config of two fast simulated devices and no uplink.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let st = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success(), "vitalgate keygen failed: {st}");
    let cfg = format!(
        r#"
[gateway]
id = "shutdown-test-gw"
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
interval_ms = 100

[[device]]
id = "sim-2"
patient = "p1"
driver = "sim"
scenario = "deteriorating"
interval_ms = 100
"#,
        dir = dir.path().display(),
        key = key.display()
    );
    let path = dir.path().join("vitalgate.toml");
    std::fs::write(&path, cfg).unwrap();
    (dir, path)
}

/// Waits until the daemon's live state says devices have delivered readings.
fn wait_running(state_dir: &Path, child: &mut Child) {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("vitalgate run exited before running: {st}");
        }
        if live_committed(state_dir) > 0 {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no reading committed within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Datagrams received on the fake NOTIFY_SOCKET, one string each.
fn recv_all(
    sock: &UnixDatagram,
    until: impl Fn(&[String]) -> bool,
    limit: Duration,
) -> Vec<String> {
    let mut got = Vec::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn has_line(msgs: &[String], line: &str) -> bool {
    msgs.iter().any(|m| m.lines().any(|l| l == line))
}

#[test]
fn run_sigterm_exits_0_within_5s_with_final_status_not_running() {
    let (dir, config) = setup();
    let state = dir.path().join("state");
    let mut child = spawn(&config, None);
    wait_running(&state, &mut child);

    sigterm(&child);
    let t0 = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(5));
    let status = status.unwrap_or_else(|| panic!("vitalgate run still running 5 s after SIGTERM"));
    eprintln!("SIGTERM to exit: {:?}", t0.elapsed());
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let snap = snapshot(&state).expect("status.json after shutdown");
    assert_eq!(
        snap["running"],
        serde_json::json!(false),
        "final snapshot: {snap}"
    );
    assert_eq!(
        snap["ingest"]["commit_failures"],
        serde_json::json!(0),
        "final snapshot: {snap}"
    );
    // The outbox was closed cleanly and holds the readings (nothing to deliver them to).
    let stats = vitalgate::store::outbox::stats_readonly(&state.join("outbox.db")).unwrap();
    assert!(
        stats.backlog_readings > 0,
        "outbox after shutdown: {stats:?}"
    );
}

/// A SIGTERM that arrives while the daemon is still opening its config, key and outbox is a
/// request to stop, not a kill: systemd sends it to a unit stopped during start-up, and the
/// default action would end the process mid-start. The signal is sent as soon as the first
/// log line says start-up has begun. (Start-up no longer waits on anything: a config or key
/// that is a named pipe is refused at once, so nothing can hold it there.)
#[test]
fn run_sigterm_during_start_up_exits_0() {
    use std::io::{BufRead, BufReader};
    let (_dir, config) = setup();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().expect("a first log line").unwrap();
    assert!(
        first.contains("vitalgate starting"),
        "first log line: {first}"
    );
    sigterm(&child);
    // Keep reading so the daemon never blocks on a full stderr pipe.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let status = wait_exit(&mut child, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("vitalgate run still running 10 s after SIGTERM"));
    let rest = rest.join().unwrap();
    assert!(
        status.success(),
        "exit status after SIGTERM during start-up: {status}; log: {rest:?}"
    );
}

#[test]
fn run_under_systemd_sends_ready_then_watchdog_then_stopping() {
    let (dir, config) = setup();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let started = Instant::now();
    let mut child = spawn(&config, Some(&sock_path));
    // Both devices show as connected in a STATUS line once their tasks run, which may be
    // after the first WATCHDOG=1 on a busy machine: wait for that line too.
    let status_2_of_2 =
        |m: &String| m.contains("STATUS=outbox=") && m.contains("uplink=none devices=2/2");
    let before_term = recv_all(
        &sock,
        |m| has_line(m, "READY=1") && has_line(m, "WATCHDOG=1") && m.iter().any(status_2_of_2),
        Duration::from_secs(60),
    );
    eprintln!(
        "messages before SIGTERM: {before_term:?} ({:?} after spawn)",
        started.elapsed()
    );
    let ready_at = before_term
        .iter()
        .position(|m| has_line(std::slice::from_ref(m), "READY=1"));
    let first_watchdog = before_term
        .iter()
        .position(|m| has_line(std::slice::from_ref(m), "WATCHDOG=1"));
    assert!(ready_at.is_some(), "no READY=1: {before_term:?}");
    assert!(
        first_watchdog.is_some(),
        "no WATCHDOG=1 while the writer ticks: {before_term:?}"
    );
    assert!(
        ready_at < first_watchdog,
        "WATCHDOG=1 before READY=1: {before_term:?}"
    );
    assert!(
        before_term.iter().any(status_2_of_2),
        "no STATUS line with outbox depth and uplink state: {before_term:?}"
    );

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(5));
    let after_term = recv_all(&sock, |m| has_line(m, "STOPPING=1"), Duration::from_secs(1));
    assert!(
        has_line(&after_term, "STOPPING=1"),
        "no STOPPING=1 after SIGTERM: {after_term:?}"
    );
    let status = status.unwrap_or_else(|| panic!("vitalgate run still running 5 s after SIGTERM"));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn run_with_unread_notify_socket_keeps_ingesting_and_stops_in_time() {
    // A service manager that does not read NOTIFY_SOCKET fills the datagram queue
    // (net.unix.max_dgram_qlen, often 10); a blocking send on the async runtime then stalled
    // every task. Found by scripts/footprint. Status and watchdog messages must be dropped
    // instead, and ingest must go on.
    let (dir, config) = setup();
    let state = dir.path().join("state");
    let sock_path = dir.path().join("notify.sock");
    let _sock = UnixDatagram::bind(&sock_path).unwrap(); // never read
    let mut child = spawn(&config, Some(&sock_path));
    wait_running(&state, &mut child);
    let committed = live_committed;
    // 4 messages/s (WATCHDOG_USEC=1 s) fill the queue. It is full when a non-blocking send
    // of our own is refused (each probe that is accepted only fills it faster).
    let probe = UnixDatagram::unbound().unwrap();
    probe.set_nonblocking(true).unwrap();
    let t0 = Instant::now();
    loop {
        match probe.send_to(b"probe", &sock_path) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("probe send to the notify socket: {e}"),
            Ok(_) => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the notify socket's queue never filled"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // From then on, the live state (assembled every second by a task on the runtime) must
    // still move; a stalled runtime never moves it again.
    let before = committed(&state);
    let t0 = Instant::now();
    let mut after = before;
    while after <= before && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
        after = committed(&state);
    }
    assert!(
        after > before,
        "ingest stalled with an unread NOTIFY_SOCKET: {before} -> {after} readings committed"
    );

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(5));
    let status = status.unwrap_or_else(|| panic!("vitalgate run still running 5 s after SIGTERM"));
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

//! `vitalgate demo` end to end (issue "Uplink", item 5; demo.md items 5 and 6): the built binary
//! runs simulated patients through the encrypted outbox and its own Mosquitto (mutual TLS 1.3)
//! to the demo's platform subscriber, and leaves no broker process behind, whether it stops at
//! `--seconds` or on Ctrl-C. Needs Mosquitto installed (`scripts/test` and CI install it) for
//! the default broker; `--broker embedded` runs the in-process broker (issue 3, acceptance 5)
//! through the same checks.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn demo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitalgate"));
    c.arg("demo").env_remove("RUST_LOG");
    c
}

/// The pid of the broker the demo says it started.
fn broker_pid(stdout: &str) -> u32 {
    let line = stdout
        .lines()
        .find(|l| l.contains("broker   mosquitto pid "))
        .unwrap_or_else(|| {
            panic!("the demo started no broker (is mosquitto installed?):\n{stdout}")
        });
    line.split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// Whether a process with `pid` still runs Mosquitto (a reused pid running something else,
/// or a reaped process, counts as gone).
fn mosquitto_running(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("mosquitto"))
        .unwrap_or(false)
}

fn wait_with_timeout(mut child: Child, secs: u64) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("vitalgate demo did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Platform lines for one metric: `obs   HH:MM:SS  patient  <metric> ...`.
fn platform_lines<'a>(stdout: &'a str, metric: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter(|l| l.starts_with("obs   ") && l.contains(metric))
        .collect()
}

/// Runs `vitalgate demo` with `args`, asserts it exited 0 and the platform saw what the demo
/// promises; returns stdout.
fn run_and_check_delivery(args: &[&str]) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = demo().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_delivered(&stdout);
    stdout
}

fn assert_delivered(stdout: &str) {
    // demo.md item 4: the platform prints each Observation it receives.
    assert!(
        !platform_lines(stdout, "Oxygen saturation").is_empty(),
        "no SpO2 at the platform:\n{stdout}"
    );
    assert!(
        !platform_lines(stdout, "Heart rate").is_empty(),
        "no heart rate at the platform:\n{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("news2 ") && l.contains("band")),
        "no NEWS2 total:\n{stdout}"
    );
    // The retained gateway status: online while running, offline after the clean stop.
    let statuses: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("GATEWAY demo-gw-0001 "))
        .collect();
    assert!(statuses.iter().any(|l| l.contains(" online ")), "{stdout}");
    assert!(
        statuses.last().is_some_and(|l| l.contains(" offline ")),
        "{statuses:?}"
    );
    // The outbox table carries the uplink state.
    assert!(stdout.contains("uplink: connected"), "{stdout}");
    // clinical.md §3.3: the NHS Number appears only masked.
    assert!(stdout.contains("***-***-5919"), "{stdout}");
    assert!(
        !stdout.contains("9434765919"),
        "full NHS Number printed:\n{stdout}"
    );
    // Readable on an 80-column terminal, no colour when stdout is not a terminal.
    assert!(!stdout.contains('\x1b'), "ANSI escapes on a pipe");
    let wide: Vec<&str> = stdout.lines().filter(|l| l.chars().count() > 80).collect();
    assert!(wide.is_empty(), "lines wider than 80 columns: {wide:#?}");
}

#[test]
fn demo_with_seconds_delivers_observations_to_the_platform_and_leaves_no_broker() {
    let stdout = run_and_check_delivery(&["--seconds", "20"]);
    let pid = broker_pid(&stdout);
    assert!(
        !mosquitto_running(pid),
        "broker pid {pid} still running after the demo exited"
    );
}

#[test]
fn demo_stopped_by_ctrl_c_exits_zero_and_leaves_no_broker() {
    let mut child = demo()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("obs   ") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let delivered = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    // Ctrl-C in a terminal sends SIGINT to the foreground process.
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_with_timeout(child, 30);
    let stdout = reader.join().unwrap();
    assert!(
        delivered,
        "no Observation reached the platform within 30 s:\n{stdout}"
    );
    assert!(status.success(), "exit {status} after SIGINT:\n{stdout}");
    assert!(stdout.contains("broker stopped"), "{stdout}");
    let pid = broker_pid(&stdout);
    assert!(
        !mosquitto_running(pid),
        "broker pid {pid} still running after Ctrl-C"
    );
}

/// The port of the embedded broker the demo says it started.
fn embedded_port(stdout: &str) -> u16 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("  broker   embedded "))
        .unwrap_or_else(|| panic!("the demo did not start the embedded broker:\n{stdout}"));
    line.split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

// Issue 3 / acceptance 5: one command, no Mosquitto needed; the same delivery checks, and once
// it exits nothing listens on the broker's port any more.
#[test]
fn demo_with_embedded_broker_delivers_observations_and_leaves_no_listener() {
    let stdout = run_and_check_delivery(&["--seconds", "15", "--broker", "embedded"]);
    let port = embedded_port(&stdout);
    assert!(
        stdout.contains(&format!("broker stopped (embedded, port {port})")),
        "{stdout}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something still listens on 127.0.0.1:{port} after the demo exited"
    );
}

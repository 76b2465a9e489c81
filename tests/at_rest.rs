//! Nothing clinical in clear at rest (issue 12, acceptance 1): `vitalgate run` ingests
//! readings with distinctive values through a real `jsonl` device file, raises alerts on them
//! (so the alert engine persists its state), and then the raw bytes of every file in the
//! state dir (the outbox database, its -wal and -shm, `status.json`, `audit.log`, the lock
//! file) are searched for the values and the patient's NHS Number, while the daemon runs and
//! after it stopped.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");
const NHS_NUMBER: &str = "9434765919";
/// A temperature and a saturation that score 3 in NEWS2 (clinical.md §2), so alerts are raised
/// and the engine's state (the latest value of each vital sign) is persisted at once. Six
/// significant digits, so their decimal text and their mantissas (how `Decimal` serializes)
/// are distinctive enough to search for.
const TEMPERATURE: &str = "34.8712";
const SPO2: &str = "83.6129";
/// The same values as the mantissas of their exact decimal form.
const TEMPERATURE_MANTISSA: &str = "348712";
const SPO2_MANTISSA: &str = "836129";

fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("master.key");
    let st = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success(), "keygen: {st}");
    key
}

fn sigterm_and_wait(child: &mut Child) {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_reading_value_alert_state_or_nhs_number_is_in_clear_in_any_file_of_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let state = dir.path().join("state");
    let device = dir.path().join("manual.jsonl");
    std::fs::write(
        &device,
        format!(
            "{{\"metric\":\"body_temperature\",\"value\":{TEMPERATURE},\"unit\":\"Cel\"}}\n\
             {{\"metric\":\"spo2\",\"value\":{SPO2},\"unit\":\"%\"}}\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("vitalgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[gateway]
id = "at-rest-gw"
state_dir = "{state}"
devices_dirs = []

[store]
key_file = "{key}"

[[patient]]
id = "p1"
nhs_number = "{NHS_NUMBER}"

[[device]]
id = "manual-1"
patient = "p1"
driver = "jsonl"
path = "{device}"
"#,
            state = state.display(),
            key = key.display(),
            device = device.display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Alerts commit in the same transaction as the readings and the engine's state.
    let outbox = state.join("outbox.db");
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("vitalgate run exited: {st}");
        }
        let alerts = vitalgate::store::outbox::stats_readonly(&outbox)
            .map(|s| s.backlog_alerts)
            .unwrap_or(0);
        if alerts >= 2 && state.join("status.json").exists() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no alerts committed within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let markers = [
        TEMPERATURE,
        SPO2,
        TEMPERATURE_MANTISSA,
        SPO2_MANTISSA,
        NHS_NUMBER,
    ];
    let running = support::at_rest::in_clear(&state, &markers);
    sigterm_and_wait(&mut child);
    let stopped = support::at_rest::in_clear(&state, &markers);
    assert!(
        running.is_empty() && stopped.is_empty(),
        "in clear while running: {running:?}; after stopping: {stopped:?} (files: {:?})",
        support::at_rest::files_under(&state)
    );
}

//! The `vitalgate` command line as a user meets it (issue #2, acceptance 3, 5, 7, 8):
//! exit codes, messages that name file, key and reason, and the `jsonl` driver end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitalgate"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn config(dir: &Path, devices: &str) -> PathBuf {
    let text = format!(
        r#"
[gateway]
id = "cli-test-gw"
state_dir = "{d}"
devices_dirs = []

[store]
key_file = "{d}/master.key"

[[patient]]
id = "p1"
nhs_number = "943 476 5919"
{devices}
"#,
        d = dir.display()
    );
    let path = dir.join("vitalgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn help_explains_every_command() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for cmd in ["run", "demo", "check-config", "decode", "status", "keygen"] {
        assert!(text.contains(cmd), "--help does not mention {cmd}:\n{text}");
    }
}

#[test]
fn check_config_prints_effective_config_with_nhs_number_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let out = run(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("retention_days = 7"), "defaults shown:\n{text}");
    assert!(text.contains("***-***-5919"), "{text}");
    assert!(!text.contains("9434765919") && !text.contains("943 476 5919"), "NHS Number in clear:\n{text}");
}

#[test]
fn check_config_exits_2_naming_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "[ingest]\nmax_batch_wait_ms = \"soon\"\n");
    let out = run(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("vitalgate.toml") && err.contains("ingest.max_batch_wait_ms") && err.contains("invalid type"), "{err}");
}

#[test]
fn check_config_on_missing_file_exits_2() {
    let out = run(&["check-config", "--config", "/nonexistent/vitalgate.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/vitalgate.toml"), "{}", stderr(&out));
}

#[test]
fn decode_jsonl_prints_one_reading_per_line_and_flags_bad_lines() {
    let out = run(&["decode", "jsonl", "--text", r#"{"metric":"spo2","value":97,"unit":"%"}"#, "not json"]);
    assert_eq!(out.status.code(), Some(1), "a bad frame makes the exit code non-zero");
    assert_eq!(stdout(&out).lines().count(), 1);
    assert!(stdout(&out).contains(r#""metric":"spo2""#));
    assert!(stderr(&out).contains("not a reading"), "{}", stderr(&out));
}

#[test]
fn decode_unknown_driver_exits_2_listing_drivers() {
    let out = run(&["decode", "nonin-fmt99", "00"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("jsonl"), "{}", stderr(&out));
}

#[test]
fn decode_list_names_the_design_drivers() {
    let text = stdout(&run(&["decode", "--list"]));
    for name in ["jsonl", "ble-heart-rate", "ble-blood-pressure", "ble-glucose"] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[test]
fn keygen_creates_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    assert!(run(&["keygen", "--out", key.to_str().unwrap()]).status.success());
    let first = std::fs::read(&key).unwrap();
    let again = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("refusing to overwrite"), "{}", stderr(&again));
    assert_eq!(std::fs::read(&key).unwrap(), first, "the key was changed");
}

#[test]
fn run_without_a_key_exits_2_saying_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("vitalgate keygen"), "{}", stderr(&out));
    assert!(!dir.path().join("outbox.db").exists(), "no outbox may be created without a key");
}

#[test]
fn run_with_a_world_readable_key_exits_2() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let key = dir.path().join("master.key");
    assert!(run(&["keygen", "--out", key.to_str().unwrap()]).status.success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

/// Runs the daemon until `until` holds for the status JSON, then stops it with SIGTERM and
/// returns the status after the stop (the daemon's final snapshot).
fn run_until(config: &Path, until: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut child = bin()
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let out = run(&["status", "--config", config.to_str().unwrap()]);
        if out.status.success() {
            last = serde_json::from_slice(&out.stdout).unwrap();
            if until(&last) {
                break;
            }
        }
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon exit {status:?}");
    assert!(until(&last), "condition never held; last status:\n{last:#}");
    let out = run(&["status", "--config", config.to_str().unwrap()]);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn wrong_key_is_refused_at_start_and_nothing_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "[[device]]\nid = \"sim\"\npatient = \"p1\"\ndriver = \"sim\"\ninterval_ms = 10\n");
    let key = dir.path().join("master.key");
    assert!(run(&["keygen", "--out", key.to_str().unwrap()]).status.success());
    run_until(&path, |s| s["backlog"]["readings"].as_u64().unwrap_or(0) > 0);
    let before = std::fs::read(dir.path().join("outbox.db")).unwrap();

    std::fs::remove_file(&key).unwrap();
    assert!(run(&["keygen", "--out", key.to_str().unwrap()]).status.success());
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.path().join("outbox.db")).unwrap(), before);
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("wrong_key_refused"), "{audit}");
}

#[test]
fn jsonl_device_stores_good_lines_counts_bad_ones_and_stays_connected() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("manual.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"metric\":\"respiratory_rate\",\"value\":18,\"unit\":\"/min\"}\n",
            "this line is garbage\n",
            "{\"metric\":\"acvpu\",\"code\":\"A\"}\n",
            "{\"metric\":\"spo2\",\"value\":140,\"unit\":\"%\"}\n",
            "{\"metric\":\"spo2\",\"value\":96,\"unit\":\"%\"}\n",
        ),
    )
    .unwrap();
    let devices = format!("[[device]]\nid = \"manual\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"{}\"\n", input.display());
    let path = config(dir.path(), &devices);
    let key = dir.path().join("master.key");
    assert!(run(&["keygen", "--out", key.to_str().unwrap()]).status.success());

    let status = run_until(&path, |s| s["backlog"]["readings"].as_u64() == Some(3));
    let device = &status["devices"][0];
    assert_eq!(device["state"], "connected", "{status:#}");
    assert_eq!(device["decode_errors"], 1, "{status:#}");
    assert_eq!(status["ingest"]["readings_rejected"], 1, "implausible SpO2 140 rejected: {status:#}");

    // Restart: the committed offset is resumed, nothing is stored twice; an appended line flows.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all(b"{\"metric\":\"heart_rate\",\"value\":64,\"unit\":\"/min\"}\n")
        .unwrap();
    let status = run_until(&path, |s| s["backlog"]["readings"].as_u64() >= Some(4));
    assert_eq!(status["backlog"]["readings"], 4, "re-read after restart: {status:#}");
}

#[test]
fn status_reports_backlog_keys_and_devices_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "[[device]]\nid = \"sim\"\npatient = \"p1\"\ndriver = \"sim\"\ninterval_ms = 20\n");
    let key = dir.path().join("master.key");
    assert!(run(&["keygen", "--out", key.to_str().unwrap()]).status.success());
    run_until(&path, |s| s["backlog"]["readings"].as_u64().unwrap_or(0) >= 10);

    let out = run(&["status", "--config", path.to_str().unwrap()]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["daemon"]["running"], false, "{s:#}");
    assert!(s["oldest_undelivered"].as_str().unwrap().contains('T'), "{s:#}");
    assert_eq!(s["last_ack"], serde_json::Value::Null);
    assert_eq!(s["keys"]["current_key_id"], 1);
    assert_eq!(s["keys"]["source"]["kind"], "file", "{s:#}");
    assert_eq!(s["devices"][0]["id"], "sim");
    assert_eq!(s["outbox"]["quarantined"], 0);
    let text = stdout(&out);
    assert!(!text.contains("9434765919"), "NHS Number in status output");
}

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

/// A `[[device]]` table for a simulated patient ticking every `interval_ms`.
fn sim_device(interval_ms: u64) -> String {
    format!("[[device]]\nid = \"sim\"\npatient = \"p1\"\ndriver = \"sim\"\ninterval_ms = {interval_ms}\n")
}

/// Creates `dir/master.key` with `vitalgate keygen`; returns its path.
fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("master.key");
    assert!(run(&["keygen", "--out", key.to_str().unwrap()])
        .status
        .success());
    key
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
    keygen(dir.path());
    let out = run(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("retention_days = 7"),
        "defaults shown:\n{text}"
    );
    assert!(text.contains("***-***-5919"), "{text}");
    assert!(
        !text.contains("9434765919") && !text.contains("943 476 5919"),
        "NHS Number in clear:\n{text}"
    );
}

#[test]
fn check_config_exits_2_naming_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "[ingest]\nmax_batch_wait_ms = \"soon\"\n");
    let out = run(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("vitalgate.toml")
            && err.contains("ingest.max_batch_wait_ms")
            && err.contains("invalid type"),
        "{err}"
    );
}

#[test]
fn check_config_on_missing_file_exits_2() {
    let out = run(&["check-config", "--config", "/nonexistent/vitalgate.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/vitalgate.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn decode_jsonl_prints_one_reading_per_line_and_flags_bad_lines() {
    let out = run(&[
        "decode",
        "jsonl",
        "--text",
        r#"{"metric":"spo2","value":97,"unit":"%"}"#,
        "not json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad frame makes the exit code non-zero"
    );
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
    for name in [
        "jsonl",
        "ble-heart-rate",
        "ble-blood-pressure",
        "ble-glucose",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[test]
fn keygen_creates_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let first = std::fs::read(&key).unwrap();
    let again = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read(&key).unwrap(), first, "the key was changed");
}

#[test]
fn run_without_a_key_exits_2_saying_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("vitalgate keygen"),
        "{}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("outbox.db").exists(),
        "no outbox may be created without a key"
    );
}

#[test]
fn run_with_a_world_readable_key_exits_2() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let key = keygen(dir.path());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

/// Runs the daemon until `until` holds for the status JSON, then stops it with SIGTERM and
/// returns the status after the stop (the daemon's final snapshot).
fn run_until(config: &Path, until: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut child = spawn_daemon(config);
    let deadline = Instant::now() + Duration::from_secs(60);
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
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon exit {status:?}");
    assert!(until(&last), "condition never held; last status:\n{last:#}");
    status_of(config)
}

/// A wrong key over existing data is a configuration problem (exit 2): restarting cannot help.
#[test]
fn wrong_key_is_refused_at_start_with_exit_2_and_nothing_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &sim_device(10));
    let key = keygen(dir.path());
    run_until(&path, |s| {
        s["backlog"]["readings"].as_u64().unwrap_or(0) > 0
    });
    let before = std::fs::read(dir.path().join("outbox.db")).unwrap();

    std::fs::remove_file(&key).unwrap();
    assert!(run(&["keygen", "--out", key.to_str().unwrap()])
        .status
        .success());
    let out = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
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
    let devices = format!(
        "[[device]]\nid = \"manual\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"{}\"\n",
        input.display()
    );
    let path = config(dir.path(), &devices);
    keygen(dir.path());

    let status = run_until(&path, |s| s["backlog"]["readings"].as_u64() == Some(3));
    let device = &status["devices"][0];
    assert_eq!(device["state"], "connected", "{status:#}");
    assert_eq!(device["decode_errors"], 1, "{status:#}");
    assert_eq!(
        status["ingest"]["readings_rejected"], 1,
        "implausible SpO2 140 rejected: {status:#}"
    );

    // Restart: the committed offset is resumed, nothing is stored twice; an appended line flows.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all(b"{\"metric\":\"heart_rate\",\"value\":64,\"unit\":\"/min\"}\n")
        .unwrap();
    let status = run_until(&path, |s| s["backlog"]["readings"].as_u64() >= Some(4));
    assert_eq!(
        status["backlog"]["readings"], 4,
        "re-read after restart: {status:#}"
    );
}

#[test]
fn status_reports_backlog_keys_and_devices_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &sim_device(20));
    keygen(dir.path());
    run_until(&path, |s| {
        s["backlog"]["readings"].as_u64().unwrap_or(0) >= 10
    });

    let out = run(&["status", "--config", path.to_str().unwrap()]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["daemon"]["running"], false, "{s:#}");
    assert!(
        s["oldest_undelivered"].as_str().unwrap().contains('T'),
        "{s:#}"
    );
    assert_eq!(s["last_ack"], serde_json::Value::Null);
    assert_eq!(s["keys"]["current_key_id"], 1);
    assert_eq!(s["keys"]["source"]["kind"], "file", "{s:#}");
    assert_eq!(s["devices"][0]["id"], "sim");
    assert_eq!(s["outbox"]["quarantined"], 0);
    let text = stdout(&out);
    assert!(!text.contains("9434765919"), "NHS Number in status output");
}

/// A daemon child that is killed if the test fails before stopping it.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Daemon {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

fn spawn_daemon(config: &Path) -> Daemon {
    Daemon(
        bin()
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn signal(child: &std::process::Child, sig: &str) {
    assert!(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
}

fn status_of(config: &Path) -> serde_json::Value {
    serde_json::from_slice(&run(&["status", "--config", config.to_str().unwrap()]).stdout)
        .unwrap_or_default()
}

/// Readings in the outbox backlog per `vitalgate status`, once a status could be read.
fn backlog_readings(config: &Path) -> u64 {
    let mut n = None;
    wait_for("a `vitalgate status` answer", || {
        n = status_of(config)["backlog"]["readings"].as_u64();
        n.is_some()
    });
    n.unwrap()
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_running_one_and_audits_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &sim_device(50));
    keygen(dir.path());
    let mut child = spawn_daemon(&path);
    wait_for("readings", || {
        status_of(&path)["backlog"]["readings"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });

    // `status` needs a valid config: keep a copy of the good one to ask with.
    let good = std::fs::read_to_string(&path).unwrap();
    let ask = dir.path().join("status.toml");
    std::fs::write(&ask, &good).unwrap();
    std::fs::write(
        &path,
        good.replace("interval_ms = 50", "interval_ms = \"fast\""),
    )
    .unwrap();
    signal(&child, "HUP");
    let audit = dir.path().join("audit.log");
    wait_for("the refusal in the audit log", || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .contains("config_reload_refused")
    });
    let before = backlog_readings(&ask);
    wait_for("ingest to go on", || {
        status_of(&ask)["backlog"]["readings"]
            .as_u64()
            .is_some_and(|n| n > before)
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon stopped on a bad reload"
    );

    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

#[test]
fn sighup_with_a_changed_config_applies_it_without_losing_readings() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &sim_device(50));
    let key = keygen(dir.path());
    let mut child = spawn_daemon(&path);
    wait_for("readings", || {
        status_of(&path)["backlog"]["readings"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });

    let input = dir.path().join("manual.jsonl");
    std::fs::write(&input, "{\"metric\":\"acvpu\",\"code\":\"V\"}\n").unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "[[device]]\nid = \"manual\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"{}\"\n",
        input.display()
    ));
    std::fs::write(&path, text).unwrap();
    let before = backlog_readings(&path);
    signal(&child, "HUP");
    wait_for("the second device", || {
        status_of(&path)["devices"].as_array().map(|d| d.len()) == Some(2)
    });
    wait_for("ingest after the reload", || {
        status_of(&path)["backlog"]["readings"]
            .as_u64()
            .is_some_and(|n| n > before + 1)
    });
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("config_applied"), "{audit}");

    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    // Nothing lost across the in-process restart: every row authenticates.
    let mut outbox = vitalgate::store::Outbox::open(
        &dir.path().join("outbox.db"),
        &vitalgate::store::MasterKey::load(&key).unwrap(),
    )
    .unwrap()
    .0;
    assert_eq!(
        outbox.verify_all().unwrap().len() as u64,
        outbox.backlog().unwrap()
    );
}

/// Issue #5 acceptance 9: on a host with no Bluetooth (no adapter, no bluetoothd, as here) the
/// daemon starts, BLE devices show as unavailable, and every other device works.
#[test]
fn ble_device_without_bluetooth_is_unavailable_and_the_rest_works() {
    let dir = tempfile::tempdir().unwrap();
    let devices = "[[device]]\nid = \"sim\"\npatient = \"p1\"\ndriver = \"sim\"\ninterval_ms = 20\n\
                   [[device]]\nid = \"cuff\"\npatient = \"p1\"\ndriver = \"ble-blood-pressure\"\naddress = \"A4:C1:38:12:34:56\"\n";
    let path = config(dir.path(), devices);
    keygen(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitalgate"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}/no-such-bus", dir.path().display()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let device = |s: &serde_json::Value, id: &str| {
        s["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["id"] == id).cloned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let ok = std::iter::from_fn(|| (Instant::now() < deadline).then_some(())).any(|()| {
        std::thread::sleep(Duration::from_millis(300));
        let s = status_of(&path);
        device(&s, "cuff")["state"] == "unavailable"
            && s["backlog"]["readings"].as_u64().unwrap_or(0) > 10
    });
    let s = status_of(&path);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let exit = child.wait().unwrap();
    assert!(ok, "cuff not unavailable or sim not ingesting: {s:#}");
    assert!(
        device(&s, "cuff")["last_error"]
            .as_str()
            .unwrap_or("")
            .len()
            > 5,
        "{s:#}"
    );
    assert!(exit.success());
}

/// Under systemd the packaged service runs in its own root directory, where a file outside
/// /usr, /etc, /var/lib/vitalgate, /run/vitalgate and /dev/serial/by-id does not exist even
/// though the engineer's shell sees it: the error says so and what to do, instead of a bare
/// "does not exist" (the service sets INVOCATION_ID, as systemd does).
#[test]
fn run_as_a_service_names_the_sandbox_when_a_file_outside_its_root_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let uplink = "[uplink]\nbroker = \"localhost\"\nca_file = \"/opt/vitalgate-site/ca.pem\"\ncert_file = \"/opt/vitalgate-site/client.pem\"\nkey_file = \"/opt/vitalgate-site/client.key\"\n";
    let cfg = config(dir.path(), &format!("{}\n{uplink}", sim_device(1000)));
    let as_service = bin()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert!(!as_service.status.success());
    let err = stderr(&as_service);
    assert!(
        err.contains("/opt/vitalgate-site/")
            && err.contains("inside the service's root directory")
            && err.contains("BindReadOnlyPaths="),
        "{err}"
    );
    let from_a_shell = bin()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env_remove("INVOCATION_ID")
        .output()
        .unwrap();
    assert!(!from_a_shell.status.success());
    assert!(
        !stderr(&from_a_shell).contains("root directory"),
        "{}",
        stderr(&from_a_shell)
    );
}

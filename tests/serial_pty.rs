//! Serial devices end to end through the CLI (issue "Serial devices", items 1, 2, 4, 5):
//! `vitalgate simulate DRIVER --pty --link PATH` plays the device on a pseudo-terminal, the
//! daemon reads it over the serial transport, and unplugging (simulator killed, link removed)
//! and replugging (a new simulator under the same link) need no daemon restart
//! (`rust-stack.md` §3: "treat unplug as normal ... reopen by the stable path").
//!
//! Also here: `check-config` refusing a device whose profile is broken, `decode` finding a
//! data-driven line profile by name with `--devices`, and `simulate`'s usage errors.
//!
//! Every wait has a timeout and fails with the last status seen.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitalgate"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).env("RUST_LOG", "warn").output().unwrap()
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `vitalgate simulate DRIVER --pty --link LINK` and waits (30 s at most) for the pty
/// path on its first stdout line and for the link to point at it.
fn simulate(driver: &str, link: &Path) -> Proc {
    let mut child = bin()
        .args([
            "simulate",
            driver,
            "--pty",
            "--interval-ms",
            "100",
            "--link",
        ])
        .arg(link)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let proc = Proc(child);
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("simulate {driver}: no pty path on stdout within 30 s"));
    let pty = PathBuf::from(line.trim());
    assert!(
        pty.starts_with("/dev/"),
        "first line is the pty path: {line:?}"
    );
    assert_eq!(
        std::fs::read_link(link).unwrap(),
        pty,
        "--link points at the pty"
    );
    proc
}

/// Unplug: the device end disappears and so does its stable name.
fn unplug(sim: Proc, link: &Path) {
    drop(sim);
    std::fs::remove_file(link).unwrap();
}

fn write_config(dir: &Path, devices_dirs: &[&Path], devices: &str) -> PathBuf {
    let dirs: Vec<String> = devices_dirs
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    let text = format!(
        r#"
[gateway]
id = "serial-test-gw"
state_dir = "{d}"
devices_dirs = [{dirs}]

[store]
key_file = "{d}/master.key"

[[patient]]
id = "p1"
{devices}
"#,
        d = dir.display(),
        dirs = dirs.join(", ")
    );
    let path = dir.join("vitalgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn device(id: &str, driver: &str, path: &Path) -> String {
    format!(
        "\n[[device]]\nid = \"{id}\"\npatient = \"p1\"\ndriver = \"{driver}\"\npath = \"{}\"\n",
        path.display()
    )
}

fn status(config: &Path) -> Value {
    let out = run(&["status", "--config", config.to_str().unwrap()]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Polls `status` until `cond` holds; panics after `timeout` saying what was awaited.
fn wait_for(config: &Path, what: &str, timeout: Duration, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = status(config);
        if cond(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("waited {timeout:?} for {what}; last status:\n{last:#}");
}

fn dev<'a>(s: &'a Value, id: &str) -> &'a Value {
    s["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["id"] == id))
        .unwrap_or(&Value::Null)
}

fn state(s: &Value, id: &str) -> String {
    dev(s, id)["state"].as_str().unwrap_or("").to_string()
}

fn readings(s: &Value, id: &str) -> u64 {
    dev(s, id)["readings"].as_u64().unwrap_or(0)
}

fn backlog(s: &Value) -> u64 {
    s["backlog"]["readings"].as_u64().unwrap_or(0)
}

#[test]
fn pty_devices_survive_unplug_and_replug_without_daemon_restart() {
    let dir = tempfile::tempdir().unwrap();
    let devices = [
        ("oxi-nonin", "nonin-fmt2", dir.path().join("ttyNONIN")),
        ("oxi-contec", "contec-cms50d", dir.path().join("ttyCONTEC")),
        ("oxi-masimo", "masimo-ascii", dir.path().join("ttyMASIMO")),
    ];
    let text: String = devices
        .iter()
        .map(|(id, drv, link)| device(id, drv, link))
        .collect();
    let config = write_config(dir.path(), &[], &text);
    let key = dir.path().join("master.key");
    assert!(run(&["keygen", "--out", key.to_str().unwrap()])
        .status
        .success());

    let mut sims: Vec<Option<Proc>> = devices
        .iter()
        .map(|(_, drv, link)| Some(simulate(drv, link)))
        .collect();
    let mut daemon = Proc(
        bin()
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ids: Vec<&str> = devices.iter().map(|(id, _, _)| *id).collect();

    // Plugged in: every device connected, readings in the outbox.
    let s = wait_for(
        &config,
        "all three devices connected with readings",
        Duration::from_secs(60),
        |s| {
            backlog(s) > 0
                && ids
                    .iter()
                    .all(|id| state(s, id) == "connected" && readings(s, id) > 0)
        },
    );
    assert!(
        ids.iter().all(|id| dev(&s, id)["last_error"].is_null()),
        "{s:#}"
    );

    // Unplug the Nonin only: it shows disconnected, the others keep delivering.
    unplug(sims[0].take().unwrap(), &devices[0].2);
    let before = wait_for(
        &config,
        "nonin disconnected",
        Duration::from_secs(60),
        |s| state(s, "oxi-nonin") == "disconnected",
    );
    assert!(
        dev(&before, "oxi-nonin")["last_error"].is_string(),
        "the reason is shown: {before:#}"
    );
    wait_for(
        &config,
        "contec and masimo unaffected",
        Duration::from_secs(60),
        |s| {
            ["oxi-contec", "oxi-masimo"]
                .iter()
                .all(|id| state(s, id) == "connected" && readings(s, id) > readings(&before, id))
        },
    );

    // Replug under the same path: readings resume, the backlog grows, same daemon.
    sims[0] = Some(simulate("nonin-fmt2", &devices[0].2));
    let nonin_before = readings(&before, "oxi-nonin");
    wait_for(
        &config,
        "nonin reconnected with new readings",
        Duration::from_secs(60),
        |s| {
            state(s, "oxi-nonin") == "connected"
                && readings(s, "oxi-nonin") > nonin_before
                && backlog(s) > backlog(&before)
        },
    );

    // The same, shorter, for the Contec (init and keepalive written) and the Masimo.
    unplug(sims[1].take().unwrap(), &devices[1].2);
    unplug(sims[2].take().unwrap(), &devices[2].2);
    let before = wait_for(
        &config,
        "contec and masimo disconnected",
        Duration::from_secs(60),
        |s| state(s, "oxi-contec") == "disconnected" && state(s, "oxi-masimo") == "disconnected",
    );
    sims[1] = Some(simulate("contec-cms50d", &devices[1].2));
    sims[2] = Some(simulate("masimo-ascii", &devices[2].2));
    wait_for(
        &config,
        "contec and masimo reconnected with new readings",
        Duration::from_secs(60),
        |s| {
            ["oxi-contec", "oxi-masimo"]
                .iter()
                .all(|id| state(s, id) == "connected" && readings(s, id) > readings(&before, id))
        },
    );

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.0.id().to_string())
        .status();
    let exit = daemon.0.wait().unwrap();
    assert!(exit.success(), "daemon exit {exit:?}");
    let s = status(&config);
    assert_eq!(s["daemon"]["running"], false, "{s:#}");
    assert!(backlog(&s) > 0, "{s:#}");
}

#[test]
fn check_config_refuses_a_device_whose_profile_is_broken_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("devices");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(
        profiles.join("ward-oximeter.toml"),
        "name = \"ward-oximeter\"\ndriver = \"line\"\n[serial]\nbaud = 9600\n",
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &[&profiles],
        &device("ox1", "ward-oximeter", Path::new("/dev/ttyUSB0")),
    );
    let out = run(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("device[0].driver") && err.contains("ward-oximeter.toml"),
        "{err}"
    );
}

#[test]
fn check_config_accepts_a_device_naming_a_valid_profile() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
    let config = write_config(
        dir.path(),
        &[&shipped],
        &device("ox1", "nonin-3012-oem3", Path::new("/dev/ttyUSB0")),
    );
    // check-config also checks the master key the config names.
    let key = dir.path().join("master.key");
    assert!(run(&["keygen", "--out", key.to_str().unwrap()])
        .status
        .success());
    let out = run(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn decode_finds_a_line_profile_in_the_devices_dir() {
    // devices/README.md `[line]`: a data-driven device is decoded by its profile's name.
    let dir = tempfile::tempdir().unwrap();
    let profile = r#"
name = "ward-thermo"
manufacturer = "Test"
model = "Line thermometer"
driver = "line"
metrics = ["body_temperature"]

[serial]
baud = 9600
data_bits = 8
parity = "none"
stop_bits = 1
flow_control = "none"

[line]
select = '^TEMP '

[[line.fields]]
metric = "body_temperature"
unit = "Cel"
key = "T"
scale = 0.1
"#;
    std::fs::write(dir.path().join("ward-thermo.toml"), profile).unwrap();
    let out = run(&[
        "decode",
        "ward-thermo",
        "--devices",
        dir.path().to_str().unwrap(),
        "TEMP T=372",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"body_temperature\"") && stdout.contains("37.2"),
        "{stdout}"
    );
}

#[test]
fn decode_unknown_name_says_where_profiles_were_looked_for() {
    let out = run(&[
        "decode",
        "no-such-device",
        "--devices",
        "/nonexistent/profiles",
        "00",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/profiles") && err.contains("/etc/vitalgate/devices"),
        "{err}"
    );
}

#[test]
fn simulate_unknown_driver_or_fault_exits_2() {
    let out = run(&["simulate", "ble-heart-rate", "--pty"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonin-fmt2"));
    let out = run(&[
        "simulate",
        "nonin-fmt2",
        "--pty",
        "--faults",
        "garbage,gremlins",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gremlins"));
}

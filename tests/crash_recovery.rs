//! A panic is a bug, and the shipped binary aborts on one (`panic = "abort"`, issue 18). These
//! tests make the REAL daemon panic where a bug could strike (a debug build's
//! `VITALGATE_INJECT_PANIC`, src/crash.rs) and show that the work it struck cannot become a
//! crash loop (HAZ-16): the breadcrumb names it, and the next start quarantines the row or pauses
//! the device, says so in the journal, `status` and the audit log, while everything else runs.
//!
//! Real parts: the daemon process (restarted here as systemd would), the SQLite outbox on
//! disk, `vitalgate status` and `vitalgate audit export`, Mosquitto with mutual TLS 1.3.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::Daemon;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");
const NHS_NUMBER: &str = "9434765919";
const SIGABRT: i32 = 6;

/// A state dir with a master key from `vitalgate keygen`.
fn installation() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(dir.path().join("master.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen: {out:?}");
    dir
}

fn write_config(dir: &Path, tables: &str) -> PathBuf {
    let d = dir.display();
    let text = format!(
        "[gateway]\nid = \"crash-gw\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\n\
         [store]\nkey_file = \"{d}/master.key\"\n\n[ingest]\nmax_batch_wait_ms = 20\n\n\
         {tables}\n[[patient]]\nid = \"p1\"\nnhs_number = \"{NHS_NUMBER}\"\n\n\
         [[device]]\nid = \"sim-b\"\npatient = \"p1\"\ndriver = \"sim\"\ninterval_ms = 100\n"
    );
    let path = dir.join("vitalgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn status(config: &Path) -> Value {
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(config)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

async fn status_until(
    config: &Path,
    daemon: &Daemon,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(config);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within 60 s: {s:#}\n{:#?}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn device<'a>(s: &'a Value, id: &str) -> &'a Value {
    s["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["id"] == id))
        .unwrap_or(&Value::Null)
}

fn audited(config: &Path, event: &str) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["audit", "export", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "audit export: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e.to_string().contains(&format!("\"{event}\"")))
        .collect()
}

/// Starts the daemon with `inject` and waits for it to abort on the injected panic.
async fn run_until_it_aborts(config: &Path, inject: &str) -> Vec<String> {
    let mut d = Daemon::start_with_env(config, &[("VITALGATE_INJECT_PANIC", inject)]);
    let status = d.wait_exit(60).await;
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "the panic must abort the process: {status:?}; {:#?}",
        d.log_tail()
    );
    d.lines()
}

fn breadcrumb(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("crash-breadcrumb.json"))
        .expect("the panic left a breadcrumb");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_decoding_panics_twice_is_paused_and_the_others_go_on() {
    let dir = installation();
    let input = dir.path().join("readings.jsonl");
    std::fs::write(
        &input,
        "{\"metric\":\"heart_rate\",\"value\":72,\"unit\":\"/min\"}\n",
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[[device]]\nid = \"jsonl-a\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"{}\"\n",
            input.display()
        ),
    );
    let inject = "decoding device \"jsonl-a\"";

    let first = run_until_it_aborts(&config, inject).await;
    assert_eq!(
        breadcrumb(dir.path())["work"],
        serde_json::json!({"decoding_device": "jsonl-a"})
    );
    let said = first
        .iter()
        .find(|l| l.contains("panicked at"))
        .cloned()
        .unwrap_or_default();
    assert!(
        said.contains("while decoding device \"jsonl-a\""),
        "{first:#?}"
    );

    // Once: it runs again (a one-off bug must not take a device away).
    let second = run_until_it_aborts(&config, inject).await;
    assert!(
        second
            .iter()
            .any(|l| l.contains("the previous run stopped on a panic")),
        "{second:#?}"
    );

    // Twice within the hour: paused; the gateway stays up and the other device goes on.
    let mut third = Daemon::start_with_env(&config, &[("VITALGATE_INJECT_PANIC", inject)]);
    let before = status_until(&config, &third, "the device paused", |s| {
        device(s, "jsonl-a")["state"] == "paused"
    })
    .await;
    let reason = device(&before, "jsonl-a")["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("crashed the gateway 2 times"), "{reason}");
    let readings = |s: &Value| device(s, "sim-b")["readings"].as_u64().unwrap_or(0);
    let n = readings(&before);
    status_until(&config, &third, "the other device's readings", |s| {
        readings(s) > n + 5
    })
    .await;
    assert!(third.running(), "{:#?}", third.log_tail());
    assert_eq!(before["crashes"]["last_24h"], 2, "{before:#}");
    assert_eq!(before["crashes"]["last"]["work"], inject);
    let recovered = audited(&config, "crash_recovered");
    assert_eq!(recovered.len(), 2, "{recovered:#?}");
    assert!(
        recovered[1].to_string().contains("paused until"),
        "{recovered:#?}"
    );
    let log = third.stop().await;
    for line in first.iter().chain(&second).chain(&log) {
        assert!(
            !line.contains(NHS_NUMBER),
            "NHS Number in the journal: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_rendering_panics_is_quarantined_and_every_other_row_is_delivered() {
    let broker = Broker::start(Acl::gateways(&["crash-gw"]));
    let dir = installation();
    let (cert, key) = broker.write_client("crash-gw", false);
    let uplink = format!(
        "[uplink]\nbroker = \"127.0.0.1\"\nport = {}\nserver_name = \"localhost\"\n\
         ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         backoff_initial_ms = 100\nbackoff_max_s = 1\n",
        broker.port,
        broker.path("ca.pem").display(),
        cert.display(),
        key.display()
    );
    let config = write_config(dir.path(), &uplink);
    let (platform, _sub) = subscribe(&broker, "platform", "rpm/v1/gw/crash-gw/obs").await;
    let inject = "rendering outbox row 5";

    let first = run_until_it_aborts(&config, inject).await;
    assert_eq!(
        breadcrumb(dir.path())["work"],
        serde_json::json!({"rendering_row": 5})
    );
    assert!(
        first
            .iter()
            .any(|l| l.contains("while rendering outbox row 5")),
        "{first:#?}"
    );

    // The same bug is still there: the row is held, not rendered, and the rest flows.
    let d = Daemon::start_with_env(&config, &[("VITALGATE_INJECT_PANIC", inject)]);
    let s = status_until(&config, &d, "rows after row 5 delivered", |s| {
        s["outbox"]["quarantined"] == 1 && s["uplink"]["delivered"].as_u64().unwrap_or(0) > 10
    })
    .await;
    assert_eq!(s["outbox"]["refused"], 0, "{s:#}");
    platform.wait_for("/obs", 10, 30).await;
    let recovered = audited(&config, "crash_recovered");
    assert_eq!(recovered.len(), 1, "{recovered:#?}");
    assert!(
        recovered[0].to_string().contains("row 5 is quarantined"),
        "{recovered:#?}"
    );
    let log = d.stop().await;
    assert!(!log.iter().any(|l| l.contains("panicked at")), "{log:#?}");
    assert!(!dir.path().join("crash-breadcrumb.json").exists());
}

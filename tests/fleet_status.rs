//! Status telemetry and audit forwarding end to end (issue #14 acceptance 5 and 7's watch
//! table; issue #15 acceptance 1, forwarding): the REAL daemon (`vitalgate run`), a real
//! Mosquitto with mutual TLS 1.3 and an ACL, and the platform subscribing to
//! `rpm/v1/gw/+/status` and `.../audit`. kill -9 for crashes, a stopped broker for outages.
//! The publisher's lane order (alerts first, audit and readings taking turns) is checked on
//! the library's `Uplink` against the same broker.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::daemon::{wait_until, Daemon};
use support::*;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vitalgate::uplink::audit_lane::MemoryAudit;
use vitalgate::uplink::{Lane, MemorySource, Uplink};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");
const GW: &str = "status-gw";
const NHS: &str = "9434765919";

/// A hub's state dir and config against a broker.
struct Hub {
    dir: tempfile::TempDir,
    config: PathBuf,
    uplink: String,
}

impl Hub {
    fn new(b: &Broker, uplink_extra: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["keygen", "--out"])
            .arg(dir.path().join("master.key"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (cert, key) = b.write_client(GW, false);
        let uplink = format!(
            "[uplink]\nbroker = \"127.0.0.1\"\nport = {}\nserver_name = \"localhost\"\n\
             ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             backoff_initial_ms = 100\nbackoff_max_s = 1\n{uplink_extra}\n",
            b.port,
            b.path("ca.pem").display(),
            cert.display(),
            key.display()
        );
        let config = dir.path().join("vitalgate.toml");
        Hub {
            dir,
            config,
            uplink,
        }
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the config with these `[status]` lines and `[[device]]` tables.
    fn write(&self, status: &str, devices: &str) {
        let d = self.state().display();
        let text = format!(
            "[gateway]\nid = \"{GW}\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\n\
             [store]\nkey_file = \"{d}/master.key\"\n\n[status]\n{status}\n\n{up}\n\
             [[patient]]\nid = \"p1\"\nnhs_number = \"{NHS}\"\n\n{devices}\n",
            up = self.uplink,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// The audit log's lines, as written.
    fn audit_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.state().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Makes the daemon audit one refused reload (an invalid config on SIGHUP): an audit
    /// entry without a reconnect or a pipeline restart.
    async fn audit_a_refused_reload(&self, d: &Daemon) {
        let good = std::fs::read(&self.config).unwrap();
        let before = self.audit_lines().len();
        std::fs::write(&self.config, "[gateway\n").unwrap();
        d.signal("HUP");
        wait_until(30, "config_reload_refused audited", || {
            self.audit_lines().len() > before
        })
        .await;
        std::fs::write(&self.config, good).unwrap();
    }
}

const TWO_SIMS: &str = "[[device]]\nid = \"sim-1\"\npatient = \"p1\"\ndriver = \"sim\"\ninterval_ms = 200\n\n\
                        [[device]]\nid = \"sim-2\"\npatient = \"p1\"\ndriver = \"sim\"\ninterval_ms = 200\n";

fn json(p: &[u8]) -> Value {
    serde_json::from_slice(p)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(p)))
}

/// Status payloads that carry the telemetry (not the short online/offline form).
fn telemetry(rx: &Received) -> Vec<Value> {
    rx.on("/status")
        .iter()
        .map(|p| json(p))
        .filter(|v| v.get("uptime_s").is_some())
        .collect()
}

async fn telemetry_where(rx: &Received, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = telemetry(rx).into_iter().rev().find(|v| pred(v)) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 60 s waiting for {what}; the last status: {:?}",
            telemetry(rx).last()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Validates payloads with Python `jsonschema` against schemas/gateway-status.v1.json (Draft
/// 2020-12, with format checks); returns one line per error.
fn schema_errors(payloads: &[Value]) -> Vec<String> {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/gateway-status.v1.json");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payloads.json");
    std::fs::write(&file, serde_json::to_vec(payloads).unwrap()).unwrap();
    let script = r#"
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
for i, e in enumerate(json.load(open(sys.argv[2]))):
    for err in v.iter_errors(e):
        print(f"payload {i} ({e.get('state')}): {'/'.join(map(str, err.absolute_path))}: {err.message}")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&schema)
        .arg(&file)
        .output()
        .expect("python3 with jsonschema is needed to validate status payloads");
    assert!(
        out.status.success(),
        "the schema validator did not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

// ---- Status telemetry (issue 14, acceptance 5) ----

#[tokio::test(flavor = "multi_thread")]
async fn status_telemetry_reports_the_running_hub_and_validates_against_its_schema() {
    let b = Broker::start(Acl::gateways(&[GW]));
    let hub = Hub::new(&b, "");
    hub.write("", TWO_SIMS);
    let (rx, _sub) = subscribe(&b, "platform-status", "rpm/v1/gw/+/status").await;
    let d = Daemon::start(&hub.config);
    let t = telemetry_where(&rx, "telemetry with both devices read", |v| {
        v["devices"].as_array().is_some_and(|ds| {
            ds.len() == 2
                && ds
                    .iter()
                    .all(|d| d["state"] == "connected" && d["last_reading_at"].is_string())
        })
    })
    .await;
    assert_eq!(t["schema"], "gateway-status.v1");
    assert_eq!((&t["state"], &t["gateway"]), (&"online".into(), &GW.into()));
    assert_eq!(t["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        t["devices"][0]["patient"], "p1",
        "patients by pseudonym: {t}"
    );
    assert!(t["config_version"].is_null(), "no fleet document: {t}");
    assert!(
        t["outbox"]["depth"].is_u64() && t["disk"]["free_bytes"].as_u64() > Some(0),
        "{t}"
    );
    assert_eq!(
        t["certificate"]["clock_synced"], t["clock"]["synced"],
        "days left say which clock they were counted on: {t}"
    );
    assert!(t["certificate"]["days_left"].as_i64() >= Some(0), "{t}");
    assert!(t["audit"]["seq"].as_u64() >= Some(1), "the audit head: {t}");
    for k in ["open", "high", "medium", "low"] {
        assert!(t["alerts"][k].is_u64(), "alerts.{k}: {t}");
    }
    d.stop().await;
    // The clean stop's `offline` arrives too; every payload (online and offline) validates.
    rx.wait_for("/status", 2, 30).await;
    within(30, "the offline status", async {
        while !rx
            .on("/status")
            .iter()
            .any(|p| json(p)["state"] == "offline")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let all: Vec<Value> = rx.on("/status").iter().map(|p| json(p)).collect();
    let errs = schema_errors(&all);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    for p in rx.on("/status") {
        assert!(
            !String::from_utf8_lossy(&p).contains(NHS),
            "NHS Number in status"
        );
    }
    // The validator is live: a payload missing part of the telemetry is refused.
    let mut broken = t.clone();
    broken.as_object_mut().unwrap().remove("audit");
    let errs = schema_errors(&[broken]).join("\n");
    assert!(
        errs.contains("'audit' is a dependency of 'uptime_s'"),
        "{errs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_falling_silent_republishes_the_status_long_before_the_interval() {
    let b = Broker::start(Acl::gateways(&[GW]));
    let hub = Hub::new(&b, "");
    let file = hub.state().join("readings.jsonl");
    std::fs::write(&file, "").unwrap();
    hub.write(
        "telemetry_interval_s = 3600",
        &format!(
            "[[device]]\nid = \"j1\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"{}\"\nexpected_interval_s = 2\n",
            file.display()
        ),
    );
    let (rx, _sub) = subscribe(&b, "platform-change", "rpm/v1/gw/+/status").await;
    let d = Daemon::start(&hub.config);
    telemetry_where(&rx, "telemetry with j1 connected", |v| {
        v["devices"][0]["state"] == "connected"
    })
    .await;
    std::fs::write(&file, "{\"metric\":\"spo2\",\"value\":97,\"unit\":\"%\"}\n").unwrap();
    // Then nothing more arrives: 2 s after its reading j1 is `no_data`, and the status says
    // so without a reconnect, an hour before the interval would.
    let silent = telemetry_where(&rx, "telemetry with j1 silent", |v| {
        v["devices"][0]["state"] == "no_data"
    })
    .await;
    assert!(
        silent["devices"][0]["last_reading_at"].is_string(),
        "{silent}"
    );
    let connects = d
        .lines()
        .iter()
        .filter(|l| l.contains("uplink connected"))
        .count();
    assert_eq!(
        connects, 1,
        "published on the same connection, not by a reconnect"
    );
    assert!(
        silent["alerts"]["open"].as_u64() >= Some(1),
        "device silent alarm open: {silent}"
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_of_readings_does_not_publish_a_status_per_reading() {
    let b = Broker::start(Acl::gateways(&[GW]));
    let hub = Hub::new(&b, "");
    hub.write("telemetry_interval_s = 3600", TWO_SIMS);
    let (rx, _sub) = subscribe(&b, "platform-stream", "rpm/v1/gw/+/#").await;
    let d = Daemon::start(&hub.config);
    rx.wait_for("/obs", 400, 120).await;
    let (obs, statuses) = (rx.on("/obs").len(), rx.on("/status").len());
    assert!(
        statuses * 20 < obs,
        "{statuses} status messages for {obs} readings: status follows readings"
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_hub_republishes_its_status_every_telemetry_interval() {
    let b = Broker::start(Acl::gateways(&[GW]));
    let hub = Hub::new(&b, "");
    hub.write("telemetry_interval_s = 10", "");
    let (rx, _sub) = subscribe(&b, "platform-interval", "rpm/v1/gw/+/status").await;
    let d = Daemon::start(&hub.config);
    // Nothing changes on a hub without devices: each payload after the first is the interval.
    within(90, "three telemetry payloads", async {
        while telemetry(&rx).len() < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let sent: Vec<String> = telemetry(&rx)
        .iter()
        .map(|v| v["sent_at"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        sent.windows(2).all(|w| w[0] < w[1]),
        "fresh each time: {sent:?}"
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_names_the_fleet_configuration_version_in_force() {
    const OPS: &str = "status-ops";
    let mut acl = Acl::gateways(&[GW]);
    acl.0
        .push((OPS.into(), vec!["rpm/v1/gw/+/config/desired".into()]));
    let b = Broker::start(acl);
    let hub = Hub::new(&b, "");
    let keys = vitalgate::fleet::keys::generate(&hub.state().join("fleet-keys")).unwrap();
    let signer = vitalgate::fleet::keys::SigningKey::load(&keys.private_key).unwrap();
    hub.write(
        &format!(
            "\n[fleet]\ntrusted_keys = [\"{}\"]",
            keys.public_key.display()
        ),
        "",
    );
    let (rx, _sub) = subscribe(&b, "platform-version", "rpm/v1/gw/+/status").await;
    let _d = Daemon::start(&hub.config);
    let first = telemetry_where(&rx, "telemetry", |_| true).await;
    assert!(first["config_version"].is_null(), "{first}");
    let doc = vitalgate::fleet::document::ConfigPayload {
        gateway: GW.into(),
        version: 3,
        issued_at: time::OffsetDateTime::now_utc(),
        expires_at: None,
        overlay: "[status]\ntelemetry_interval_s = 30\n".into(),
    }
    .sign(&signer);
    let mut opts = rumqttc::v5::MqttOptions::new("status-ops-client", "localhost", b.port);
    let (cert, key) = b.write_client(OPS, false);
    let tls = vitalgate::uplink::tls::load(
        &vitalgate::uplink::UplinkConfig {
            broker: "localhost".into(),
            ca_file: b.path("ca.pem"),
            cert_file: cert,
            key_file: key,
            ..Default::default()
        },
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls.config),
    ));
    let (ops, mut el) = rumqttc::v5::AsyncClient::new(opts, 16);
    let pump = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    ops.publish(
        format!("rpm/v1/gw/{GW}/config/desired"),
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        true,
        doc,
    )
    .await
    .unwrap();
    telemetry_where(&rx, "telemetry naming fleet version 3", |v| {
        v["config_version"] == 3
    })
    .await;
    pump.abort();
}

// ---- fleet watch (issue 14, acceptance 7) ----

#[tokio::test(flavor = "multi_thread")]
async fn fleet_watch_fills_every_column_from_the_status_telemetry() {
    let b = Broker::start(Acl::gateways(&[GW]));
    let hub = Hub::new(&b, "");
    hub.write("", TWO_SIMS);
    let (rx, _sub) = subscribe(&b, "platform-watch-status", "rpm/v1/gw/+/status").await;
    let _d = Daemon::start(&hub.config);
    telemetry_where(&rx, "telemetry with both devices connected", |v| {
        v["devices"]
            .as_array()
            .is_some_and(|ds| ds.len() == 2 && ds.iter().all(|d| d["state"] == "connected"))
    })
    .await;
    let platform = hub.state().join("platform.toml");
    std::fs::write(
        &platform,
        format!(
            "[uplink]\nbroker = \"127.0.0.1\"\nport = {}\nserver_name = \"localhost\"\n\
             ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            b.port,
            b.path("ca.pem").display(),
            b.path("platform.pem").display(),
            b.path("platform.key").display(),
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["fleet", "watch", "--seconds", "3", "--config"])
            .arg(&platform)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last_table = text.rsplit("GATEWAY").next().unwrap();
    let row: Vec<&str> = last_table
        .lines()
        .find(|l| l.starts_with(GW))
        .unwrap_or_else(|| panic!("no row for {GW}: {text}"))
        .split_whitespace()
        .collect();
    // GATEWAY STATE CONFIG LAST BACKLOG OLDEST_S DEVICES ALERTS CERT_DAYS
    assert_eq!(row.len(), 9, "{text}");
    assert_eq!(&row[..2], [GW, "online"], "{text}");
    assert_eq!(row[2], "-", "no fleet document in force: {text}");
    assert!(row[4].parse::<u64>().is_ok(), "backlog: {text}");
    assert!(
        row[5] == "-" || row[5].parse::<u64>().is_ok(),
        "oldest: {text}"
    );
    assert_eq!(row[6], "2/2", "devices: {text}");
    assert!(
        row[7].trim_end_matches('!').parse::<u64>().is_ok(),
        "alerts: {text}"
    );
    assert!(
        row[8].trim_end_matches('?').parse::<i64>().is_ok(),
        "certificate days: {text}"
    );
}

// ---- Audit forwarding (issue 15, acceptance 1) ----

/// The seq of an audit line.
fn seq(line: &[u8]) -> u64 {
    json(line)["seq"]
        .as_u64()
        .expect("an audit entry has a seq")
}

/// Checks what the platform received on `audit` against the log file: every entry arrived,
/// each byte for byte as written; new entries arrived in log order with none skipped (an
/// entry that is not new is an identical re-send: at-least-once); and the chain links.
fn assert_forwarded_in_order(received: &[Vec<u8>], file: &[String]) {
    let mut next = 0usize; // index in `file` of the next entry not yet received
    for (i, got) in received.iter().enumerate() {
        let s = seq(got);
        match file.iter().position(|l| seq(l.as_bytes()) == s) {
            Some(at) if at == next => {
                assert_eq!(got, file[at].as_bytes(), "entry seq {s} not as written");
                next += 1;
            }
            Some(at) if at < next => {
                assert_eq!(got, file[at].as_bytes(), "re-sent entry seq {s} differs");
            }
            Some(_) => panic!(
                "message {i}: entry seq {s} arrived before seq {} (skipped or out of order)",
                seq(file[next].as_bytes())
            ),
            None => panic!("message {i}: seq {s} is not in the log"),
        }
    }
    assert_eq!(
        next,
        file.len(),
        "entries never forwarded: {:?}",
        &file[next..]
    );
    // The platform can check the chain: each entry names the previous one's MAC.
    let values: Vec<Value> = file.iter().map(|l| json(l.as_bytes())).collect();
    for w in values.windows(2) {
        if w[0]["mac"].is_string() && w[1]["mac"].is_string() {
            assert_eq!(
                w[1]["prev"], w[0]["mac"],
                "chain link at seq {}",
                w[1]["seq"]
            );
        }
    }
}

async fn all_forwarded(rx: &Received, hub: &Hub, secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let file = hub.audit_lines();
        let got = rx.on("/audit");
        let missing: Vec<u64> = file
            .iter()
            .filter(|l| !got.iter().any(|g| g == l.as_bytes()))
            .map(|l| seq(l.as_bytes()))
            .collect();
        if !file.is_empty() && missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {secs} s, {} of {} audit entries never arrived, seqs {:?}",
            missing.len(),
            file.len(),
            &missing[..missing.len().min(20)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_entries_arrive_in_order_each_as_its_line_in_the_log() {
    let b = Broker::start(Acl::gateways(&[GW]));
    let hub = Hub::new(&b, "");
    hub.write("", "");
    let (rx, _sub) = subscribe(&b, "platform-audit", "rpm/v1/gw/+/audit").await;
    let d = Daemon::start(&hub.config);
    all_forwarded(&rx, &hub, 60).await;
    for _ in 0..5 {
        hub.audit_a_refused_reload(&d).await;
    }
    all_forwarded(&rx, &hub, 60).await;
    let file = hub.audit_lines();
    assert!(file.len() >= 6, "{file:?}");
    assert_forwarded_in_order(&rx.on("/audit"), &file);
    drop(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_head_in_the_status_telemetry_is_the_last_entry_forwarded() {
    let b = Broker::start(Acl::gateways(&[GW]));
    let hub = Hub::new(&b, "");
    hub.write("", "");
    let (rx, _sub) = subscribe(&b, "platform-head", "rpm/v1/gw/+/#").await;
    let d = Daemon::start(&hub.config);
    all_forwarded(&rx, &hub, 60).await;
    hub.audit_a_refused_reload(&d).await;
    all_forwarded(&rx, &hub, 60).await;
    let last = json(rx.on("/audit").last().unwrap());
    let t = telemetry_where(&rx, "telemetry naming the last entry", |v| {
        v["audit"]["seq"] == last["seq"]
    })
    .await;
    assert_eq!(
        t["audit"]["mac"], last["mac"],
        "head {t} vs last entry {last}"
    );
    assert_eq!(t["audit"]["chain_broken"], false);
    drop(d);
}

/// Writes `n` entries into the hub's audit log with its own key (a hub that has audited a
/// lot before it first forwarded anything).
fn fill_audit_log(hub: &Hub, n: usize) {
    let key = vitalgate::store::MasterKey::load(&hub.state().join("master.key")).unwrap();
    let log = vitalgate::audit::AuditLog::open(hub.state(), &key).unwrap();
    for i in 0..n {
        log.record("test_backlog", serde_json::json!({ "i": i }))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_forwarding_killed_mid_way_loses_no_entry_after_restart() {
    let b = Broker::start(Acl::gateways(&[GW]));
    // One entry in flight at a time: the kill lands in the middle of the backlog.
    let hub = Hub::new(&b, "inflight = 1");
    hub.write("", "");
    fill_audit_log(&hub, 1500);
    let (rx, _sub) = subscribe(&b, "platform-kill", "rpm/v1/gw/+/audit").await;
    let d = Daemon::start(&hub.config);
    rx.wait_for("/audit", 1, 60).await;
    d.kill().await;
    let at_kill = rx.on("/audit").len();
    let total = hub.audit_lines().len();
    assert!(
        at_kill < total,
        "the kill came after everything was forwarded ({at_kill} of {total})"
    );
    let d = Daemon::start(&hub.config);
    all_forwarded(&rx, &hub, 120).await;
    assert_forwarded_in_order(&rx.on("/audit"), &hub.audit_lines());
    drop(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_entries_written_while_the_broker_is_down_are_forwarded_once_it_is_back() {
    let mut b = Broker::start(Acl::gateways(&[GW]));
    let hub = Hub::new(&b, "");
    hub.write("", "");
    let (rx, _sub) = subscribe(&b, "platform-outage", "rpm/v1/gw/+/audit").await;
    let d = Daemon::start(&hub.config);
    all_forwarded(&rx, &hub, 60).await;
    let before = rx.on("/audit").len();
    b.stop("KILL");
    for _ in 0..3 {
        hub.audit_a_refused_reload(&d).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rx.on("/audit").len(),
        before,
        "nothing can arrive while the broker is down"
    );
    b.restart();
    all_forwarded(&rx, &hub, 90).await;
    assert_forwarded_in_order(&rx.on("/audit"), &hub.audit_lines());
    drop(d);
}

// ---- Lane order in the publisher ----

#[tokio::test(flavor = "multi_thread")]
async fn alerts_go_first_then_audit_and_readings_take_turns() {
    let b = Broker::start(Acl::gateways(&[GW]));
    let (rx, _sub) = subscribe(&b, "platform-lanes", "rpm/v1/gw/+/#").await;
    let src = MemorySource::new();
    for i in 0..100 {
        src.push(Lane::Reading, format!("{{\"reading\":{i}}}").into_bytes());
    }
    for i in 0..5 {
        src.push(Lane::Alert, format!("{{\"alert\":{i}}}").into_bytes());
    }
    let audit = MemoryAudit::default();
    audit.entries.lock().unwrap().extend(1..=100);
    let cfg = b.uplink_config(GW);
    let up = Uplink::new(cfg, src.clone(), Arc::new(Notify::new()))
        .unwrap()
        .with_audit(Box::new(audit.clone()));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(up.run(cancel.clone()));
    rx.wait_for("/audit", 100, 60).await;
    rx.wait_for("/obs", 100, 60).await;
    let order: Vec<&'static str> = rx
        .all()
        .into_iter()
        .filter_map(|(t, _)| {
            ["/alert", "/audit", "/obs"]
                .into_iter()
                .find(|s| t.ends_with(s))
        })
        .collect();
    assert_eq!(order[..5], ["/alert"; 5], "alerts first: {order:?}");
    // Behind them, neither audit nor readings waits for the other's backlog.
    let first_half = &order[5..105];
    let audits = first_half.iter().filter(|t| **t == "/audit").count();
    assert!(
        (40..=60).contains(&audits),
        "{audits} audit entries among the first 100 after the alerts: {order:?}"
    );
    wait_until(30, "the audit cursor at the last entry", || {
        *audit.cursor.lock().unwrap() == 100
    })
    .await;
    cancel.cancel();
    within(30, "uplink stop", task).await.unwrap();
}

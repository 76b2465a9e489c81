//! Fleet configuration end to end (issue #14, acceptance 1-4 and 9): the REAL daemon
//! (`vitalgate run`), a real Mosquitto with mutual TLS 1.3 and an ACL, an operator client
//! publishing signed documents on `config/desired` (retained), and the platform reading
//! `config/reported`. Documents are signed with the library's own signer (`vitalgate fleet
//! sign` is tests/fleet_cli.rs).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use serde_json::Value;
use support::daemon::Daemon;
use support::*;
use time::OffsetDateTime;
use vitalgate::fleet::document::ConfigPayload;
use vitalgate::fleet::keys::{self, SigningKey};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");
const GW: &str = "fleet-gw";
const OPS: &str = "fleet-ops";

/// A hub with a fleet key it trusts, a broker, and the operator's connection.
struct Hub {
    broker: Broker,
    dir: tempfile::TempDir,
    config: PathBuf,
    key: SigningKey,
    ops: AsyncClient,
    _ops_task: tokio::task::JoinHandle<()>,
}

impl Hub {
    async fn new() -> Hub {
        let mut acl = Acl::gateways(&[GW]);
        acl.0.push((
            OPS.into(),
            vec![
                "rpm/v1/gw/+/config/desired".into(),
                "rpm/v1/gw/+/cmd".into(),
            ],
        ));
        let broker = Broker::start(acl);
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["keygen", "--out"])
            .arg(dir.path().join("master.key"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let g = keys::generate(&dir.path().join("fleet-keys")).unwrap();
        let key = SigningKey::load(&g.private_key).unwrap();
        let (cert, ckey) = broker.write_client(GW, false);
        let d = dir.path().display();
        let text = format!(
            "[gateway]\nid = \"{GW}\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\
             [store]\nkey_file = \"{d}/master.key\"\n\
             [uplink]\nbroker = \"127.0.0.1\"\nport = {port}\nserver_name = \"localhost\"\n\
             ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{ckey}\"\n\
             backoff_initial_ms = 100\nbackoff_max_s = 1\n\
             [fleet]\ntrusted_keys = [\"{public}\"]\n\
             [[patient]]\nid = \"p1\"\nnhs_number = \"9434765919\"\n\
             [[device]]\nid = \"d1\"\npatient = \"p1\"\ndriver = \"sim\"\ninterval_ms = 500\n",
            port = broker.port,
            ca = broker.path("ca.pem").display(),
            cert = cert.display(),
            ckey = ckey.display(),
            public = g.public_key.display(),
        );
        let config = dir.path().join("vitalgate.toml");
        std::fs::write(&config, text).unwrap();
        let (ops, task) = operator(&broker).await;
        Hub {
            broker,
            dir,
            config,
            key,
            ops,
            _ops_task: task,
        }
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Publishes `doc` retained on this hub's `config/desired`, as the platform does.
    async fn desire(&self, doc: impl Into<Vec<u8>>) {
        self.ops
            .publish(
                format!("rpm/v1/gw/{GW}/config/desired"),
                QoS::AtLeastOnce,
                true,
                doc.into(),
            )
            .await
            .unwrap();
    }

    fn sign(&self, version: u64, overlay: &str) -> String {
        payload(version, overlay).sign(&self.key)
    }

    /// Every audit entry.
    fn audit_entries(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// The `fleet_*` audit entries.
    fn audit_events(&self) -> Vec<Value> {
        self.audit_entries()
            .into_iter()
            .filter(|e| e["event"].as_str().is_some_and(|n| n.starts_with("fleet_")))
            .collect()
    }

    fn status(&self) -> Value {
        let out = Command::new(BIN)
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        // `status` is also a monitoring probe: 0 healthy, 1 degraded, 2 unreachable; the
        // JSON is printed in every case.
        assert!(
            matches!(out.status.code(), Some(0..=2)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn payload(version: u64, overlay: &str) -> ConfigPayload {
    ConfigPayload {
        gateway: GW.into(),
        version,
        issued_at: OffsetDateTime::now_utc(),
        expires_at: None,
        overlay: overlay.into(),
    }
}

/// The operator's MQTT client (its own certificate, allowed to write `config/desired`).
async fn operator(b: &Broker) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    operator_client(b, OPS, "fleet-ops-client").await
}

/// Reports on `config/reported`, as the platform sees them.
async fn reported(h: &Hub, id: &str) -> Received {
    subscribe(&h.broker, id, &format!("rpm/v1/gw/{GW}/config/reported"))
        .await
        .0
}

/// Waits for a report satisfying `pred`; returns it.
async fn report_where(
    rx: &Received,
    d: &Daemon,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = rx
            .on("/config/reported")
            .iter()
            .filter_map(|p| serde_json::from_slice::<Value>(p).ok())
            .find(|v| pred(v))
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no report {what}; got {:?}; daemon log: {:#?}",
            rx.on("/config/reported")
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>(),
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An overlay that binds a second patient's device and keeps 30 days.
const REBIND: &str = "[store]\nretention_days = 30\n\
    [[patient]]\nid = \"p1\"\nnhs_number = \"9434765919\"\n\
    [[patient]]\nid = \"p2\"\n\
    [[device]]\nid = \"d1\"\npatient = \"p1\"\ndriver = \"sim\"\ninterval_ms = 500\n\
    [[device]]\nid = \"d2\"\npatient = \"p2\"\ndriver = \"sim\"\ninterval_ms = 500\n";

fn device_ids(status: &Value) -> Vec<String> {
    status["devices"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn devices_become(h: &Hub, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Only the running daemon's answer: `status` of a daemon not yet up lists the
        // configured devices too (from the config), which would end the wait before the
        // daemon has started (a SIGHUP sent then finds no config that ran to go back to).
        let status = h.status();
        let mut ids = device_ids(&status);
        ids.sort();
        if status["daemon"]["running"] == true && ids == want {
            return;
        }
        assert!(Instant::now() < deadline, "devices {ids:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn good_document_is_applied_reported_audited_and_shown_in_status() {
    let h = Hub::new().await;
    let rx = reported(&h, "platform-good").await;
    let d = Daemon::start(&h.config);
    devices_become(&h, &["d1"]).await;
    let doc = h.sign(1, REBIND);
    h.desire(doc).await;
    let r = report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;
    assert_eq!(r["version"], 1);
    assert_eq!(r["running_version"], 1);
    assert_eq!(r["key_id"], h.key.key_id());
    assert_eq!(r["sha256"].as_str().unwrap().len(), 64);
    assert!(r["applied_at"].is_string());
    devices_become(&h, &["d1", "d2"]).await;
    let s = h.status();
    assert_eq!(s["fleet"]["applied"]["version"], 1);
    assert_eq!(s["fleet"]["last_report"]["result"], "applied");
    let audit = h.audit_events();
    assert!(
        audit
            .iter()
            .any(|e| e["event"] == "fleet_config_applied" && e["details"]["version"] == 1),
        "{audit:?}"
    );
}

/// One rejection end to end: the document is refused, reported with `code`, audited, and
/// the running configuration (version 1, devices d1 and d2) stays.
async fn rejected_end_to_end(code: &str, doc: impl FnOnce(&Hub) -> Vec<u8>) {
    let h = Hub::new().await;
    let rx = reported(&h, &format!("platform-{code}")).await;
    let d = Daemon::start(&h.config);
    h.desire(h.sign(1, REBIND)).await;
    report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;
    devices_become(&h, &["d1", "d2"]).await;
    let before = std::fs::read(h.state().join("fleet-applied.json")).unwrap();

    h.desire(doc(&h)).await;
    let r = report_where(&rx, &d, code, |v| v["result"] == "rejected").await;
    assert_eq!(r["reason"], code, "{r}");
    assert_eq!(r["running_version"], 1);
    assert!(
        !r.to_string().contains("9434765918") && !r.to_string().contains("9434765919"),
        "NHS Number in the report: {r}"
    );
    let audit = h.audit_events();
    assert!(
        audit
            .iter()
            .any(|e| e["event"] == "fleet_config_rejected" && e["details"]["reason"] == code),
        "{audit:?}"
    );
    assert_eq!(
        std::fs::read(h.state().join("fleet-applied.json")).unwrap(),
        before,
        "the stored configuration changed"
    );
    devices_become(&h, &["d1", "d2"]).await;
}

/// [`REBIND`] with a change that cannot be applied live (`status.telemetry_interval_s`): the
/// pipeline restarts under it.
fn rebind_with_restart() -> String {
    format!("[status]\ntelemetry_interval_s = 30\n{REBIND}")
}

/// A debug build of the daemon whose pipeline refuses to start while device d2 is configured
/// (`VITALGATE_INJECT_RUN_REFUSAL`): no fleet-settable key can make it refuse today, yet the
/// supervisor's fallback must hold for whatever one day does.
fn refusing_d2(h: &Hub) -> Daemon {
    Daemon::start_with_env(&h.config, &[("VITALGATE_INJECT_RUN_REFUSAL", "d2")])
}

fn audited(h: &Hub, event: &str) -> Vec<Value> {
    h.audit_entries()
        .into_iter()
        .filter(|e| e["event"] == event)
        .collect()
}

/// Issue 14: a document the pipeline refuses to run under (a restart is needed) never becomes
/// a crash loop: the supervisor goes back to the configuration that ran, audits
/// `config_fallback`, and the platform is told `rejected` / `failed_to_start`.
#[tokio::test(flavor = "multi_thread")]
async fn a_document_the_pipeline_refuses_falls_back_to_the_config_that_ran() {
    let h = Hub::new().await;
    let rx = reported(&h, "platform-refused").await;
    let mut d = refusing_d2(&h);
    devices_become(&h, &["d1"]).await;
    h.desire(h.sign(1, &rebind_with_restart())).await;
    let r = report_where(&rx, &d, "failed_to_start", |v| v["result"] == "rejected").await;
    assert_eq!(r["reason"], "failed_to_start", "{r}");
    devices_become(&h, &["d1"]).await;
    let fallback = audited(&h, "config_fallback");
    assert_eq!(fallback.len(), 1, "{fallback:?}");
    assert_eq!(fallback[0]["details"]["to"], "last good configuration");
    assert!(d.running(), "{:#?}", d.log_tail());
}

/// Issue 14: a stored document the pipeline refuses at start (e.g. after an upgrade) gives
/// way to the local configuration, reported `failed_to_start`; the gateway runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_document_the_pipeline_refuses_at_start_gives_way_to_the_local_config() {
    let h = Hub::new().await;
    let rx = reported(&h, "platform-refused-at-start").await;
    let d = Daemon::start(&h.config);
    h.desire(h.sign(1, &rebind_with_restart())).await;
    report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;
    devices_become(&h, &["d1", "d2"]).await;
    d.stop().await;

    let mut d = refusing_d2(&h);
    let r = report_where(&rx, &d, "failed_to_start", |v| v["result"] == "rejected").await;
    assert_eq!(r["reason"], "failed_to_start", "{r}");
    devices_become(&h, &["d1"]).await;
    let fallback = audited(&h, "config_fallback");
    assert_eq!(fallback.len(), 1, "{fallback:?}");
    assert_eq!(fallback[0]["details"]["to"], "local configuration");
    assert!(d.running(), "{:#?}", d.log_tail());
}

const SHRINK: &str =
    "[[patient]]\nid = \"p1\"\n[[device]]\nid = \"d1\"\npatient = \"p1\"\ndriver = \"sim\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn document_with_a_bad_signature_is_rejected() {
    rejected_end_to_end("bad_signature", |h| {
        let doc = h.sign(2, SHRINK);
        let (head, sig) = doc.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        format!("{head}.{flipped}{}", &sig[1..]).into_bytes()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn document_signed_by_an_untrusted_key_is_rejected() {
    rejected_end_to_end("untrusted_key", |h| {
        let g = keys::generate(&h.state().join("other-keys")).unwrap();
        let other = SigningKey::load(&g.private_key).unwrap();
        payload(2, SHRINK).sign(&other).into_bytes()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_gateways_document_is_rejected() {
    rejected_end_to_end("wrong_gateway", |h| {
        let mut p = payload(2, SHRINK);
        p.gateway = "other-gw".into();
        p.sign(&h.key).into_bytes()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn older_version_is_rejected() {
    rejected_end_to_end("not_newer", |h| h.sign(0, SHRINK).into_bytes()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_document_is_rejected() {
    rejected_end_to_end("expired", |h| {
        let mut p = payload(2, SHRINK);
        p.expires_at = Some(OffsetDateTime::now_utc() - time::Duration::minutes(1));
        p.sign(&h.key).into_bytes()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_document_is_rejected() {
    rejected_end_to_end("too_large", |h| {
        let pad = format!("# {}\n", "x".repeat(vitalgate::fleet::MAX_DOCUMENT_BYTES));
        h.sign(2, &format!("{pad}{SHRINK}")).into_bytes()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn document_with_an_invalid_field_is_rejected() {
    rejected_end_to_end("invalid", |h| {
        h.sign(2, "[store]\nretention_days = 0\n").into_bytes()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn document_with_an_invalid_nhs_number_is_rejected() {
    rejected_end_to_end("invalid", |h| {
        h.sign(2, &REBIND.replace("9434765919", "9434765918"))
            .into_bytes()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn document_setting_a_local_only_key_is_rejected() {
    rejected_end_to_end("local_only_key", |h| {
        h.sign(2, "[store]\nkey_file = \"/tmp/stolen.key\"\n")
            .into_bytes()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_document_after_a_restart_is_rejected() {
    let h = Hub::new().await;
    let rx = reported(&h, "platform-replay").await;
    let mut d = Daemon::start(&h.config);
    let v1 = h.sign(1, REBIND);
    h.desire(v1.clone()).await;
    report_where(&rx, &d, "applied v1", |v| {
        v["version"] == 1 && v["result"] == "applied"
    })
    .await;
    h.desire(h.sign(2, SHRINK)).await;
    report_where(&rx, &d, "applied v2", |v| {
        v["version"] == 2 && v["result"] == "applied"
    })
    .await;
    devices_become(&h, &["d1"]).await;

    d.kill_now();
    let d = Daemon::start(&h.config);
    // The restarted hub runs version 2 (the retained desired), and then sees version 1 again.
    devices_become(&h, &["d1"]).await;
    h.desire(v1).await;
    let r = report_where(&rx, &d, "v1 replay rejected", |v| v["result"] == "rejected").await;
    assert_eq!(r["reason"], "not_newer");
    assert_eq!(r["version"], 1);
    assert_eq!(r["running_version"], 2);
    devices_become(&h, &["d1"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retained_document_seen_again_after_a_restart_is_not_reported_as_rejected() {
    let h = Hub::new().await;
    let rx = reported(&h, "platform-retained").await;
    let mut d = Daemon::start(&h.config);
    h.desire(h.sign(1, REBIND)).await;
    report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;
    d.kill_now();
    let d = Daemon::start(&h.config);
    devices_become(&h, &["d1", "d2"]).await;
    // The retained desired document reaches the restarted hub at once; give it a moment to
    // (wrongly) answer, then a fresh document proves the agent is listening.
    h.desire(h.sign(2, REBIND)).await;
    report_where(&rx, &d, "applied v2", |v| v["version"] == 2).await;
    assert!(
        !rx.on("/config/reported")
            .iter()
            .any(|p| String::from_utf8_lossy(p).contains("rejected")),
        "the running document was reported as rejected"
    );
}

/// The overlay of version `v` in the kill test: odd versions bind two devices, even one.
fn overlay_of(v: u64) -> &'static str {
    if v % 2 == 1 {
        REBIND
    } else {
        SHRINK
    }
}

fn devices_of(v: u64) -> &'static [&'static str] {
    if v == 0 || v % 2 == 0 {
        &["d1"]
    } else {
        &["d1", "d2"]
    }
}

async fn stored_version_becomes(h: &Hub, v: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = vitalgate::fleet::state::load_meta(h.state())
            .unwrap()
            .map_or(0, |a| a.version);
        if got == v {
            return;
        }
        assert!(Instant::now() < deadline, "stored version {got}, want {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_of_an_apply_leaves_the_old_or_the_new_config() {
    use rand::Rng;
    let h = Hub::new().await;
    let mut rng = rand::thread_rng();
    let mut hits = [0u32; 2];
    for v in 1..=20u64 {
        let mut d = Daemon::start(&h.config);
        d.wait_log("fleet link subscribed").await;
        // The retained document v-1 reaches the restarted hub: it runs v-1, stored or not
        // before the last kill.
        stored_version_becomes(&h, v - 1).await;
        devices_become(&h, devices_of(v - 1)).await;

        let doc = h.sign(v, overlay_of(v));
        h.desire(doc.clone()).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
        d.kill_now();

        let master = vitalgate::store::MasterKey::load(&h.state().join("master.key")).unwrap();
        let stored = vitalgate::fleet::state::load(h.state(), &master)
            .unwrap_or_else(|e| panic!("after kill -9 in apply {v}: {e}"));
        let version = stored.as_ref().map_or(0, |a| a.version);
        assert!(
            version == v - 1 || version == v,
            "apply {v}: stored version {version} is neither the old nor the new one"
        );
        if let Some(a) = stored.filter(|a| a.version == v) {
            assert_eq!(a.document, doc, "apply {v}: a mix of two documents");
        }
        hits[usize::from(version == v)] += 1;
    }
    eprintln!(
        "kills before the new document was stored: {}, after: {}",
        hits[0], hits[1]
    );
    let d = Daemon::start(&h.config);
    d.wait_log("fleet link subscribed").await;
    stored_version_becomes(&h, 20).await;
    devices_become(&h, devices_of(20)).await;
}

// ---- Commands (acceptance 6) ----

use vitalgate::fleet::command::CommandPayload;

impl Hub {
    /// Publishes `doc` on this hub's `cmd` topic.
    async fn command(&self, doc: impl Into<Vec<u8>>) {
        self.ops
            .publish(
                format!("rpm/v1/gw/{GW}/cmd"),
                QoS::AtLeastOnce,
                false,
                doc.into(),
            )
            .await
            .unwrap();
    }

    fn ping(&self) -> CommandPayload {
        CommandPayload::new(
            GW,
            "ping",
            vec![],
            OffsetDateTime::now_utc(),
            time::Duration::minutes(5),
        )
    }
}

/// A hub running, with the platform reading `cmd/result`.
async fn commanded(name: &str) -> (Hub, Daemon, Received) {
    let h = Hub::new().await;
    let rx = subscribe(&h.broker, name, &format!("rpm/v1/gw/{GW}/cmd/result"))
        .await
        .0;
    let d = Daemon::start(&h.config);
    d.wait_log("fleet link subscribed").await;
    (h, d, rx)
}

/// Waits for `n` answers on `cmd/result`; returns them all.
async fn answers(rx: &Received, d: &Daemon, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: Vec<Value> = rx
            .on("/cmd/result")
            .iter()
            .filter_map(|p| serde_json::from_slice(p).ok())
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} answers; log: {:#?}",
            got.len(),
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_is_answered_once_with_its_id_and_audited() {
    let (h, d, rx) = commanded("platform-ping").await;
    let ping = h.ping();
    h.command(ping.sign(&h.key)).await;
    let a = answers(&rx, &d, 1).await;
    assert_eq!(a[0]["id"], ping.id.as_str());
    assert_eq!(a[0]["result"], "ok");
    assert_eq!(a[0]["answer"]["version"], env!("CARGO_PKG_VERSION"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.on("/cmd/result").len(), 1, "answered more than once");
    assert!(h
        .audit_events()
        .iter()
        .any(|e| e["event"] == "fleet_command" && e["details"]["id"] == ping.id.as_str()));
}

/// One refused command end to end: answered with `code` and the id, audited.
async fn refused_command(code: &str, make: impl FnOnce(&Hub) -> (String, Vec<u8>)) {
    let (h, d, rx) = commanded(&format!("platform-cmd-{code}")).await;
    let (id, doc) = make(&h);
    h.command(doc).await;
    let a = answers(&rx, &d, 1).await;
    assert_eq!(a[0]["result"], "refused", "{}", a[0]);
    assert_eq!(a[0]["reason"], code, "{}", a[0]);
    assert_eq!(a[0]["id"], id.as_str(), "{}", a[0]);
    assert!(
        h.audit_events()
            .iter()
            .any(|e| e["event"] == "fleet_command_refused" && e["details"]["reason"] == code),
        "{:?}",
        h.audit_events()
    );
    assert!(!h
        .audit_events()
        .iter()
        .any(|e| e["event"] == "fleet_command"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_command_is_refused_answered_and_audited() {
    refused_command("unknown_command", |h| {
        let mut p = h.ping();
        p.name = "format-disk".into();
        (p.id.clone(), p.sign(&h.key).into_bytes())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_command_is_refused_answered_and_audited() {
    use base64::Engine;
    refused_command("unsupported_algorithm", |h| {
        let p = h.ping();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = br#"{"alg":"none","kid":"x","typ":"vitalgate-command+jws"}"#;
        let doc = format!("{}.{}.", b64(header), b64(&serde_json::to_vec(&p).unwrap()));
        (p.id.clone(), doc.into_bytes())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_command_is_refused_answered_and_audited() {
    refused_command("expired", |h| {
        let mut p = h.ping();
        p.expires_at = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        (p.id.clone(), p.sign(&h.key).into_bytes())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrongly_addressed_command_is_refused_answered_and_audited() {
    refused_command("wrong_gateway", |h| {
        let mut p = h.ping();
        p.gateway = "other-gw".into();
        (p.id.clone(), p.sign(&h.key).into_bytes())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_command_is_refused_also_after_a_restart() {
    let (h, mut d, rx) = commanded("platform-cmd-replay").await;
    let ping = h.ping();
    let doc = ping.sign(&h.key);
    h.command(doc.clone()).await;
    answers(&rx, &d, 1).await;
    h.command(doc.clone()).await;
    let a = answers(&rx, &d, 2).await;
    assert_eq!(a[1]["reason"], "replayed", "{}", a[1]);
    d.kill_now();
    let d = Daemon::start(&h.config);
    d.wait_log("fleet link subscribed").await;
    h.command(doc).await;
    let a = answers(&rx, &d, 3).await;
    assert_eq!(a[2]["reason"], "replayed", "{}", a[2]);
    assert_eq!(a[2]["id"], ping.id.as_str());
    let runs = h
        .audit_events()
        .iter()
        .filter(|e| e["event"] == "fleet_command")
        .count();
    assert_eq!(runs, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_uplink_command_makes_the_publisher_reconnect() {
    let (h, d, rx) = commanded("platform-cmd-restart").await;
    let connects = || h.status()["uplink"]["connects"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while connects() < 1 {
        assert!(Instant::now() < deadline, "publisher never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut p = h.ping();
    p.name = "restart-uplink".into();
    h.command(p.sign(&h.key)).await;
    assert_eq!(answers(&rx, &d, 1).await[0]["result"], "ok");
    while connects() < 2 {
        assert!(
            Instant::now() < deadline,
            "publisher did not reconnect; log: {:#?}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_command_takes_the_sighup_path() {
    let (h, d, rx) = commanded("platform-cmd-reload").await;
    let mut p = h.ping();
    p.name = "reload".into();
    h.command(p.sign(&h.key)).await;
    assert_eq!(answers(&rx, &d, 1).await[0]["result"], "ok");
    d.wait_log("config unchanged; reloading certificates and keys")
        .await;
}

/// The data keys in `status` (issue 15): (key id, patient, rows, current).
fn data_keys(h: &Hub) -> Vec<(u64, String, u64, bool)> {
    h.status()["keys"]["data_keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|k| {
            (
                k["key_id"].as_u64().unwrap_or(0),
                k["patient"].as_str().unwrap_or("").to_string(),
                k["rows"].as_u64().unwrap_or(0),
                k["current"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// Waits until p1 has a current data key with rows sealed under it, other than `not`.
async fn p1_sealing_under_a_key_other_than(h: &Hub, d: &Daemon, not: &[u64]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(k) = data_keys(h)
            .into_iter()
            .find(|(id, p, rows, current)| p == "p1" && *current && *rows > 0 && !not.contains(id))
        {
            return k.0;
        }
        assert!(Instant::now() < deadline, "log: {:#?}", d.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn audit_log(h: &Hub) -> String {
    std::fs::read_to_string(h.state().join("audit.log")).unwrap_or_default()
}

/// Issue 15, acceptance 2: `rotate-key` through the running daemon: answered once, audited,
/// and the writer seals p1's next readings under a new key.
#[tokio::test(flavor = "multi_thread")]
async fn rotate_key_command_gives_the_running_writer_new_keys_answered_once_and_audited() {
    let (h, d, rx) = commanded("platform-cmd-rotate-key").await;
    let before = p1_sealing_under_a_key_other_than(&h, &d, &[]).await;
    let mut p = h.ping();
    p.name = "rotate-key".into();
    h.command(p.sign(&h.key)).await;
    let a = answers(&rx, &d, 1).await;
    assert_eq!(a[0]["result"], "ok", "{}", a[0]);
    let rotated = a[0]["answer"]["rotated"].as_array().unwrap();
    assert!(
        rotated
            .iter()
            .any(|r| r["patient"] == "p1" && r["retired"] == before),
        "{}",
        a[0]
    );
    let after = p1_sealing_under_a_key_other_than(&h, &d, &[before]).await;
    assert!(after > before);
    let log = audit_log(&h);
    assert!(log.contains("\"data_keys_rotated\"") && log.contains("\"fleet_command\""));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.on("/cmd/result").len(), 1, "answered more than once");
}

/// Issue 15, acceptance 3: `erase-patient` through the running daemon: p1's keys are
/// destroyed and their rows gone; answered with the counts, audited by pseudonym.
#[tokio::test(flavor = "multi_thread")]
async fn erase_patient_command_destroys_the_patients_keys_through_the_running_daemon() {
    let (h, d, rx) = commanded("platform-cmd-erase").await;
    let before = p1_sealing_under_a_key_other_than(&h, &d, &[]).await;
    let mut p = h.ping();
    p.name = "erase-patient".into();
    p.args = vec!["p1".into()];
    h.command(p.sign(&h.key)).await;
    let a = answers(&rx, &d, 1).await;
    assert_eq!(a[0]["result"], "ok", "{}", a[0]);
    let answer = &a[0]["answer"];
    assert!(answer["keys_destroyed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| *k == before));
    assert!(
        answer["undelivered_rows"].as_u64().unwrap() + answer["delivered_rows"].as_u64().unwrap()
            > 0
    );
    assert!(
        !data_keys(&h).iter().any(|k| k.0 == before),
        "the key is gone"
    );
    let log = audit_log(&h);
    let entry = log
        .lines()
        .find(|l| l.contains("\"patient_erased\""))
        .expect("audited");
    assert!(
        entry.contains("\"p1\"") && entry.contains("\"fleet\""),
        "{entry}"
    );
    assert!(!log.contains("9434765919"));
    // Still configured, p1 goes on being monitored, under a new key.
    p1_sealing_under_a_key_other_than(&h, &d, &[before]).await;
}

// ---- Clustered brokers (acceptance 8) ----

/// A second Mosquitto with the first one's CA, server certificate and ACL: another node of
/// the same "cluster" (same CA, same server name), on its own port. Killed on drop.
struct Sibling {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sibling {
    fn start(a: &Broker) -> Sibling {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let ad = a.dir.path().display();
        let conf = format!(
            "{user}per_listener_settings false\nallow_anonymous false\nacl_file {ad}/acl\n\
             listener {port} 127.0.0.1\ncafile {ad}/ca.pem\ncertfile {ad}/server.pem\n\
             keyfile {ad}/server.key\nrequire_certificate true\nuse_identity_as_username true\n\
             tls_version tlsv1.3\n",
            user = if root { "user root\n" } else { "" },
        );
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sibling broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sibling {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Sibling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_fails_over_to_the_next_broker_of_the_cluster() {
    let h = Hub::new().await;
    let mut first = Sibling::start(&h.broker);
    // brokers = [first, h.broker]: the hub starts on `first`, which then dies.
    let text = std::fs::read_to_string(&h.config).unwrap().replace(
        &format!("broker = \"127.0.0.1\"\nport = {}\n", h.broker.port),
        &format!(
            "brokers = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n",
            first.port, h.broker.port
        ),
    );
    assert!(text.contains("brokers = "));
    std::fs::write(&h.config, text).unwrap();
    let (obs, _task) = subscribe(
        &h.broker,
        "platform-failover",
        &format!("rpm/v1/gw/{GW}/obs"),
    )
    .await;
    let results = subscribe(
        &h.broker,
        "platform-failover-cmd",
        &format!("rpm/v1/gw/{GW}/cmd/result"),
    )
    .await
    .0;
    let d = Daemon::start(&h.config);
    d.wait_log("uplink connected").await;
    d.wait_log("fleet link subscribed").await;
    assert_eq!(obs.len(), 0, "the hub should be on the first broker");

    first.child.kill().unwrap();
    first.child.wait().unwrap();
    obs.wait_for("/obs", 3, 60).await;
    // The fleet session moved too (a command published before it subscribed on the second
    // broker would have no subscriber there).
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.count_log("fleet link subscribed") < 2 {
        assert!(
            Instant::now() < deadline,
            "fleet link did not fail over: {:#?}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ping = h.ping();
    h.command(ping.sign(&h.key)).await;
    assert_eq!(answers(&results, &d, 1).await[0]["id"], ping.id.as_str());
}

// ---- Operator's live view (acceptance 7) ----

#[tokio::test(flavor = "multi_thread")]
async fn fleet_watch_shows_each_gateway_state_and_config_version() {
    let h = Hub::new().await;
    let rx = reported(&h, "platform-watch").await;
    let d = Daemon::start(&h.config);
    h.desire(h.sign(1, REBIND)).await;
    report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;
    let platform = h.state().join("platform.toml");
    std::fs::write(
        &platform,
        format!(
            "[uplink]\nbroker = \"127.0.0.1\"\nport = {}\nserver_name = \"localhost\"\n\
             ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            h.broker.port,
            h.broker.path("ca.pem").display(),
            h.broker.path("platform.pem").display(),
            h.broker.path("platform.key").display(),
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["fleet", "watch", "--seconds", "3", "--config"])
            .arg(&platform)
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
    assert_eq!(&row[..4], [GW, "online", "1", "applied"], "{text}");
}

// ---- SIGHUP with an overlay in force ----

#[tokio::test(flavor = "multi_thread")]
async fn sighup_keeps_the_overlay_and_refuses_a_local_change_that_conflicts_with_it() {
    let h = Hub::new().await;
    let rx = reported(&h, "platform-sighup").await;
    let d = Daemon::start(&h.config);
    // The overlay owns the patients (p1, p2); devices stay local (d1 -> p1).
    let patients_only = "[[patient]]\nid = \"p1\"\n[[patient]]\nid = \"p2\"\n";
    h.desire(h.sign(1, patients_only)).await;
    report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;

    // A local device bound to a patient only the local file knows: valid alone, not with
    // the overlay (which replaces the patients).
    let local = std::fs::read_to_string(&h.config).unwrap();
    let conflicting = local.replace(
        "[[patient]]\nid = \"p1\"",
        "[[patient]]\nid = \"p9\"\n[[device]]\nid = \"d9\"\npatient = \"p9\"\ndriver = \"sim\"\n[[patient]]\nid = \"p1\"",
    );
    assert_ne!(conflicting, local);
    std::fs::write(&h.config, &conflicting).unwrap();
    let ok = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    d.wait_log("conflicts with fleet configuration version 1")
        .await;
    devices_become(&h, &["d1"]).await;
    assert!(h.status()["fleet"]["applied"]["version"]
        .as_u64()
        .is_some_and(|v| v == 1));
}

// ---- Applying is a diff (acceptance 3 and 9: a live rebind, untouched devices uninterrupted) ----

/// The FIFO device `fa` (jsonl, patient p1) and a second patient p2, added to the hub's local
/// config beside the simulated device d1 (p1). Returns the FIFO's path.
fn with_fifo_device(h: &Hub) -> PathBuf {
    let fifo = h.state().join("fa.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let text = std::fs::read_to_string(&h.config).unwrap().replace(
        "[[device]]\nid = \"d1\"",
        &format!(
            "[[patient]]\nid = \"p2\"\nnhs_number = \"4010232137\"\n\
             [[device]]\nid = \"fa\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"{}\"\n\
             [[device]]\nid = \"d1\"",
            fifo.display()
        ),
    );
    std::fs::write(&h.config, text).unwrap();
    fifo
}

/// The fleet overlay of the FIFO hub: both patients, `fa` as configured locally, d1 bound to
/// `d1_patient`, plus `extra` (more devices, or `p1`'s alert rules).
fn fifo_overlay(fifo: &Path, d1_patient: &str, p1_rules: &str, extra: &str) -> String {
    format!(
        "[[patient]]\nid = \"p1\"\nnhs_number = \"9434765919\"\n{p1_rules}\
         [[patient]]\nid = \"p2\"\nnhs_number = \"4010232137\"\n\
         [[device]]\nid = \"fa\"\npatient = \"p1\"\ndriver = \"jsonl\"\npath = \"{}\"\n\
         [[device]]\nid = \"d1\"\npatient = \"{d1_patient}\"\ndriver = \"sim\"\ninterval_ms = 500\n{extra}",
        fifo.display()
    )
}

/// Writes numbered pulse readings (reading `i` at `base + i` seconds) into a FIFO, one every
/// 20 ms, until stopped. A reader that closes the FIFO (a reopen, a pipeline restart) makes a
/// write fail with EPIPE: `broken` records it, so the writer sees any reopen.
struct FifoWriter {
    sent: Arc<std::sync::atomic::AtomicU64>,
    broken: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    base: OffsetDateTime,
}

impl FifoWriter {
    fn start(fifo: &Path) -> FifoWriter {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let base = OffsetDateTime::now_utc() - time::Duration::minutes(5);
        let (sent, broken, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, b, st, path) = (sent.clone(), broken.clone(), stop.clone(), fifo.to_owned());
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            // Blocks until the daemon opens its end.
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut i = 0u64;
            while !st.load(Ordering::SeqCst) {
                let t = (base + time::Duration::seconds(i as i64))
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap();
                let line = format!(
                    "{{\"metric\":\"pulse_rate\",\"value\":60,\"unit\":\"/min\",\"device_time\":\"{t}\"}}\n"
                );
                if f.write_all(line.as_bytes()).is_err() {
                    b.store(true, Ordering::SeqCst);
                    return;
                }
                i += 1;
                s.store(i, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        FifoWriter {
            sent,
            broken,
            stop,
            thread: Some(thread),
            base,
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops writing; returns how many readings were written and whether a write failed.
    fn finish(mut self) -> (u64, bool) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.sent(), self.broken.load(Ordering::SeqCst))
    }

    async fn wait_sent(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.sent() < n {
            assert!(
                Instant::now() < deadline,
                "the daemon never opened the FIFO"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The Observations published so far, parsed.
fn observations(obs: &Received) -> Vec<Value> {
    obs.on("/obs")
        .iter()
        .filter_map(|p| serde_json::from_slice::<Value>(p).ok())
        .collect()
}

/// The device id of an Observation (its identifier is `{gateway}/{device}`).
fn device_of(o: &Value) -> &str {
    o["device"]["identifier"]["value"]
        .as_str()
        .and_then(|v| v.rsplit('/').next())
        .unwrap_or("")
}

/// The times of `fa`'s readings on the platform, as offsets from the writer's base.
fn fa_offsets(obs: &Received, base: OffsetDateTime) -> std::collections::BTreeSet<i64> {
    observations(obs)
        .iter()
        .filter(|o| device_of(o) == "fa")
        .filter_map(|o| o["effectiveDateTime"].as_str())
        .filter_map(|t| {
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| (t - base).whole_seconds())
        .collect()
}

/// Waits until the platform holds every one of `fa`'s `sent` readings; asserts none is
/// missing (a numbered sequence without a gap).
async fn fa_all_delivered(obs: &Received, base: OffsetDateTime, sent: u64, d: &Daemon) {
    let want: std::collections::BTreeSet<i64> = (0..sent as i64).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = fa_offsets(obs, base);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fa's readings on the platform: {} of {sent}; missing {:?}; log {:#?}",
            got.len(),
            want.difference(&got).take(20).collect::<Vec<_>>(),
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How often the daemon (re)opened `fa`'s transport.
fn fa_opened(d: &Daemon) -> usize {
    d.lines()
        .iter()
        .filter(|l| l.contains("device connected") && l.contains("device=fa"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn live_rebind_switches_the_patient_while_an_untouched_device_keeps_its_connection_and_every_reading(
) {
    let h = Hub::new().await;
    let fifo = with_fifo_device(&h);
    let rx = reported(&h, "platform-rebind").await;
    let (obs, _task) = subscribe(
        &h.broker,
        "platform-rebind-obs",
        &format!("rpm/v1/gw/{GW}/obs"),
    )
    .await;
    let d = Daemon::start(&h.config);
    let writer = FifoWriter::start(&fifo);
    writer.wait_sent(50).await;
    h.desire(h.sign(1, &fifo_overlay(&fifo, "p2", "", "")))
        .await;
    report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;
    d.wait_log("configuration applied live").await;
    let at_apply = writer.sent();
    writer.wait_sent(at_apply + 50).await;
    let opened = fa_opened(&d);
    let base = writer.base;
    let (sent, broken) = writer.finish();

    assert!(
        !broken,
        "the FIFO's reader went away during the apply (a reopen)"
    );
    assert_eq!(
        opened,
        1,
        "fa's transport was reopened: {:#?}",
        d.log_tail()
    );
    fa_all_delivered(&obs, base, sent, &d).await;
    // d1's readings in time order: p1's NHS Number, then p2's, never back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let subjects = loop {
        let mut d1: Vec<(String, String)> = observations(&obs)
            .iter()
            .filter(|o| device_of(o) == "d1")
            .map(|o| {
                (
                    o["effectiveDateTime"].as_str().unwrap_or("").to_owned(),
                    o["subject"]["identifier"]["value"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )
            })
            .collect();
        d1.sort();
        let mut subjects: Vec<String> = d1.into_iter().map(|(_, s)| s).collect();
        subjects.dedup();
        if subjects.len() >= 2 || Instant::now() > deadline {
            break subjects;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        subjects,
        vec!["9434765919", "4010232137"],
        "d1's patients in time order"
    );
    assert!(!d
        .lines()
        .iter()
        .any(|l| l.contains("restarting the pipeline")));
}

#[tokio::test(flavor = "multi_thread")]
async fn live_apply_starts_an_added_device_and_stops_a_removed_one_without_touching_the_others() {
    let h = Hub::new().await;
    let fifo = with_fifo_device(&h);
    let rx = reported(&h, "platform-addremove").await;
    let (obs, _task) = subscribe(
        &h.broker,
        "platform-addremove-obs",
        &format!("rpm/v1/gw/{GW}/obs"),
    )
    .await;
    let d = Daemon::start(&h.config);
    let writer = FifoWriter::start(&fifo);
    writer.wait_sent(20).await;
    let d2 = "[[device]]\nid = \"d2\"\npatient = \"p2\"\ndriver = \"sim\"\ninterval_ms = 500\n";
    h.desire(h.sign(1, &fifo_overlay(&fifo, "p1", "", d2)))
        .await;
    report_where(&rx, &d, "applied v1", |v| v["version"] == 1).await;
    devices_become(&h, &["d1", "d2", "fa"]).await;
    obs.wait_for("/obs", 1, 60).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !observations(&obs).iter().any(|o| device_of(o) == "d2") {
        assert!(Instant::now() < deadline, "no reading from the added d2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Version 2 removes d1 (p1 keeps fa).
    let without_d1 = fifo_overlay(&fifo, "p1", "", d2).replace(
        "[[device]]\nid = \"d1\"\npatient = \"p1\"\ndriver = \"sim\"\ninterval_ms = 500\n",
        "",
    );
    h.desire(h.sign(2, &without_d1)).await;
    report_where(&rx, &d, "applied v2", |v| v["version"] == 2).await;
    devices_become(&h, &["d2", "fa"]).await;
    let at_apply = writer.sent();
    writer.wait_sent(at_apply + 20).await;
    let opened = fa_opened(&d);
    let base = writer.base;
    let (sent, broken) = writer.finish();
    assert!(
        !broken && opened == 1,
        "fa was reopened: {:#?}",
        d.log_tail()
    );
    fa_all_delivered(&obs, base, sent, &d).await;
    assert_eq!(d.count_log("configuration applied live"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn alert_rule_change_takes_effect_without_a_restart() {
    let h = Hub::new().await;
    let fifo = with_fifo_device(&h);
    let rx = reported(&h, "platform-rule").await;
    let d = Daemon::start(&h.config);
    let writer = FifoWriter::start(&fifo);
    writer.wait_sent(20).await;
    let audit = || std::fs::read_to_string(h.state().join("audit.log")).unwrap_or_default();
    // A pulse of 60 raises nothing under the default rules...
    assert!(!audit().contains("pulse_over_50"));
    let rules = "[[patient.alerts.rules]]\nid = \"pulse_over_50\"\nmetric = \"pulse_rate\"\n\
                 above = 50\npersist_secs = 0\npriority = \"high\"\n";
    h.desire(h.sign(1, &fifo_overlay(&fifo, "p1", rules, "")))
        .await;
    report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;
    // ... and does under the fleet's rule, on the same connection.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !audit().contains("pulse_over_50") {
        assert!(
            Instant::now() < deadline,
            "the new rule never raised: {:#?}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opened = fa_opened(&d);
    let (_, broken) = writer.finish();
    assert!(
        !broken && opened == 1,
        "the pipeline restarted: {:#?}",
        d.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_rebind_as_a_diff_too() {
    let h = Hub::new().await;
    let fifo = with_fifo_device(&h);
    let (obs, _task) = subscribe(
        &h.broker,
        "platform-hup-obs",
        &format!("rpm/v1/gw/{GW}/obs"),
    )
    .await;
    let d = Daemon::start(&h.config);
    let writer = FifoWriter::start(&fifo);
    writer.wait_sent(30).await;
    let local = std::fs::read_to_string(&h.config).unwrap();
    let rebound = local.replace(
        "id = \"d1\"\npatient = \"p1\"",
        "id = \"d1\"\npatient = \"p2\"",
    );
    assert_ne!(rebound, local);
    std::fs::write(&h.config, rebound).unwrap();
    d.signal("HUP");
    d.wait_log("configuration applied live").await;
    let at_apply = writer.sent();
    writer.wait_sent(at_apply + 30).await;
    let opened = fa_opened(&d);
    let base = writer.base;
    let (sent, broken) = writer.finish();
    assert!(
        !broken && opened == 1,
        "fa was reopened: {:#?}",
        d.log_tail()
    );
    fa_all_delivered(&obs, base, sent, &d).await;
}

// ---- Crash-loop safety (a configuration `run` refuses) ----

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_the_pipeline_refuses_falls_back_to_the_last_good_config_instead_of_exiting() {
    let h = Hub::new().await;
    let rx = reported(&h, "platform-fallback").await;
    let mut d = Daemon::start(&h.config);
    devices_become(&h, &["d1"]).await;
    // Valid as a config, but the outbox cannot be opened there (a directory): `run` refuses.
    let not_a_database = h.state().join("not-a-database");
    std::fs::create_dir(&not_a_database).unwrap();
    let local = std::fs::read_to_string(&h.config).unwrap();
    let broken = local.replace(
        "[store]\n",
        &format!("[store]\npath = \"{}\"\n", not_a_database.display()),
    );
    assert_ne!(broken, local);
    std::fs::write(&h.config, broken).unwrap();
    d.signal("HUP");
    d.wait_log("going back to the last good one").await;
    let all = std::fs::read_to_string(h.state().join("audit.log")).unwrap();
    assert!(all.contains("\"config_fallback\""), "{all}");
    assert!(d.running(), "the daemon exited: {:#?}", d.log_tail());
    // Still serving, on the outbox it had: a fleet document applies.
    h.desire(h.sign(1, REBIND)).await;
    report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;
    devices_become(&h, &["d1", "d2"]).await;
}

// ---- Fleet state at rest ----

#[tokio::test(flavor = "multi_thread")]
async fn an_nhs_number_applied_by_the_fleet_is_in_no_state_file_in_clear() {
    let h = Hub::new().await;
    let rx = reported(&h, "platform-at-rest").await;
    let d = Daemon::start(&h.config);
    // An NHS Number only the fleet document carries (the local file names 9434765919).
    const FLEET_NHS: &str = "4010232137";
    let overlay = REBIND.replace(
        "[[patient]]\nid = \"p2\"\n",
        &format!("[[patient]]\nid = \"p2\"\nnhs_number = \"{FLEET_NHS}\"\n"),
    );
    let doc = h.sign(1, &overlay);
    // The JWS payload is base64url of JSON: stored as received, it would read back at once.
    let payload = doc.split('.').nth(1).unwrap().to_owned();
    h.desire(doc).await;
    report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;
    devices_become(&h, &["d1", "d2"]).await;
    let markers = [FLEET_NHS, payload.as_str()];
    let running = support::at_rest::in_clear(h.state(), &markers);
    d.stop().await;
    let stopped = support::at_rest::in_clear(h.state(), &markers);
    assert!(
        running.is_empty() && stopped.is_empty(),
        "in clear while running: {running:?}; after stopping: {stopped:?}"
    );
    // And the stored document is still the one in force at the next start.
    assert_eq!(
        vitalgate::fleet::state::load_meta(h.state())
            .unwrap()
            .unwrap()
            .version,
        1
    );
}

// ---- Log level (fleet-settable, live) ----

#[tokio::test(flavor = "multi_thread")]
async fn fleet_log_level_changes_the_running_filter_without_a_restart() {
    let h = Hub::new().await;
    let rx = reported(&h, "platform-log-level").await;
    let d = Daemon::start(&h.config); // RUST_LOG=info
    d.wait_log("uplink connected").await;
    // Readings commit every half second; their "committed" line is at debug level.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let debug_lines = |d: &Daemon| {
        d.lines()
            .iter()
            .filter(|l| l.contains("DEBUG") && l.contains("committed"))
            .count()
    };
    assert_eq!(debug_lines(&d), 0, "debug lines at info level");
    h.desire(h.sign(1, "[logging]\nlevel = \"debug\"\n")).await;
    report_where(&rx, &d, "applied v1", |v| v["result"] == "applied").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while debug_lines(&d) == 0 {
        assert!(
            Instant::now() < deadline,
            "no debug line after the change: {:#?}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audit = std::fs::read_to_string(h.state().join("audit.log")).unwrap();
    assert!(audit.contains("\"log_level_changed\""), "{audit}");
    assert!(!d
        .lines()
        .iter()
        .any(|l| l.contains("restarting the pipeline")));
}

//! The fleet's `resync` command end to end (issue 14, acceptance 6 and 9's "a resync round
//! trip"): the REAL daemon (`vitalgate run`) with a `jsonl` device, a real Mosquitto with
//! mutual TLS 1.3 and an ACL, the platform reading `obs` and `cmd/result`, and an operator
//! publishing a signed `resync FROM UNTIL` on `cmd`. The platform must receive exactly the
//! delivered Observations of the range still held, again, with the same ids, and the answer
//! must count them and the ones the retention purge removed.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use serde_json::Value;
use support::daemon::{wait_until, Daemon};
use support::*;
use time::OffsetDateTime;
use vitalgate::fleet::command::CommandPayload;
use vitalgate::fleet::keys::{self, SigningKey};
use vitalgate::store::{MasterKey, Outbox};

const BIN: &str = env!("CARGO_BIN_EXE_vitalgate");
const GW: &str = "resync-gw";
const OPS: &str = "resync-ops";

/// A hub whose only device is a jsonl file the test writes readings into.
struct Hub {
    broker: Broker,
    dir: tempfile::TempDir,
    config: PathBuf,
    key: SigningKey,
}

impl Hub {
    fn new() -> Hub {
        let mut acl = Acl::gateways(&[GW]);
        acl.0.push((OPS.into(), vec!["rpm/v1/gw/+/cmd".into()]));
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
        std::fs::write(dir.path().join("manual.jsonl"), "").unwrap();
        let text = format!(
            "[gateway]\nid = \"{GW}\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\
             [store]\nkey_file = \"{d}/master.key\"\n\
             [uplink]\nbroker = \"127.0.0.1\"\nport = {port}\nserver_name = \"localhost\"\n\
             ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{ckey}\"\n\
             backoff_initial_ms = 100\nbackoff_max_s = 1\n\
             [fleet]\ntrusted_keys = [\"{public}\"]\n\
             [[patient]]\nid = \"p1\"\nnhs_number = \"9434765919\"\n\
             [[device]]\nid = \"manual-1\"\npatient = \"p1\"\ndriver = \"jsonl\"\n\
             path = \"{d}/manual.jsonl\"\n",
            port = broker.port,
            ca = broker.path("ca.pem").display(),
            cert = cert.display(),
            ckey = ckey.display(),
            public = g.public_key.display(),
        );
        let config = dir.path().join("vitalgate.toml");
        std::fs::write(&config, text).unwrap();
        Hub {
            broker,
            dir,
            config,
            key,
        }
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Appends SpO2 readings (in range: no alert) to the device file, one line each.
    fn measure(&self, values: &[u32]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.state().join("manual.jsonl"))
            .unwrap();
        for v in values {
            writeln!(f, "{{\"metric\":\"spo2\",\"value\":{v},\"unit\":\"%\"}}").unwrap();
        }
    }

    /// `vitalgate status` as JSON (printed whatever its exit code: it is also a probe).
    fn status(&self) -> Value {
        let out = Command::new(BIN)
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn audit_events(&self, name: &str) -> Vec<Value> {
        std::fs::read_to_string(self.state().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == name)
            .collect()
    }
}

/// The operator's MQTT client (its own certificate, allowed to write `cmd`).
async fn operator(b: &Broker) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    operator_client(b, OPS, "resync-ops-client").await
}

/// Observation ids received on `obs`, in arrival order (one per message).
fn observation_ids(rx: &Received) -> Vec<String> {
    rx.on("/obs")
        .iter()
        .map(|p| {
            let v: Value = serde_json::from_slice(p).unwrap();
            v["id"].as_str().expect("an Observation id").to_owned()
        })
        .collect()
}

/// Waits until `n` messages (copies included, unlike `Received::wait_for`) came on `obs`.
async fn messages_reach(rx: &Received, n: usize) {
    wait_until(60, &format!("{n} messages on obs"), || {
        rx.on("/obs").len() >= n
    })
    .await;
}

/// `t` rounded down to its minute.
fn minute_floor(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_second(0).unwrap().replace_nanosecond(0).unwrap()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_resends_the_held_observations_of_the_range_with_the_same_ids_and_counts_the_purged()
{
    let h = Hub::new();
    let obs = subscribe(&h.broker, "platform-obs", &format!("rpm/v1/gw/{GW}/obs"))
        .await
        .0;
    let results = subscribe(
        &h.broker,
        "platform-results",
        &format!("rpm/v1/gw/{GW}/cmd/result"),
    )
    .await
    .0;
    let (ops, _ops_task) = operator(&h.broker).await;
    let started = OffsetDateTime::now_utc();

    // Two readings delivered, then purged by retention while the daemon is stopped.
    let d = Daemon::start(&h.config);
    h.measure(&[95, 96]);
    messages_reach(&obs, 2).await;
    let purged_ids = observation_ids(&obs);
    d.stop().await;
    {
        let master = MasterKey::load(&h.state().join("master.key")).unwrap();
        let (mut outbox, _) = Outbox::open(&h.state().join("outbox.db"), &master).unwrap();
        let purged = outbox
            .purge_delivered_before(OffsetDateTime::now_utc() + time::Duration::seconds(1))
            .unwrap();
        assert_eq!(purged, 2);
    }

    // Three more delivered and still held.
    let d = Daemon::start(&h.config);
    h.measure(&[97, 98, 99]);
    messages_reach(&obs, 5).await;
    let all_first = observation_ids(&obs);
    let held_ids: Vec<String> = all_first[2..].to_vec();
    assert_eq!(all_first[..2], purged_ids[..]);
    // The hub records acknowledgements a few seconds late while keeping up: wait until it
    // holds the three as delivered.
    wait_until(60, "the three recorded as delivered", || {
        h.status()["outbox"]["delivered_held"] == 3
    })
    .await;
    wait_until(60, "fleet link subscribed", || {
        d.lines()
            .iter()
            .any(|l| l.contains("fleet link subscribed"))
    })
    .await;

    // Resync every whole minute since the test began.
    let from = minute_floor(started);
    let until = minute_floor(OffsetDateTime::now_utc()) + time::Duration::minutes(1);
    let cmd = CommandPayload::new(
        GW,
        "resync",
        vec![rfc3339(from), rfc3339(until)],
        OffsetDateTime::now_utc(),
        time::Duration::minutes(5),
    );
    ops.publish(
        format!("rpm/v1/gw/{GW}/cmd"),
        QoS::AtLeastOnce,
        false,
        cmd.sign(&h.key),
    )
    .await
    .unwrap();
    results.wait_for("/cmd/result", 1, 60).await;
    let answer: Value = serde_json::from_slice(&results.on("/cmd/result")[0]).unwrap();
    assert_eq!(answer["id"], cmd.id.as_str(), "{answer}");
    assert_eq!(answer["result"], "ok", "{answer}");
    let counts = &answer["answer"];
    assert_eq!(counts["reopened"], 3, "{answer}");
    assert_eq!(counts["not_held"], 2, "{answer}");
    assert_eq!(counts["purged"], 2, "{answer}");
    assert_eq!(counts["already_pending"], 0, "{answer}");

    // The platform gets the three held Observations once more, same ids, and nothing else.
    messages_reach(&obs, 8).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resent = observation_ids(&obs)[5..].to_vec();
    let tally = |ids: &[String]| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for id in ids {
            *m.entry(id.clone()).or_default() += 1;
        }
        m
    };
    assert_eq!(tally(&resent), tally(&held_ids), "resent {resent:?}");
    assert_eq!(
        results.on("/cmd/result").len(),
        1,
        "answered more than once"
    );

    let audited = h.audit_events("outbox_resync");
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["details"]["command_id"], cmd.id.as_str());
    assert_eq!(audited[0]["details"]["counts"]["reopened"], 3);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_with_a_range_off_whole_minutes_is_refused_answered_and_audited() {
    let h = Hub::new();
    let results = subscribe(
        &h.broker,
        "platform-results",
        &format!("rpm/v1/gw/{GW}/cmd/result"),
    )
    .await
    .0;
    let (ops, _ops_task) = operator(&h.broker).await;
    let d = Daemon::start(&h.config);
    wait_until(60, "fleet link subscribed", || {
        d.lines()
            .iter()
            .any(|l| l.contains("fleet link subscribed"))
    })
    .await;
    let cmd = CommandPayload::new(
        GW,
        "resync",
        vec!["2026-12-01T10:00:30Z".into(), "2026-12-01T10:05:00Z".into()],
        OffsetDateTime::now_utc(),
        time::Duration::minutes(5),
    );
    ops.publish(
        format!("rpm/v1/gw/{GW}/cmd"),
        QoS::AtLeastOnce,
        false,
        cmd.sign(&h.key),
    )
    .await
    .unwrap();
    results.wait_for("/cmd/result", 1, 60).await;
    let answer: Value = serde_json::from_slice(&results.on("/cmd/result")[0]).unwrap();
    assert_eq!(answer["result"], "refused", "{answer}");
    assert_eq!(answer["reason"], "invalid_arguments", "{answer}");
    assert_eq!(answer["id"], cmd.id.as_str(), "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("whole minute"),
        "{answer}"
    );
    assert!(h
        .audit_events("fleet_command_refused")
        .iter()
        .any(|e| e["details"]["reason"] == "invalid_arguments"));
    d.stop().await;
}

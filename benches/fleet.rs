//! Fleet scale: N simulated gateways (default 500; `FLEET_GATEWAYS=n`), each its own mutual-TLS
//! MQTT 5 session (`uplink::fleet_link`) and fleet agent (`fleet::agent::Agent`: verify,
//! validate, persist with fsync, report), against one local Mosquitto. The platform publishes
//! a signed configuration document to each (retained, on `config/desired`) and the bench
//! prints the time until every gateway has reported `applied` (p50, p99, max from the first
//! publish), CPU per apply (gateways and broker) and the broker's connections.
//!
//! Baseline in the same run: a signed `ping` to every gateway, answered on `cmd/result` (the
//! same MQTT round trip and signature check, without validation, persistence or apply).
//! The pipeline restart an apply causes on a real hub is not part of this figure (the apply
//! request is answered at once): it is per hub and does not load the broker. No assertions.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use support::{Acl, Broker};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vitalgate::config::Config;
use vitalgate::fleet::agent::{Agent, Controls, FleetView};
use vitalgate::fleet::command::CommandPayload;
use vitalgate::fleet::document::ConfigPayload;
use vitalgate::fleet::keys::{self, SigningKey};
use vitalgate::uplink::fleet_link;
use vitalgate::uplink::UplinkConfig;

const OPS: &str = "fleet-ops";

const OVERLAY: &str = "[store]\nretention_days = 30\n\
    [[patient]]\nid = \"p1\"\nnhs_number = \"9434765919\"\n\
    [[device]]\nid = \"ox1\"\npatient = \"p1\"\ndriver = \"sim\"\n\
    [[device]]\nid = \"bp1\"\npatient = \"p1\"\ndriver = \"sim\"\n";

fn gw(i: usize) -> String {
    format!("bench-gw-{i:05}")
}

/// Starts one gateway's fleet session and agent; its apply requests are answered at once.
fn start_gateway(b: &Broker, i: usize, dir: &Path, key: &SigningKey, stop: &CancellationToken) {
    let gateway = gw(i);
    let state = dir.join(&gateway);
    std::fs::create_dir_all(&state).unwrap();
    let local = Config::parse(
        &format!(
            "[gateway]\nid = \"{gateway}\"\nstate_dir = \"{}\"\ndevices_dirs = []\n[[patient]]\nid = \"p1\"\n",
            state.display()
        ),
        Path::new("bench.toml"),
    )
    .unwrap();
    let mut up: UplinkConfig = b.uplink_config(&gateway);
    up.gateway_id = Some(gateway.clone());
    up.backoff_initial_ms = 200;
    up.backoff_max_s = 5;
    let view = Arc::new(Mutex::new(FleetView {
        local,
        applied: None,
        overlay: None,
    }));
    let (apply_tx, mut apply_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(r) = apply_rx.recv().await {
            let r: vitalgate::fleet::agent::ApplyRequest = r;
            let _ = r.done.send(Ok(()));
        }
    });
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, out_rx) = mpsc::channel(16);
    tokio::spawn(fleet_link::run(up, in_tx, out_rx, stop.clone()));
    // Each simulated hub has its own master key and audit writer, as a real one does.
    let master_path = state.join("master.key");
    vitalgate::store::MasterKey::generate_file(&master_path).unwrap();
    let master = vitalgate::store::MasterKey::load(&master_path).unwrap();
    let audit = std::sync::Arc::new(vitalgate::audit::AuditLog::open(&state, &master).unwrap());
    let controls = Controls {
        reload: Default::default(),
        restart_uplink: Default::default(),
        audit,
        keys: None,
        master: std::sync::Arc::new(master),
    };
    let agent = Agent::new(
        gateway,
        vec![key.public().clone()],
        state,
        view,
        apply_tx,
        controls,
    );
    tokio::spawn(agent.run(in_rx, out_tx, stop.clone(), mpsc::channel(1).1));
}

async fn operator(b: &Broker) -> AsyncClient {
    support::operator_client_sized(b, OPS, "bench-fleet-ops", Some(1000), 20_000)
        .await
        .0
}

/// Established TCP connections on the broker's port (its side), from /proc/net/tcp.
fn broker_connections(port: u16) -> usize {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&want) && f[3] == "01"
        })
        .count()
}

/// Publishes `docs` (gateway index -> payload) on `suffix` and waits for one answer per
/// gateway on `answers` that `is_answer` accepts; latencies in ms from the first publish.
async fn round(
    ops: &AsyncClient,
    docs: Vec<(String, Vec<u8>)>,
    suffix: &str,
    retain: bool,
    answers: &mut mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    is_answer: impl Fn(&serde_json::Value) -> bool,
) -> Vec<f64> {
    let n = docs.len();
    let t0 = Instant::now();
    for (g, doc) in docs {
        ops.publish(
            format!("rpm/v1/gw/{g}/{suffix}"),
            QoS::AtLeastOnce,
            retain,
            doc,
        )
        .await
        .unwrap();
    }
    let mut seen: HashMap<String, f64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.len() < n {
        let Ok(Some((at, p))) = tokio::time::timeout_at(deadline.into(), answers.recv()).await
        else {
            panic!("only {} of {n} gateways answered", seen.len());
        };
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap_or_default();
        if is_answer(&v) {
            if let Some(g) = v["gateway"].as_str() {
                seen.entry(g.to_owned())
                    .or_insert((at - t0).as_secs_f64() * 1e3);
            }
        }
    }
    let mut v: Vec<f64> = seen.into_values().collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn line(what: &str, ms: &[f64], cpu: &common::CpuPerMessage) {
    println!(
        "{what:<28} p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  | CPU per gateway: ours {:>7.0} us, broker {:>6.0} us",
        common::quantile(ms, 0.5),
        common::quantile(ms, 0.99),
        ms[ms.len() - 1],
        cpu.ours_us,
        cpu.broker_us
    );
}

fn main() {
    let n: usize = std::env::var("FLEET_GATEWAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let cns: Vec<String> = (0..n).map(gw).collect();
    let mut acl = Acl::gateways(&cns.iter().map(String::as_str).collect::<Vec<_>>());
    acl.0.push((
        OPS.into(),
        vec![
            "rpm/v1/gw/+/config/desired".into(),
            "rpm/v1/gw/+/cmd".into(),
        ],
    ));
    let b = Broker::start_for_bench(acl);
    let dir = tempfile::tempdir().unwrap();
    let keydir = dir.path().join("fleet-keys");
    let key = SigningKey::load(&keys::generate(&keydir).unwrap().private_key).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stop = CancellationToken::new();
        let mut reports =
            common::timed_subscriber(&b, "bench-platform-reported", "rpm/v1/gw/+/config/reported")
                .await;
        let mut results =
            common::timed_subscriber(&b, "bench-platform-results", "rpm/v1/gw/+/cmd/result").await;
        let ops = operator(&b).await;
        let t = Instant::now();
        for i in 0..n {
            start_gateway(&b, i, dir.path(), &key, &stop);
        }
        // Until every gateway has subscribed and answered a ping (a command sent before its
        // SUBACK has no subscriber), ping the silent ones again every two seconds.
        let mut answered = std::collections::HashSet::new();
        while answered.len() < n {
            for i in (0..n).filter(|i| !answered.contains(&gw(*i))) {
                let p = CommandPayload::new(&gw(i), "ping", vec![], OffsetDateTime::now_utc(), time::Duration::minutes(10));
                ops.publish(format!("rpm/v1/gw/{}/cmd", gw(i)), QoS::AtLeastOnce, false, p.sign(&key))
                    .await
                    .unwrap();
            }
            let until = Instant::now() + Duration::from_secs(2);
            while let Ok(Some((_, p))) = tokio::time::timeout_at(until.into(), results.recv()).await {
                let v: serde_json::Value = serde_json::from_slice(&p).unwrap_or_default();
                if let Some(g) = v["gateway"].as_str() {
                    answered.insert(g.to_owned());
                }
            }
            assert!(t.elapsed() < Duration::from_secs(900), "only {} of {n} gateways up", answered.len());
        }
        while results.try_recv().is_ok() {}
        println!(
            "{n} gateways connected, subscribed and answering after {:.1} s; broker connections: {}",
            t.elapsed().as_secs_f64(),
            broker_connections(b.port)
        );

        let mut ping_ids = std::collections::HashSet::new();
        let pings: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let p = CommandPayload::new(&gw(i), "ping", vec![], OffsetDateTime::now_utc(), time::Duration::minutes(10));
                ping_ids.insert(p.id.clone());
                (gw(i), p.sign(&key).into_bytes())
            })
            .collect();
        let docs: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let p = ConfigPayload {
                    gateway: gw(i),
                    version: 1,
                    issued_at: OffsetDateTime::now_utc(),
                    expires_at: None,
                    overlay: OVERLAY.into(),
                };
                (gw(i), p.sign(&key).into_bytes())
            })
            .collect();

        let broker_pid = b.pid();
        let broker = broker_pid.map(|p| p.to_string()).unwrap_or_default();
        let per = |s: f64| s * 1e6 / n as f64;

        let (ours0, broker0) = (common::cpu_seconds("self"), common::cpu_seconds(&broker));
        // Only answers to these pings (late answers to warm-up pings do not count).
        let ping_ms = round(&ops, pings, "cmd", false, &mut results, |v| {
            v["result"] == "ok" && v["id"].as_str().is_some_and(|id| ping_ids.contains(id))
        })
        .await;
        let ping_cpu = common::CpuPerMessage {
            ours_us: per(common::cpu_seconds("self") - ours0),
            broker_us: per(common::cpu_seconds(&broker) - broker0),
        };

        let (ours0, broker0) = (common::cpu_seconds("self"), common::cpu_seconds(&broker));
        let apply_ms = round(&ops, docs, "config/desired", true, &mut reports, |v| {
            v["result"] == "applied" && v["version"] == 1
        })
        .await;
        let apply_cpu = common::CpuPerMessage {
            ours_us: per(common::cpu_seconds("self") - ours0),
            broker_us: per(common::cpu_seconds(&broker) - broker0),
        };

        println!("\n{n} gateways, one local Mosquitto (mTLS 1.3, MQTT 5), times from the first publish:");
        line("baseline: signed ping", &ping_ms, &ping_cpu);
        line("signed config applied", &apply_ms, &apply_cpu);
        println!(
            "apply / ping at p50: {:.2}x; broker connections during the run: {} (a real hub adds its publisher session: 2 per hub)",
            common::quantile(&apply_ms, 0.5) / common::quantile(&ping_ms, 0.5).max(1e-9),
            broker_connections(b.port)
        );
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
}

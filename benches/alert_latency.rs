//! Alert latency under load (issue "Local alerting" item 8 / "Uplink" item 7): from a reading's
//! submission to ingest to its alert event's arrival at the platform subscriber, while the
//! publisher drains a 100,000-reading backlog. p50 / p99 / max (target p99 < 50 ms).
//!
//! The real path, in process: `ingest::start` with the daemon's `AlertHook` (the rules engine in
//! the ingest transaction), the SQLite outbox, the uplink over `daemon::publish::PublishSource`,
//! mutual TLS 1.3 to a local Mosquitto, a platform subscriber. One patient has a threshold rule
//! that raises at once above 120 /min and clears at once at or below 110; readings alternate
//! 125 / 100, one at a time, each waiting for its own `raised` or `cleared` event.
//!
//! Baseline, same run: the same measurement once the backlog is drained (an idle uplink).
//! Asserts nothing.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use vitalgate::daemon::alerting::{self, AlertHook};
use vitalgate::daemon::publish::PublishSource;
use vitalgate::ingest::{self, GroupCommit, IngestHandle, NoHook};
use vitalgate::store::{MasterKey, Outbox};
use vitalgate::uplink::{Uplink, UplinkStatus};

use support::{Acl, Broker};

const BACKLOG: usize = 100_000;

/// `VITALGATE_BENCH_N` overrides the backlog (for a quick smoke run of the bench itself).
fn backlog() -> usize {
    std::env::var("VITALGATE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BACKLOG)
}
const MAX_SAMPLES: usize = 2_000;
const IDLE_SAMPLES: usize = 200;

const PATIENTS: &str = r#"
[[patient]]
id = "p-bulk"
nhs_number = "9434765919"
[patient.alerts]
rules = []

[[patient]]
id = "p-alert"
nhs_number = "9434765919"
[patient.alerts]
rules = [{ id = "hr_high", metric = "heart_rate", above = 120, hysteresis = 10, persist_secs = 0, clear_after_secs = 0, priority = "high" }]
"#;

fn main() {
    let n = backlog();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let b = Broker::start_for_bench(Acl::gateways(&["gw-lat"]));
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(&b, "gw-lat", dir.path(), PATIENTS, 64);
    let master = MasterKey::ephemeral().unwrap();
    let path = config.outbox_path();
    println!("alert latency bench: reading submitted -> alert at the subscriber, during a {n}-reading drain (window 64, mTLS 1.3, local Mosquitto)");
    let (outbox, _) = Outbox::open(&path, &master).unwrap();
    let outbox = common::prefill(&rt, outbox, n, Box::new(NoHook));

    rt.block_on(async {
        let mut alerts = common::timed_subscriber(&b, "platform-lat", "rpm/v1/gw/gw-lat/alert").await;
        let committed = Arc::new(Notify::new());
        let source = PublishSource::new(Outbox::open_secondary(&path, &master).unwrap(), "gw-lat".into(), &config);
        let mut up_cfg = config.uplink.clone().unwrap();
        up_cfg.gateway_id = Some("gw-lat".into());
        let up = Uplink::new(up_cfg, source, committed.clone()).unwrap();
        let mut status = up.status();
        let saved = alerting::load_states(&outbox, &config).unwrap();
        let hook = AlertHook::new(&config, "gw-lat".into(), saved, Some(status.clone()), OffsetDateTime::now_utc()).unwrap();
        let policy = GroupCommit {
            max_batch: config.ingest.max_batch,
            max_wait: Duration::from_millis(config.ingest.max_batch_wait_ms),
        };
        let (ingest, writer) = ingest::start(outbox, policy, committed, Box::new(hook)).unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(up.run(cancel.clone()));
        while !status.borrow_and_update().connected {
            status.changed().await.unwrap();
        }

        let drain_started = Instant::now();
        let mut loaded = Vec::new();
        let mut i = 0;
        while loaded.len() < MAX_SAMPLES && delivered(&status) < n as u64 {
            loaded.push(sample(&ingest, &mut alerts, i).await);
            i += 1;
        }
        let at_end = delivered(&status);
        while delivered(&status) < (n + 2 * i) as u64 {
            status.changed().await.unwrap();
        }
        let drain_secs = drain_started.elapsed().as_secs_f64();
        let mut idle = Vec::new();
        for _ in 0..IDLE_SAMPLES {
            idle.push(sample(&ingest, &mut alerts, i).await);
            i += 1;
        }
        cancel.cancel();
        let _ = task.await;
        drop(ingest);
        let _ = writer.join();

        println!(
            "  {} alerts measured while the backlog drained (delivered 0 -> {at_end} of {n}); drain took {drain_secs:.1} s",
            loaded.len()
        );
        report("during the drain", &mut loaded);
        report("baseline, idle uplink", &mut idle);
        println!("  target: p99 < 50 ms during the drain");
    });
}

fn delivered(s: &tokio::sync::watch::Receiver<UplinkStatus>) -> u64 {
    s.borrow().delivered
}

/// Submits one reading that raises (even `i`) or clears (odd `i`) the alert and returns the
/// milliseconds until that event reaches the subscriber.
async fn sample(
    ingest: &IngestHandle,
    alerts: &mut mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    i: usize,
) -> f64 {
    let (value, transition) = if i % 2 == 0 {
        (125, "raised")
    } else {
        (100, "cleared")
    };
    let t0 = Instant::now();
    ingest
        .submit(common::frame(
            "hr-alert",
            "p-alert",
            value,
            OffsetDateTime::now_utc(),
        ))
        .await
        .unwrap();
    loop {
        let (at, payload) = tokio::time::timeout(Duration::from_secs(30), alerts.recv())
            .await
            .expect("alert within 30 s")
            .unwrap();
        let event: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        if event["rule"] == "threshold:hr_high" && event["transition"] == transition {
            return at.duration_since(t0).as_secs_f64() * 1000.0;
        }
    }
}

fn report(what: &str, ms: &mut [f64]) {
    ms.sort_by(|a, b| a.total_cmp(b));
    if ms.is_empty() {
        println!("  {what}: no samples");
        return;
    }
    println!(
        "  {what}: n={} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms.len(),
        common::quantile(ms, 0.50),
        common::quantile(ms, 0.99),
        ms[ms.len() - 1]
    );
}

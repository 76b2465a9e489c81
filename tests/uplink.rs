//! Uplink integration tests against a real Mosquitto with mutual TLS 1.3 (DESIGN.md "Rules of
//! the house": real parts). One broker per test on a free loopback port, a timeout on every
//! await. Issue "Uplink" items 2-4 and 6; rust-stack.md §1 and §9.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use vitalgate::uplink::publisher::PLATFORM_NOT_SUBSCRIBED;
use vitalgate::uplink::{Lane, MemorySource, NoSubscribers, Uplink, UplinkConfig, UplinkStatus};

struct Running {
    wake: Arc<Notify>,
    reload: Arc<Notify>,
    status: watch::Receiver<UplinkStatus>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(cfg: UplinkConfig, src: &MemorySource) -> Running {
    let wake = Arc::new(Notify::new());
    let up = Uplink::new(cfg, src.clone(), wake.clone()).unwrap();
    let status = up.status();
    let reload = up.reload_handle();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(up.run(cancel.clone()));
    Running {
        wake,
        reload,
        status,
        cancel,
        task,
    }
}

impl Running {
    async fn until(
        &mut self,
        secs: u64,
        what: &str,
        pred: impl Fn(&UplinkStatus) -> bool,
    ) -> UplinkStatus {
        let rx = &mut self.status;
        within(secs, what, async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if pred(&s) {
                        return s.clone();
                    }
                }
                let _ = rx.changed().await;
            }
        })
        .await
    }

    async fn stop(self) {
        self.cancel.cancel();
        within(30, "uplink shutdown", self.task).await.unwrap();
    }
}

fn payload(i: usize, size: usize) -> Vec<u8> {
    let mut p = format!("{{\"id\":{i},\"pad\":\"").into_bytes();
    while p.len() + 2 < size {
        p.push(b'x');
    }
    p.extend_from_slice(b"\"}");
    p
}

fn push_n(src: &MemorySource, lane: Lane, n: usize, size: usize, base: usize) -> Vec<i64> {
    (0..n)
        .map(|i| src.push(lane, payload(base + i, size)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_drains_10000_each_delivered_exactly_once() {
    let b = Broker::start(Acl::gateways(&["gw-bulk"]));
    let (rx, _sub) = subscribe(&b, "sub-bulk", "rpm/v1/gw/gw-bulk/obs").await;
    let src = MemorySource::new();
    let ids = push_n(&src, Lane::Reading, 10_000, 200, 0);
    let mut up = start(b.uplink_config("gw-bulk"), &src);
    up.wake.notify_one();
    rx.wait_for("/obs", 10_000, 120).await;
    up.until(30, "all delivered", |s| s.delivered == 10_000)
        .await;
    for id in &ids {
        assert_eq!(src.delivered_count(*id), 1, "row {id} delivered count");
    }
    assert_eq!(
        rx.counts("/obs").len(),
        10_000,
        "unique payloads at subscriber"
    );
    assert!(
        rx.counts("/obs").values().all(|c| *c == 1),
        "no duplicates without a reconnect"
    );
    up.stop().await;
}

/// A source that returns at most half of what is asked, as the real outbox does when rows in
/// a batch were quarantined or could not be rendered.
struct ShortBatches(MemorySource);

impl vitalgate::uplink::OutboxSource for ShortBatches {
    fn next_batch(
        &mut self,
        lane: Lane,
        after: i64,
        limit: usize,
    ) -> Result<Vec<vitalgate::uplink::Outgoing>, vitalgate::uplink::SourceError> {
        self.0.next_batch(lane, after, limit.div_ceil(2))
    }
    fn mark_delivered(&mut self, ids: &[i64]) -> Result<(), vitalgate::uplink::SourceError> {
        self.0.mark_delivered(ids)
    }
    fn mark_refused(&mut self, id: i64, why: &str) -> Result<(), vitalgate::uplink::SourceError> {
        self.0.mark_refused(id, why)
    }
}

/// A short batch is not the end of the backlog: only an empty one is. Nothing wakes the
/// publisher here after it starts, so without that rule it would stop after the first batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_short_batches_from_the_source_still_drain_everything() {
    let b = Broker::start(Acl::gateways(&["gw-short"]));
    let (_rx, _sub) = subscribe(&b, "sub-short", "rpm/v1/gw/gw-short/obs").await;
    let src = MemorySource::new();
    let ids = push_n(&src, Lane::Reading, 1_000, 200, 0);
    let mut cfg = b.uplink_config("gw-short");
    cfg.batch_size = 100;
    let up = Uplink::new(cfg, ShortBatches(src.clone()), Arc::new(Notify::new())).unwrap();
    let mut status = up.status();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(up.run(cancel.clone()));
    within(60, "1000 delivered from short batches", async {
        while status.borrow_and_update().delivered < 1_000 {
            let _ = status.changed().await;
        }
    })
    .await;
    for id in &ids {
        assert_eq!(src.delivered_count(*id), 1, "row {id} delivered count");
    }
    cancel.cancel();
    within(30, "uplink shutdown", task).await.unwrap();
}

/// This process's TCP connections to `port` on loopback, each as a duplicate of its file
/// descriptor (`pidfd_getfd`, so its socket options can be read without unsafe code).
fn connections_to(port: u16) -> Vec<std::net::TcpStream> {
    use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};
    let me = pidfd_open(getpid(), PidfdFlags::empty()).expect("pidfd_open");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        let Ok(dup) = pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()) else {
            continue; // closed since it was listed
        };
        let stream = std::net::TcpStream::from(dup);
        if stream.peer_addr().is_ok_and(|a| a.port() == port) {
            found.push(stream);
        }
    }
    found
}

/// Issue 18 (steady drains): Nagle's algorithm is off on the uplink's connection. With it
/// on, a PUBLISH written while an earlier segment awaits its acknowledgement is held back,
/// and with the window full both ends waited for a delayed ACK (40 ms), several times a
/// drain (benches/drain.rs counts those stalls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_connection_sends_each_packet_without_waiting_for_the_last_ones_acknowledgement() {
    let b = Broker::start(Acl::gateways(&["gw-nodelay"]));
    let src = MemorySource::new();
    let mut up = start(b.uplink_config("gw-nodelay"), &src);
    up.until(30, "connected", |s| s.connected).await;
    let connections = connections_to(b.port);
    assert_eq!(connections.len(), 1, "one connection to the broker");
    assert!(
        connections[0].nodelay().unwrap(),
        "the uplink's connection delays small packets (TCP_NODELAY off)"
    );
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_broker_restart_mid_drain_loses_nothing_and_duplicates_stay_within_window() {
    let mut b = Broker::start(Acl::gateways(&["gw-restart"]));
    let (rx, _sub) = subscribe(&b, "sub-restart", "rpm/v1/gw/gw-restart/obs").await;
    let src = MemorySource::new();
    let n = 20_000;
    let ids = push_n(&src, Lane::Reading, n, 300, 0);
    let cfg = b.uplink_config("gw-restart");
    let window = usize::from(cfg.inflight);
    let batch = cfg.batch_size;
    let mut up = start(cfg, &src);
    up.wake.notify_one();
    up.until(30, "some deliveries", |s| s.delivered > 2_000)
        .await;
    // SIGTERM keeps the subscriber's persistent session (SIGKILL may lose it, rust-stack §9),
    // so the subscriber-side count is meaningful; the publisher sees a broken connection.
    b.stop("TERM");
    up.until(30, "disconnect noticed", |s| !s.connected).await;
    assert!(
        src.undelivered() > 0,
        "the drain was interrupted, not finished"
    );
    b.restart();
    up.until(30, "reconnected", |s| s.connects >= 2).await;
    up.until(120, "all delivered", |s| s.delivered as usize == n)
        .await;
    rx.wait_for("/obs", n, 60).await;
    for id in &ids {
        assert_eq!(src.delivered_count(*id), 1, "row {id} delivered count");
    }
    let reconnects = (up.status.borrow().connects - 1) as usize;
    // Re-reading is bounded by what was in flight plus one prefetched batch per reconnect.
    let reread = src.fetch_counts().iter().filter(|(_, c)| *c > 1).count();
    assert!(
        reread <= (window + batch) * reconnects,
        "re-read {reread} rows, more than (window {window} + batch {batch}) x {reconnects}"
    );
    // Only rows in flight at the cut can reach the platform twice.
    let dupes: usize = rx.counts("/obs").values().map(|c| c - 1).sum();
    assert!(
        dupes <= window * reconnects,
        "subscriber saw {dupes} duplicates, more than the window {window} x {reconnects} reconnects"
    );
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_acl_refused_alert_is_kept_reported_and_readings_still_flow() {
    // This gateway may write obs and status but not alert.
    let acl = Acl(vec![(
        "gw-acl".into(),
        vec![
            "rpm/v1/gw/gw-acl/obs".into(),
            "rpm/v1/gw/gw-acl/status".into(),
        ],
    )]);
    let b = Broker::start(acl);
    let (rx, _sub) = subscribe(&b, "sub-acl", "rpm/v1/gw/gw-acl/#").await;
    let src = MemorySource::new();
    let alert = src.push(Lane::Alert, b"{\"alert\":1}".to_vec());
    let readings = push_n(&src, Lane::Reading, 10, 100, 0);
    let mut up = start(b.uplink_config("gw-acl"), &src);
    up.wake.notify_one();
    let s = up
        .until(30, "refusal reported", |s| {
            s.refused >= 1 && s.delivered == 10
        })
        .await;
    assert_eq!(
        src.delivered_count(alert),
        0,
        "refused alert must not be marked delivered"
    );
    let reason = src.refused_reason(alert).unwrap();
    assert!(
        reason.contains("NotAuthorized") && reason.contains("0x87"),
        "{reason}"
    );
    assert!(s.last_error.unwrap_or_default().contains("refused"));
    for id in readings {
        assert_eq!(src.delivered_count(id), 1);
    }
    assert!(rx.on("/alert").is_empty());
    // It is retried later, and refused again (still not delivered).
    up.until(30, "retried", |s| s.refused >= 2).await;
    assert_eq!(src.delivered_count(alert), 0);
    up.stop().await;
}

async fn assert_refused_connection(cfg: UplinkConfig, expect: &[&str]) {
    let src = MemorySource::new();
    let id = src.push(Lane::Reading, b"{}".to_vec());
    let mut up = start(cfg, &src);
    let s = up
        .until(30, "error reported", |s| s.last_error.is_some())
        .await;
    let err = s.last_error.unwrap();
    for e in expect {
        assert!(err.contains(e), "error {err:?} should contain {e:?}");
    }
    // Still running and retrying: the same error comes back after a backoff.
    let mut seen = 0;
    within(30, "a retry", async {
        while seen < 2 {
            up.status.changed().await.unwrap();
            if up.status.borrow().last_error.is_some() {
                seen += 1;
            }
        }
    })
    .await;
    assert!(!up.task.is_finished());
    assert_eq!(src.delivered_count(id), 0);
    assert!(!up.status.borrow().connected);
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_wrong_ca_is_refused_naming_the_ca_file() {
    let b = Broker::start(Acl::gateways(&["gw-ca"]));
    let other = Ca::new("other-ca");
    let mut cfg = b.uplink_config("gw-ca");
    let wrong = b.path("other-ca.pem");
    std::fs::write(&wrong, &other.cert_pem).unwrap();
    cfg.ca_file = wrong.clone();
    assert_refused_connection(
        cfg,
        &[
            "TLS handshake",
            "not signed by the CA in",
            wrong.to_str().unwrap(),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_expired_client_certificate_is_refused_at_load() {
    let b = Broker::start(Acl::gateways(&["gw-exp"]));
    let mut cfg = b.uplink_config("gw-exp");
    let (cert, key) = b.write_client("gw-exp", true);
    cfg.cert_file = cert.clone();
    cfg.key_file = key;
    assert_refused_connection(
        cfg,
        &[cert.to_str().unwrap(), "client certificate expired at"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_client_certificate_from_another_ca_is_refused_by_broker() {
    let b = Broker::start(Acl::gateways(&["gw-rogue"]));
    let other = Ca::new("rogue-ca");
    let mut cfg = b.uplink_config("gw-rogue");
    let (c, k) = other.client("gw-rogue", false);
    std::fs::write(&cfg.cert_file, c).unwrap();
    std::fs::write(&cfg.key_file, k).unwrap();
    cfg.ca_file = b.path("ca.pem");
    assert_refused_connection(
        cfg,
        &[
            "TLS handshake",
            "rejected the client certificate",
            "UnknownCA",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_wrong_server_name_is_refused() {
    let b = Broker::start(Acl::gateways(&["gw-name"]));
    let mut cfg = b.uplink_config("gw-name");
    cfg.server_name = Some("broker.example.org".into());
    assert_refused_connection(
        cfg,
        &[
            "TLS handshake",
            "not valid for server name \"broker.example.org\"",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_plain_tcp_listener_is_refused() {
    let b = Broker::start(Acl::gateways(&["gw-plain"]));
    let mut cfg = b.uplink_config("gw-plain");
    cfg.port = b.plain_port;
    assert_refused_connection(cfg, &["TLS handshake", "TLS listener"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_alerts_go_before_reading_backlog() {
    let b = Broker::start(Acl::gateways(&["gw-prio"]));
    let (rx, _sub) = subscribe(&b, "sub-prio", "rpm/v1/gw/gw-prio/+").await;
    let src = MemorySource::new();
    // The backlog is older than the alerts: oldest-first alone would send it first.
    push_n(&src, Lane::Reading, 2_000, 200, 0);
    for i in 0..3 {
        src.push(Lane::Alert, format!("{{\"alert\":{i}}}").into_bytes());
    }
    let mut up = start(b.uplink_config("gw-prio"), &src);
    up.wake.notify_one();
    rx.wait_for("/obs", 2_000, 60).await;
    let topics: Vec<String> = rx
        .all()
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| !t.ends_with("/status"))
        .collect();
    assert_eq!(topics.len(), 2_003);
    assert!(
        topics[..3].iter().all(|t| t.ends_with("/alert")),
        "{:?}",
        &topics[..5]
    );
    up.until(30, "all delivered", |s| s.delivered == 2_003)
        .await;
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_oversized_payload_is_refused_and_the_rest_flows() {
    let b = Broker::start(Acl::gateways(&["gw-big"]));
    let (rx, _sub) = subscribe(&b, "sub-big", "rpm/v1/gw/gw-big/obs").await;
    let src = MemorySource::new();
    let before = push_n(&src, Lane::Reading, 5, 100, 0);
    let big = src.push(Lane::Reading, payload(999, 20_000));
    let after = push_n(&src, Lane::Reading, 5, 100, 10);
    let mut cfg = b.uplink_config("gw-big");
    cfg.max_packet_size = 16 * 1024;
    let mut up = start(cfg, &src);
    up.wake.notify_one();
    let s = up.until(30, "rest delivered", |s| s.delivered == 10).await;
    assert_eq!(s.refused, 1);
    assert_eq!(src.delivered_count(big), 0);
    let reason = src.refused_reason(big).unwrap();
    assert!(
        reason.contains("above the maximum packet size of 16384 bytes"),
        "{reason}"
    );
    for id in before.iter().chain(after.iter()) {
        assert_eq!(src.delivered_count(*id), 1);
    }
    rx.wait_for("/obs", 10, 30).await;
    // Not retried endlessly: a wake re-reads the outbox but the row stays parked.
    up.wake.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.status.borrow().refused, 1);
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_reload_with_replaced_certificate_reconnects_and_continues() {
    let b = Broker::start(Acl::gateways(&["gw-reload"]));
    let (rx, _sub) = subscribe(&b, "sub-reload", "rpm/v1/gw/gw-reload/obs").await;
    let src = MemorySource::new();
    push_n(&src, Lane::Reading, 100, 100, 0);
    let cfg = b.uplink_config("gw-reload");
    let (cert_file, key_file) = (cfg.cert_file.clone(), cfg.key_file.clone());
    let mut up = start(cfg, &src);
    up.wake.notify_one();
    let first = up.until(30, "first batch", |s| s.delivered == 100).await;

    // An invalid replacement is refused; the working connection stays.
    let old_cert = std::fs::read(&cert_file).unwrap();
    std::fs::write(&cert_file, b"not a certificate").unwrap();
    up.reload.notify_one();
    let s = up
        .until(30, "reload refused", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("reload refused"))
        })
        .await;
    assert!(s.connected);
    assert_eq!(s.connects, first.connects);
    std::fs::write(&cert_file, old_cert).unwrap();

    // A valid renewed certificate (same CN, new key) reconnects and publishing continues.
    let (c, k) = b.ca.client("gw-reload", false);
    std::fs::write(&cert_file, c).unwrap();
    std::fs::write(&key_file, k).unwrap();
    up.reload.notify_one();
    up.until(30, "reconnected", |s| {
        s.connects == first.connects + 1 && s.connected
    })
    .await;
    push_n(&src, Lane::Reading, 100, 100, 1000);
    up.wake.notify_one();
    up.until(30, "second batch", |s| s.delivered == 200).await;
    rx.wait_for("/obs", 200, 30).await;
    assert!(src.delivery_counts().iter().all(|(_, c)| *c == 1));
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_rsa_pkcs1_client_certificate_connects() {
    let b = Broker::start(Acl::gateways(&["gw-rsa"]));
    let (_rx, _sub) = subscribe(&b, "sub-rsa", "rpm/v1/gw/gw-rsa/obs").await;
    let mut cfg = b.uplink_config("gw-rsa");
    let (c, k) = b.ca.client_rsa("gw-rsa", b.dir.path());
    assert!(k.contains("BEGIN RSA PRIVATE KEY"), "PKCS#1 key expected");
    std::fs::write(&cfg.cert_file, c).unwrap();
    std::fs::write(&cfg.key_file, k).unwrap();
    cfg.gateway_id = None;
    let src = MemorySource::new();
    let id = src.push(Lane::Reading, b"{}".to_vec());
    let mut up = start(cfg, &src);
    up.wake.notify_one();
    let s = up.until(30, "delivered", |s| s.delivered == 1).await;
    assert_eq!(s.gateway_id.as_deref(), Some("gw-rsa"));
    assert_eq!(src.delivered_count(id), 1);
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_status_is_online_while_connected_and_offline_after_shutdown() {
    let b = Broker::start(Acl::gateways(&["gw-status"]));
    let (rx, _sub) = subscribe(&b, "sub-status", "rpm/v1/gw/gw-status/status").await;
    let src = MemorySource::new();
    let mut up = start(b.uplink_config("gw-status"), &src);
    up.until(30, "connected", |s| s.connected).await;
    rx.wait_for("/status", 1, 30).await;
    let first: serde_json::Value = serde_json::from_slice(&rx.on("/status")[0]).unwrap();
    assert_eq!(first["state"], "online");
    assert_eq!(first["gateway"], "gw-status");
    up.stop().await;
    rx.wait_for("/status", 2, 30).await;
    let states: HashSet<String> = rx
        .on("/status")
        .iter()
        .map(|p| serde_json::from_slice::<serde_json::Value>(p).unwrap()["state"].to_string())
        .collect();
    assert!(states.contains("\"offline\""), "{states:?}");
}

/// Regression: `EventLoop::poll` was raced in `select!` against outbox wake-ups; a wake-up
/// during the TLS/CONNECT exchange dropped the connection, and one during a write left a
/// half-written packet (Mosquitto: "protocol error"). Found by the demo, where every commit
/// wakes the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_constant_wakeups_never_break_the_connection() {
    let b = Broker::start(Acl::gateways(&["gw-wakes"]));
    let (rx, _sub) = subscribe(&b, "sub-wakes", "rpm/v1/gw/gw-wakes/obs").await;
    let src = MemorySource::new();
    push_n(&src, Lane::Reading, 3_000, 700, 0);
    let mut up = start(b.uplink_config("gw-wakes"), &src);
    let wake = up.wake.clone();
    let hammer = tokio::spawn(async move {
        loop {
            wake.notify_one();
            tokio::task::yield_now().await;
        }
    });
    rx.wait_for("/obs", 3_000, 120).await;
    let s = up
        .until(30, "all delivered", |s| s.delivered == 3_000)
        .await;
    hammer.abort();
    assert_eq!(
        s.connects, 1,
        "the connection was dropped and re-made: {s:?}"
    );
    up.stop().await;
}

/// Issue 12 point 9: Mosquitto answers a QoS 1 publish that no client subscribes to with
/// PUBACK 0x10 "No matching subscribers" (MQTT 5 §3.4.2.1): nobody received it. With the
/// platform's consumer gone, the rows stay undelivered, the status says so, and once the
/// platform subscribes every reading and alert arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_no_matching_subscribers_keeps_rows_until_the_platform_subscribes() {
    let b = Broker::start(Acl::gateways(&["gw-late"]));
    let src = MemorySource::new();
    let alert = src.push(Lane::Alert, b"{\"alert\":1}".to_vec());
    let readings = push_n(&src, Lane::Reading, 200, 100, 0);
    let mut cfg = b.uplink_config("gw-late");
    cfg.no_subscribers_alarm_s = 1;
    let mut up = start(cfg, &src);
    up.wake.notify_one();
    let s = up
        .until(30, "platform_not_subscribed raised", |s| {
            s.conditions.contains(&PLATFORM_NOT_SUBSCRIBED)
        })
        .await;
    assert!(s.not_subscribed_since.is_some(), "{s:?}");
    assert_eq!(s.delivered, 0, "{s:?}");
    assert_eq!(src.undelivered(), 201, "no row is delivered to nobody");

    let (rx, _sub) = subscribe(&b, "sub-late", "rpm/v1/gw/gw-late/#").await;
    rx.wait_for("/obs", 200, 60).await;
    rx.wait_for("/alert", 1, 30).await;
    let s = up.until(30, "all delivered", |s| s.delivered == 201).await;
    assert!(s.conditions.is_empty(), "condition cleared: {s:?}");
    assert_eq!(s.not_subscribed_since, None, "{s:?}");
    assert_eq!(src.delivered_count(alert), 1);
    for id in readings {
        assert_eq!(src.delivered_count(id), 1, "row {id} delivered count");
    }
    up.stop().await;
}

/// `no_subscribers = "delivered"`: for a platform that takes messages off the broker without
/// a subscription, the broker's 0x10 acceptance counts as delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_no_subscribers_delivered_takes_0x10_as_delivery() {
    let b = Broker::start(Acl::gateways(&["gw-nosub"]));
    let src = MemorySource::new();
    let ids = push_n(&src, Lane::Reading, 20, 100, 0);
    let mut cfg = b.uplink_config("gw-nosub");
    cfg.no_subscribers = NoSubscribers::Delivered;
    let mut up = start(cfg, &src);
    up.wake.notify_one();
    let s = up.until(30, "delivered", |s| s.delivered == 20).await;
    assert!(s.conditions.is_empty(), "{s:?}");
    assert_eq!(s.not_subscribed_since, None, "{s:?}");
    for id in ids {
        assert_eq!(src.delivered_count(id), 1);
    }
    up.stop().await;
}

/// A hub whose clock is behind (no RTC, issue 15 point 5) sees its client certificate as not
/// valid yet: the uplink says so, keeps retrying rather than giving up, and connects once the
/// clock is inside the validity period. Here the certificate starts a few seconds after the
/// true time, the same judgement seen from the other side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_client_certificate_not_yet_valid_is_retried_and_connects_once_valid() {
    let b = Broker::start(Acl::gateways(&["gw-early"]));
    let (rx, _sub) = subscribe(&b, "sub-early", "rpm/v1/gw/gw-early/obs").await;
    let cfg = b.uplink_config("gw-early");
    let from = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    let (c, k) = b.ca.client_valid_from("gw-early", from);
    std::fs::write(&cfg.cert_file, c).unwrap();
    std::fs::write(&cfg.key_file, k).unwrap();
    let src = MemorySource::new();
    let id = src.push(Lane::Reading, b"{}".to_vec());
    let mut up = start(cfg, &src);
    let s = up
        .until(30, "not-yet-valid reported", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("not valid before"))
        })
        .await;
    assert!(!s.connected);
    if !vitalgate::clock::process_synced() {
        let e = s.last_error.unwrap();
        assert!(e.contains("clock is not synchronised"), "said so: {e}");
    }
    up.until(180, "connected once the certificate is valid", |s| {
        s.connected
    })
    .await;
    up.wake.notify_one();
    rx.wait_for("/obs", 1, 60).await;
    up.until(60, "the reading delivered", |s| s.delivered == 1)
        .await;
    assert_eq!(src.delivered_count(id), 1);
    up.stop().await;
}

//! Shared by the benches: a gateway config against the test broker, an outbox pre-filled
//! through the real ingest path, the uplink timed from ConnAck to its last delivery, the
//! platform's raw rumqttc publisher (the baseline) and a subscriber that timestamps each arrival.
#![allow(dead_code)]

pub mod sched;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use vitalgate::config::Config;
use vitalgate::ingest::{self, CommitHook, Frame, GroupCommit};
use vitalgate::reading::{Decimal, Metric, Reading};
use vitalgate::store::Outbox;
use vitalgate::uplink::{OutboxSource, Uplink};

use crate::support::{platform_tls, Broker};

/// A `vitalgate.toml` for gateway `gw` with `patients` (TOML `[[patient]]` tables) and the
/// `[uplink]` of `b`; its outbox lives in `dir`. Nobody subscribes to the readings (nor in
/// the raw rumqttc baseline), so the broker's 0x10 "no matching subscribers" is taken as
/// delivery (`no_subscribers = "delivered"`): the default would hold every row.
pub fn config(b: &Broker, gw: &str, dir: &Path, patients: &str, inflight: u16) -> Config {
    let up = b.uplink_config(gw);
    let text = format!(
        "[gateway]\nid = \"{gw}\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\n\
         [store]\nkey_file = \"{d}/unused.key\"\n\n\
         [uplink]\nbroker = \"127.0.0.1\"\nport = {port}\nserver_name = \"localhost\"\n\
         ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\ninflight = {inflight}\n\
         no_subscribers = \"delivered\"\n\n{patients}\n",
        d = dir.display(),
        port = b.port,
        ca = up.ca_file.display(),
        cert = up.cert_file.display(),
        key = up.key_file.display(),
    );
    let path = dir.join("vitalgate.toml");
    std::fs::write(&path, &text).unwrap();
    Config::load(&path).unwrap()
}

/// One heart-rate reading from device `device` of patient `patient`, as a device task sends it.
pub fn frame(device: &str, patient: &str, value: i64, at: OffsetDateTime) -> Frame {
    Frame {
        device_id: Arc::from(device),
        patient_id: Arc::from(patient),
        nhs_number: Some(Arc::from("9434765919")),
        readings: vec![Reading::canonical(Metric::HeartRate, Decimal::int(value)).at(at)],
        received_at: OffsetDateTime::now_utc(),
        clock_synced: true,
        cursor: None,
        done: None,
    }
}

/// Commits `n` single-reading frames through the real ingest writer (validation, grouping,
/// sealing, group commit) with `hook`, and returns the outbox.
pub fn prefill(
    rt: &tokio::runtime::Runtime,
    outbox: Outbox,
    n: usize,
    hook: Box<dyn CommitHook>,
) -> Outbox {
    let (handle, writer) = ingest::start(
        outbox,
        GroupCommit::default(),
        Arc::new(Notify::new()),
        hook,
    )
    .unwrap();
    let t0 = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let started = Instant::now();
    rt.block_on(async move {
        for i in 0..n {
            let at = t0 + time::Duration::milliseconds(i as i64);
            handle
                .submit(frame("bulk-hr", "p-bulk", 60 + (i % 40) as i64, at))
                .await
                .unwrap();
        }
    });
    let outbox = writer.join().unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  pre-filled {n} readings through ingest in {secs:.1} s ({:.0} readings/s)",
        n as f64 / secs
    );
    outbox
}

/// Runs `up` until it has delivered `n` rows; returns rows per second from its ConnAck (the
/// first send follows at once) to the last row marked delivered.
pub async fn timed_uplink<S: OutboxSource>(up: Uplink<S>, wake: &Notify, n: usize) -> f64 {
    let mut status = up.status();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(up.run(cancel.clone()));
    while !status.borrow_and_update().connected {
        status.changed().await.unwrap();
    }
    let t0 = Instant::now();
    wake.notify_one();
    while status.borrow_and_update().delivered < n as u64 {
        status.changed().await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = task.await;
    n as f64 / secs
}

/// [`timed_uplink`], and where this process's threads and the broker's spent the drain
/// (from the ConnAck to the last delivery, snapshotted before the uplink stops).
pub async fn timed_uplink_traced<S: OutboxSource>(
    up: Uplink<S>,
    wake: &Notify,
    n: usize,
    broker_pid: Option<u32>,
) -> (f64, sched::Delta, sched::Delta) {
    let broker = broker_pid.map(|p| p.to_string()).unwrap_or_default();
    let mut status = up.status();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(up.run(cancel.clone()));
    while !status.borrow_and_update().connected {
        status.changed().await.unwrap();
    }
    let (ours0, broker0) = (sched::snapshot("self"), sched::snapshot(&broker));
    let t0 = Instant::now();
    wake.notify_one();
    while status.borrow_and_update().delivered < n as u64 {
        status.changed().await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let (ours1, broker1) = (sched::snapshot("self"), sched::snapshot(&broker));
    cancel.cancel();
    let _ = task.await;
    (
        n as f64 / secs,
        sched::delta(&ours0, &ours1),
        sched::delta(&broker0, &broker1),
    )
}

/// Raw rumqttc v5: publishes `payloads` at QoS 1 with `window` in flight as `gw`, over a
/// socket set up as the uplink's (TCP_NODELAY), from the ConnAck to the last PUBACK. Returns
/// messages per second.
pub async fn raw_rumqttc(b: &Broker, gw: &str, payloads: &[Bytes], window: u16) -> f64 {
    let cfg = b.uplink_config(gw);
    let tls = vitalgate::uplink::tls::load(&cfg, OffsetDateTime::now_utc()).unwrap();
    let mut o = MqttOptions::new(gw, "127.0.0.1", b.port);
    o.set_clean_start(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(256 * 1024))
        .set_outgoing_inflight_upper_limit(window)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.config,
        )));
    // The uplink's socket options (`uplink/session.rs`): Nagle's algorithm off.
    let mut net = o.network_options();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    let (client, mut el) = AsyncClient::new(o, usize::from(window));
    loop {
        if let Ok(Event::Incoming(Incoming::ConnAck(_))) = el.poll().await {
            break;
        }
    }
    let n = payloads.len();
    let payloads = payloads.to_vec();
    let topic = format!("rpm/v1/gw/{gw}/obs");
    let t0 = Instant::now();
    let producer = tokio::spawn(async move {
        for p in payloads {
            client
                .publish_bytes(topic.clone(), QoS::AtLeastOnce, false, p)
                .await
                .unwrap();
        }
        client
    });
    let mut acks = 0;
    while acks < n {
        if let Event::Incoming(Incoming::PubAck(_)) = el.poll().await.unwrap() {
            acks += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let client = producer.await.unwrap();
    let _ = client.try_disconnect();
    n as f64 / secs
}

/// A platform subscriber to `filter` that sends each message with its arrival instant.
/// Returns once subscribed.
pub async fn timed_subscriber(
    b: &Broker,
    client_id: &str,
    filter: &str,
) -> mpsc::UnboundedReceiver<(Instant, Vec<u8>)> {
    let mut o = MqttOptions::new(client_id, "localhost", b.port);
    o.set_clean_start(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(1024 * 1024))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            platform_tls(b),
        )));
    let (client, mut el) = AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let filter = filter.to_owned();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if tx.send((Instant::now(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .unwrap()
        .unwrap();
    rx
}

/// CPU seconds (user + system) used so far by process `pid` ("self" for this one), from
/// `/proc/<pid>/stat`; 0 where that cannot be read.
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" that closes the command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// CPU time of this process and of the broker while `f` runs, in microseconds per message.
pub struct CpuPerMessage {
    pub ours_us: f64,
    pub broker_us: f64,
}

pub fn measure_cpu<T>(
    broker_pid: Option<u32>,
    n: usize,
    f: impl FnOnce() -> T,
) -> (T, CpuPerMessage) {
    let broker = broker_pid.map(|p| p.to_string()).unwrap_or_default();
    let (ours0, broker0) = (cpu_seconds("self"), cpu_seconds(&broker));
    let out = f();
    let per = |s: f64| s * 1e6 / n as f64;
    let cpu = CpuPerMessage {
        ours_us: per(cpu_seconds("self") - ours0),
        broker_us: per(cpu_seconds(&broker) - broker0),
    };
    (out, cpu)
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `q` quantile (0..=1) of sorted `v`, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

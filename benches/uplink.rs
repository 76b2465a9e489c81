//! Uplink throughput: the publisher + MemorySource draining 100,000 pre-stored ~800-byte
//! messages to a local Mosquitto over mutual TLS 1.3, beside a baseline in the same run: raw
//! rumqttc v5 publishing pre-serialized payloads of the same size with the same in-flight
//! window to the same broker. Prints both rates and their ratio (target: >= 0.8). No assertions.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use support::{Acl, Broker};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vitalgate::uplink::{Lane, MemorySource, Uplink};

const N: usize = 100_000;
const SIZE: usize = 800;
const WINDOW: u16 = 64;

fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("{{\"id\":{i},\"pad\":\"").into_bytes();
    p.resize(SIZE - 2, b'x');
    p.extend_from_slice(b"\"}");
    p
}

async fn publisher(b: &Broker) -> f64 {
    let src = MemorySource::new();
    for i in 0..N {
        src.push(Lane::Reading, payload(i));
    }
    let mut cfg = b.uplink_config("gw-bench");
    cfg.inflight = WINDOW;
    cfg.batch_size = 1024;
    let wake = Arc::new(Notify::new());
    let up = Uplink::new(cfg, src.clone(), wake.clone()).unwrap();
    let mut status = up.status();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(up.run(cancel.clone()));
    // The clock starts at the ConnAck: the first send follows it immediately.
    while !status.borrow_and_update().connected {
        status.changed().await.unwrap();
    }
    let t0 = Instant::now();
    wake.notify_one();
    while status.borrow_and_update().delivered < N as u64 {
        status.changed().await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = task.await;
    N as f64 / secs
}

async fn baseline(b: &Broker) -> f64 {
    let cfg = b.uplink_config("gw-base");
    let tls = vitalgate::uplink::tls::load(&cfg, time::OffsetDateTime::now_utc()).unwrap();
    let payloads: Vec<Bytes> = (0..N).map(|i| Bytes::from(payload(i))).collect();
    let mut o = MqttOptions::new("gw-base", "127.0.0.1", b.port);
    o.set_clean_start(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(256 * 1024))
        .set_outgoing_inflight_upper_limit(WINDOW)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.config,
        )));
    let (client, mut el) = AsyncClient::new(o, usize::from(WINDOW));
    loop {
        if let Ok(Event::Incoming(Incoming::ConnAck(_))) = el.poll().await {
            break;
        }
    }
    let t0 = Instant::now();
    let producer = tokio::spawn(async move {
        for p in payloads {
            client
                .publish_bytes("rpm/v1/gw/gw-base/obs", QoS::AtLeastOnce, false, p)
                .await
                .unwrap();
        }
        client
    });
    let mut acks = 0;
    while acks < N {
        if let Event::Incoming(Incoming::PubAck(_)) = el.poll().await.unwrap() {
            acks += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let _client = producer.await;
    N as f64 / secs
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let b = Broker::start(Acl::gateways(&["gw-bench", "gw-base"]));
    rt.block_on(async {
        // Warm-up of both paths (TLS, broker allocations), then measured runs alternating.
        let mut pubs = Vec::new();
        let mut bases = Vec::new();
        for _ in 0..3 {
            bases.push(baseline(&b).await);
            pubs.push(publisher(&b).await);
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (p, base) = (med(&mut pubs), med(&mut bases));
        println!("uplink bench: {N} messages x {SIZE} B, QoS 1, window {WINDOW}, mTLS 1.3 to local Mosquitto");
        println!("  runs publisher: {pubs:.0?} msg/s");
        println!("  runs baseline:  {bases:.0?} msg/s");
        println!("  publisher (median): {p:.0} msg/s");
        println!("  raw rumqttc (median): {base:.0} msg/s");
        println!("  ratio: {:.2} (target >= 0.80)", p / base);
    });
}

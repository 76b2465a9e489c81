//! Uplink throughput: the publisher + MemorySource draining 100,000 pre-stored ~800-byte
//! messages to a local Mosquitto over mutual TLS 1.3, beside a baseline in the same run: raw
//! rumqttc v5 publishing pre-serialized payloads of the same size with the same in-flight
//! window to the same broker. Prints both rates and their ratio (target: >= 0.8). No assertions.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use bytes::Bytes;
use support::{Acl, Broker};
use tokio::sync::Notify;
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
    // Nobody subscribes (nor in the baseline): 0x10 is delivery here, else every row is held.
    cfg.no_subscribers = vitalgate::uplink::NoSubscribers::Delivered;
    let wake = Arc::new(Notify::new());
    let up = Uplink::new(cfg, src.clone(), wake.clone()).unwrap();
    common::timed_uplink(up, &wake, N).await
}

async fn baseline(b: &Broker) -> f64 {
    let payloads: Vec<Bytes> = (0..N).map(|i| Bytes::from(payload(i))).collect();
    common::raw_rumqttc(b, "gw-base", &payloads, WINDOW).await
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let b = Broker::start_for_bench(Acl::gateways(&["gw-bench", "gw-base"]));
    rt.block_on(async {
        // Warm-up of both paths (TLS, broker allocations), then measured runs alternating.
        let mut pubs = Vec::new();
        let mut bases = Vec::new();
        for _ in 0..3 {
            bases.push(baseline(&b).await);
            pubs.push(publisher(&b).await);
        }
        let (p, base) = (
            common::median(&mut pubs.clone()),
            common::median(&mut bases.clone()),
        );
        println!("uplink bench: {N} messages x {SIZE} B, QoS 1, window {WINDOW}, mTLS 1.3 to local Mosquitto");
        println!("  runs publisher: {pubs:.0?} msg/s");
        println!("  runs baseline:  {bases:.0?} msg/s");
        println!("  publisher (median): {p:.0} msg/s");
        println!("  raw rumqttc (median): {base:.0} msg/s");
        println!("  ratio: {:.2} (target >= 0.80)", p / base);
    });
}

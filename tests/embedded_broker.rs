//! The demo's embedded MQTT 5 broker over real mutual TLS 1.3 on loopback, driven by rumqttc v5
//! clients and by the real uplink publisher; no mocks. Issue 3 (embedded demo broker),
//! acceptance 5; the contract it must keep is the demo's Mosquitto set-up (rust-stack.md §9,
//! `vitalgate::demo::broker::acl`) and MQTT 5 reason codes (PUBACK 0x00 / 0x10 / 0x87).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use vitalgate::demo::certs::DemoPki;
use vitalgate::demo::embedded_broker::EmbeddedBroker;
use vitalgate::uplink::{Lane, MemorySource, Uplink, UplinkConfig};

const GW: &str = "demo-gw-0001";
const PREFIX: &str = "rpm/v1";
const GW_STATUS: &str = "rpm/v1/gw/demo-gw-0001/status";

async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s waiting for {what}"),
    }
}

/// A demo PKI in its own directory (kept alive with it).
struct Pki {
    _dir: tempfile::TempDir,
    pki: DemoPki,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let pki = DemoPki::generate(dir.path(), GW, time::OffsetDateTime::now_utc()).unwrap();
    Pki { _dir: dir, pki }
}

/// The uplink's configuration for the gateway identity of `p` (broker certificate checked for
/// `localhost` while connecting to 127.0.0.1, as the demo does).
fn gateway_config(p: &DemoPki, port: u16) -> UplinkConfig {
    UplinkConfig {
        broker: "127.0.0.1".into(),
        port,
        server_name: Some("localhost".into()),
        ca_file: p.ca.clone(),
        cert_file: p.gateway_cert.clone(),
        key_file: p.gateway_key.clone(),
        backoff_initial_ms: 200,
        backoff_max_s: 2,
        ..UplinkConfig::default()
    }
}

fn tls(cfg: &UplinkConfig) -> Arc<rustls::ClientConfig> {
    vitalgate::uplink::tls::load(cfg, time::OffsetDateTime::now_utc())
        .unwrap()
        .config
}

fn gateway_tls(p: &DemoPki, port: u16) -> Arc<rustls::ClientConfig> {
    tls(&gateway_config(p, port))
}

fn platform_tls(p: &DemoPki, port: u16) -> Arc<rustls::ClientConfig> {
    tls(&UplinkConfig {
        cert_file: p.platform_cert.clone(),
        key_file: p.platform_key.clone(),
        ..gateway_config(p, port)
    })
}

/// A rumqttc v5 client whose event loop runs in a task; events (or the first error, after
/// which the loop stops: no reconnects in these tests) arrive on `events`.
struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Incoming, String>>,
    task: tokio::task::JoinHandle<()>,
}

fn client(port: u16, tls: Arc<rustls::ClientConfig>, id: &str, will: Option<LastWill>) -> Client {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_start(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(1024 * 1024))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    if let Some(w) = will {
        o.set_last_will(w);
    }
    let (client, mut el) = AsyncClient::new(o, 100);
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(i)) => {
                    if tx.send(Ok(i)).is_err() {
                        break;
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    break;
                }
            }
        }
    });
    Client {
        client,
        events,
        task,
    }
}

impl Client {
    /// The next incoming packet that `pick` selects (others are skipped); panics on an error.
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(Incoming) -> Option<T>) -> T {
        within(30, what, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(i)) => {
                        if let Some(t) = pick(i) {
                            return t;
                        }
                    }
                    Some(Err(e)) => panic!("connection failed while waiting for {what}: {e}"),
                    None => panic!("event loop ended while waiting for {what}"),
                }
            }
        })
        .await
    }

    async fn connected(mut self) -> Client {
        self.next("CONNACK", |i| matches!(i, Packet::ConnAck(_)).then_some(()))
            .await;
        self
    }

    async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.next("SUBACK", |i| match i {
            Packet::SubAck(s) => s.return_codes.first().copied(),
            _ => None,
        })
        .await
    }

    async fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> PubAckReason {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
        self.next("PUBACK", |i| match i {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await
    }

    async fn next_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        self.next("PUBLISH", |i| match i {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }
}

/// A broker and a platform subscriber to `{prefix}/gw/+/#`.
/// The demo gateway, connected, with a retained QoS 1 last will `offline` on its status topic.
async fn gateway_with_offline_will(p: &Pki, b: &EmbeddedBroker) -> Client {
    let will = LastWill::new(GW_STATUS, "offline", QoS::AtLeastOnce, true, None);
    client(b.port(), gateway_tls(&p.pki, b.port()), GW, Some(will))
        .connected()
        .await
}

async fn broker_with_platform() -> (Pki, EmbeddedBroker, Client) {
    let p = pki();
    let b = EmbeddedBroker::start(&p.pki, GW, PREFIX).unwrap();
    let mut platform = client(b.port(), platform_tls(&p.pki, b.port()), "platform", None)
        .connected()
        .await;
    assert_eq!(
        platform.subscribe("rpm/v1/gw/+/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    (p, b, platform)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_qos1_publish_to_own_topic_reaches_platform_byte_identical() {
    let (p, b, mut platform) = broker_with_platform().await;
    let mut gw = client(b.port(), gateway_tls(&p.pki, b.port()), GW, None)
        .connected()
        .await;
    // Every byte value, not only UTF-8: the broker must not touch the payload.
    let payload: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
    let topic = "rpm/v1/gw/demo-gw-0001/obs";
    assert_eq!(
        gw.publish(topic, payload.clone(), false).await,
        PubAckReason::Success
    );
    let got = platform.next_publish().await;
    assert_eq!(&got.topic[..], topic.as_bytes());
    assert_eq!(got.payload.to_vec(), payload);
    assert_eq!(got.qos, QoS::AtLeastOnce);
    b.stop().await;
}

// broker::acl(): the gateway writes only under rpm/v1/gw/<its CN>/; the uplink treats
// reason codes >= 0x80 as "not delivered".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_publish_to_another_gateways_topic_gets_not_authorized_and_is_not_routed() {
    let (p, b, mut platform) = broker_with_platform().await;
    let mut gw = client(b.port(), gateway_tls(&p.pki, b.port()), GW, None)
        .connected()
        .await;
    assert_eq!(
        gw.publish("rpm/v1/gw/demo-gw-0002/obs", b"forged".to_vec(), false)
            .await,
        PubAckReason::NotAuthorized
    );
    // Published after the refused one: if the refused one had been routed it would come first.
    assert_eq!(
        gw.publish("rpm/v1/gw/demo-gw-0001/obs", b"own".to_vec(), false)
            .await,
        PubAckReason::Success
    );
    let got = platform.next_publish().await;
    assert_eq!(&got.payload[..], b"own");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_subscription_outside_its_subtree_gets_suback_not_authorized() {
    let p = pki();
    let b = EmbeddedBroker::start(&p.pki, GW, PREFIX).unwrap();
    let mut gw = client(b.port(), gateway_tls(&p.pki, b.port()), GW, None)
        .connected()
        .await;
    assert_eq!(
        gw.subscribe("rpm/v1/gw/+/obs").await,
        SubscribeReasonCode::NotAuthorized
    );
    assert_eq!(
        gw.subscribe("rpm/v1/gw/demo-gw-0001/cmd/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    b.stop().await;
}

// MQTT 5 §3.4.2.1: 0x10 No matching subscribers (the uplink counts it as delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_no_subscriber_gets_no_matching_subscribers() {
    let p = pki();
    let b = EmbeddedBroker::start(&p.pki, GW, PREFIX).unwrap();
    let mut gw = client(b.port(), gateway_tls(&p.pki, b.port()), GW, None)
        .connected()
        .await;
    assert_eq!(
        gw.publish("rpm/v1/gw/demo-gw-0001/obs", b"x".to_vec(), false)
            .await,
        PubAckReason::NoMatchingSubscribers
    );
    b.stop().await;
}

/// The first thing the client sees is an error: no CONNACK ever arrives.
async fn assert_refused(mut c: Client, what: &str) {
    let first = within(30, what, c.events.recv()).await;
    match first {
        Some(Err(_)) => {}
        other => panic!("{what}: expected the connection to be refused, got {other:?}"),
    }
}

// rust-stack.md §9: require_certificate true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused_at_the_tls_handshake() {
    let p = pki();
    let b = EmbeddedBroker::start(&p.pki, GW, PREFIX).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&p.pki.ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let no_cert = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let c = client(b.port(), Arc::new(no_cert), GW, None);
    assert_refused(c, "refusal of a client without certificate").await;
    b.stop().await;
}

// rust-stack.md §9: only certificates issued by the demo CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_is_refused_at_the_tls_handshake() {
    let p = pki();
    let other = pki();
    let b = EmbeddedBroker::start(&p.pki, GW, PREFIX).unwrap();
    // Trusts the right broker, but presents a same-CN certificate from another CA.
    let cfg = UplinkConfig {
        cert_file: other.pki.gateway_cert.clone(),
        key_file: other.pki.gateway_key.clone(),
        ..gateway_config(&p.pki, b.port())
    };
    let c = client(b.port(), tls(&cfg), GW, None);
    assert_refused(c, "refusal of a certificate from another CA").await;
    // Control: the right certificate connects to the same broker.
    client(b.port(), gateway_tls(&p.pki, b.port()), GW, None)
        .connected()
        .await;
    b.stop().await;
}

async fn openssl_s_client(p: &DemoPki, port: u16, version: &str) -> (bool, String) {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", version, "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(&p.ca)
        .arg("-cert")
        .arg(&p.gateway_cert)
        .arg("-key")
        .arg(&p.gateway_key)
        .stdin(std::process::Stdio::null())
        .output();
    let out = within(20, "openssl s_client", out)
        .await
        .expect("openssl CLI (installed with the test tools)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// rust-stack.md §9: tls_version tlsv1.3 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_client_is_refused() {
    let p = pki();
    let b = EmbeddedBroker::start(&p.pki, GW, PREFIX).unwrap();
    let (ok, text) = openssl_s_client(&p.pki, b.port(), "-tls1_2").await;
    assert!(!ok, "a TLS 1.2 handshake succeeded:\n{text}");
    // The broker answers with alert 70 (protocol_version); no cipher was agreed.
    assert!(text.contains("alert protocol version"), "{text}");
    assert!(text.contains("Cipher is (NONE)"), "{text}");
    // Control: the same client and certificate with TLS 1.3 completes the handshake.
    let (ok, text) = openssl_s_client(&p.pki, b.port(), "-tls1_3").await;
    assert!(
        ok && text.contains("TLSv1.3"),
        "TLS 1.3 handshake failed:\n{text}"
    );
    b.stop().await;
}

// The gateway's retained last will is its `status = offline` (uplink/session.rs options()).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will_reaches_platform_when_gateway_connection_drops() {
    let (p, b, mut platform) = broker_with_platform().await;
    let topic = GW_STATUS;
    let gw = gateway_with_offline_will(&p, &b).await;
    // Dropping the event loop closes the TCP connection without a DISCONNECT.
    gw.task.abort();
    drop(gw);
    let got = platform.next_publish().await;
    assert_eq!(&got.topic[..], topic.as_bytes());
    assert_eq!(&got.payload[..], b"offline");
    // Retained: a platform subscribing later gets it too, flagged retained.
    let mut late = client(
        b.port(),
        platform_tls(&p.pki, b.port()),
        "platform-late",
        None,
    )
    .connected()
    .await;
    late.subscribe("rpm/v1/gw/+/status").await;
    let got = late.next_publish().await;
    assert_eq!(&got.payload[..], b"offline");
    assert!(
        got.retain,
        "a retained message is delivered with retain set"
    );
    b.stop().await;
}

// MQTT 5 §3.1.3.2.2 / DISCONNECT 0x00: a clean stop does not publish the will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_not_published_after_a_normal_disconnect() {
    let (p, b, mut platform) = broker_with_platform().await;
    let mut gw = gateway_with_offline_will(&p, &b).await;
    gw.client.disconnect().await.unwrap();
    // The event loop ends once the DISCONNECT is written.
    let _ = within(30, "gateway event loop end", async {
        while gw.events.recv().await.is_some() {}
    })
    .await;
    // A marker published after the disconnect must be the first thing the platform sees.
    let mut other = client(b.port(), gateway_tls(&p.pki, b.port()), "gw-2", None)
        .connected()
        .await;
    other
        .publish("rpm/v1/gw/demo-gw-0001/obs", b"marker".to_vec(), false)
        .await;
    let got = platform.next_publish().await;
    assert_eq!(&got.payload[..], b"marker");
    b.stop().await;
}

// Bad input never takes the broker down: that connection is closed, the next one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_closes_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (p, b, mut platform) = broker_with_platform().await;
    let connector = tokio_rustls::TlsConnector::from(gateway_tls(&p.pki, b.port()));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", b.port()))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    s.write_all(&[0xFF; 64]).await.unwrap();
    let mut rest = Vec::new();
    let closed = within(
        10,
        "broker to close the connection",
        s.read_to_end(&mut rest),
    )
    .await;
    // Closed: EOF (Ok) or a reset; either way no MQTT packet was answered.
    assert!(rest.is_empty() || closed.is_err(), "{rest:?}");
    let mut gw = client(b.port(), gateway_tls(&p.pki, b.port()), GW, None)
        .connected()
        .await;
    assert_eq!(
        gw.publish("rpm/v1/gw/demo-gw-0001/obs", b"after".to_vec(), false)
            .await,
        PubAckReason::Success
    );
    assert_eq!(&platform.next_publish().await.payload[..], b"after");
    b.stop().await;
}

// The real uplink publisher (tests/uplink.rs drives it the same way against Mosquitto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_publisher_delivers_every_reading_through_the_embedded_broker() {
    const N: usize = 200;
    let (p, b, mut platform) = broker_with_platform().await;
    let src = MemorySource::new();
    let ids: Vec<i64> = (0..N)
        .map(|i| src.push(Lane::Reading, format!("{{\"reading\":{i}}}").into_bytes()))
        .collect();
    let wake = Arc::new(Notify::new());
    let up = Uplink::new(gateway_config(&p.pki, b.port()), src.clone(), wake.clone()).unwrap();
    let mut status = up.status();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(up.run(cancel.clone()));
    wake.notify_one();
    within(30, "every reading acknowledged", async {
        loop {
            if status.borrow_and_update().delivered >= N as u64 {
                break;
            }
            let _ = status.changed().await;
        }
    })
    .await;
    for id in &ids {
        assert_eq!(src.delivered_count(*id), 1, "row {id} delivered count");
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < N {
        let got = platform.next_publish().await;
        if got.topic.ends_with(b"/obs") {
            seen.insert(got.payload.to_vec());
        }
    }
    assert!(status.borrow().refused == 0, "{:?}", *status.borrow());
    cancel.cancel();
    within(30, "uplink shutdown", task).await.unwrap();
    b.stop().await;
}

/// The next error of a client (skipping packets), as text.
async fn next_error(c: &mut Client, what: &str) -> String {
    within(30, what, async {
        loop {
            match c.events.recv().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => panic!("event loop ended without an error while waiting for {what}"),
            }
        }
    })
    .await
}

// MQTT 5 §3.2.2.3.4: CONNACK Maximum QoS 1; a QoS 2 PUBLISH is answered with DISCONNECT 0x9B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_publish_is_refused_with_disconnect_qos_not_supported_and_not_routed() {
    let (p, b, mut platform) = broker_with_platform().await;
    let mut gw = client(b.port(), gateway_tls(&p.pki, b.port()), GW, None)
        .connected()
        .await;
    gw.client
        .publish("rpm/v1/gw/demo-gw-0001/obs", QoS::ExactlyOnce, false, "q2")
        .await
        .unwrap();
    let err = next_error(&mut gw, "DISCONNECT 0x9B").await;
    assert!(err.contains("QoSNotSupported"), "{err}");
    let mut other = client(b.port(), gateway_tls(&p.pki, b.port()), "gw-2", None)
        .connected()
        .await;
    other
        .publish("rpm/v1/gw/demo-gw-0001/obs", b"marker".to_vec(), false)
        .await;
    assert_eq!(&platform.next_publish().await.payload[..], b"marker");
    b.stop().await;
}

// MQTT 5 §3.1.4: a second connection with the same client id takes over; the first is told
// (DISCONNECT 0x8E) and its will, if any, is discarded (the same gateway is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_with_the_same_client_id_takes_over() {
    let (p, b, mut platform) = broker_with_platform().await;
    let mut first = gateway_with_offline_will(&p, &b).await;
    let mut second = client(b.port(), gateway_tls(&p.pki, b.port()), GW, None)
        .connected()
        .await;
    let err = next_error(&mut first, "DISCONNECT 0x8E").await;
    assert!(err.contains("SessionTakenOver"), "{err}");
    assert_eq!(
        second
            .publish("rpm/v1/gw/demo-gw-0001/obs", b"second".to_vec(), false)
            .await,
        PubAckReason::Success
    );
    assert_eq!(&platform.next_publish().await.payload[..], b"second");
    b.stop().await;
}

/// A raw TLS connection with the gateway certificate, for what rumqttc will not send.
async fn raw(p: &DemoPki, port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(gateway_tls(p, port));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Everything the broker sends until it closes the connection.
async fn until_closed(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    within(30, "the broker to close the connection", async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    got
}

// Only MQTT 5: an MQTT 3.1.1 CONNECT is closed without a CONNACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_connect_is_closed_without_connack() {
    use tokio::io::AsyncWriteExt;
    let p = pki();
    let b = EmbeddedBroker::start(&p.pki, GW, PREFIX).unwrap();
    let mut s = raw(&p.pki, b.port()).await;
    // MQTT 3.1.1 §3.1: CONNECT, protocol level 4, clean session, keep-alive 60, client id "".
    s.write_all(&[
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ])
    .await
    .unwrap();
    assert_eq!(until_closed(&mut s).await, Vec::<u8>::new());
    b.stop().await;
}

// MQTT 5 §3.1.2.10: silent for 1.5 x keep-alive means gone: DISCONNECT 0x8D, then closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_silent_past_its_keep_alive_is_closed() {
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5::Connect;
    use tokio::io::AsyncWriteExt;
    let p = pki();
    let b = EmbeddedBroker::start(&p.pki, GW, PREFIX).unwrap();
    let mut s = raw(&p.pki, b.port()).await;
    let connect = Packet::Connect(
        Connect {
            keep_alive: 1,
            client_id: "silent".into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    );
    let mut buf = BytesMut::new();
    connect.write(&mut buf, None).unwrap();
    s.write_all(&buf).await.unwrap();
    let got = until_closed(&mut s).await;
    let mut got = BytesMut::from(&got[..]);
    assert!(matches!(
        Packet::read(&mut got, None),
        Ok(Packet::ConnAck(_))
    ));
    match Packet::read(&mut got, None) {
        Ok(Packet::Disconnect(d)) => assert_eq!(
            d.reason_code,
            rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::KeepAliveTimeout
        ),
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    b.stop().await;
}

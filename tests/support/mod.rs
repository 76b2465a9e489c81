//! Test harness for the uplink: rcgen certificates, a real Mosquitto with mutual TLS 1.3 and an
//! ACL on a free loopback port (killed on drop), and a subscriber with the platform identity.
//! rust-stack.md §9 describes the broker set-up and its pitfalls.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tempfile::TempDir;
use vitalgate::uplink::UplinkConfig;

pub mod at_rest;
pub mod daemon;
pub mod fixtures;
pub mod process;

pub const PLATFORM_CN: &str = "platform";

/// Timeout for every await in the tests.
pub async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s waiting for {what}"),
    }
}

/// A CA able to issue server and client certificates.
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
    params: CertificateParams,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            params: p,
        }
    }

    fn issuer(&self) -> Issuer<'static, KeyPair> {
        Issuer::new(
            self.params.clone(),
            KeyPair::from_pem(&self.key_pem).unwrap(),
        )
    }

    /// Server certificate for localhost / 127.0.0.1: (cert pem, key pem).
    pub fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let c = p.signed_by(&key, &self.issuer()).unwrap();
        (c.pem(), key.serialize_pem())
    }

    /// ECDSA P-256 client certificate with CN `cn` (PKCS#8 key); `expired` puts notAfter in the past.
    pub fn client(&self, cn: &str, expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        if expired {
            p.not_before = now - time::Duration::days(30);
            p.not_after = now - time::Duration::days(1);
        } else {
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(30);
        }
        let c = p.signed_by(&key, &self.issuer()).unwrap();
        (c.pem(), key.serialize_pem())
    }

    /// A client certificate valid only from `not_before` (a hub clock behind the real time
    /// sees every certificate so; issue 15 point 5).
    pub fn client_valid_from(
        &self,
        cn: &str,
        not_before: time::OffsetDateTime,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = not_before;
        p.not_after = not_before + time::Duration::days(30);
        let c = p.signed_by(&key, &self.issuer()).unwrap();
        (c.pem(), key.serialize_pem())
    }

    /// RSA 2048 client certificate with a PKCS#1 key, made with the openssl CLI
    /// (ring, under rcgen, cannot generate RSA keys).
    pub fn client_rsa(&self, cn: &str, dir: &Path) -> (String, String) {
        let ca_pem = dir.join("rsa-ca.pem");
        let ca_key = dir.join("rsa-ca.key");
        std::fs::write(&ca_pem, &self.cert_pem).unwrap();
        std::fs::write(&ca_key, &self.key_pem).unwrap();
        let key = dir.join(format!("{cn}-rsa.key"));
        let csr = dir.join(format!("{cn}-rsa.csr"));
        let crt = dir.join(format!("{cn}-rsa.pem"));
        let ext = dir.join("rsa-ext.cnf");
        std::fs::write(&ext, "extendedKeyUsage=clientAuth\n").unwrap();
        run(
            "openssl",
            &["genrsa", "-traditional", "-out", s(&key), "2048"],
        );
        run(
            "openssl",
            &[
                "req",
                "-new",
                "-key",
                s(&key),
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                s(&csr),
            ],
        );
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                s(&csr),
                "-CA",
                s(&ca_pem),
                "-CAkey",
                s(&ca_key),
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                s(&ext),
                "-out",
                s(&crt),
            ],
        );
        (
            std::fs::read_to_string(crt).unwrap(),
            std::fs::read_to_string(key).unwrap(),
        )
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback port for a broker to bind later. Taken below the kernel's ephemeral range
/// (`ip_local_port_range`), where neither `bind(0)` nor an outgoing connection (every other
/// socket in these tests) is ever given a port, and handed out once per test process: a port
/// found free with `bind(0)` and bound later by Mosquitto could be taken in between by a
/// parallel test, and after a broker stop its port must still be free for the restart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const SPAN: u16 = 10_000;
    if ephemeral_low <= SPAN + 1024 {
        // An unusual range leaves no room below it: fall back to what the kernel picks.
        return TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let base = ephemeral_low - SPAN;
    // Test binaries run one after another; a per-process start spreads them anyway.
    let _ = NEXT.compare_exchange(
        0,
        1 + (std::process::id() % u32::from(SPAN)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = base + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {base}..{ephemeral_low}");
}

/// A certificate directory plus a Mosquitto process using it.
pub struct Broker {
    pub dir: TempDir,
    pub port: u16,
    /// A plain-TCP (no TLS) listener on the same broker, for the "plain TCP" test.
    pub plain_port: u16,
    pub ca: Ca,
    /// Extra `mosquitto.conf` lines given to `start_with`.
    extra_conf: String,
    /// Mosquitto's `log_type`s: every type (each packet) for tests, whose failures the log
    /// explains; no per-packet debug lines for benches, as a production broker runs.
    log_types: &'static [&'static str],
    child: Option<Child>,
}

/// Per-gateway ACL: `user CN` then the topics it may write.
pub struct Acl(pub Vec<(String, Vec<String>)>);

impl Acl {
    /// Each gateway may use only `rpm/v1/gw/<its CN>/#`.
    pub fn gateways(cns: &[&str]) -> Acl {
        Acl(cns
            .iter()
            .map(|cn| (cn.to_string(), vec![format!("rpm/v1/gw/{cn}/#")]))
            .collect())
    }
}

impl Broker {
    /// The Mosquitto process id, while it runs (benches read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(acl: Acl) -> Broker {
        Self::start_with(acl, "")
    }

    pub fn start_with(acl: Acl, extra_conf: &str) -> Broker {
        Self::start_logging(acl, extra_conf, &["all"])
    }

    /// For benches: logs what a production broker logs (connections, warnings, errors), not
    /// a debug line per packet, which would cost the broker more than the TLS it runs.
    pub fn start_for_bench(acl: Acl) -> Broker {
        Self::start_logging(acl, "", &["error", "warning", "notice", "information"])
    }

    fn start_logging(acl: Acl, extra_conf: &str, log_types: &'static [&'static str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("vitalgate-test-ca");
        let (srv, srv_key) = ca.server();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("server.pem"), srv).unwrap();
        write_secret(&dir.path().join("server.key"), &srv_key);
        let (pc, pk) = ca.client(PLATFORM_CN, false);
        std::fs::write(dir.path().join("platform.pem"), pc).unwrap();
        write_secret(&dir.path().join("platform.key"), &pk);
        let mut acl_text = format!("user {PLATFORM_CN}\ntopic read #\n\n");
        for (user, topics) in &acl.0 {
            acl_text.push_str(&format!("user {user}\n"));
            for t in topics {
                acl_text.push_str(&format!("topic readwrite {t}\n"));
            }
            acl_text.push('\n');
        }
        std::fs::write(dir.path().join("acl"), acl_text).unwrap();
        let mut b = Broker {
            dir,
            port: free_port(),
            plain_port: free_port(),
            ca,
            extra_conf: extra_conf.to_owned(),
            log_types,
            child: None,
        };
        // A port can still be in use by something outside the tests: then Mosquitto exits at
        // start, and another pair of ports is tried.
        for _ in 0..5 {
            b.write_conf();
            match b.spawn() {
                Ok(()) => return b,
                Err(e) if e.contains("Address already in use") => {
                    b.port = free_port();
                    b.plain_port = free_port();
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("mosquitto found its ports in use five times")
    }

    fn write_conf(&self) {
        let d = self.dir.path().display();
        let user = if is_root() { "user root\n" } else { "" };
        let (port, plain_port, extra_conf) = (self.port, self.plain_port, &self.extra_conf);
        let log_types: String = self
            .log_types
            .iter()
            .map(|t| format!("log_type {t}\n"))
            .collect();
        let conf = format!(
            "{user}per_listener_settings false\nallow_anonymous false\n\
             persistence true\npersistence_location {d}/\nautosave_interval 1\n\
             log_dest file {d}/mosquitto.log\n{log_types}acl_file {d}/acl\n\
             max_inflight_messages 0\nmax_queued_messages 1000000\n{extra_conf}\n\
             listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.3\n\
             listener {plain_port} 127.0.0.1\n"
        );
        std::fs::write(self.dir.path().join("mosquitto.conf"), conf).unwrap();
    }

    /// Starts Mosquitto and waits until it says it is running (every listener bound, the
    /// persisted sessions loaded) and both ports accept; Err with its log if it exited.
    fn spawn(&mut self) -> Result<(), String> {
        let log_before = std::fs::read(self.log_path()).map_or(0, |l| l.len());
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto not installed: apt-get install -y mosquitto");
        self.child = Some(child);
        let log_path = self.log_path();
        let this_run = || {
            let log = std::fs::read(&log_path).unwrap_or_default();
            String::from_utf8_lossy(log.get(log_before..).unwrap_or_default()).into_owned()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "mosquitto exited at start ({st}) on ports {} and {}; its log:\n{}",
                    self.port,
                    self.plain_port,
                    this_run()
                ));
            }
            if this_run().contains(" running")
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.plain_port)).is_ok()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto not running within 60 s; see {}",
                log_path.display()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// Stops the broker with `signal` (e.g. "TERM" or "KILL") and waits for it to exit.
    pub fn stop(&mut self, signal: &str) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same ports (the gateways' configs name them).
    pub fn restart(&mut self) {
        if let Err(e) = self.spawn() {
            panic!("{e}");
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a client certificate and key for `cn` and returns (cert path, key path).
    pub fn write_client(&self, cn: &str, expired: bool) -> (PathBuf, PathBuf) {
        let (c, k) = self.ca.client(cn, expired);
        let cp = self.path(&format!(
            "{cn}{}.pem",
            if expired { "-expired" } else { "" }
        ));
        let kp = self.path(&format!(
            "{cn}{}.key",
            if expired { "-expired" } else { "" }
        ));
        std::fs::write(&cp, c).unwrap();
        write_secret(&kp, &k);
        (cp, kp)
    }

    /// An uplink config for gateway `cn` against this broker (fast backoff for tests).
    pub fn uplink_config(&self, cn: &str) -> UplinkConfig {
        let (cert, key) = self.write_client(cn, false);
        UplinkConfig {
            broker: "127.0.0.1".into(),
            port: self.port,
            server_name: Some("localhost".into()),
            ca_file: self.path("ca.pem"),
            cert_file: cert,
            key_file: key,
            inflight: 32,
            backoff_initial_ms: 100,
            backoff_max_s: 1,
            ..UplinkConfig::default()
        }
    }
}

/// Mode 0600, as a private key must have (vitalgate refuses a key open to others).
pub fn owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop("KILL");
    }
}

/// Writes a private key as the gateway requires it: mode 0600 (a client key open to group or
/// others is refused by `secure_file`).
pub fn write_secret(path: &std::path::Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(contents.as_bytes()).unwrap();
}

/// rustls client config for the platform subscriber.
pub fn platform_tls(b: &Broker) -> Arc<rustls::ClientConfig> {
    let cfg = UplinkConfig {
        broker: "localhost".into(),
        ca_file: b.path("ca.pem"),
        cert_file: b.path("platform.pem"),
        key_file: b.path("platform.key"),
        ..UplinkConfig::default()
    };
    vitalgate::uplink::tls::load(&cfg, time::OffsetDateTime::now_utc())
        .unwrap()
        .config
}

/// Messages received by the subscriber: (topic, payload) in arrival order.
/// (topic, payload) pairs.
pub type Messages = Vec<(String, Vec<u8>)>;

#[derive(Clone, Default)]
pub struct Received(pub Arc<Mutex<Messages>>);

impl Received {
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn all(&self) -> Vec<(String, Vec<u8>)> {
        self.0.lock().unwrap().clone()
    }
    /// Payloads on topics ending with `suffix`.
    pub fn on(&self, suffix: &str) -> Vec<Vec<u8>> {
        self.all()
            .into_iter()
            .filter(|(t, _)| t.ends_with(suffix))
            .map(|(_, p)| p)
            .collect()
    }
    /// Counts per payload on topics ending with `suffix`.
    pub fn counts(&self, suffix: &str) -> HashMap<Vec<u8>, usize> {
        let mut m = HashMap::new();
        for p in self.on(suffix) {
            *m.entry(p).or_insert(0) += 1;
        }
        m
    }
    pub async fn wait_for(&self, suffix: &str, n: usize, secs: u64) {
        within(secs, &format!("{n} messages on *{suffix}"), async {
            while self.counts(suffix).len() < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

/// An operator's MQTT client with its own certificate (common name `cn`, which the broker's
/// ACL must allow to write `config/desired` or `cmd`); returns once connected. The event loop
/// runs in the returned task, reconnecting after errors.
pub async fn operator_client(
    b: &Broker,
    cn: &str,
    client_id: &str,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    operator_client_sized(b, cn, client_id, None, 16).await
}

/// [`operator_client`] with room for bulk publishing (benches/fleet.rs signs for 500 hubs):
/// an in-flight window of `inflight` (rumqttc's default when `None`) and a request channel of
/// `capacity`.
pub async fn operator_client_sized(
    b: &Broker,
    cn: &str,
    client_id: &str,
    inflight: Option<u16>,
    capacity: usize,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let (cert, key) = b.write_client(cn, false);
    let tls = vitalgate::uplink::tls::load(
        &UplinkConfig {
            broker: "localhost".into(),
            ca_file: b.path("ca.pem"),
            cert_file: cert,
            key_file: key,
            ..UplinkConfig::default()
        },
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let mut o = MqttOptions::new(client_id, "localhost", b.port);
    o.set_max_packet_size(Some(1024 * 1024))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.config,
        )));
    if let Some(limit) = inflight {
        o.set_outgoing_inflight_upper_limit(limit);
    }
    let (client, mut el) = AsyncClient::new(o, capacity);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    within(30, "operator CONNACK", rx).await.unwrap();
    (client, task)
}

/// Starts a subscriber (persistent session, QoS 1) to `filter`, reconnecting across broker
/// restarts; returns once the first SUBACK arrived.
pub async fn subscribe(
    b: &Broker,
    client_id: &str,
    filter: &str,
) -> (Received, tokio::task::JoinHandle<()>) {
    let mut o = MqttOptions::new(client_id, "localhost", b.port);
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(1024 * 1024))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            platform_tls(b),
        )));
    let (client, mut el) = AsyncClient::new(o, 100);
    let rx = Received::default();
    let out = rx.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let filter = filter.to_owned();
    let task = tokio::spawn(async move {
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
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let msg = (topic, p.payload.to_vec());
                    let mut got = out.0.lock().unwrap();
                    // A DUP message we already hold is the broker re-sending to US after its
                    // restart (our PUBACK was lost with it), not the gateway publishing twice:
                    // the gateway's own re-sends reach us as new messages (DUP clear). Counting
                    // it would blame the publisher for the broker-to-subscriber window.
                    if !(p.dup && got.contains(&msg)) {
                        got.push(msg);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    within(30, "subscriber SUBACK", ready_rx).await.unwrap();
    (rx, task)
}

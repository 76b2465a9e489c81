//! The demo's embedded MQTT 5 broker: in-process, on tokio and tokio-rustls, so `vitalgate
//! demo` runs the whole uplink path on a machine without Mosquitto.
//!
//! What it does, the same way the demo's Mosquitto does ([`super::broker`]):
//! - listens on 127.0.0.1 on a free port, TLS 1.3 only (ring provider), with the demo's server
//!   certificate, and **requires** a client certificate signed by the demo CA; the client's
//!   identity is that certificate's CN;
//! - applies the demo ACL ([`topics::Acl`]): the platform reads everything, the gateway reads and
//!   writes only `{prefix}/gw/{its CN}/#`; a refused QoS 1 PUBLISH gets PUBACK 0x87 and is not
//!   routed, a refused filter gets SUBACK 0x87;
//! - MQTT 5 only (packets encoded and decoded by rumqttc's own v5 codec), QoS 0 and 1, `+`/`#`
//!   filters, retained messages in memory, wills (retain flag kept), keep-alive (a connection
//!   silent for 1.5 x its keep-alive is closed), PUBACK 0x10 when nobody is subscribed, and a
//!   second connection with the same client id takes over from the first.
//!
//! What it deliberately does not do, because the demo does not need it and every line here is a
//! line to trust: no persistent sessions (CONNACK always says `session_present = false`, nothing
//! is kept for an offline client, in-flight QoS 1 messages are not re-sent on reconnect), no
//! QoS 2 (a QoS 2 PUBLISH is answered with DISCONNECT 0x9B), no shared subscriptions, no topic
//! aliases (maximum 0), no subscription identifiers, no will delay, no message expiry, no
//! enforcement of the client's receive maximum, no persistence across runs, no user name or
//! password. A taken-over connection's will is discarded: the same client is back, and its old
//! "offline" must not overwrite the new "online". It is for `vitalgate demo` only; real
//! platforms run Mosquitto or another production broker.
//!
//! Every connection has a reader task and a writer task joined by a bounded channel; routing
//! awaits on that channel (back-pressure, never an unbounded queue or a silent drop). Bad input
//! (garbage, oversize packets, failed handshakes) closes that connection with a
//! `tracing::warn!` naming the peer and the reason; it never panics. [`EmbeddedBroker::stop`]
//! (or dropping the broker) cancels one token that every task watches.

mod session;
pub mod topics;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::certs::{DemoPki, PLATFORM_CN};
use super::DemoError;
use topics::Acl;

/// Largest packet accepted from, and announced to, clients (CONNACK Maximum Packet Size).
pub const MAX_PACKET: u32 = 1024 * 1024;

/// How long `stop()` waits for every task to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running embedded broker; [`EmbeddedBroker::stop`] or drop ends every task it started.
pub struct EmbeddedBroker {
    port: u16,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, DemoError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DemoError::Broker(format!("{}: malformed PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(DemoError::Broker(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, DemoError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| DemoError::Broker(format!("{}: no private key found", path.display())))
}

/// TLS 1.3 only, ring provider, client certificate required and verified against the demo CA.
pub fn server_config(pki: &DemoPki) -> Result<Arc<ServerConfig>, DemoError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&pki.ca)? {
        roots
            .add(ca)
            .map_err(|e| DemoError::Broker(format!("{}: CA refused: {e}", pki.ca.display())))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| DemoError::Broker(format!("client certificate verifier: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| DemoError::Broker(format!("TLS 1.3 configuration: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&pki.server_cert)?, read_key(&pki.server_key)?)
        .map_err(|e| {
            DemoError::Broker(format!(
                "{} / {}: server certificate refused: {e}",
                pki.server_cert.display(),
                pki.server_key.display()
            ))
        })?;
    Ok(Arc::new(config))
}

impl EmbeddedBroker {
    /// Starts the broker on 127.0.0.1 on a free port with the demo PKI and ACL. Must be called
    /// inside a tokio runtime (it spawns the listener task there).
    pub fn start(
        pki: &DemoPki,
        gateway_id: &str,
        prefix: &str,
    ) -> Result<EmbeddedBroker, DemoError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            DemoError::Broker("the embedded broker needs a tokio runtime".to_owned())
        })?;
        let acceptor = TlsAcceptor::from(server_config(pki)?);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let std_listener =
            std::net::TcpListener::bind(addr).map_err(io_err(Path::new("127.0.0.1:0")))?;
        std_listener
            .set_nonblocking(true)
            .map_err(io_err(Path::new("127.0.0.1:0")))?;
        let port = std_listener
            .local_addr()
            .map_err(io_err(Path::new("127.0.0.1:0")))?
            .port();
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)
                .map_err(io_err(Path::new("127.0.0.1:0")))?
        };
        let acl = Acl {
            platform: PLATFORM_CN.to_owned(),
            gateway: gateway_id.to_owned(),
            prefix: prefix.to_owned(),
        };
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let router = Arc::new(session::Router::new(acl));
        tasks.spawn_on(
            session::accept_loop(listener, acceptor, router, cancel.clone(), tasks.clone()),
            &runtime,
        );
        Ok(EmbeddedBroker {
            port,
            cancel,
            tasks,
        })
    }

    /// The TLS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes the listener and every connection, and waits (at most 5 s) until every task has
    /// ended. Wills are not published at shutdown: the broker is going away with its clients.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(STOP_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                port = self.port,
                "embedded broker: tasks still running {STOP_TIMEOUT:?} after stop"
            );
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

//! The MLLP listener: TCP (optionally mutual TLS 1.3), many monitors at once, each connection
//! a task that cuts frames ([`super::mllp::Deframer`]) and hands each to the caller's handler,
//! writing back whatever reply the handler returns (the ACK), in order.
//!
//! Limits, so one bad sender never affects the others:
//! - at most `max_connections` at once; more are closed at once (counted);
//! - a connection silent for `idle_timeout` is closed;
//! - a frame over `max_frame` bytes is answered by the handler's `oversized` reply (an `AR`)
//!   and never held in memory;
//! - a connection that sends nonsense (`MAX_STRIKES` unreadable or oversized frames in a
//!   row, or more than `MAX_GARBAGE` bytes outside frames since its last good frame) is closed.
//!
//! The handler runs to completion before the next frame of that connection is read, so a
//! monitor's messages are committed and acknowledged in the order it sent them.

use crate::task::TrackBoxed;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::mllp::{encode, Deframer, Event};

/// Unreadable or oversized frames in a row before a connection is closed.
pub const MAX_STRIKES: u32 = 3;
/// Bytes outside any frame, since the last good frame, before a connection is closed.
pub const MAX_GARBAGE: usize = 4096;

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// What the handler says about one frame.
#[derive(Debug, Default)]
pub struct Reply {
    /// Bytes to send back (unframed; the listener frames them).
    pub ack: Option<Vec<u8>>,
    /// The frame was not a readable message (counts towards closing the connection).
    pub strike: bool,
}

/// Connection counters, for status.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_closed_idle: AtomicU64,
    pub connections_closed_nonsense: AtomicU64,
    pub frames_cut_short: AtomicU64,
    pub bytes_discarded: AtomicU64,
    pub tls_failures: AtomicU64,
}

impl ListenerCounters {
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "open": g(&self.connections_open),
            "total": g(&self.connections_total),
            "refused_over_limit": g(&self.connections_refused),
            "closed_idle": g(&self.connections_closed_idle),
            "closed_nonsense": g(&self.connections_closed_nonsense),
            "frames_cut_short": g(&self.frames_cut_short),
            "bytes_discarded": g(&self.bytes_discarded),
            "tls_failures": g(&self.tls_failures),
        })
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, reason: impl ToString) -> TlsSetupError {
    TlsSetupError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads certificates through `secure_file` (capped, regular file, not writable by others)
/// and parses them with the uplink's PEM reader, which never quotes the file.
fn read_certs(
    path: &Path,
    kind: &crate::secure_file::FileKind,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = crate::secure_file::read(path, kind).map_err(|e| file_err(path, e))?;
    crate::uplink::tls::certs_from_pem(&pem, path, "certificate")
        .map_err(|e| TlsSetupError::Config(e.to_string()))
}

/// A TLS 1.3-only acceptor that requires a client certificate signed by `client_ca`.
pub fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<TlsAcceptor, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in read_certs(client_ca, &crate::secure_file::CA_FILE)? {
        roots.add(ca).map_err(|e| file_err(client_ca, e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    let pem = crate::secure_file::read(key, &crate::secure_file::CLIENT_KEY)
        .map_err(|e| file_err(key, e))?;
    let key_der: PrivateKeyDer<'static> = crate::uplink::tls::key_from_pem(&pem, key)
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(cert, &crate::secure_file::CERT_FILE)?, key_der)
        .map_err(|e| file_err(cert, e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until `token` is cancelled; each runs `handler` per frame (a frame
/// over the cap is answered here with an `AR`).
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    handler: H,
    counters: Arc<ListenerCounters>,
    token: CancellationToken,
    tracker: TaskTracker,
) where
    H: Fn(Vec<u8>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "hl7: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, max = limits.max_connections, "hl7: connection refused: too many connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        counters.connections_total.fetch_add(1, Ordering::Relaxed);
        counters.connections_open.fetch_add(1, Ordering::Relaxed);
        let (handler, counters, token, tls) = (
            handler.clone(),
            counters.clone(),
            token.clone(),
            tls.clone(),
        );
        tracker.spawn_boxed(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, peer, limits, handler, &counters, token).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.idle_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(s, peer, limits, handler, &counters, token).await,
                        Ok(Err(e)) => {
                            counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, error = %e, "hl7: TLS handshake failed");
                        }
                        Err(_) => {
                            counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            counters.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn connection<S, H, F>(
    mut stream: S,
    peer: SocketAddr,
    limits: Limits,
    handler: H,
    counters: &ListenerCounters,
    token: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Vec<u8>, SocketAddr) -> F,
    F: Future<Output = Reply>,
{
    let mut deframer = Deframer::new(limits.max_frame);
    let mut buf = vec![0u8; 16 * 1024];
    let mut events = Vec::new();
    let mut strikes = 0u32;
    let mut garbage = 0usize;
    tracing::debug!(%peer, "hl7: connection open");
    loop {
        let n = tokio::select! {
            _ = token.cancelled() => break,
            r = tokio::time::timeout(limits.idle_timeout, stream.read(&mut buf)) => match r {
                Err(_) => {
                    counters.connections_closed_idle.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, "hl7: idle connection closed");
                    break;
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    if deframer.in_frame() {
                        counters.frames_cut_short.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, bytes = deframer.pending(), "hl7: connection closed mid-frame; the partial message was dropped (never acknowledged)");
                    }
                    break;
                }
                Ok(Ok(n)) => n,
            },
        };
        deframer.feed(&buf[..n], &mut events);
        for event in events.drain(..) {
            let reply = match event {
                Event::Frame(payload) => handler(payload, peer).await,
                Event::Oversized { len } => {
                    tracing::warn!(%peer, len, max = limits.max_frame, "hl7: frame over max_frame_bytes refused");
                    let text = format!(
                        "frame of {len} bytes exceeds max_frame_bytes {}",
                        limits.max_frame
                    );
                    let now = crate::hl7::time::format_timestamp(
                        time::OffsetDateTime::now_utc(),
                        crate::hl7::MonitorZone::Fixed(time::UtcOffset::UTC),
                    );
                    Reply {
                        ack: Some(crate::hl7::ack::build_for_unreadable(&text, &now).into_bytes()),
                        strike: true,
                    }
                }
                Event::Discarded { bytes } => {
                    counters
                        .bytes_discarded
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    garbage += bytes;
                    Reply::default()
                }
            };
            let acked = reply.ack.is_some();
            if let Some(ack) = reply.ack {
                if stream.write_all(&encode(&ack)).await.is_err() {
                    return;
                }
            }
            if reply.strike {
                strikes += 1;
            } else if acked {
                strikes = 0;
                garbage = 0;
            }
        }
        if strikes >= MAX_STRIKES || garbage > MAX_GARBAGE {
            counters
                .connections_closed_nonsense
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, strikes, garbage, "hl7: connection closed: it sends no readable HL7");
            break;
        }
    }
    let _ = stream.shutdown().await;
}

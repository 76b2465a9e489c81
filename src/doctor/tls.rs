//! The uplink's certificates (readable, unexpired, chaining to the configured CA) and the
//! broker (resolvable, reachable, and a real TLS 1.3 handshake with our client certificate,
//! after which the broker keeps the connection open: it accepted the certificate).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

use super::Finding;
use crate::config::Config;
use crate::uplink::UplinkConfig;

/// A certificate expiring sooner than this is a warning.
pub const EXPIRY_WARN_DAYS: i64 = 30;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After the handshake, how long to wait for the broker to refuse the client certificate
/// (TLS 1.3 servers do it after the client's Finished, with an alert).
const REFUSAL_WAIT: Duration = Duration::from_secs(2);

fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// CA, client certificate and key: readable, the certificate valid now and issued by the CA;
/// on an unsynchronised clock each finding says its validity judgement may be wrong.
pub fn certificates(cfg: &Config) -> Vec<Finding> {
    let synced = crate::clock::process_synced();
    let mut out = certificates_judged(cfg);
    for f in &mut out {
        f.detail = crate::clock::judged_on_clock(std::mem::take(&mut f.detail), synced);
    }
    out
}

fn certificates_judged(cfg: &Config) -> Vec<Finding> {
    let Some(up) = &cfg.uplink else {
        return vec![Finding::skip("certificate", "no [uplink] configured")];
    };
    let now = OffsetDateTime::now_utc();
    // Readable, parseable, unexpired, key present: what the uplink itself checks at start.
    let loaded = match crate::uplink::tls::load(up, now) {
        Ok(l) => l,
        Err(e) => {
            let text = e.to_string();
            let fix = if text.contains("expired") {
                "renew the gateway certificate from the platform's CA and install it at uplink.cert_file; then `systemctl reload vitalgate`"
            } else {
                "check the uplink.ca_file / cert_file / key_file paths and that they are readable by vitalgate (PEM)"
            };
            return vec![Finding::fail("certificate", text, fix)];
        }
    };
    let mut out = Vec::new();
    match chains_to_ca(up) {
        Ok(()) => {}
        Err(reason) => {
            out.push(Finding::fail(
                "certificate",
                format!(
                    "{} is not issued by the CA in {}: {reason}",
                    up.cert_file.display(),
                    up.ca_file.display()
                ),
                "install the certificate the platform issued for this gateway, or the platform's CA as uplink.ca_file",
            ));
            return out;
        }
    }
    let days = (loaded.not_after - now).whole_days();
    let detail = format!(
        "{}: CN {}, chains to {}, expires in {days} d",
        up.cert_file.display(),
        loaded.gateway_id,
        up.ca_file.display()
    );
    out.push(if days < EXPIRY_WARN_DAYS {
        Finding::warn(
            "certificate",
            detail,
            "renew it before it expires (the uplink stops at expiry)",
        )
    } else {
        Finding::pass("certificate", detail)
    });
    out
}

/// Whether the client certificate verifies against the configured CA (as the broker will
/// check it, with the gateway's intermediates if the file holds a chain).
fn chains_to_ca(up: &UplinkConfig) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = std::fs::read(&up.ca_file).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&ca) {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let chain = certs(&std::fs::read(&up.cert_file).map_err(|e| e.to_string())?);
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate in the file")?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Resolves and connects to the broker and completes a TLS 1.3 mutual-TLS handshake.
pub fn broker(cfg: &Config) -> Finding {
    let Some(up) = &cfg.uplink else {
        return Finding::skip("broker", "no [uplink] configured");
    };
    let target = format!("{}:{}", up.broker, up.port);
    let addrs: Vec<_> = match target.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return Finding::fail(
                "broker",
                format!("{target}: cannot resolve: {e}"),
                "check uplink.broker and DNS (`resolvectl query HOST`)",
            )
        }
    };
    let Some(addr) = addrs.first() else {
        return Finding::fail(
            "broker",
            format!("{target}: resolves to no address"),
            "check uplink.broker and DNS",
        );
    };
    let tls = match crate::uplink::tls::load(up, OffsetDateTime::now_utc()) {
        Ok(t) => t,
        Err(e) => {
            return Finding::fail(
                "broker",
                format!("{target}: not tried: {e}"),
                "fix the certificate check first",
            )
        }
    };
    let mut sock = match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            return Finding::fail(
                "broker",
                format!("{target} ({addr}): cannot connect: {e}"),
                "is the broker up, and is the port open through the firewall / mobile network?",
            )
        }
    };
    let _ = sock.set_read_timeout(Some(CONNECT_TIMEOUT));
    let _ = sock.set_write_timeout(Some(CONNECT_TIMEOUT));
    let name = match ServerName::try_from(up.effective_server_name().to_owned()) {
        Ok(n) => n,
        Err(e) => {
            return Finding::fail(
                "broker",
                format!("server name {:?}: {e}", up.effective_server_name()),
                "set uplink.server_name to the name in the broker's certificate",
            )
        }
    };
    let mut conn = match rustls::ClientConnection::new(tls.config.clone(), name) {
        Ok(c) => c,
        Err(e) => return Finding::fail("broker", e.to_string(), "check the uplink TLS files"),
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            return Finding::fail(
                "broker",
                format!("{target}: TLS handshake failed: {e}"),
                handshake_fix(&e.to_string()),
            );
        }
    }
    let version = conn.protocol_version();
    if version != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Finding::fail(
            "broker",
            format!("{target}: negotiated {version:?}, not TLS 1.3"),
            "enable TLS 1.3 on the broker (`tls_version tlsv1.3` in Mosquitto)",
        );
    }
    // The broker judges our certificate after our Finished: a refusal arrives as an alert or
    // a close; a broker that accepted it waits for our MQTT CONNECT, so the read times out.
    let _ = sock.set_read_timeout(Some(REFUSAL_WAIT));
    let mut stream = rustls::Stream::new(&mut conn, &mut sock);
    let _ = stream.flush();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            conn.send_close_notify();
            let _ = conn.complete_io(&mut sock);
            Finding::pass(
                "broker",
                format!("{target}: TLS 1.3 handshake done, client certificate accepted"),
            )
        }
        Ok(0) => Finding::fail(
            "broker",
            format!("{target}: the broker closed the connection after the handshake: it refused the client certificate"),
            "the broker must trust the CA that issued uplink.cert_file (Mosquitto `cafile`), and the gateway be enrolled",
        ),
        Ok(_) => Finding::pass(
            "broker",
            format!("{target}: TLS 1.3 handshake done, client certificate accepted"),
        ),
        Err(e) => Finding::fail(
            "broker",
            format!("{target}: the broker refused the client certificate: {e}"),
            handshake_fix(&e.to_string()),
        ),
    }
}

fn handshake_fix(error: &str) -> &'static str {
    if error.contains("UnknownIssuer") || error.contains("invalid peer certificate") {
        "the broker's certificate is not issued by uplink.ca_file: install the platform's CA there, or check you reach the right broker"
    } else if error.contains("NotValidForName") {
        "set uplink.server_name to a name in the broker's certificate"
    } else if error.contains("certificate") {
        "the broker refused our certificate: check it trusts the CA that issued uplink.cert_file"
    } else if error.contains("protocol version") || error.contains("ProtocolVersion") {
        "enable TLS 1.3 on the broker"
    } else {
        "check the broker's TLS listener and its logs"
    }
}

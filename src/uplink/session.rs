//! One MQTT 5 connection's options, and connection errors turned into sentences.
//!
//! Every connection gets a fresh rumqttc `AsyncClient`/`EventLoop` pair with clean start: the
//! outbox, not rumqttc's memory, is the queue (rust-stack.md §1.2), so nothing rumqttc kept from
//! a previous connection may be re-sent behind the publisher's back.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{ConnectionError, MqttOptions, StateError};
use rumqttc::{TlsConfiguration, Transport};

use super::config::UplinkConfig;
use super::tls::LoadedTls;

/// MQTT options for one connection: clean start, TLS 1.3 mTLS, retained last will.
pub(crate) fn options(
    cfg: &UplinkConfig,
    tls: &LoadedTls,
    will: Vec<u8>,
    will_topic: &str,
) -> MqttOptions {
    let mut o = MqttOptions::new(tls.gateway_id.clone(), cfg.broker.clone(), cfg.port);
    o.set_clean_start(true)
        .set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_max_packet_size(Some(cfg.max_packet_size))
        .set_outgoing_inflight_upper_limit(cfg.inflight)
        .set_connection_timeout(10)
        .set_last_will(LastWill::new(
            will_topic,
            will,
            QoS::AtLeastOnce,
            true,
            None,
        ))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.config.clone(),
        )));
    // Each packet leaves as soon as it is written (TCP_NODELAY). With Nagle's algorithm a
    // PUBLISH written while an earlier segment awaits its acknowledgement is held back, and a
    // broker holds its PUBACKs the same way (Mosquitto's default): with the window full,
    // neither side then sends what would carry the other's ACK, and both wait for a delayed
    // acknowledgement (40 ms on Linux), several times a drain (issue 18, steady drains).
    // Over a WAN the same hold costs an alert a round trip. rumqttc writes everything it has
    // queued at once, so a burst still leaves in few segments.
    let mut net = o.network_options();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    o
}

fn find_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                    return Some(r);
                }
            }
        }
        cur = e.source();
    }
    None
}

/// A connection error as a sentence naming the broker, the cause and the likely fix.
pub(crate) fn describe(err: &ConnectionError, cfg: &UplinkConfig) -> String {
    let at = format!("{}:{}", cfg.broker, cfg.port);
    if let Some(r) = find_rustls(err) {
        use rustls::{AlertDescription as A, CertificateError as C};
        let hint = match r {
            rustls::Error::InvalidCertificate(C::UnknownIssuer) => format!(
                "the broker certificate is not signed by the CA in {}",
                cfg.ca_file.display()
            ),
            rustls::Error::InvalidCertificate(C::NotValidForName)
            | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => format!(
                "the broker certificate is not valid for server name {:?} (check uplink.server_name)",
                cfg.effective_server_name()
            ),
            rustls::Error::InvalidCertificate(C::Expired)
            | rustls::Error::InvalidCertificate(C::ExpiredContext { .. }) => {
                crate::clock::judged_on_clock(
                    "the broker certificate has expired (or the gateway clock is wrong)".to_owned(),
                    crate::clock::process_synced(),
                )
            }
            rustls::Error::InvalidCertificate(C::NotValidYet)
            | rustls::Error::InvalidCertificate(C::NotValidYetContext { .. }) => {
                crate::clock::judged_on_clock(
                    "the broker certificate is not valid yet (or the gateway clock is behind)"
                        .to_owned(),
                    crate::clock::process_synced(),
                )
            }
            rustls::Error::AlertReceived(A::CertificateExpired) => format!(
                "the broker says the client certificate {} has expired",
                cfg.cert_file.display()
            ),
            rustls::Error::AlertReceived(A::UnknownCA)
            | rustls::Error::AlertReceived(A::BadCertificate)
            | rustls::Error::AlertReceived(A::CertificateUnknown)
            | rustls::Error::AlertReceived(A::DecryptError) => format!(
                "the broker refused the client certificate {} (is it issued by the platform CA?)",
                cfg.cert_file.display()
            ),
            rustls::Error::AlertReceived(A::ProtocolVersion) => {
                "the broker does not speak TLS 1.3".to_owned()
            }
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                format!("the broker did not answer with TLS (is port {} a TLS listener?)", cfg.port)
            }
            other => other.to_string(),
        };
        return format!("TLS handshake with {at} failed: {hint} ({r})");
    }
    // After the handshake the client's certificate is judged by the broker; its alert then
    // arrives on the first read and rumqttc wraps it where `source()` does not reach.
    let text = err.to_string();
    if let Some(pos) = text.find("received fatal alert: ") {
        let alert = text.get(pos + 22..).unwrap_or("").trim();
        return format!(
            "TLS handshake with {at} failed: the broker rejected the client certificate {} with alert {alert} (is it issued by the platform CA and still valid?)",
            cfg.cert_file.display()
        );
    }
    match err {
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("cannot connect to {at}: connection refused (broker down or wrong port)")
        }
        ConnectionError::Io(e) | ConnectionError::Tls(rumqttc::TlsError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            format!(
                "TLS handshake with {at} failed: the broker closed the connection ({e}); is port {} a TLS listener, and does it accept the client certificate?",
                cfg.port
            )
        }
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword => {
                    " (the broker does not authorise this gateway's certificate)"
                }
                ConnectReturnCode::ClientIdentifierNotValid => " (gateway id refused as client id)",
                _ => "",
            };
            format!("broker {at} refused the MQTT connection: {code:?}{why}")
        }
        ConnectionError::MqttState(StateError::ConnFail { reason }) => {
            format!("broker {at} refused the MQTT connection: {reason:?}")
        }
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => format!(
            "broker {at} disconnected us: {reason_code:?} {}",
            reason_string.as_deref().unwrap_or("")
        ),
        ConnectionError::MqttState(StateError::AwaitPingResp) => {
            format!("broker {at} stopped answering keep-alive pings (half-open link)")
        }
        ConnectionError::Timeout(_) => format!("connecting to {at} timed out"),
        other => format!("connection to {at} failed: {other}"),
    }
}

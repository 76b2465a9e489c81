//! The fleet's MQTT session: receives `config/desired` (retained) and `cmd`, publishes
//! `config/reported` (retained) and `cmd/result`.
//!
//! A session of its own beside the publisher's, with the same certificate (so the same ACL
//! user) and the client id `{gw}/fleet` (a `/` never occurs in a gateway id, so it cannot
//! collide with another hub's publisher). Why not the publisher's connection: the publisher
//! matches every PUBACK to its row through a FIFO of its own publishes and is tuned for
//! draining backlogs; a fleet message must not wait behind a backlog drain, and an apply that
//! restarts the pipeline must not drop the session that has to answer for it. The cost is a
//! second TLS connection per hub on the broker (docs/fleet.md, "Scale").
//!
//! The session is persistent (clean start off, one hour of session expiry): a command sent
//! while the hub is briefly offline is delivered when it reconnects (commands carry their own
//! expiry). The broker re-sends the retained `config/desired` on every subscribe; the agent
//! recognises the document it already runs.
//!
//! This module only moves bytes; [`crate::fleet::agent`] judges and answers.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::config::UplinkConfig;
use super::tls;

/// The fleet topics of one gateway (DESIGN.md "MQTT").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetTopics {
    pub desired: String,
    pub reported: String,
    pub cmd: String,
    pub cmd_result: String,
}

impl FleetTopics {
    pub fn new(prefix: &str, gateway: &str) -> Self {
        let base = format!("{prefix}/gw/{gateway}");
        FleetTopics {
            desired: format!("{base}/config/desired"),
            reported: format!("{base}/config/reported"),
            cmd: format!("{base}/cmd"),
            cmd_result: format!("{base}/cmd/result"),
        }
    }
}

/// What the session hands the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Subscribed (again): the agent re-publishes its retained report.
    Connected { gateway: String },
    /// A `config/desired` message (an empty one clears the retained message: ignored).
    Desired(Bytes),
    /// A `cmd` message.
    Command(Bytes),
}

/// What the agent hands the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Retained, on `config/reported`.
    Reported(Vec<u8>),
    /// On `cmd/result`.
    CommandResult(Vec<u8>),
}

/// Runs the fleet session until `shutdown`: connects with the uplink's TLS files, subscribes,
/// forwards messages to `inbound` and publishes what arrives on `outbound`; reconnects with
/// backoff. Never returns an error: failures are logged and retried.
pub async fn run(
    cfg: UplinkConfig,
    inbound: mpsc::Sender<Inbound>,
    mut outbound: mpsc::Receiver<Outbound>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.backoff_initial_ms),
        Duration::from_secs(cfg.backoff_max_s),
    );
    let mut turn = 0usize; // `uplink.brokers`: the next address after a failed connection
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let at = cfg.at_address(turn);
        match tls::load(&at, time::OffsetDateTime::now_utc()) {
            Ok(t) => {
                if session(&at, t, &inbound, &mut outbound, &shutdown).await {
                    backoff.reset();
                } else {
                    turn += 1;
                }
            }
            Err(e) => warn!(error = %e, "fleet link: cannot load TLS material"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One connection; true when it got as far as a ConnAck.
async fn session(
    cfg: &UplinkConfig,
    tls: tls::LoadedTls,
    inbound: &mpsc::Sender<Inbound>,
    outbound: &mut mpsc::Receiver<Outbound>,
    shutdown: &CancellationToken,
) -> bool {
    let gateway = tls.gateway_id.clone();
    let topics = FleetTopics::new(&cfg.topic_prefix, &gateway);
    let mut o = MqttOptions::new(format!("{gateway}/fleet"), cfg.broker.clone(), cfg.port);
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_max_packet_size(Some(
            cfg.max_packet_size
                .max(crate::fleet::MAX_DOCUMENT_BYTES as u32 + 1024),
        ))
        .set_connection_timeout(10)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.config.clone(),
        )));
    let (client, mut el) = AsyncClient::new(o, 16);
    // The event loop is polled in a task of its own: `poll` is not cancel-safe, so it never
    // races other branches in a `select!`.
    let (connacked_tx, mut connacked) = tokio::sync::watch::channel(false);
    let poller = {
        let (client, inbound, topics, gateway, cfg) = (
            client.clone(),
            inbound.clone(),
            topics.clone(),
            gateway.clone(),
            cfg.clone(),
        );
        crate::task::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = connacked_tx.send(true);
                        let filters = [&topics.desired, &topics.cmd]
                            .map(|t| Filter::new(t.clone(), QoS::AtLeastOnce));
                        if let Err(e) = client.subscribe_many(filters).await {
                            warn!(error = %e, "fleet link: cannot subscribe");
                        }
                        info!(gateway = %gateway, "fleet link connected");
                        if inbound
                            .send(Inbound::Connected {
                                gateway: gateway.clone(),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let msg = if p.topic.as_ref() == topics.desired.as_bytes() {
                            Inbound::Desired(p.payload)
                        } else if p.topic.as_ref() == topics.cmd.as_bytes() {
                            Inbound::Command(p.payload)
                        } else {
                            continue;
                        };
                        if inbound.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        info!(reasons = ?ack.return_codes, "fleet link subscribed");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %super::session::describe(&e, &cfg), "fleet link disconnected");
                        return;
                    }
                }
            }
        })
    };
    let mut poller = poller;
    let mut reached = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = client.try_disconnect();
                // Let the poller write the DISCONNECT, briefly.
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut poller).await;
                poller.abort();
                return reached;
            }
            _ = &mut poller => return reached || *connacked.borrow(),
            changed = connacked.changed() => {
                if changed.is_ok() && *connacked.borrow() {
                    reached = true;
                }
            }
            Some(out) = outbound.recv() => {
                let (topic, retain, payload) = match out {
                    Outbound::Reported(p) => (&topics.reported, true, p),
                    Outbound::CommandResult(p) => (&topics.cmd_result, false, p),
                };
                if let Err(e) = client.publish(topic.clone(), QoS::AtLeastOnce, retain, payload).await {
                    warn!(error = %e, topic = %topic, "fleet link: cannot queue a publish");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_topics_follow_design_mqtt_contract() {
        let t = FleetTopics::new("rpm/v1", "gw-0001");
        assert_eq!(t.desired, "rpm/v1/gw/gw-0001/config/desired");
        assert_eq!(t.reported, "rpm/v1/gw/gw-0001/config/reported");
        assert_eq!(t.cmd, "rpm/v1/gw/gw-0001/cmd");
        assert_eq!(t.cmd_result, "rpm/v1/gw/gw-0001/cmd/result");
    }
}

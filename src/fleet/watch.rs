//! `vitalgate fleet watch`: the platform's live table of every gateway, from the retained
//! `status` and `config/reported` topics.
//!
//! [`Table`] is pure (messages in, text out); [`run`] is the MQTT session around it. The
//! columns come from the hub's status telemetry (`schemas/gateway-status.v1.json`): state,
//! configuration version (`config_version`, else the last `config/reported`), backlog and the
//! age of the oldest undelivered row (`outbox`), devices connected of configured, open alerts
//! (with `!` when one is high priority) and the client certificate's days left (`?` after it
//! when the hub's clock is unsynchronised). A field a payload lacks (an `offline` last will,
//! an older hub) shows `-`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::uplink::{tls, UplinkConfig};

/// What is known of one gateway.
#[derive(Debug, Clone, Default, PartialEq)]
struct Row {
    status: Option<Value>,
    reported: Option<Value>,
}

/// Every gateway seen, by id.
#[derive(Debug, Default)]
pub struct Table {
    rows: BTreeMap<String, Row>,
}

impl Table {
    /// Takes one message; false when the topic is not a gateway's status or report.
    pub fn on_message(&mut self, topic: &str, payload: &[u8]) -> bool {
        let parts: Vec<&str> = topic.split('/').collect();
        let Some(gw_at) = parts.iter().position(|p| *p == "gw") else {
            return false;
        };
        let (Some(gw), rest) = (parts.get(gw_at + 1), &parts[(gw_at + 2).min(parts.len())..])
        else {
            return false;
        };
        let value = serde_json::from_slice::<Value>(payload).ok();
        let row = self.rows.entry((*gw).to_owned()).or_default();
        match rest {
            ["status"] => row.status = value,
            ["config", "reported"] => row.reported = value,
            _ => return false,
        }
        true
    }

    /// The table as text, one line per gateway.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{:<24} {:<8} {:>7} {:<9} {:>8} {:>9} {:>8} {:>6} {:>9}\n",
            "GATEWAY",
            "STATE",
            "CONFIG",
            "LAST",
            "BACKLOG",
            "OLDEST_S",
            "DEVICES",
            "ALERTS",
            "CERT_DAYS"
        );
        for (gw, r) in &self.rows {
            let s = r.status.as_ref();
            let at = |path: &str| {
                path.split('.')
                    .try_fold(s?, |v, k| v.get(k))
                    .filter(|v| !v.is_null())
            };
            let field = |path: &str| {
                at(path).map_or("-".to_owned(), |v| {
                    v.to_string().trim_matches('"').to_owned()
                })
            };
            let config = at("config_version")
                .or_else(|| r.reported.as_ref().and_then(|v| v.get("running_version")))
                .filter(|v| !v.is_null())
                .map_or("-".to_owned(), Value::to_string);
            let last = r
                .reported
                .as_ref()
                .and_then(|v| v.get("result"))
                .and_then(Value::as_str)
                .unwrap_or("-");
            let devices = at("devices")
                .and_then(Value::as_array)
                .map_or("-".to_owned(), |all| {
                    let ok = all
                        .iter()
                        .filter(|d| d.get("state").and_then(Value::as_str) == Some("connected"))
                        .count();
                    format!("{ok}/{}", all.len())
                });
            let alerts = match (at("alerts.open"), at("alerts.high").and_then(Value::as_u64)) {
                (Some(open), Some(high)) if high > 0 => format!("{open}!"),
                (Some(open), _) => open.to_string(),
                (None, _) => "-".to_owned(),
            };
            let cert = match (
                at("certificate.days_left"),
                at("certificate.clock_synced").and_then(Value::as_bool),
            ) {
                (Some(days), Some(false)) => format!("{days}?"),
                (Some(days), _) => days.to_string(),
                (None, _) => "-".to_owned(),
            };
            out.push_str(&format!(
                "{:<24} {:<8} {:>7} {:<9} {:>8} {:>9} {:>8} {:>6} {:>9}\n",
                gw,
                field("state"),
                config,
                last,
                field("outbox.depth"),
                field("outbox.oldest_undelivered_age_s"),
                devices,
                alerts,
                cert,
            ));
        }
        out
    }
}

/// Why `watch` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Reads `[uplink]` (the platform's broker and client certificate) from a platform config.
pub fn load_config(path: &std::path::Path) -> Result<UplinkConfig, WatchError> {
    #[derive(serde::Deserialize)]
    struct Platform {
        uplink: UplinkConfig,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| WatchError::Config(format!("{}: {e}", path.display())))?;
    let p: Platform = toml::from_str(&text)
        .map_err(|e| WatchError::Config(format!("{}: {}", path.display(), e.message())))?;
    p.uplink.validate().map_err(|errs| {
        WatchError::Config(format!(
            "{}: {}",
            path.display(),
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    Ok(p.uplink)
}

/// Subscribes as the platform and prints the table to `out` whenever it changed (at most
/// once a second; on a terminal the screen is cleared first) until `shutdown`, then prints it
/// once more.
pub async fn run(
    cfg: UplinkConfig,
    mut out: impl Write,
    terminal: bool,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let cfg = cfg.at_address(0);
    let loaded = tls::load(&cfg, time::OffsetDateTime::now_utc())?;
    let mut o = MqttOptions::new(
        format!("vitalgate-fleet-watch-{}", std::process::id()),
        cfg.broker.clone(),
        cfg.port,
    );
    o.set_clean_start(true)
        .set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_max_packet_size(Some(1024 * 1024))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            loaded.config,
        )));
    let (client, mut el) = AsyncClient::new(o, 16);
    let prefix = cfg.topic_prefix.clone();
    let mut table = Table::default();
    let mut changed = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if changed {
                    if terminal {
                        let _ = write!(out, "\x1b[2J\x1b[H");
                    }
                    let _ = write!(out, "{}", table.render());
                    let _ = out.flush();
                    changed = false;
                }
            }
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let filters = ["status", "config/reported"]
                        .map(|t| Filter::new(format!("{prefix}/gw/+/{t}"), QoS::AtLeastOnce));
                    let _ = client.subscribe_many(filters).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    changed |= table.on_message(&String::from_utf8_lossy(&p.topic), &p.payload);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::uplink::session::describe(&e, &cfg), "fleet watch: disconnected; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
    let _ = write!(out, "{}", table.render());
    let _ = out.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_joins_status_and_report_per_gateway() {
        let mut t = Table::default();
        assert!(t.on_message(
            "rpm/v1/gw/gw-2/status",
            br#"{"state":"online","config_version":null,
                "outbox":{"depth":12,"oldest_undelivered_age_s":95},
                "devices":[{"state":"connected"},{"state":"no_data"},{"state":"connected"}],
                "alerts":{"open":1,"high":0},
                "certificate":{"days_left":40,"clock_synced":true}}"#
        ));
        assert!(t.on_message(
            "rpm/v1/gw/gw-2/config/reported",
            br#"{"result":"applied","running_version":7}"#
        ));
        assert!(t.on_message("rpm/v1/gw/gw-1/status", br#"{"state":"offline"}"#));
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("gw-1") && lines[1].contains("offline"),
            "{text}"
        );
        let gw2: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            gw2,
            ["gw-2", "online", "7", "applied", "12", "95", "2/3", "1", "40"]
        );
    }

    #[test]
    fn the_hubs_own_config_version_wins_and_high_alerts_and_an_unsynced_clock_are_marked() {
        let mut t = Table::default();
        t.on_message(
            "rpm/v1/gw/gw-3/status",
            br#"{"state":"online","config_version":9,"alerts":{"open":2,"high":1},
                "certificate":{"days_left":3,"clock_synced":false}}"#,
        );
        t.on_message(
            "rpm/v1/gw/gw-3/config/reported",
            br#"{"result":"rejected","running_version":8}"#,
        );
        let text = t.render();
        let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            ["gw-3", "online", "9", "rejected", "-", "-", "-", "2!", "3?"]
        );
    }

    #[test]
    fn other_topics_are_ignored() {
        let mut t = Table::default();
        assert!(!t.on_message("rpm/v1/gw/gw-1/obs", b"{}"));
        assert!(!t.on_message("elsewhere", b"{}"));
    }
}

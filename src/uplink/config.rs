//! `[uplink]` configuration: broker address, certificate files, topic prefix and flow limits.
//!
//! Only the schema, its defaults and its validation live here; files are read by [`super::tls`]
//! when a session starts or reloads, so a configuration can be checked without touching disk.
//! Key material is never held or logged here: only paths.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[uplink]` table. Unknown keys are refused so a typo is not silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Broker host name or IP address (TCP connect target; also the TLS server name by default).
    pub broker: String,
    /// Broker TLS port.
    pub port: u16,
    /// A broker cluster behind several addresses (`"host:port"`), tried in turn with backoff;
    /// every one is verified against the same CA and server name. Instead of `broker`/`port`.
    pub brokers: Vec<String>,
    /// Name the broker certificate must carry, when it differs from `broker`.
    pub server_name: Option<String>,
    /// PEM file holding the platform CA: the only trusted root.
    pub ca_file: PathBuf,
    /// PEM file holding the client certificate (chain, leaf first).
    pub cert_file: PathBuf,
    /// PEM file holding the client private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// Gateway id used in topics and as MQTT client id; default: the client certificate CN.
    pub gateway_id: Option<String>,
    /// Topic prefix, default `rpm/v1`.
    pub topic_prefix: String,
    /// Maximum publishes awaiting PUBACK (also bounds duplicates after a reconnect).
    pub inflight: u16,
    /// Rows read from the outbox per query.
    pub batch_size: usize,
    /// MQTT keep-alive in seconds (detects half-open links).
    pub keep_alive_s: u64,
    /// Largest MQTT packet we send or accept, in bytes (the broker's own limit also applies).
    pub max_packet_size: u32,
    /// Cap of the jittered exponential reconnect backoff, in seconds.
    pub backoff_max_s: u64,
    /// First reconnect delay, in milliseconds.
    pub backoff_initial_ms: u64,
    /// How long shutdown and reload wait for outstanding PUBACKs, in milliseconds.
    pub drain_timeout_ms: u64,
    /// What a PUBACK "No matching subscribers" (0x10) means; see [`NoSubscribers`].
    pub no_subscribers: NoSubscribers,
    /// Seconds of "no matching subscribers" answers, without a success, before the status
    /// raises the `platform_not_subscribed` technical condition.
    pub no_subscribers_alarm_s: u64,
}

/// `uplink.no_subscribers`: how a PUBACK with reason 0x10 "No matching subscribers" is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoSubscribers {
    /// Nobody received the message (the platform's consumer is gone for a while): the row
    /// stays undelivered and is retried with backoff. The default.
    #[default]
    Retry,
    /// The broker's acceptance is delivery (a platform that takes messages off the broker by
    /// other means than a subscription, e.g. a bridge or a broker plug-in).
    Delivered,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            broker: String::new(),
            port: 8883,
            brokers: Vec::new(),
            server_name: None,
            ca_file: PathBuf::from("/etc/vitalgate/ca.pem"),
            cert_file: PathBuf::from("/etc/vitalgate/client.pem"),
            key_file: PathBuf::from("/etc/vitalgate/client.key"),
            gateway_id: None,
            topic_prefix: "rpm/v1".to_owned(),
            inflight: 64,
            batch_size: 256,
            keep_alive_s: 30,
            max_packet_size: 256 * 1024,
            backoff_max_s: 60,
            backoff_initial_ms: 500,
            drain_timeout_ms: 2000,
            no_subscribers: NoSubscribers::Retry,
            no_subscribers_alarm_s: 120,
        }
    }
}

/// The largest packet MQTT 5 can express (a 4-byte variable byte integer).
const MQTT_MAX_PACKET_SIZE: u32 = 268_435_455;

/// One invalid key, named as it appears in the TOML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("uplink.{key} = {value}: {reason}")]
pub struct ConfigError {
    /// The key, e.g. `inflight`.
    pub key: &'static str,
    /// The offending value as written.
    pub value: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

fn err(key: &'static str, value: impl std::fmt::Debug, reason: &str) -> ConfigError {
    ConfigError {
        key,
        value: format!("{value:?}"),
        reason: reason.to_owned(),
    }
}

/// `host:port` or `[v6]:port` split; None when malformed or the port is 0.
fn split_address(a: &str) -> Option<(&str, u16)> {
    let (host, port) = a.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && !host.contains(':') || a.starts_with('['))
        .then_some((host, port))
        .filter(|(_, p)| *p != 0)
}

/// A topic level must not be empty nor contain `/`, `+`, `#` or NUL.
pub(crate) fn valid_topic_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

impl UplinkConfig {
    /// The name the broker certificate is checked against: `server_name`, else the host of
    /// `broker` (or of the first of `brokers`), the same whichever address is connected.
    pub fn effective_server_name(&self) -> &str {
        if let Some(n) = &self.server_name {
            return n;
        }
        match self.brokers.first() {
            Some(first) => split_address(first).map_or(first.as_str(), |(h, _)| h),
            None => &self.broker,
        }
    }

    /// The addresses to connect to, in order: `brokers`, else `broker`:`port`.
    pub fn addresses(&self) -> Vec<(String, u16)> {
        if self.brokers.is_empty() {
            return vec![(self.broker.clone(), self.port)];
        }
        self.brokers
            .iter()
            .filter_map(|a| split_address(a).map(|(h, p)| (h.to_owned(), p)))
            .collect()
    }

    /// This config aimed at `addresses()[turn % n]`, with the server name pinned so every
    /// address is verified against the same name.
    pub fn at_address(&self, turn: usize) -> UplinkConfig {
        let mut c = self.clone();
        c.server_name = Some(self.effective_server_name().to_owned());
        let all = self.addresses();
        if let Some((host, port)) = all.get(turn % all.len().max(1)) {
            c.broker = host.clone();
            c.port = *port;
        }
        c
    }

    /// Checks every key and returns all problems at once.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Vec::new();
        for a in &self.brokers {
            if split_address(a).is_none() {
                errs.push(err(
                    "brokers",
                    a,
                    "each address is \"host:port\" (\"[v6 address]:port\" for IPv6), port 1..=65535",
                ));
            }
        }
        if !self.brokers.is_empty() && !self.broker.trim().is_empty() {
            errs.push(err(
                "brokers",
                &self.brokers,
                "set either `broker` (and `port`) or `brokers`, not both",
            ));
        }
        if self.broker.trim().is_empty() && self.brokers.is_empty() {
            errs.push(err(
                "broker",
                &self.broker,
                "is empty: set the broker host name, e.g. broker = \"mqtt.example.nhs.uk\"",
            ));
        }
        if self.port == 0 {
            errs.push(err("port", self.port, "must be 1..=65535 (usually 8883)"));
        }
        if let Some(name) = &self.server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                errs.push(err(
                    "server_name",
                    name,
                    "is not a valid DNS name or IP address",
                ));
            }
        }
        for (key, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if path.as_os_str().is_empty() {
                errs.push(err(key, path, "is empty: give the path of a PEM file"));
            }
        }
        if let Some(id) = &self.gateway_id {
            if !valid_topic_level(id) {
                errs.push(err(
                    "gateway_id",
                    id,
                    "must be non-empty and contain none of '/', '+', '#' (it is a topic level)",
                ));
            }
        }
        let prefix_ok =
            !self.topic_prefix.is_empty() && self.topic_prefix.split('/').all(valid_topic_level);
        if !prefix_ok {
            errs.push(err(
                "topic_prefix",
                &self.topic_prefix,
                "must be non-empty levels separated by '/', without '+', '#' or a trailing '/'",
            ));
        }
        if self.inflight == 0 {
            errs.push(err(
                "inflight",
                self.inflight,
                "must be 1..=65535 (the MQTT 5 receive maximum)",
            ));
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            errs.push(err("batch_size", self.batch_size, "must be 1..=10000"));
        }
        if self.keep_alive_s < 5 || self.keep_alive_s > 65_535 {
            errs.push(err(
                "keep_alive_s",
                self.keep_alive_s,
                "must be 5..=65535 seconds (20-30 detects dead links on cellular)",
            ));
        }
        if !(1024..=MQTT_MAX_PACKET_SIZE).contains(&self.max_packet_size) {
            errs.push(err(
                "max_packet_size",
                self.max_packet_size,
                "must be 1024..=268435455 bytes (the MQTT 5 maximum)",
            ));
        }
        if self.backoff_max_s == 0 || self.backoff_max_s > 3600 {
            errs.push(err("backoff_max_s", self.backoff_max_s, "must be 1..=3600"));
        }
        if self.backoff_initial_ms == 0
            || self.backoff_initial_ms > self.backoff_max_s.saturating_mul(1000)
        {
            errs.push(err(
                "backoff_initial_ms",
                self.backoff_initial_ms,
                "must be at least 1 and not above backoff_max_s",
            ));
        }
        if self.drain_timeout_ms > 60_000 {
            errs.push(err(
                "drain_timeout_ms",
                self.drain_timeout_ms,
                "must be at most 60000 (stay under the systemd stop timeout)",
            ));
        }
        if self.no_subscribers_alarm_s == 0 || self.no_subscribers_alarm_s > 86_400 {
            errs.push(err(
                "no_subscribers_alarm_s",
                self.no_subscribers_alarm_s,
                "must be 1..=86400 seconds",
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> UplinkConfig {
        UplinkConfig {
            broker: "mqtt.example.org".into(),
            ..UplinkConfig::default()
        }
    }

    #[test]
    fn config_defaults_match_the_design() {
        let c: UplinkConfig = toml::from_str("broker = \"h\"").unwrap();
        assert_eq!(c.port, 8883);
        assert_eq!(c.topic_prefix, "rpm/v1");
        assert_eq!(c.backoff_max_s, 60);
        assert_eq!(c.effective_server_name(), "h");
    }

    #[test]
    fn config_no_subscribers_is_retry_unless_set_to_delivered() {
        let c: UplinkConfig = toml::from_str("broker = \"h\"").unwrap();
        assert_eq!(c.no_subscribers, NoSubscribers::Retry);
        assert_eq!(c.no_subscribers_alarm_s, 120);
        let c: UplinkConfig =
            toml::from_str("broker = \"h\"\nno_subscribers = \"delivered\"").unwrap();
        assert_eq!(c.no_subscribers, NoSubscribers::Delivered);
        let r: Result<UplinkConfig, _> =
            toml::from_str("broker = \"h\"\nno_subscribers = \"drop\"");
        assert!(r.unwrap_err().to_string().contains("retry"));
    }

    #[test]
    fn config_unknown_key_is_refused() {
        let r: Result<UplinkConfig, _> = toml::from_str("broker = \"h\"\nbrokr = \"x\"");
        assert!(r.unwrap_err().to_string().contains("brokr"));
    }

    #[test]
    fn config_validate_accepts_defaults_with_broker() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn config_validate_names_every_bad_key() {
        let c = UplinkConfig {
            broker: String::new(),
            inflight: 0,
            gateway_id: Some("a/b".into()),
            topic_prefix: "rpm/#".into(),
            ..UplinkConfig::default()
        };
        let keys: Vec<&str> = c.validate().unwrap_err().iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            vec!["broker", "gateway_id", "topic_prefix", "inflight"]
        );
    }

    #[test]
    fn config_error_message_names_key_value_and_fix() {
        let c = UplinkConfig {
            keep_alive_s: 1,
            ..valid()
        };
        let msg = c.validate().unwrap_err()[0].to_string();
        assert_eq!(
            msg,
            "uplink.keep_alive_s = 1: must be 5..=65535 seconds (20-30 detects dead links on cellular)"
        );
    }

    #[test]
    fn brokers_are_tried_in_turn_under_one_server_name() {
        let c: UplinkConfig =
            toml::from_str("brokers = [\"mqtt-a.example:8883\", \"10.0.0.2:8884\"]").unwrap();
        assert_eq!(c.validate(), Ok(()));
        let first = c.at_address(0);
        let second = c.at_address(1);
        assert_eq!(
            (first.broker.as_str(), first.port),
            ("mqtt-a.example", 8883)
        );
        assert_eq!((second.broker.as_str(), second.port), ("10.0.0.2", 8884));
        assert_eq!(second.effective_server_name(), "mqtt-a.example");
        assert_eq!(c.at_address(2).broker, "mqtt-a.example");
    }

    #[test]
    fn malformed_broker_address_is_refused() {
        for bad in ["mqtt.example", "mqtt.example:0", ":8883", "::1:8883"] {
            let c = UplinkConfig {
                brokers: vec![bad.into()],
                ..UplinkConfig::default()
            };
            let keys: Vec<&str> = c.validate().unwrap_err().iter().map(|e| e.key).collect();
            assert_eq!(keys, vec!["brokers"], "{bad}");
        }
        let v6 = UplinkConfig {
            brokers: vec!["[::1]:8883".into()],
            ..UplinkConfig::default()
        };
        assert_eq!(v6.validate(), Ok(()));
    }

    #[test]
    fn broker_and_brokers_together_are_refused() {
        let c = UplinkConfig {
            brokers: vec!["a:1".into()],
            ..valid()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn config_server_name_overrides_broker_for_verification() {
        let c = UplinkConfig {
            server_name: Some("broker.nhs.example".into()),
            ..valid()
        };
        assert_eq!(c.effective_server_name(), "broker.nhs.example");
    }
}

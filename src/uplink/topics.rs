//! Topic names, the retained status payload and the MQTT packet-size arithmetic.
//!
//! Pure: no IO and no clock (the status time is an argument). DESIGN.md "MQTT" fixes the
//! topics: `{prefix}/gw/{gw}/obs`, `.../alert`, `.../status`.

use serde::Serialize;
use time::OffsetDateTime;

use super::source::Lane;

/// The topics of one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `{prefix}/gw/{gw}/obs`: FHIR Observations.
    pub obs: String,
    /// `{prefix}/gw/{gw}/alert`: alert events.
    pub alert: String,
    /// `{prefix}/gw/{gw}/status`: retained online/offline state and telemetry.
    pub status: String,
    /// `{prefix}/gw/{gw}/audit`: audit entries, each its log line as written.
    pub audit: String,
}

impl Topics {
    /// Topics for `gateway` under `prefix` (both validated by the config).
    pub fn new(prefix: &str, gateway: &str) -> Self {
        let base = format!("{prefix}/gw/{gateway}");
        Self {
            obs: format!("{base}/obs"),
            alert: format!("{base}/alert"),
            status: format!("{base}/status"),
            audit: format!("{base}/audit"),
        }
    }

    /// The topic a lane publishes on.
    pub fn for_lane(&self, lane: Lane) -> &str {
        match lane {
            Lane::Alert => &self.alert,
            Lane::Reading => &self.obs,
        }
    }
}

/// `online` or `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Connected (published after every ConnAck).
    Online,
    /// Disconnected (published before a clean disconnect, and as the last will).
    Offline,
}

/// The `schema` of every status payload (`schemas/gateway-status.v1.json`).
pub const STATUS_SCHEMA: &str = "gateway-status.v1";

#[derive(Serialize)]
struct StatusPayload<'a> {
    schema: &'static str,
    state: State,
    gateway: &'a str,
    version: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
}

/// The short retained status JSON: `{"schema":..,"state":..,"gateway":..,"version":..,
/// "since":..}`: the last will, a clean stop, and `online` before any telemetry exists
/// (`live::telemetry` renders the full `online` payload).
pub fn status_payload(state: State, gateway: &str, since: OffsetDateTime) -> Vec<u8> {
    let p = StatusPayload {
        schema: STATUS_SCHEMA,
        state,
        gateway,
        version: env!("CARGO_PKG_VERSION"),
        since,
    };
    // Serializing this plain struct cannot fail; fall back to a minimal document anyway.
    serde_json::to_vec(&p).unwrap_or_else(|_| b"{}".to_vec())
}

/// Bytes of an MQTT 5 PUBLISH (QoS 1, no properties) with this topic and payload, including
/// the fixed header: the figure compared with Maximum Packet Size (MQTT 5 §3.1.2.11.4).
pub fn publish_packet_len(topic_len: usize, payload_len: usize) -> usize {
    // topic length prefix + topic + packet id + property length (0) + payload
    let remaining = 2 + topic_len + 2 + 1 + payload_len;
    let varint = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + varint + remaining
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn topics_follow_design_mqtt_contract() {
        let t = Topics::new("rpm/v1", "gw-0001");
        assert_eq!(t.obs, "rpm/v1/gw/gw-0001/obs");
        assert_eq!(t.alert, "rpm/v1/gw/gw-0001/alert");
        assert_eq!(t.status, "rpm/v1/gw/gw-0001/status");
        assert_eq!(t.audit, "rpm/v1/gw/gw-0001/audit");
        assert_eq!(t.for_lane(Lane::Alert), t.alert);
    }

    #[test]
    fn status_payload_has_state_gateway_version_since() {
        let p = status_payload(State::Offline, "gw-1", datetime!(2026-01-02 03:04:05 UTC));
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["schema"], STATUS_SCHEMA);
        assert_eq!(v["state"], "offline");
        assert_eq!(v["gateway"], "gw-1");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["since"], "2026-01-02T03:04:05Z");
    }

    #[test]
    fn publish_packet_len_counts_headers_small() {
        // 1 fixed + 1 varint + (2 + 5 + 2 + 1 + 10) = 22
        assert_eq!(publish_packet_len(5, 10), 22);
    }

    #[test]
    fn publish_packet_len_uses_two_byte_length_at_128() {
        // remaining = 2 + 1 + 2 + 1 + 122 = 128 -> two-byte varint
        assert_eq!(publish_packet_len(1, 122), 1 + 2 + 128);
        assert_eq!(publish_packet_len(1, 121), 1 + 1 + 127);
    }
}

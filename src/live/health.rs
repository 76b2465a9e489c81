//! Healthy or degraded: the verdict `vitalgate status` turns into its exit code (0 healthy,
//! 1 degraded; 2 when the daemon cannot be reached at all), so it works as a monitoring probe.
//!
//! Degraded means someone should look: a device is silent (no data for longer than its
//! expected interval, or its port is gone), the oldest undelivered record is older than
//! `[status] backlog_max_age_s`, or the uplink has been down for longer than
//! `[status] uplink_down_max_s`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::model::LiveState;

/// `[status]`: when `vitalgate status` says degraded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusThresholds {
    /// The oldest undelivered record may be this old (seconds, 60..=604800) before the
    /// gateway is degraded.
    pub backlog_max_age_s: u64,
    /// The uplink may be down this long (seconds, 10..=86400) before the gateway is degraded.
    pub uplink_down_max_s: u64,
    /// The status telemetry is published at least this often (seconds, 10..=3600), besides
    /// on connect and on change; fleet-settable (`live::telemetry`).
    pub telemetry_interval_s: u64,
}

impl Default for StatusThresholds {
    fn default() -> Self {
        StatusThresholds {
            backlog_max_age_s: 900,
            uplink_down_max_s: 300,
            telemetry_interval_s: 60,
        }
    }
}

impl StatusThresholds {
    /// Out-of-range values, as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !(60..=604_800).contains(&self.backlog_max_age_s) {
            out.push((
                "status.backlog_max_age_s".into(),
                format!("{} is outside 60..=604800 seconds", self.backlog_max_age_s),
            ));
        }
        if !(10..=86_400).contains(&self.uplink_down_max_s) {
            out.push((
                "status.uplink_down_max_s".into(),
                format!("{} is outside 10..=86400 seconds", self.uplink_down_max_s),
            ));
        }
        if !(10..=3600).contains(&self.telemetry_interval_s) {
            out.push((
                "status.telemetry_interval_s".into(),
                format!("{} is outside 10..=3600 seconds", self.telemetry_interval_s),
            ));
        }
        out
    }
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Healthy,
    Degraded,
    Unreachable,
}

impl Verdict {
    /// The `status` exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Healthy => 0,
            Verdict::Degraded => 1,
            Verdict::Unreachable => 2,
        }
    }
}

/// The verdict and every reason for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub verdict: Verdict,
    pub reasons: Vec<String>,
}

/// Device states that mean nothing is arriving.
const SILENT_STATES: [&str; 4] = ["no_data", "disconnected", "unavailable", "paused"];

/// Judges `state` against `limits`.
pub fn evaluate(state: &LiveState, limits: &StatusThresholds) -> Health {
    let now = state.now;
    let mut reasons = Vec::new();
    for d in &state.devices {
        if SILENT_STATES.contains(&d.state.as_str()) {
            let last = match d.last_data_at {
                Some(t) => format!("last data {} ago", age(now, t)),
                None => "no data since start".into(),
            };
            reasons.push(format!("device {} silent ({}, {last})", d.id, d.state));
        }
    }
    if let Some(oldest) = state.outbox.oldest_undelivered {
        if (now - oldest).whole_seconds() > limits.backlog_max_age_s as i64 {
            reasons.push(format!(
                "backlog: oldest undelivered record is {} old (limit {} s), {} waiting",
                age(now, oldest),
                limits.backlog_max_age_s,
                state.outbox.backlog()
            ));
        }
    }
    if let Some(u) = &state.uplink {
        if !u.connected && (now - u.since).whole_seconds() > limits.uplink_down_max_s as i64 {
            reasons.push(format!(
                "uplink down for {} (limit {} s){}",
                age(now, u.since),
                limits.uplink_down_max_s,
                u.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    Health {
        verdict: if reasons.is_empty() {
            Verdict::Healthy
        } else {
            Verdict::Degraded
        },
        reasons,
    }
}

/// A short human age: `42 s`, `7 min`, `3 h 5 min`, `2 d 4 h`.
pub fn age(now: OffsetDateTime, then: OffsetDateTime) -> String {
    human_secs((now - then).whole_seconds().max(0) as u64)
}

/// A short human duration in seconds.
pub fn human_secs(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::live::model::*;

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    pub(crate) fn healthy() -> LiveState {
        LiveState {
            protocol: PROTOCOL,
            gateway: "gw".into(),
            version: "0".into(),
            pid: 1,
            started_at: t(0),
            now: t(1000),
            clock_synced: true,
            devices: vec![DeviceLive {
                id: "ox-1".into(),
                patient: "p1".into(),
                driver: "sim".into(),
                state: "connected".into(),
                last_data_at: Some(t(999)),
                frames: 1,
                readings: 1,
                decode_errors: 0,
                last_error: None,
                last_values: vec![],
            }],
            patients: vec![],
            outbox: OutboxLive {
                oldest_undelivered: Some(t(990)),
                ..OutboxLive::default()
            },
            rates: RateHistory::default(),
            uplink: Some(UplinkLive {
                connected: true,
                since: t(10),
                connects: 1,
                delivered: 0,
                refused: 0,
                in_flight: 0,
                last_ack: None,
                last_error: None,
                cert_not_after: None,
            }),
            storage: StorageLive::default(),
            ingest: IngestLive::default(),
        }
    }

    #[test]
    fn a_connected_sending_gateway_is_healthy() {
        let h = evaluate(&healthy(), &StatusThresholds::default());
        assert_eq!(h.verdict, Verdict::Healthy, "{:?}", h.reasons);
    }

    #[test]
    fn a_silent_device_degrades() {
        let mut s = healthy();
        s.devices[0].state = "no_data".into();
        let h = evaluate(&s, &StatusThresholds::default());
        assert_eq!(h.verdict, Verdict::Degraded);
        assert!(
            h.reasons[0].contains("device ox-1 silent"),
            "{:?}",
            h.reasons
        );
    }

    #[test]
    fn a_backlog_older_than_the_limit_degrades_and_a_younger_one_does_not() {
        let limits = StatusThresholds {
            backlog_max_age_s: 60,
            ..StatusThresholds::default()
        };
        let mut s = healthy();
        s.outbox.oldest_undelivered = Some(t(1000 - 59));
        assert_eq!(evaluate(&s, &limits).verdict, Verdict::Healthy);
        s.outbox.oldest_undelivered = Some(t(1000 - 61));
        assert_eq!(evaluate(&s, &limits).verdict, Verdict::Degraded);
    }

    #[test]
    fn an_uplink_down_longer_than_the_limit_degrades_and_a_brief_drop_does_not() {
        let limits = StatusThresholds {
            uplink_down_max_s: 30,
            ..StatusThresholds::default()
        };
        let mut s = healthy();
        let u = s.uplink.as_mut().unwrap();
        u.connected = false;
        u.since = t(1000 - 10);
        assert_eq!(evaluate(&s, &limits).verdict, Verdict::Healthy);
        s.uplink.as_mut().unwrap().since = t(1000 - 31);
        let h = evaluate(&s, &limits);
        assert_eq!(h.verdict, Verdict::Degraded);
        assert!(h.reasons[0].starts_with("uplink down"), "{:?}", h.reasons);
    }

    #[test]
    fn thresholds_out_of_range_are_named() {
        let p = StatusThresholds {
            backlog_max_age_s: 1,
            uplink_down_max_s: 0,
            telemetry_interval_s: 9,
        }
        .problems();
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "status.backlog_max_age_s",
                "status.uplink_down_max_s",
                "status.telemetry_interval_s"
            ]
        );
    }
}

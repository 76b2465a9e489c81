//! Technical alarms: problems with the equipment or the data path, not with the patient.
//! Each condition has a fixed priority (IEC 60601-1-8 style; technical alarms are never high
//! unless data is about to be lost) and a key per device or gateway:
//!
//! | Condition | Key | Priority | Raised when | Cleared when |
//! |---|---|---|---|---|
//! | device silent | `technical:device_silent:{device}` | medium | no reading for longer than the device's registered interval (checked on `tick`) | any reading from the device |
//! | sensor off | `technical:sensor_off:{device}` | low | `sensor_off` flag held `sensor_off_after_secs` | a reading without it, held `clear_after_secs` |
//! | probe disconnected | `technical:probe_disconnected:{device}` | low | `probe_disconnected` flag, same timing | same |
//! | low battery | `technical:low_battery:{device}` | low | `low_battery` flag | a reading without it, held `clear_after_secs` |
//! | implausible values | `technical:repeated_rejections:{device}:{metric}` | medium | `rejections_to_alarm` rejections within `rejection_window_secs` | a valid reading of that metric from that device, or the window passing without enough rejections, held `clear_after_secs` |
//! | outbox near full | `technical:outbox_near_full` | medium, high at `outbox_high_percent` | depth >= `outbox_warn_percent` of capacity | depth < `outbox_clear_percent`, held `clear_after_secs` |
//! | clock not synchronised | `technical:clock_not_synchronised` | low | caller reports unsynchronised for `clock_unsynced_after_secs` | caller reports synchronised |
//! | storage full | `technical:storage_full` | high | the outbox's file system is full (readings held in memory, devices held back) | a commit succeeds again |
//! | storage error | `technical:storage_error` | high | a batch was given up on a permanent error (readings not stored) | the next batch commits |
//! | audit chain broken | `technical:audit_chain_broken` | medium | the start check found a break not recorded before | the next start (the break is then recorded in the chain) |
//! | storage cap | `technical:storage_cap` | high | the outbox is at 90 % of `store.max_bytes` after purging delivered rows | below 70 % (delivered rows purged down to it while raised) |
//!
//! Device silence is the dead-man alarm of remote monitoring: a patient whose device stopped
//! sending is a patient nobody is watching, hence medium. It is judged on gateway time (`now`
//! when readings arrived), not device time, so a device with a wrong clock cannot hide.
//! Why not high: the clinical alerts themselves never clear on silence, and silence is
//! usually a flat battery or a patient out of the house.

use time::{Duration, OffsetDateTime};

use crate::reading::Metric;

use super::config::{Priority, TechnicalConfig};
use super::event::TechnicalCondition;

impl TechnicalCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            TechnicalCondition::DeviceSilent => "device_silent",
            TechnicalCondition::SensorOff => "sensor_off",
            TechnicalCondition::ProbeDisconnected => "probe_disconnected",
            TechnicalCondition::LowBattery => "low_battery",
            TechnicalCondition::RepeatedRejections => "repeated_rejections",
            TechnicalCondition::OutboxNearFull => "outbox_near_full",
            TechnicalCondition::ClockNotSynchronised => "clock_not_synchronised",
            TechnicalCondition::StorageFull => "storage_full",
            TechnicalCondition::StorageError => "storage_error",
            TechnicalCondition::AuditChainBroken => "audit_chain_broken",
            TechnicalCondition::StorageCap => "storage_cap",
        }
    }

    /// The priority the condition raises at (the outbox escalates to high on its own scale).
    pub fn priority(self) -> Priority {
        match self {
            TechnicalCondition::DeviceSilent
            | TechnicalCondition::RepeatedRejections
            | TechnicalCondition::OutboxNearFull
            | TechnicalCondition::AuditChainBroken => Priority::Medium,
            TechnicalCondition::SensorOff
            | TechnicalCondition::ProbeDisconnected
            | TechnicalCondition::LowBattery
            | TechnicalCondition::ClockNotSynchronised => Priority::Low,
            // Readings are being, or have been, lost.
            TechnicalCondition::StorageFull | TechnicalCondition::StorageError => Priority::High,
            // Readings will be held back (or, if configured, dropped) once it is reached.
            TechnicalCondition::StorageCap => Priority::High,
        }
    }
}

/// The alert key of a technical condition.
pub fn key(condition: TechnicalCondition, device: Option<&str>, metric: Option<Metric>) -> String {
    let mut k = format!("technical:{}", condition.as_str());
    if let Some(d) = device {
        k.push(':');
        k.push_str(d);
    }
    if let Some(m) = metric {
        k.push(':');
        k.push_str(m.as_str());
    }
    k
}

/// Whether a device last heard from at `last_seen` is silent at `now`.
pub fn is_silent(
    now: OffsetDateTime,
    last_seen: OffsetDateTime,
    expected_interval_secs: u64,
) -> bool {
    now - last_seen > Duration::seconds(i64::try_from(expected_interval_secs).unwrap_or(i64::MAX))
}

/// The outbox level with hysteresis: `high` at or above `outbox_high_percent`, `medium` at or
/// above `outbox_warn_percent`; once raised it holds (at medium) down to
/// `outbox_clear_percent`. A zero capacity is treated as full (a misconfigured store cannot
/// keep readings).
pub fn outbox_level(
    depth: u64,
    capacity: u64,
    raised: bool,
    cfg: &TechnicalConfig,
) -> Option<Priority> {
    // percent * 100, in u128 so no input overflows
    let fill = if capacity == 0 {
        10_000
    } else {
        u128::from(depth) * 10_000 / u128::from(capacity)
    };
    let pct = |p: u8| u128::from(p) * 100;
    if fill >= pct(cfg.outbox_high_percent) {
        Some(Priority::High)
    } else if fill >= pct(cfg.outbox_warn_percent)
        || (raised && fill >= pct(cfg.outbox_clear_percent))
    {
        Some(Priority::Medium)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_level_warns_escalates_and_holds_until_clear_percent() {
        let cfg = TechnicalConfig::default(); // warn 80, high 95, clear 70
        assert_eq!(outbox_level(79, 100, false, &cfg), None);
        assert_eq!(outbox_level(80, 100, false, &cfg), Some(Priority::Medium));
        assert_eq!(outbox_level(95, 100, false, &cfg), Some(Priority::High));
        assert_eq!(outbox_level(75, 100, true, &cfg), Some(Priority::Medium));
        assert_eq!(outbox_level(69, 100, true, &cfg), None);
    }

    #[test]
    fn outbox_level_treats_zero_capacity_as_full_and_never_overflows() {
        let cfg = TechnicalConfig::default();
        assert_eq!(outbox_level(0, 0, false, &cfg), Some(Priority::High));
        assert_eq!(
            outbox_level(u64::MAX, u64::MAX, false, &cfg),
            Some(Priority::High)
        );
    }

    #[test]
    fn technical_keys_name_condition_device_and_metric() {
        assert_eq!(
            key(TechnicalCondition::DeviceSilent, Some("ox-1"), None),
            "technical:device_silent:ox-1"
        );
        assert_eq!(
            key(
                TechnicalCondition::RepeatedRejections,
                Some("ox-1"),
                Some(Metric::Spo2)
            ),
            "technical:repeated_rejections:ox-1:spo2"
        );
        assert_eq!(
            key(TechnicalCondition::OutboxNearFull, None, None),
            "technical:outbox_near_full"
        );
    }
}

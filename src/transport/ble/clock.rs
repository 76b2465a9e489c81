//! Device clock check: the offset between a device's Current Time (0x2A2B) and the gateway
//! clock, and what it does to the device timestamps ([`TimePolicy`]).
//!
//! Pure: the gateway time is an argument. A device's Date Time is its local wall clock with no
//! zone, labelled +00:00 by the decoders (`drivers::ble` module docs), so the offset measured
//! here includes the device's time zone: a device set to UK summer time reads about +1 h.
//! Correcting by the measured offset therefore maps the device's wall clock to true UTC
//! whichever of the two is the cause. What it does not do: it never writes the device clock
//! and never guesses an offset for devices without Current Time (their timestamps pass through
//! unchanged; ingest still has the receive time).

use std::time::Duration as StdDuration;

use time::{Duration, OffsetDateTime};

use super::TimePolicy;
use crate::drivers::ble::CurrentTime;
use crate::reading::{Flag, Reading};

/// Device clock minus gateway clock; `None` when the device does not know its date.
pub fn measure_offset(device_now: &CurrentTime, gateway_now: OffsetDateTime) -> Option<Duration> {
    let device = device_now.date_time.device_time()?;
    let fraction = Duration::milliseconds(i64::from(device_now.fractions256) * 1000 / 256);
    Some(device.checked_add(fraction)? - gateway_now)
}

/// Applies the policy to readings from a device whose clock is `offset` ahead of the gateway
/// (negative: behind). Within `tolerance` (or with no offset known) nothing changes. Otherwise a
/// reading with a device time is either shifted back by the offset and flagged
/// `TimeCorrected` ([`TimePolicy::Correct`]) or kept and flagged `DeviceClockSuspect`
/// ([`TimePolicy::KeepAndFlag`]). A correction that would leave the calendar keeps the time and
/// flags it suspect instead. Readings without a device time are left alone.
pub fn apply_policy(
    readings: &mut [Reading],
    offset: Option<Duration>,
    policy: TimePolicy,
    tolerance: StdDuration,
) {
    let Some(offset) = offset else { return };
    if offset.unsigned_abs() <= tolerance {
        return;
    }
    for r in readings.iter_mut() {
        let Some(t) = r.device_time else { continue };
        let flag = match policy {
            TimePolicy::Correct => match t.checked_sub(offset) {
                Some(corrected) => {
                    r.device_time = Some(corrected);
                    Flag::TimeCorrected
                }
                None => Flag::DeviceClockSuspect,
            },
            TimePolicy::KeepAndFlag => Flag::DeviceClockSuspect,
        };
        if !r.flags.contains(&flag) {
            r.flags.push(flag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ble::decode_current_time;
    use crate::reading::{Decimal, Metric};
    use time::macros::datetime;

    fn current_time(hex: &str) -> CurrentTime {
        decode_current_time(&hex::decode(hex.replace(' ', "")).unwrap()).unwrap()
    }

    fn bp_at(t: OffsetDateTime) -> Reading {
        Reading::canonical(Metric::SystolicBp, Decimal::new(120, 0)).at(t)
    }

    const TOLERANCE: StdDuration = StdDuration::from_secs(120);

    #[test]
    fn measure_offset_is_device_minus_gateway() {
        // protocols.md §1.3 Date Time layout inside Current Time: 2024-03-10 12:05:00, Sunday,
        // fractions 0, reason 0; the gateway says 12:00:00.
        let ct = current_time("E8 07 03 0A 0C 05 00 07 00 00");
        let off = measure_offset(&ct, datetime!(2024-03-10 12:00:00 UTC)).unwrap();
        assert_eq!(off, Duration::minutes(5));
    }

    #[test]
    fn measure_offset_counts_the_fractions_of_a_second() {
        // 128/256 s = 500 ms
        let ct = current_time("E8 07 03 0A 0C 00 00 07 80 00");
        let off = measure_offset(&ct, datetime!(2024-03-10 12:00:00 UTC)).unwrap();
        assert_eq!(off, Duration::milliseconds(500));
    }

    #[test]
    fn measure_offset_of_a_device_with_unknown_date_is_none() {
        // protocols.md §1.3 DT2: a zero year/month/day means the date is not known
        let ct = current_time("00 00 00 00 12 1A 20 00 00 00");
        assert_eq!(
            measure_offset(&ct, datetime!(2024-03-10 12:00:00 UTC)),
            None
        );
    }

    #[test]
    fn apply_policy_correct_shifts_back_and_flags_time_corrected() {
        let mut rs = vec![bp_at(datetime!(2024-03-10 13:00:00 UTC))];
        apply_policy(
            &mut rs,
            Some(Duration::hours(1)),
            TimePolicy::Correct,
            TOLERANCE,
        );
        assert_eq!(rs[0].device_time, Some(datetime!(2024-03-10 12:00:00 UTC)));
        assert_eq!(rs[0].flags, vec![Flag::TimeCorrected]);
    }

    #[test]
    fn apply_policy_correct_moves_a_slow_clock_forward() {
        let mut rs = vec![bp_at(datetime!(2024-03-10 11:50:00 UTC))];
        apply_policy(
            &mut rs,
            Some(Duration::minutes(-10)),
            TimePolicy::Correct,
            TOLERANCE,
        );
        assert_eq!(rs[0].device_time, Some(datetime!(2024-03-10 12:00:00 UTC)));
    }

    #[test]
    fn apply_policy_keep_and_flag_keeps_the_time_and_flags_suspect() {
        let t = datetime!(2024-03-10 13:00:00 UTC);
        let mut rs = vec![bp_at(t)];
        apply_policy(
            &mut rs,
            Some(Duration::hours(1)),
            TimePolicy::KeepAndFlag,
            TOLERANCE,
        );
        assert_eq!(rs[0].device_time, Some(t));
        assert_eq!(rs[0].flags, vec![Flag::DeviceClockSuspect]);
    }

    #[test]
    fn apply_policy_within_tolerance_changes_nothing() {
        let t = datetime!(2024-03-10 12:01:00 UTC);
        let mut rs = vec![bp_at(t)];
        apply_policy(
            &mut rs,
            Some(Duration::seconds(60)),
            TimePolicy::Correct,
            TOLERANCE,
        );
        assert_eq!(rs[0].device_time, Some(t));
        assert!(rs[0].flags.is_empty());
    }

    #[test]
    fn apply_policy_without_an_offset_changes_nothing() {
        let t = datetime!(2024-03-10 12:01:00 UTC);
        let mut rs = vec![bp_at(t)];
        apply_policy(&mut rs, None, TimePolicy::KeepAndFlag, TOLERANCE);
        assert!(rs[0].flags.is_empty());
    }

    #[test]
    fn apply_policy_leaves_readings_without_device_time_alone() {
        let mut rs = vec![Reading::canonical(Metric::SystolicBp, Decimal::new(120, 0))];
        apply_policy(
            &mut rs,
            Some(Duration::hours(3)),
            TimePolicy::Correct,
            TOLERANCE,
        );
        assert_eq!(rs[0].device_time, None);
        assert!(rs[0].flags.is_empty());
    }

    #[test]
    fn apply_policy_correction_off_the_calendar_keeps_the_time_flagged_suspect() {
        let t = datetime!(2024-03-10 12:00:00 UTC);
        let mut rs = vec![bp_at(t)];
        apply_policy(&mut rs, Some(Duration::MAX), TimePolicy::Correct, TOLERANCE);
        assert_eq!(rs[0].device_time, Some(t));
        assert_eq!(rs[0].flags, vec![Flag::DeviceClockSuspect]);
    }
}

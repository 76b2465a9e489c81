//! [`ClockWatch`]: when the wall clock becomes trustworthy, and the anchor that corrects the
//! readings received before.

use std::sync::Arc;

use time::OffsetDateTime;

use super::{BootId, BootStamp, ClockSource};

/// A step of the wall clock against the boot clock larger than this is someone setting the
/// clock (NTP slews at most 500 ppm: half a millisecond per second).
pub const STEP_NS: i128 = 2_000_000_000;

/// A boot's wall-minus-boottime offset once the clock is trusted: wall time of a reading
/// of that boot = offset + its time since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub boot: BootId,
    pub wall_minus_boottime_ns: i128,
}

/// One look at the clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub wall: OffsetDateTime,
    /// `None` when the boot id cannot be read.
    pub stamp: Option<BootStamp>,
    /// The wall clock is trusted (synchronised this boot).
    pub synced: bool,
    /// Set when the clock has just become trusted, or stepped again while trusted: keep it
    /// (the outbox's `clock_anchor:<boot>`), it corrects this boot's unsynchronised readings.
    pub new_anchor: Option<Anchor>,
}

/// Watches one [`ClockSource`]. Sync is sticky for a boot: a clock once set stays trusted
/// (timesyncd's flag file stays too); a new boot starts untrusted.
#[derive(Debug)]
pub struct ClockWatch {
    source: Arc<dyn ClockSource>,
    boot: Option<BootId>,
    last_offset_ns: Option<i128>,
    synced: bool,
}

impl ClockWatch {
    pub fn new(source: Arc<dyn ClockSource>) -> Self {
        ClockWatch {
            source,
            boot: None,
            last_offset_ns: None,
            synced: false,
        }
    }

    pub fn source(&self) -> &Arc<dyn ClockSource> {
        &self.source
    }

    /// Reads the clocks: the time to stamp a reading with and whether it is trusted.
    pub fn sample(&mut self) -> Sample {
        let wall = self.source.wall();
        let since_boot = self.source.since_boot();
        let boot = self.source.boot_id();
        if boot != self.boot {
            self.boot = boot;
            self.last_offset_ns = None;
            self.synced = false;
        }
        let since_boot_ns = since_boot.as_nanos() as i128;
        let offset = wall.unix_timestamp_nanos() - since_boot_ns;
        let previous = self.last_offset_ns.replace(offset);
        let stepped = previous.is_some_and(|last| (offset - last).abs() > STEP_NS);
        let mut new_anchor = None;
        let newly_synced = !self.synced && (self.source.sync_reported() || stepped);
        if newly_synced || (self.synced && stepped) {
            self.synced = true;
            if self.source.is_system() {
                super::note_process_synced();
            }
            new_anchor = boot.map(|boot| Anchor {
                boot,
                wall_minus_boottime_ns: offset,
            });
            if stepped {
                tracing::warn!(
                    step_ms = ((offset - previous.unwrap_or(offset)) / 1_000_000) as i64,
                    "the wall clock was stepped against the boot clock: taken as set; earlier readings of this boot are corrected from the boot clock"
                );
            }
        }
        Sample {
            wall,
            stamp: boot.map(|boot| BootStamp {
                boot,
                since_boot_ms: (since_boot.as_millis()).min(u128::from(u64::MAX)) as u64,
            }),
            synced: self.synced,
            new_anchor,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::macros::datetime;

    use super::super::{corrected_time, FakeClock};
    use super::*;

    const BOOT_A: u128 = 0xa;
    const BOOT_B: u128 = 0xb;
    const EPOCH: OffsetDateTime = datetime!(1970-01-01 00:00 UTC);
    const REAL: OffsetDateTime = datetime!(2026-12-05 08:00 UTC);

    fn watch(clock: &FakeClock) -> ClockWatch {
        ClockWatch::new(Arc::new(clock.clone()))
    }

    #[test]
    fn readings_before_timesyncd_reports_sync_are_corrected_from_the_boot_clock() {
        let clock = FakeClock::new(BOOT_A, EPOCH);
        let mut w = watch(&clock);
        clock.advance(Duration::from_secs(30));
        let before = w.sample();
        assert!(!before.synced);
        assert_eq!(before.wall, EPOCH + Duration::from_secs(30));
        clock.advance(Duration::from_secs(60));
        clock.set_wall(REAL);
        clock.report_sync(true);
        // A watch that never saw the step (the daemon restarted meanwhile, same boot): the
        // flag alone is sync.
        let mut restarted = watch(&clock);
        let after = restarted.sample();
        assert!(after.synced);
        let anchor = after.new_anchor.expect("sync gives an anchor");
        let stamp = before.stamp.unwrap();
        assert_eq!(
            corrected_time(&stamp, &anchor),
            Some(REAL - Duration::from_secs(60)),
            "received 60 s of boot clock before the real time now"
        );
    }

    #[test]
    fn a_step_of_the_wall_clock_counts_as_sync_without_timesyncd() {
        let clock = FakeClock::new(BOOT_A, EPOCH);
        let mut w = watch(&clock);
        clock.advance(Duration::from_secs(5));
        let before = w.sample();
        clock.advance(Duration::from_secs(1));
        assert!(!w.sample().synced, "no step, no flag: not synced");
        clock.advance(Duration::from_secs(10));
        clock.set_wall(REAL);
        let after = w.sample();
        assert!(after.synced, "a step of years is the clock being set");
        let corrected = corrected_time(&before.stamp.unwrap(), &after.new_anchor.unwrap());
        assert_eq!(corrected, Some(REAL - Duration::from_secs(11)));
        clock.advance(Duration::from_secs(1));
        let later = w.sample();
        assert!(
            later.synced && later.new_anchor.is_none(),
            "sync is sticky, anchored once"
        );
    }

    #[test]
    fn a_slew_below_the_step_threshold_is_not_sync() {
        let clock = FakeClock::new(BOOT_A, EPOCH);
        let mut w = watch(&clock);
        w.sample();
        clock.advance(Duration::from_secs(10));
        clock.set_wall(EPOCH + Duration::from_secs(10) + Duration::from_millis(1500));
        assert!(!w.sample().synced);
    }

    #[test]
    fn a_new_boot_starts_unsynchronised_and_an_earlier_boots_anchor_corrects_nothing() {
        let clock = FakeClock::new(BOOT_A, EPOCH);
        let mut w = watch(&clock);
        clock.advance(Duration::from_secs(3));
        let boot_a_reading = w.sample().stamp.unwrap();
        clock.reboot(BOOT_B, EPOCH);
        clock.advance(Duration::from_secs(2));
        let first_b = w.sample();
        assert!(!first_b.synced);
        clock.report_sync(true);
        clock.set_wall(REAL);
        let anchor_b = w.sample().new_anchor.unwrap();
        assert_eq!(anchor_b.boot, BootId(BOOT_B));
        assert_eq!(
            corrected_time(&boot_a_reading, &anchor_b),
            None,
            "boot A never synced: its reading stays flagged"
        );
        assert_eq!(
            corrected_time(&first_b.stamp.unwrap(), &anchor_b),
            Some(REAL)
        );
    }

    #[test]
    fn a_clock_synchronised_at_start_needs_no_correction() {
        let clock = FakeClock::new(BOOT_A, REAL);
        clock.report_sync(true);
        let mut w = watch(&clock);
        let s = w.sample();
        assert!(s.synced);
        assert_eq!(s.wall, REAL);
    }

    #[test]
    fn boot_stamp_is_stored_as_three_integers_and_read_back() {
        let stamp = BootStamp {
            boot: BootId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
            since_boot_ms: 86_400_000,
        };
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &stamp).unwrap();
        let back: BootStamp = cbor4ii::serde::from_slice(&bytes).unwrap();
        assert_eq!(back, stamp);
        assert_eq!(
            BootId::parse("01234567-89ab-cdef-fedc-ba9876543210\n"),
            Some(stamp.boot)
        );
    }
}

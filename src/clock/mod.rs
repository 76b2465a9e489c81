//! Time without a real-time clock (issue 15 point 5).
//!
//! A Raspberry Pi has no RTC: it boots at 1970 (or at the last shutdown time, with
//! fake-hwclock) and its wall clock is right only once network time arrives. Every reading
//! therefore also records where it was received on a clock that is right from boot: the
//! kernel's boot id (`/proc/sys/kernel/random/boot_id`) and `CLOCK_BOOTTIME` (monotonic,
//! counting suspend too, so its offset to the wall clock stays fixed while the wall clock is
//! right), as a [`BootStamp`] in the sealed record.
//!
//! [`ClockWatch`] decides when the wall clock can be trusted: systemd-timesyncd's flag file
//! (`/run/systemd/timesync/synchronized`), or a step of the wall clock against the boot clock
//! (someone, NTP or an operator, set the clock). `adjtimex(2)` is not used: neither rustix
//! (1.1) nor nix expose it, and calling it directly needs `unsafe`. On sync the watch gives an
//! [`Anchor`]: the boot's wall-minus-boottime offset, kept in the outbox; a reading of that
//! boot received before sync has its time corrected from it at publish time
//! ([`corrected_time`]). A reading of a boot that never synced has no anchor and stays flagged.
//!
//! [`ClockSource`] is the seam: [`SystemClock`] reads the kernel, [`FakeClock`] is driven by
//! tests (boot changes, clock steps, sync arriving).

mod watch;

pub use watch::{Anchor, ClockWatch, Sample};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The kernel's boot id (a random UUID per boot), as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootId(pub u128);

impl BootId {
    /// Parses the text of `/proc/sys/kernel/random/boot_id`.
    pub fn parse(text: &str) -> Option<BootId> {
        uuid::Uuid::parse_str(text.trim())
            .ok()
            .map(|u| BootId(u.as_u128()))
    }

    /// The key under which this boot's [`Anchor`] is kept (`meta`).
    pub fn hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

/// Where on the boot clock a reading was received: stored in the sealed record as
/// `[boot id high 64 bits, low 64 bits, ms since boot]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64, u64)", into = "(u64, u64, u64)")]
pub struct BootStamp {
    pub boot: BootId,
    /// `CLOCK_BOOTTIME` in milliseconds.
    pub since_boot_ms: u64,
}

impl From<(u64, u64, u64)> for BootStamp {
    fn from((hi, lo, ms): (u64, u64, u64)) -> Self {
        BootStamp {
            boot: BootId((u128::from(hi) << 64) | u128::from(lo)),
            since_boot_ms: ms,
        }
    }
}

impl From<BootStamp> for (u64, u64, u64) {
    fn from(s: BootStamp) -> Self {
        ((s.boot.0 >> 64) as u64, s.boot.0 as u64, s.since_boot_ms)
    }
}

/// The wall time a reading stamped `stamp` was really received at, given its boot's anchor:
/// `None` when the anchor is of another boot (the reading stays flagged).
pub fn corrected_time(stamp: &BootStamp, anchor: &Anchor) -> Option<OffsetDateTime> {
    if stamp.boot != anchor.boot {
        return None;
    }
    let ns = anchor.wall_minus_boottime_ns + i128::from(stamp.since_boot_ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(ns).ok()
}

/// Where the time comes from. `Send + Sync`: the ingest writer and the uplink share one.
pub trait ClockSource: Send + Sync + std::fmt::Debug {
    /// The wall clock (`CLOCK_REALTIME`).
    fn wall(&self) -> OffsetDateTime;
    /// `CLOCK_BOOTTIME`: since boot, suspend included.
    fn since_boot(&self) -> Duration;
    /// This boot's id; `None` when it cannot be read (then no reading is ever corrected).
    fn boot_id(&self) -> Option<BootId>;
    /// Whether the system reports the clock synchronised (systemd-timesyncd's flag file).
    fn sync_reported(&self) -> bool;
    /// Whether a sync this watch sees may be told to the rest of the process
    /// ([`process_synced`]); a fake clock must not.
    fn is_system(&self) -> bool {
        false
    }
}

/// The kernel's clocks and files.
#[derive(Debug, Clone)]
pub struct SystemClock {
    pub boot_id_file: PathBuf,
    pub timesync_flag: PathBuf,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            boot_id_file: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            timesync_flag: PathBuf::from("/run/systemd/timesync/synchronized"),
        }
    }
}

impl ClockSource for SystemClock {
    fn wall(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
    fn since_boot(&self) -> Duration {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    }
    fn boot_id(&self) -> Option<BootId> {
        std::fs::read_to_string(&self.boot_id_file)
            .ok()
            .and_then(|t| BootId::parse(&t))
    }
    fn sync_reported(&self) -> bool {
        self.timesync_flag.exists()
    }
    fn is_system(&self) -> bool {
        true
    }
}

/// Set once a [`ClockWatch`] over the [`SystemClock`] saw the clock synchronised (by the flag
/// file or by a step), for the parts that judge time without a watch of their own
/// (certificate validity in the uplink).
static SYNCED_BY_WATCH: AtomicBool = AtomicBool::new(false);

/// Whether this process may trust the wall clock: timesyncd's flag, or a step the daemon's
/// clock watch saw. When false, a certificate judged valid or expired must say so.
pub fn process_synced() -> bool {
    SYNCED_BY_WATCH.load(Ordering::Acquire) || SystemClock::default().sync_reported()
}

fn note_process_synced() {
    SYNCED_BY_WATCH.store(true, Ordering::Release);
}

/// `message` about a certificate judged on the current clock, with the caveat when the
/// clock is not synchronised (`synced` is [`process_synced`] in the daemon).
pub fn judged_on_clock(message: String, synced: bool) -> String {
    if synced {
        message
    } else {
        format!("{message} [{}]", UNSYNCED_CAVEAT)
    }
}

const UNSYNCED_CAVEAT: &str = "the gateway clock is not synchronised (no RTC, no network time yet), so this certificate validity judgement may be wrong; it is made again once time syncs";

/// A clock driven by tests: a boot id, time since boot, the wall clock's offset to it and
/// whether the system reports sync. Clones share the state.
#[derive(Debug, Clone)]
pub struct FakeClock(Arc<Mutex<FakeState>>);

#[derive(Debug)]
struct FakeState {
    boot: Option<BootId>,
    since_boot: Duration,
    /// Wall time at boot (wall = this + since_boot).
    wall_at_boot: OffsetDateTime,
    sync_reported: bool,
}

impl FakeClock {
    /// A boot `boot` whose wall clock read `wall_at_boot` at boot, unsynchronised.
    pub fn new(boot: u128, wall_at_boot: OffsetDateTime) -> Self {
        FakeClock(Arc::new(Mutex::new(FakeState {
            boot: Some(BootId(boot)),
            since_boot: Duration::ZERO,
            wall_at_boot,
            sync_reported: false,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Time passes on both clocks.
    pub fn advance(&self, by: Duration) {
        self.state().since_boot += by;
    }

    /// The wall clock is set to `to` (a step), the boot clock runs on.
    pub fn set_wall(&self, to: OffsetDateTime) {
        let mut s = self.state();
        s.wall_at_boot = to - s.since_boot;
    }

    /// The system starts (or stops) reporting sync.
    pub fn report_sync(&self, synced: bool) {
        self.state().sync_reported = synced;
    }

    /// A new boot: new id, boot clock from zero, wall clock at `wall`, no sync.
    pub fn reboot(&self, boot: u128, wall: OffsetDateTime) {
        let mut s = self.state();
        s.boot = Some(BootId(boot));
        s.since_boot = Duration::ZERO;
        s.wall_at_boot = wall;
        s.sync_reported = false;
    }
}

impl ClockSource for FakeClock {
    fn wall(&self) -> OffsetDateTime {
        let s = self.state();
        s.wall_at_boot + s.since_boot
    }
    fn since_boot(&self) -> Duration {
        self.state().since_boot
    }
    fn boot_id(&self) -> Option<BootId> {
        self.state().boot
    }
    fn sync_reported(&self) -> bool {
        self.state().sync_reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judgement_on_an_unsynchronised_clock_says_so() {
        let m = "client certificate not valid before 2026-01-01T00:00:00Z".to_owned();
        assert_eq!(judged_on_clock(m.clone(), true), m);
        let flagged = judged_on_clock(m.clone(), false);
        assert!(flagged.starts_with(&m) && flagged.contains("clock is not synchronised"));
    }
}

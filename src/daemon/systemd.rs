//! systemd integration for `vitalgate run`: readiness, status, stopping and the watchdog
//! (`sd_notify(3)` through the pure-Rust `sd-notify` crate), and whether stderr is the journal.
//!
//! What it does:
//! - `READY=1` once the outbox is open and the devices are starting (not when the broker
//!   connects: the gateway must buffer while offline, rust-stack.md §7);
//! - a `STATUS=` line every few seconds with the outbox depth, the uplink state and how many
//!   devices deliver data, so `systemctl status vitalgate` answers "is it working?";
//! - `WATCHDOG=1` only while the pipeline really makes progress: the ingest writer thread has
//!   run its once-a-second tick recently, or is alive retrying a failing commit (disk full)
//!   ([`Heartbeat`], fed from inside the writer by a [`CommitHook`]), and the async runtime is
//!   alive (the ping is sent from a task on it). A writer stuck in SQLite, a dead writer
//!   thread or a wedged runtime all stop the pings, and systemd restarts the service after
//!   `WatchdogSec=`; a full disk does not (a restart would not make space, and would drop
//!   what the writer holds);
//! - the status line says `storage=FULL` while the outbox's file system is full, and names the
//!   uplink's technical conditions (`platform_not_subscribed`);
//! - `STOPPING=1` when shutdown begins.
//!
//! What it deliberately does not do: it never links libsystemd (the `systemd` crate is
//! LGPL and needs `libsystemd-dev:arm64` to cross-build), never reads credentials (the key
//! loader reads `$CREDENTIALS_DIRECTORY` itself), and sends nothing when `NOTIFY_SOCKET` is
//! unset (tests, `vitalgate demo`, a shell). The decisions (what the status line says,
//! whether to feed the watchdog) are pure functions, tested without a socket; the socket
//! path itself is tested end to end in `tests/shutdown.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ingest::{CommitHook, HookOutput, StorageAlarm};
use crate::status::Registry;
use crate::store::Record;
use crate::transport::LinkState;
use crate::uplink::UplinkStatus;

/// How often the `STATUS=` line is refreshed when no watchdog asks for more.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Where notifications go. Production uses [`SdNotify`]; tests record what would be sent.
pub trait Notifier: Send + Sync + 'static {
    fn notify(&self, states: &[NotifyState<'_>]);
}

/// `sd_notify(3)` through the `sd-notify` crate, sent from a dedicated thread.
///
/// The crate's `notify` is a blocking datagram send: if the service manager does not read
/// its socket (the queue holds only `net.unix.max_dgram_qlen`, often 10, messages), the send
/// blocks. Called on the async runtime, that would stall a worker and with it device tasks
/// and the ingest ticker. So messages go through a small queue to a `sd-notify` thread, in
/// order; when that queue is full the message is dropped (and counted): STATUS and WATCHDOG
/// are periodic, and a manager that reads nothing will not miss them.
/// A no-op (no thread) when `NOTIFY_SOCKET` is unset.
#[derive(Debug)]
pub struct SdNotify {
    tx: Option<std::sync::mpsc::SyncSender<String>>,
    dropped: AtomicU64,
}

/// Messages waiting for the `sd-notify` thread before new ones are dropped.
const NOTIFY_QUEUE: usize = 16;

impl SdNotify {
    /// Starts the sender thread when `NOTIFY_SOCKET` is set.
    pub fn start() -> std::io::Result<Self> {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Ok(SdNotify {
                tx: None,
                dropped: AtomicU64::new(0),
            });
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(NOTIFY_QUEUE);
        std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for msg in rx {
                    if let Err(e) = sd_notify::notify(&[NotifyState::Custom(&msg)]) {
                        // Not fatal: the service manager may be gone while we stop.
                        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
                    }
                }
            })?;
        Ok(SdNotify {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        })
    }
}

impl Notifier for SdNotify {
    fn notify(&self, states: &[NotifyState<'_>]) {
        let Some(tx) = &self.tx else {
            return;
        };
        let msg: Vec<String> = states.iter().map(ToString::to_string).collect();
        if let Err(std::sync::mpsc::TrySendError::Full(_)) = tx.try_send(msg.join("\n")) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n % 100 == 0 {
                tracing::warn!(
                    dropped = n + 1,
                    "systemd is not reading NOTIFY_SOCKET: status message dropped"
                );
            }
        }
    }
}

/// Tells systemd the gateway is ready (outbox open, devices starting).
pub fn notify_ready(n: &dyn Notifier, status: &str) {
    n.notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the gateway is stopping (SIGTERM received; in-flight work is being committed).
pub fn notify_stopping(n: &dyn Notifier) {
    n.notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: committing what ingest holds, closing the uplink"),
    ]);
}

/// The ingest writer's liveness, shared between the writer thread (through
/// [`Heartbeat::hook`]) and the supervisor task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    origin: Instant,
    /// Milliseconds after `origin` of the last writer tick, plus one (0 = never).
    last_tick: AtomicU64,
    /// The outbox backlog the writer counted at that tick.
    backlog: AtomicU64,
    /// The outbox's file system is full (the writer is retrying).
    storage_full: std::sync::atomic::AtomicBool,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    pub fn new() -> Self {
        Heartbeat {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                last_tick: AtomicU64::new(0),
                backlog: AtomicU64::new(0),
                storage_full: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The commit hook that beats on every writer tick. Add it to the ingest hooks.
    pub fn hook(&self) -> HeartbeatHook {
        HeartbeatHook(self.clone())
    }

    /// Records a tick of the writer, with the backlog it counted.
    pub fn beat(&self, backlog: u64) {
        let ms = u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.inner.backlog.store(backlog, Ordering::Relaxed);
        self.inner
            .last_tick
            .store(ms.saturating_add(1), Ordering::Release);
    }

    /// Records that the writer is alive while it retries a failing commit (no new backlog
    /// count: the last one stands).
    pub fn alive(&self) {
        let ms = u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.inner
            .last_tick
            .store(ms.saturating_add(1), Ordering::Release);
    }

    /// Whether the writer reported the outbox's file system full.
    pub fn storage_full(&self) -> bool {
        self.inner.storage_full.load(Ordering::Acquire)
    }

    /// How long ago the writer last ticked; `None` if it never has.
    pub fn age(&self) -> Option<Duration> {
        match self.inner.last_tick.load(Ordering::Acquire) {
            0 => None,
            t => {
                let at = self.inner.origin + Duration::from_millis(t - 1);
                Some(Instant::now().saturating_duration_since(at))
            }
        }
    }

    /// The outbox backlog at the last tick; `None` before the first.
    pub fn backlog(&self) -> Option<u64> {
        match self.inner.last_tick.load(Ordering::Acquire) {
            0 => None,
            _ => Some(self.inner.backlog.load(Ordering::Relaxed)),
        }
    }
}

/// Runs inside the ingest writer thread: each tick proves the writer loop and its SQLite
/// connection (the tick counts the backlog) are working. Adds nothing to the transaction.
pub struct HeartbeatHook(Heartbeat);

impl CommitHook for HeartbeatHook {
    fn on_batch(&mut self, _accepted: &[Record], _now: OffsetDateTime) -> HookOutput {
        HookOutput::default()
    }
    fn on_tick(&mut self, _now: OffsetDateTime, backlog: u64) -> HookOutput {
        self.0.beat(backlog);
        HookOutput::default()
    }
    fn on_stalled(&mut self, _now: OffsetDateTime) {
        self.0.alive();
    }
    fn on_storage(
        &mut self,
        _now: OffsetDateTime,
        alarm: StorageAlarm,
        active: bool,
    ) -> HookOutput {
        if alarm == StorageAlarm::Full {
            self.0.inner.storage_full.store(active, Ordering::Release);
        }
        HookOutput::default()
    }
    fn on_reject(&mut self, _rejection: &crate::ingest::Rejection) -> HookOutput {
        HookOutput::default()
    }
}

/// Whether to send `WATCHDOG=1` now: only if the writer ticked within `limit`.
/// Before the first tick (start-up) the answer is no: systemd's watchdog only starts
/// counting at `READY=1`, and the first tick comes about a second later.
pub fn should_feed(writer_age: Option<Duration>, limit: Duration) -> bool {
    matches!(writer_age, Some(age) if age <= limit)
}

/// For a `WatchdogSec=` of `watchdog`: how often to ping, and how stale the writer's tick may
/// be for a ping to be sent. Pinging at a quarter of the period leaves room for one missed
/// ping; a writer silent for half the period stops the pings, so systemd acts within
/// 1.5 periods of the writer stopping. The writer ticks every second: the staleness limit
/// never goes below 3 s, so a busy second does not count as a hang.
pub fn watchdog_timing(watchdog: Duration) -> (Duration, Duration) {
    let ping = (watchdog / 4).max(Duration::from_millis(100));
    let limit = (watchdog / 2).max(Duration::from_secs(3));
    (ping, limit)
}

/// The uplink's state in one word for the status line.
fn uplink_word(uplink: Option<&UplinkStatus>) -> &'static str {
    match uplink {
        None => "none",
        Some(s) if s.connected => "up",
        Some(_) => "down",
    }
}

/// The `STATUS=` text: outbox depth (rows awaiting the platform's acknowledgement),
/// uplink state, devices delivering data out of those configured, and the writer's state.
/// Example: `outbox=123 uplink=up devices=3/4`.
pub fn status_line(
    backlog: Option<u64>,
    uplink: Option<&UplinkStatus>,
    devices_connected: usize,
    devices_total: usize,
    writer_stale: bool,
    storage_full: bool,
) -> String {
    let outbox = backlog.map_or_else(|| "?".to_string(), |b| b.to_string());
    let mut line = format!(
        "outbox={outbox} uplink={} devices={devices_connected}/{devices_total}",
        uplink_word(uplink)
    );
    if let Some(in_flight) = uplink.map(|u| u.in_flight).filter(|n| *n > 0) {
        line.push_str(&format!(" in_flight={in_flight}"));
    }
    if storage_full {
        line.push_str(" storage=FULL");
    }
    // The uplink's technical conditions (e.g. `platform_not_subscribed`: the broker accepts
    // but nobody receives), so `systemctl status` says why the outbox is not draining.
    for condition in uplink.map(|u| u.conditions.as_slice()).unwrap_or_default() {
        line.push(' ');
        line.push_str(condition);
    }
    if writer_stale {
        line.push_str(" ingest=STALLED");
    }
    line
}

/// Sends `STATUS=` every few seconds and feeds the watchdog (when `watchdog` is set) while
/// the writer's heartbeat is fresh, until `token` is cancelled. Spawn it after READY.
pub async fn supervise(
    notifier: Arc<dyn Notifier>,
    watchdog: Option<Duration>,
    heartbeat: Heartbeat,
    registry: Registry,
    uplink: Option<watch::Receiver<UplinkStatus>>,
    token: CancellationToken,
) {
    let (every, limit) = match watchdog {
        Some(w) => {
            let (ping, limit) = watchdog_timing(w);
            (ping.min(STATUS_EVERY), limit)
        }
        None => (STATUS_EVERY, watchdog_timing(STATUS_EVERY * 2).1),
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled_logged = false;
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let age = heartbeat.age();
        // Before the first tick the writer is starting, not stalled.
        let fresh = age.is_none() || should_feed(age, limit);
        let devices = registry.snapshot(OffsetDateTime::now_utc());
        let connected = devices
            .iter()
            .filter(|d| d.state == LinkState::Connected)
            .count();
        let up = uplink.as_ref().map(|u| u.borrow().clone());
        let line = status_line(
            heartbeat.backlog(),
            up.as_ref(),
            connected,
            devices.len(),
            !fresh,
            heartbeat.storage_full(),
        );
        if !fresh && !stalled_logged {
            tracing::error!(
                writer_silent_s = age.map(|a| a.as_secs()).unwrap_or_default(),
                "the ingest writer has not ticked: no longer feeding the systemd watchdog"
            );
            stalled_logged = true;
        } else if fresh {
            stalled_logged = false;
        }
        if watchdog.is_some() && should_feed(age, limit) {
            notifier.notify(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
        } else {
            notifier.notify(&[NotifyState::Status(&line)]);
        }
    }
}

/// Whether stderr is connected to the journal: `$JOURNAL_STREAM` (set by systemd as
/// `device:inode` of the stream) matches stderr's own device and inode. A child that
/// inherited the variable but has its stderr redirected elsewhere gets `false`
/// (systemd.exec(5), "JOURNAL_STREAM").
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(expected) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_journal_stream(&v))
    else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => (m.dev(), m.ino()) == expected,
        Err(_) => false,
    }
}

/// Parses `$JOURNAL_STREAM` (`"<device>:<inode>"`, both decimal).
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);
    impl Notifier for Recorder {
        fn notify(&self, states: &[NotifyState<'_>]) {
            let msg: Vec<String> = states.iter().map(ToString::to_string).collect();
            self.0.lock().unwrap().push(msg.join("\n"));
        }
    }

    fn uplink(connected: bool, in_flight: usize) -> UplinkStatus {
        UplinkStatus {
            connected,
            in_flight,
            ..Default::default()
        }
    }

    #[test]
    fn notify_ready_sends_ready_1_with_status() {
        let r = Recorder::default();
        notify_ready(&r, "outbox=0");
        assert_eq!(r.0.lock().unwrap().as_slice(), ["READY=1\nSTATUS=outbox=0"]);
    }

    #[test]
    fn notify_stopping_sends_stopping_1() {
        let r = Recorder::default();
        notify_stopping(&r);
        let sent = r.0.lock().unwrap();
        assert!(sent[0].starts_with("STOPPING=1\n"), "{sent:?}");
    }

    #[test]
    fn heartbeat_before_first_tick_has_no_age_and_no_backlog() {
        let h = Heartbeat::new();
        assert_eq!(h.age(), None);
        assert_eq!(h.backlog(), None);
    }

    #[test]
    fn heartbeat_hook_on_tick_records_backlog_and_adds_nothing() {
        let h = Heartbeat::new();
        let mut hook = h.hook();
        let out = hook.on_tick(OffsetDateTime::UNIX_EPOCH, 42);
        assert!(out.records.is_empty() && out.state.is_empty());
        assert_eq!(h.backlog(), Some(42));
        assert!(h.age().is_some_and(|a| a < Duration::from_secs(5)));
    }

    #[test]
    fn heartbeat_hook_on_batch_does_not_count_as_a_tick() {
        // Only the tick proves the writer's periodic path runs; batches alone may stop
        // arriving when devices are quiet, which is not a hang.
        let h = Heartbeat::new();
        let mut hook = h.hook();
        let _ = hook.on_batch(&[], OffsetDateTime::UNIX_EPOCH);
        assert_eq!(h.age(), None);
    }

    #[test]
    fn should_feed_never_ticked_is_false() {
        assert!(!should_feed(None, Duration::from_secs(15)));
    }

    #[test]
    fn should_feed_recent_tick_is_true() {
        assert!(should_feed(
            Some(Duration::from_secs(1)),
            Duration::from_secs(15)
        ));
    }

    #[test]
    fn should_feed_stale_tick_is_false() {
        assert!(!should_feed(
            Some(Duration::from_secs(16)),
            Duration::from_secs(15)
        ));
    }

    #[test]
    fn watchdog_timing_30s_pings_every_7_5s_and_tolerates_15s() {
        // rust-stack.md §7: ping at most every WATCHDOG_USEC/2; we use /4 for margin.
        assert_eq!(
            watchdog_timing(Duration::from_secs(30)),
            (Duration::from_millis(7500), Duration::from_secs(15))
        );
    }

    #[test]
    fn watchdog_timing_short_period_keeps_3s_staleness_floor() {
        let (ping, limit) = watchdog_timing(Duration::from_secs(2));
        assert_eq!(ping, Duration::from_millis(500));
        assert_eq!(limit, Duration::from_secs(3));
    }

    #[test]
    fn status_line_connected_uplink_shows_depth_up_and_devices() {
        // rust-stack.md §7: STATUS=outbox=123 broker=up ble=2/3
        let s = status_line(Some(123), Some(&uplink(true, 0)), 3, 4, false, false);
        assert_eq!(s, "outbox=123 uplink=up devices=3/4");
    }

    #[test]
    fn status_line_no_uplink_configured_says_none() {
        assert_eq!(
            status_line(Some(0), None, 0, 0, false, false),
            "outbox=0 uplink=none devices=0/0"
        );
    }

    #[test]
    fn status_line_before_first_tick_shows_unknown_depth() {
        assert!(
            status_line(None, Some(&uplink(false, 0)), 1, 1, false, false)
                .starts_with("outbox=? uplink=down")
        );
    }

    #[test]
    fn status_line_in_flight_publishes_are_shown() {
        assert!(
            status_line(Some(5), Some(&uplink(true, 7)), 1, 1, false, false)
                .ends_with(" in_flight=7")
        );
    }

    #[test]
    fn status_line_names_platform_not_subscribed() {
        let mut up = uplink(true, 0);
        up.conditions = vec![crate::uplink::publisher::PLATFORM_NOT_SUBSCRIBED];
        assert_eq!(
            status_line(Some(40), Some(&up), 1, 1, false, false),
            "outbox=40 uplink=up devices=1/1 platform_not_subscribed"
        );
    }

    #[test]
    fn status_line_stalled_writer_is_shouted() {
        assert!(status_line(Some(5), None, 1, 1, true, false).ends_with(" ingest=STALLED"));
    }

    #[test]
    fn status_line_full_storage_is_shouted() {
        assert!(status_line(Some(5), None, 1, 1, false, true).ends_with(" storage=FULL"));
    }

    #[test]
    fn a_writer_retrying_a_full_disk_keeps_the_watchdog_fed_and_says_storage_full() {
        let hb = Heartbeat::new();
        let mut hook = hb.hook();
        let now = OffsetDateTime::now_utc();
        hook.on_storage(now, StorageAlarm::Full, true);
        hook.on_stalled(now);
        assert!(should_feed(hb.age(), Duration::from_secs(3)));
        assert!(hb.storage_full());
        hook.on_storage(now, StorageAlarm::Full, false);
        assert!(!hb.storage_full());
    }

    #[test]
    fn parse_journal_stream_device_and_inode() {
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
    }

    #[test]
    fn parse_journal_stream_garbage_is_none() {
        assert_eq!(parse_journal_stream("8-12345"), None);
        assert_eq!(parse_journal_stream(":"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }

    #[tokio::test]
    async fn supervise_feeds_watchdog_only_while_writer_ticks() {
        let rec = Arc::new(Recorder::default());
        let hb = Heartbeat::new();
        let token = CancellationToken::new();
        let task = tokio::spawn(supervise(
            rec.clone(),
            Some(Duration::from_millis(400)),
            hb.clone(),
            Registry::default(),
            None,
            token.clone(),
        ));
        let sent = || rec.0.lock().unwrap().clone();
        // No tick yet: status only (the first message goes out at once).
        while sent().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The writer ticks: the watchdog is fed (a deadline against hangs, not a timing check).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !sent().iter().any(|m| m.starts_with("WATCHDOG=1")) {
            assert!(std::time::Instant::now() < deadline, "{:?}", sent());
            hb.beat(9);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
        task.await.unwrap();
        let sent = sent();
        assert!(
            !sent[0].contains("WATCHDOG=1"),
            "first message before any tick: {sent:?}"
        );
        assert!(
            sent.iter()
                .any(|m| m.starts_with("WATCHDOG=1\nSTATUS=outbox=9")),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn supervise_without_watchdog_never_sends_watchdog() {
        let rec = Arc::new(Recorder::default());
        let hb = Heartbeat::new();
        hb.beat(1);
        let token = CancellationToken::new();
        let task = tokio::spawn(supervise(
            rec.clone(),
            None,
            hb,
            Registry::default(),
            None,
            token.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        token.cancel();
        task.await.unwrap();
        let sent = rec.0.lock().unwrap().clone();
        assert!(!sent.is_empty());
        assert!(sent.iter().all(|m| !m.contains("WATCHDOG")), "{sent:?}");
    }
}

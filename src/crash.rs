//! Panics: what the gateway was doing when one struck, and what the next start does about it.
//!
//! Release builds abort on a panic (`panic = "abort"`, Cargo.toml: unwinding tables and
//! landing pads were 0.86 MB of the 6 MB Pi binary, issue 18). Nothing is caught; the process
//! stops at once and systemd starts it again (`Restart=always`). What was committed is safe:
//! an abort is a `kill -9` to SQLite. What this module adds is that a bug which strikes the
//! same work again cannot become a crash loop:
//!
//! - Code that handles one row or one device's input says so ([`during`]): a thread-local
//!   names the [`Work`] (the outbox row being rendered, the device whose bytes are being
//!   decoded, the HL7 message being decoded). Setting it costs a few nanoseconds.
//! - The panic hook ([`install_hook`]) writes a breadcrumb, [`BREADCRUMB_FILE`] in the state
//!   dir: when, where in the code, and that work. No message text and no clinical byte: a row
//!   is named by its id, an HL7 message by a digest. No fsync: an abort keeps the page cache.
//!   It then prints the panic, with 10+ digit runs scrubbed (NHS Numbers), and aborts, in
//!   debug builds too, so tests exercise the shipped behaviour.
//! - The next start ([`recover`], once the instance lock is held) adds the breadcrumb to a
//!   short history ([`HISTORY_FILE`], the last [`HISTORY_MAX`] crashes) and acts on it:
//!   - a row that crashed rendering is quarantined ([`RENDER_PANIC_REASON`]): kept, counted
//!     in `status`, audited, never sent: one restart;
//!   - a device whose decoding crashed the gateway twice within [`DEVICE_CRASH_WINDOW`] is
//!     paused (state `paused`, a silent device at the platform) until an hour after the
//!     second crash, then tried again: two restarts per hour at most, and the other devices
//!     run meanwhile;
//!   - an HL7 message that crashed decoding is refused (`AR`/`CR`, naming the bug) when it is
//!     sent again, instead of being decoded: one restart.
//!
//!   Only the running version's crashes count (an upgrade may be the fix), and none dated
//!   after the present (a clock set back must not stretch a pause). A panic in no named work
//!   restarts the gateway each time (HAZ-16); every crash is in the audit log, the journal
//!   and `status` (`crashes`).

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// The last panic's breadcrumb, written by the hook, consumed by the next start.
pub const BREADCRUMB_FILE: &str = "crash-breadcrumb.json";
/// The crashes the gateway remembers, newest last.
pub const HISTORY_FILE: &str = "crash-history.json";
/// How many crashes the history keeps.
pub const HISTORY_MAX: usize = 32;
/// A device that crashed the gateway this often within [`DEVICE_CRASH_WINDOW`] is paused.
pub const DEVICE_CRASHES_TO_PAUSE: usize = 2;
/// How far back device crashes count, and how long a pause lasts after the last one.
pub const DEVICE_CRASH_WINDOW: Duration = Duration::hours(1);
/// Why a row that crashed rendering is quarantined (kept, never sent; `status` counts it).
pub const RENDER_PANIC_REASON: &str = "rendering panicked (a bug): kept, please report";
/// Largest breadcrumb or history file read back (a history of 32 crashes is ~8 KiB).
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// What a thread was doing, as the breadcrumb records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Rendering this outbox row for the uplink.
    RenderingRow(i64),
    /// Decoding this device's input.
    DecodingDevice(String),
    /// Decoding an HL7 message with this digest ([`hl7_digest`]).
    DecodingHl7(String),
}

/// The thread-local form of [`Work`]: a device id is shared, not copied, on every frame.
#[derive(Debug, Clone)]
pub enum Current {
    Row(i64),
    Device(Arc<str>),
    Hl7(String),
}

impl Current {
    fn work(&self) -> Work {
        match self {
            Current::Row(id) => Work::RenderingRow(*id),
            Current::Device(id) => Work::DecodingDevice(id.to_string()),
            Current::Hl7(digest) => Work::DecodingHl7(digest.clone()),
        }
    }
}

thread_local! {
    static WORKING_ON: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Runs `f` with `work` named as what this thread is doing, for the panic hook. `f` must not
/// await (the name belongs to the thread, not the task).
pub fn during<R>(work: Current, f: impl FnOnce() -> R) -> R {
    #[cfg(debug_assertions)]
    let injected = injected_here(&work);
    struct Restore(Option<Current>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            let _ = WORKING_ON.try_with(|w| {
                if let Ok(mut w) = w.try_borrow_mut() {
                    *w = previous;
                }
            });
        }
    }
    let previous = WORKING_ON
        .try_with(|w| w.try_borrow_mut().ok().and_then(|mut w| w.replace(work)))
        .ok()
        .flatten();
    let _restore = Restore(previous);
    #[cfg(debug_assertions)]
    if injected {
        panic!("fault injected by VITALGATE_INJECT_PANIC");
    }
    f()
}

/// Debug builds only (the tests' binary; never the .deb): whether `VITALGATE_INJECT_PANIC`
/// names this work as [`describe`] says it (`rendering outbox row 5`, `decoding device
/// "pulse-ox"`), so tests can make the real daemon panic in it (tests/crash_recovery.rs).
#[cfg(debug_assertions)]
fn injected_here(work: &Current) -> bool {
    static SPEC: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| std::env::var("VITALGATE_INJECT_PANIC").ok())
        .as_deref()
        .is_some_and(|spec| spec == describe(&work.work()))
}

/// What this thread is doing, if it said.
fn current_work() -> Option<Work> {
    WORKING_ON
        .try_with(|w| {
            w.try_borrow()
                .ok()
                .and_then(|w| w.as_ref().map(Current::work))
        })
        .ok()
        .flatten()
}

/// The digest that names an HL7 message in a breadcrumb: the first 16 bytes of its SHA-256,
/// in hex. It identifies the message again without keeping any of it.
pub fn hl7_digest(message: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, message);
    hex::encode(digest.as_ref().get(..16).unwrap_or_default())
}

/// One crash, as the breadcrumb and the history record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crash {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What the panicking thread was doing; `None`: work this module does not name.
    pub work: Option<Work>,
    /// `file:line:column` of the panic.
    pub location: String,
    pub thread: String,
    /// The vitalgate version that crashed: only the running version's crashes pause a device
    /// or refuse a message (an upgrade may be the fix). Empty in a cut-short breadcrumb.
    #[serde(default)]
    pub version: String,
}

/// This build's version, as a [`Crash`] records it.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the hook writes, once [`arm`]ed.
static ARMED_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
/// What the last start recovered ([`recovered`]).
static RECOVERED: Mutex<Option<Arc<Recovery>>> = Mutex::new(None);

/// Installs the process's panic hook: print (scrubbed), write the breadcrumb once [`arm`]ed,
/// abort. Only the daemon's binary installs it; library tests keep Rust's own.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "unknown".into());
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        let work = current_work();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let crash = Crash {
            at: OffsetDateTime::now_utc(),
            work,
            location,
            thread,
            version: VERSION.into(),
        };
        let written = ARMED_DIR
            .try_lock()
            .ok()
            .and_then(|dir| dir.clone())
            .map(|dir| write_breadcrumb(&dir, &crash));
        eprintln!("{}", journal_line(&crash, &message, written));
        std::process::abort();
    }));
}

/// What the hook prints (to the journal): where, what it struck, the panic's message with
/// every run of 10+ digits hidden (an NHS Number in a value's `Debug`), and the breadcrumb.
fn journal_line(crash: &Crash, message: &str, written: Option<std::io::Result<PathBuf>>) -> String {
    let doing = match &crash.work {
        Some(w) => format!(" while {}", describe(w)),
        None => String::new(),
    };
    let breadcrumb = match written {
        Some(Ok(path)) => format!("; breadcrumb {}", path.display()),
        Some(Err(e)) => format!("; the breadcrumb could not be written: {e}"),
        None => String::new(),
    };
    format!(
        "vitalgate: a bug: thread '{}' panicked at {}{doing}: {}{breadcrumb}; stopping now (systemd starts the gateway again; committed readings are safe)",
        crash.thread,
        crash.location,
        crate::redact::scrub(message),
    )
}

fn write_breadcrumb(dir: &Path, crash: &Crash) -> std::io::Result<PathBuf> {
    let path = dir.join(BREADCRUMB_FILE);
    let bytes = serde_json::to_vec(crash).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)?;
    f.write_all(&bytes)?;
    Ok(path)
}

/// Says, in a log line or audit entry, what the work was.
pub fn describe(work: &Work) -> String {
    match work {
        Work::RenderingRow(id) => format!("rendering outbox row {id}"),
        Work::DecodingDevice(id) => format!("decoding device {id:?}"),
        Work::DecodingHl7(digest) => format!("decoding HL7 message {digest}"),
    }
}

/// A device kept from running after its decoding crashed the gateway
/// ([`Recovery::device_paused_until`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Pause {
    /// Why, as `status` and the journal show it.
    pub reason: String,
    /// How long from now until it is tried again.
    pub wait: std::time::Duration,
}

/// Whether `device` is paused now by what the last start recovered; said in the journal when
/// it is. Device transports (streams, serial ports, BLE) ask before they start it.
pub fn device_pause(device: &str) -> Option<Pause> {
    let now = OffsetDateTime::now_utc();
    let until = recovered().device_paused_until(device, now)?;
    let reason = format!(
        "paused until {}: decoding its input crashed the gateway {} times within {} min (a bug: please report it; the journal says where)",
        crate::status::rfc3339(until),
        DEVICE_CRASHES_TO_PAUSE,
        DEVICE_CRASH_WINDOW.whole_minutes(),
    );
    tracing::error!(device, %reason, "device paused");
    Some(Pause {
        reason,
        wait: std::time::Duration::try_from(until - now).unwrap_or_default(),
    })
}

/// Runs `f` (a decoder call) named as decoding `device`'s input.
pub fn decoding<R>(device: &str, f: impl FnOnce() -> R) -> R {
    during(Current::Device(Arc::from(device)), f)
}

/// Makes the hook write breadcrumbs into `state_dir`, and `recovery` what [`recovered`] says.
pub fn arm(state_dir: &Path, recovery: Recovery) {
    *RECOVERED.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(recovery));
    *ARMED_DIR.lock().unwrap_or_else(PoisonError::into_inner) = Some(state_dir.to_path_buf());
}

/// What the last [`arm`] recovered (empty before it).
pub fn recovered() -> Arc<Recovery> {
    RECOVERED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_default()
}

/// What a start found of earlier crashes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// The crash that ended the previous run, if it did.
    pub last: Option<Crash>,
    /// The remembered crashes, `last` included, oldest first.
    pub history: Vec<Crash>,
    /// What could not be read or written (the start goes on; said in the journal and audit).
    pub problems: Vec<String>,
}

impl Recovery {
    /// The row the previous run crashed rendering: to be quarantined, not rendered again.
    pub fn row_to_quarantine(&self) -> Option<i64> {
        match self.last.as_ref()?.work.as_ref()? {
            Work::RenderingRow(id) => Some(*id),
            _ => None,
        }
    }

    /// Until when `device` stays paused: it crashed the gateway [`DEVICE_CRASHES_TO_PAUSE`]
    /// times within [`DEVICE_CRASH_WINDOW`] of the last one, which was less than that ago.
    ///
    /// Only this version's crashes count, and none dated after `now`: a clock that was wrong
    /// then (set back by NTP since) must not pause a device for longer than the window.
    pub fn device_paused_until(&self, device: &str, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let crashes: Vec<OffsetDateTime> = self
            .actionable()
            .filter(|c| matches!(&c.work, Some(Work::DecodingDevice(d)) if d == device))
            .map(|c| c.at)
            .filter(|&at| at <= now)
            .collect();
        let latest = *crashes.iter().max()?;
        let recent = crashes
            .iter()
            .filter(|&&at| at > latest - DEVICE_CRASH_WINDOW)
            .count();
        let until = latest + DEVICE_CRASH_WINDOW;
        (recent >= DEVICE_CRASHES_TO_PAUSE && until > now).then_some(until)
    }

    /// Whether an HL7 message with this digest crashed decoding before.
    pub fn hl7_message_crashed(&self, digest: &str) -> bool {
        self.actionable()
            .any(|c| matches!(&c.work, Some(Work::DecodingHl7(d)) if d == digest))
    }

    /// The crashes this version had: what pauses and refusals are judged on.
    fn actionable(&self) -> impl Iterator<Item = &Crash> {
        self.history.iter().filter(|c| c.version == VERSION)
    }

    /// Crashes remembered since `since`.
    pub fn crashes_since(&self, since: OffsetDateTime) -> usize {
        self.history.iter().filter(|c| c.at >= since).count()
    }
}

/// Reads the breadcrumb the last run left, if any, adds it to the history and removes it.
/// Never fails: what cannot be read is named in [`Recovery::problems`] and the start goes on.
/// Called once the instance lock is held (a second instance must not consume it).
pub fn recover(state_dir: &Path) -> Recovery {
    let mut problems = Vec::new();
    let history_path = state_dir.join(HISTORY_FILE);
    let mut history: Vec<Crash> = match read_json(&history_path, "crash history") {
        Ok(h) => h.unwrap_or_default(),
        Err(e) => {
            problems.push(format!("{e}; starting a new history"));
            Vec::new()
        }
    };
    let breadcrumb_path = state_dir.join(BREADCRUMB_FILE);
    let last = match read_json::<Crash>(&breadcrumb_path, "crash breadcrumb") {
        Ok(c) => c,
        Err(e) => {
            problems.push(e);
            // A regular file the hook began is a crash even if unreadable (cut short by power
            // loss); anything else there is not the hook's (said above, left for a person).
            let meta = std::fs::symlink_metadata(&breadcrumb_path).ok();
            let Some(meta) = meta.filter(|m| m.is_file()) else {
                return Recovery {
                    last: None,
                    history,
                    problems,
                };
            };
            let at = meta
                .modified()
                .map(OffsetDateTime::from)
                .unwrap_or_else(|_| OffsetDateTime::now_utc());
            Some(Crash {
                at,
                work: None,
                location: "unknown (unreadable breadcrumb)".into(),
                thread: "unknown".into(),
                version: String::new(),
            })
        }
    };
    if let Some(crash) = &last {
        history.push(crash.clone());
        let excess = history.len().saturating_sub(HISTORY_MAX);
        history.drain(..excess);
        let written = serde_json::to_vec_pretty(&history)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::fleet::agent::write_atomic(&history_path, &bytes));
        match written {
            // Only once the history holds it: otherwise the next start reads it again.
            Ok(()) => {
                if let Err(e) = std::fs::remove_file(&breadcrumb_path) {
                    problems.push(format!("{}: cannot remove: {e}", breadcrumb_path.display()));
                }
            }
            Err(e) => problems.push(format!(
                "{}: cannot write the crash history: {e}; the breadcrumb is kept for the next start",
                history_path.display()
            )),
        }
    }
    Recovery {
        last,
        history,
        problems,
    }
}

/// The `crashes` part of `vitalgate status`: how many panics the gateway restarted after in the
/// last 24 h, and the latest (a breadcrumb not yet recovered included). Reads only.
pub fn status_json(state_dir: &Path, now: OffsetDateTime) -> serde_json::Value {
    let mut crashes: Vec<Crash> = read_json(&state_dir.join(HISTORY_FILE), "crash history")
        .ok()
        .flatten()
        .unwrap_or_default();
    if let Ok(Some(pending)) =
        read_json::<Crash>(&state_dir.join(BREADCRUMB_FILE), "crash breadcrumb")
    {
        crashes.push(pending);
    }
    let day = crashes
        .iter()
        .filter(|c| c.at >= now - Duration::hours(24))
        .count();
    let last = crashes.iter().max_by_key(|c| c.at).map(|c| {
        serde_json::json!({
            "at": crate::status::rfc3339(c.at),
            "location": c.location,
            "work": c.work.as_ref().map(describe),
        })
    });
    serde_json::json!({ "last_24h": day, "last": last })
}

/// A JSON file of the state dir: `Ok(None)` when it is not there.
fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<Option<T>, String> {
    let kind = crate::secure_file::FileKind {
        what,
        max_bytes: MAX_FILE_BYTES,
        secrecy: crate::secure_file::Secrecy::Public,
    };
    let bytes = match crate::secure_file::read(path, &kind) {
        Ok(b) => b,
        Err(crate::secure_file::FileError::Missing { .. }) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{}: the {what} is not readable: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn crash(at: OffsetDateTime, work: Option<Work>) -> Crash {
        Crash {
            at,
            work,
            location: "src/x.rs:1:1".into(),
            thread: "t".into(),
            version: VERSION.into(),
        }
    }

    fn device(id: &str) -> Option<Work> {
        Some(Work::DecodingDevice(id.into()))
    }

    #[test]
    fn during_names_the_work_and_restores_what_was_there() {
        assert_eq!(current_work(), None);
        during(Current::Device("outer".into()), || {
            during(Current::Row(7), || {
                assert_eq!(current_work(), Some(Work::RenderingRow(7)));
            });
            assert_eq!(current_work(), device("outer"));
        });
        assert_eq!(current_work(), None);
    }

    #[test]
    fn during_restores_the_work_when_the_closure_unwinds() {
        let unwound = std::panic::catch_unwind(|| during(Current::Row(1), || panic!("a bug")));
        assert!(unwound.is_err());
        assert_eq!(current_work(), None);
    }

    #[test]
    fn one_device_crash_does_not_pause_it() {
        let at = datetime!(2026-12-05 10:00 UTC);
        let r = Recovery {
            history: vec![crash(at, device("a"))],
            ..Recovery::default()
        };
        assert_eq!(r.device_paused_until("a", at + Duration::minutes(1)), None);
    }

    #[test]
    fn two_device_crashes_within_the_window_pause_it_for_an_hour_after_the_second() {
        let first = datetime!(2026-12-05 10:00 UTC);
        let second = first + Duration::minutes(59);
        let r = Recovery {
            history: vec![crash(first, device("a")), crash(second, device("a"))],
            ..Recovery::default()
        };
        let until = second + DEVICE_CRASH_WINDOW;
        assert_eq!(r.device_paused_until("a", second), Some(until));
        assert_eq!(r.device_paused_until("b", second), None, "only that device");
        assert_eq!(
            r.device_paused_until("a", until),
            None,
            "tried again after the hour"
        );
    }

    #[test]
    fn two_device_crashes_further_apart_than_the_window_do_not_pause_it() {
        let first = datetime!(2026-12-05 10:00 UTC);
        let second = first + DEVICE_CRASH_WINDOW + Duration::seconds(1);
        let r = Recovery {
            history: vec![crash(first, device("a")), crash(second, device("a"))],
            ..Recovery::default()
        };
        assert_eq!(r.device_paused_until("a", second), None);
    }

    #[test]
    fn crashes_dated_after_now_do_not_pause_a_device() {
        let now = datetime!(2026-12-05 10:00 UTC);
        // Recorded while the clock was a year ahead; NTP has set it right since.
        let ahead = now + Duration::days(365);
        let r = Recovery {
            history: vec![crash(ahead, device("a")), crash(ahead, device("a"))],
            ..Recovery::default()
        };
        assert_eq!(r.device_paused_until("a", now), None);
    }

    #[test]
    fn another_versions_crashes_neither_pause_nor_refuse() {
        let at = datetime!(2026-12-05 10:00 UTC);
        let old = |work| Crash {
            version: "0.0.1".into(),
            ..crash(at, work)
        };
        let digest = hl7_digest(b"MSH|x");
        let r = Recovery {
            history: vec![
                old(device("a")),
                old(device("a")),
                old(Some(Work::DecodingHl7(digest.clone()))),
            ],
            ..Recovery::default()
        };
        assert_eq!(r.device_paused_until("a", at), None);
        assert!(!r.hl7_message_crashed(&digest));
    }

    #[test]
    fn only_the_last_crash_quarantines_a_row() {
        let at = datetime!(2026-12-05 10:00 UTC);
        let rendering = crash(at, Some(Work::RenderingRow(42)));
        let r = Recovery {
            last: Some(rendering.clone()),
            history: vec![rendering.clone()],
            ..Recovery::default()
        };
        assert_eq!(r.row_to_quarantine(), Some(42));
        let older = Recovery {
            last: Some(crash(at, device("a"))),
            history: vec![rendering, crash(at, device("a"))],
            ..Recovery::default()
        };
        assert_eq!(
            older.row_to_quarantine(),
            None,
            "already quarantined by the start after it"
        );
    }

    #[test]
    fn an_hl7_message_is_recognised_by_its_digest_only() {
        let msg = b"MSH|^~\\&|MON|WARD|||20261205100000||ORU^R01|1|P|2.6\r";
        let digest = hl7_digest(msg);
        assert_eq!(digest.len(), 32);
        let r = Recovery {
            history: vec![crash(
                OffsetDateTime::now_utc(),
                Some(Work::DecodingHl7(digest.clone())),
            )],
            ..Recovery::default()
        };
        assert!(r.hl7_message_crashed(&digest));
        assert!(!r.hl7_message_crashed(&hl7_digest(b"MSH|other")));
    }

    #[test]
    fn recover_without_a_breadcrumb_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = recover(dir.path());
        assert_eq!(r, Recovery::default());
        assert!(!dir.path().join(HISTORY_FILE).exists());
    }

    #[test]
    fn recover_moves_the_breadcrumb_into_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let c = crash(datetime!(2026-12-05 10:00 UTC), Some(Work::RenderingRow(3)));
        write_breadcrumb(dir.path(), &c).unwrap();
        let r = recover(dir.path());
        assert_eq!(
            (r.last.as_ref(), r.history.as_slice()),
            (Some(&c), std::slice::from_ref(&c))
        );
        assert!(!dir.path().join(BREADCRUMB_FILE).exists());
        let again = recover(dir.path());
        assert_eq!((again.last, again.history), (None, vec![c]), "counted once");
    }

    #[test]
    fn the_history_keeps_only_the_newest_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let start = datetime!(2026-12-05 10:00 UTC);
        for i in 0..(HISTORY_MAX as i64 + 5) {
            write_breadcrumb(dir.path(), &crash(start + Duration::seconds(i), None)).unwrap();
            recover(dir.path());
        }
        let history = recover(dir.path()).history;
        assert_eq!(history.len(), HISTORY_MAX);
        assert_eq!(
            history.last().unwrap().at,
            start + Duration::seconds(HISTORY_MAX as i64 + 4)
        );
    }

    #[test]
    fn an_unreadable_breadcrumb_still_counts_as_a_crash_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(BREADCRUMB_FILE), b"{\"at\": \"2026-12-0").unwrap();
        let r = recover(dir.path());
        let last = r.last.expect("a crash");
        assert_eq!(last.work, None);
        assert!(
            r.problems[0].contains("crash breadcrumb"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_breadcrumb_that_is_a_directory_is_named_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(BREADCRUMB_FILE)).unwrap();
        let r = recover(dir.path());
        assert!(
            r.problems[0].contains("not a regular file"),
            "{:?}",
            r.problems
        );
        assert_eq!(r.last, None, "not the hook's: no crash counted");
    }

    #[test]
    fn a_breadcrumb_that_is_a_fifo_is_named_without_blocking_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(BREADCRUMB_FILE);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let r = recover(dir.path());
        assert!(r.problems[0].contains("FIFO"), "{:?}", r.problems);
        assert_eq!(r.last, None, "not the hook's: no crash counted");
    }

    #[test]
    fn a_corrupt_history_is_replaced_and_said() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(HISTORY_FILE), b"not json").unwrap();
        let c = crash(datetime!(2026-12-05 10:00 UTC), None);
        write_breadcrumb(dir.path(), &c).unwrap();
        let r = recover(dir.path());
        assert_eq!(r.history, vec![c]);
        assert!(
            r.problems[0].contains("starting a new history"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn status_counts_the_last_days_crashes_and_names_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let now = datetime!(2026-12-05 10:00 UTC);
        write_breadcrumb(dir.path(), &crash(now - Duration::hours(30), None)).unwrap();
        recover(dir.path());
        write_breadcrumb(dir.path(), &crash(now - Duration::hours(2), device("a"))).unwrap();
        recover(dir.path());
        // Not recovered yet: the daemon has not started again.
        write_breadcrumb(
            dir.path(),
            &crash(now - Duration::minutes(1), Some(Work::RenderingRow(4))),
        )
        .unwrap();
        let s = status_json(dir.path(), now);
        assert_eq!(s["last_24h"], 2);
        assert_eq!(s["last"]["work"], "rendering outbox row 4");
        assert!(
            dir.path().join(BREADCRUMB_FILE).exists(),
            "status only reads"
        );
    }

    #[test]
    fn status_without_crashes_says_none() {
        let dir = tempfile::tempdir().unwrap();
        let s = status_json(dir.path(), OffsetDateTime::now_utc());
        assert_eq!(s, serde_json::json!({"last_24h": 0, "last": null}));
    }

    #[test]
    fn the_journal_line_hides_an_nhs_number_in_the_panic_message() {
        let c = crash(datetime!(2026-12-05 10:00 UTC), device("a"));
        let line = journal_line(&c, "bad frame for 943 476 5919: 72", None);
        assert!(!line.contains("5919"), "{line}");
        assert!(line.contains("while decoding device \"a\""), "{line}");
        assert!(line.contains(crate::redact::HIDDEN_DIGITS), "{line}");
    }

    #[test]
    fn the_journal_line_says_when_the_breadcrumb_could_not_be_written() {
        let c = crash(datetime!(2026-12-05 10:00 UTC), None);
        let full = std::io::Error::from_raw_os_error(28);
        let line = journal_line(&c, "x", Some(Err(full)));
        assert!(
            line.contains("the breadcrumb could not be written"),
            "{line}"
        );
    }

    #[test]
    fn the_breadcrumb_is_private_and_holds_no_message_text() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = crash(datetime!(2026-12-05 10:00 UTC), Some(Work::RenderingRow(9)));
        let path = write_breadcrumb(dir.path(), &c).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let fields: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut keys: Vec<_> = fields.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["at", "location", "thread", "version", "work"]);
    }
}

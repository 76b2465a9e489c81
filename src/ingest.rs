//! Ingest: the only writer of readings. Validates, stamps, and commits with group commit.
//!
//! Device tasks hand frames (the readings one device sent together) to an [`IngestHandle`].
//! One writer thread owns the outbox's write connection and commits whatever has arrived in
//! one transaction: while a commit's fsync runs, new frames queue up and go into the next, so
//! batches grow with load and an idle gateway commits a lone reading at once. A batch closes
//! when the queue is empty, at `max_batch` readings, or when its first reading has waited
//! `max_batch_wait` (the worst-case wait before a reading's transaction starts).
//!
//! A reading is "received" only once its transaction is committed: [`IngestHandle::submit_and_wait`]
//! returns its row ids then, and the writer logs each committed id range (`committed` event).
//!
//! A failed commit (disk full, I/O error) loses nothing: the batch stays in memory and is
//! retried with backoff (at most [`RETRY_MAX`] apart, so ingest resumes by itself within
//! seconds of space returning) while the bounded queue pushes back on the devices. While it
//! retries, the writer proves it is alive to the hooks ([`CommitHook::on_stalled`], which
//! feeds the systemd watchdog), and a full file system raises the `storage_full` technical
//! alarm ([`CommitHook::on_storage`]): annunciated at once, committed with the batch once
//! space returns, cleared then. When the daemon stops ([`IngestCounters::begin_shutdown`])
//! the writer makes one last attempt per batch instead of waiting, and logs what it could
//! not store.
//!
//! A permanent error (a constraint, the schema, a record that cannot be encoded) is never
//! retried for ever: after one retry (the outbox re-reads its id high-water mark first) the
//! batch is logged as not stored, counted, and raises the `storage_error` technical alarm;
//! the writer goes on with the next batch.
//! Invalid readings (implausible values, wrong units) are rejected here, counted and logged
//! (rate-limited), never stored as valid.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::reading::{Metric, Reading};
use crate::store::outbox::DeviceStateUpdate;
use crate::store::{Outbox, ReadingRecord, Record, StoreError};

mod extras;
pub use extras::WriterExtras;

/// Frames waiting for the writer. Bounded: a slow disk pushes back on the devices instead of
/// growing memory without limit.
pub const QUEUE_CAPACITY: usize = 4096;

/// The most messages the writer takes from the queue at once ([`Writer::next_now`]).
const RECEIVE_AT_ONCE: usize = 256;

/// How long the writer waits, once per batch, for more frames when the queue runs empty.
const LINGER: Duration = Duration::from_millis(2);

/// The rhythm the writer expects frames to keep: monitors and simulated devices send once a
/// second (or at a rate dividing it), each at its own fixed phase.
const RHYTHM: Duration = Duration::from_secs(1);

/// Longest wait between two attempts at a failing commit.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// First wait after a failed commit; doubled after each failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// While retrying, the writer reports itself alive ([`CommitHook::on_stalled`]) this often.
const ALIVE_EVERY: Duration = Duration::from_millis(100);

/// One frame from one device.
///
/// `Debug` is written by hand: it masks the NHS Number (see [`crate::redact::MaskedNhs`]).
pub struct Frame {
    pub device_id: Arc<str>,
    pub patient_id: Arc<str>,
    pub nhs_number: Option<Arc<str>>,
    pub readings: Vec<Reading>,
    pub received_at: OffsetDateTime,
    pub clock_synced: bool,
    /// Device state to commit with this frame's readings (e.g. the file offset after it).
    pub cursor: Option<(String, String)>,
    /// Told the row ids once committed (or why not).
    pub done: Option<oneshot::Sender<Result<Vec<i64>, String>>>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("device_id", &self.device_id)
            .field("patient_id", &self.patient_id)
            .field(
                "nhs_number",
                &crate::redact::MaskedNhs(self.nhs_number.as_deref()),
            )
            .field("readings", &self.readings)
            .field("received_at", &self.received_at)
            .field("clock_synced", &self.clock_synced)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

/// Counters for status and tests; updated by the writer.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub frames_received: AtomicU64,
    pub readings_committed: AtomicU64,
    pub readings_rejected: AtomicU64,
    pub transactions: AtomicU64,
    pub commit_failures: AtomicU64,
    /// The outbox's file system is full; commits are being retried.
    pub storage_full: AtomicBool,
    /// Batches given up on a permanent error (never retried for ever).
    pub permanent_failures: AtomicU64,
    /// Readings that were not stored (permanent error, or shutdown during a failing commit).
    pub readings_not_stored: AtomicU64,
    /// Set when the daemon stops: a failing commit is not waited for any more.
    shutting_down: AtomicBool,
}

impl IngestCounters {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "frames_received": self.frames_received.load(Ordering::Relaxed),
            "readings_committed": self.readings_committed.load(Ordering::Relaxed),
            "readings_rejected": self.readings_rejected.load(Ordering::Relaxed),
            "transactions": self.transactions.load(Ordering::Relaxed),
            "commit_failures": self.commit_failures.load(Ordering::Relaxed),
            "storage_full": self.storage_full.load(Ordering::Relaxed),
            "permanent_failures": self.permanent_failures.load(Ordering::Relaxed),
            "readings_not_stored": self.readings_not_stored.load(Ordering::Relaxed),
        })
    }

    /// Tells the writer the daemon is stopping: a failing commit gets one last attempt, not
    /// a wait (SIGTERM must finish within the unit's stop timeout, disk full or not).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// A storage condition reported to [`CommitHook::on_storage`] (raised, then cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageAlarm {
    /// The outbox's file system is full: nothing new can be stored until space returns.
    Full,
    /// A batch was given up on a permanent error; cleared by the next successful commit.
    PermanentFailure,
    /// The outbox is near `store.max_bytes` with only undelivered rows left (`store::cap`).
    Cap,
}

/// A rejected reading, as reported to the `on_reject` hook (technical alarms).
#[derive(Debug, Clone)]
pub struct Rejection {
    pub device_id: Arc<str>,
    pub patient_id: Arc<str>,
    pub metric: Metric,
    pub reason: String,
    pub at: OffsetDateTime,
}

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommit {
    pub max_batch: usize,
    pub max_wait: Duration,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            max_batch: 2000,
            max_wait: Duration::from_millis(50),
        }
    }
}

/// What a hook adds to a transaction.
#[derive(Debug, Default)]
pub struct HookOutput {
    /// Extra records (alert events, derived scores).
    pub records: Vec<Record>,
    /// Device state to persist (e.g. the alert engine's state).
    pub state: Vec<DeviceStateUpdate>,
}

impl HookOutput {
    pub fn records(records: Vec<Record>) -> Self {
        HookOutput {
            records,
            state: Vec::new(),
        }
    }

    pub fn extend(&mut self, other: HookOutput) {
        self.records.extend(other.records);
        self.state.extend(other.state);
    }
}

/// Extra work done inside each commit's transaction, before it is sealed: the alert engine
/// plugs in here so alert events commit atomically with the readings that caused them.
///
/// Every method is required, with no default body: a hook that wraps another (`Hooks`,
/// `live::Tap`) must forward each call, and a default would let a wrapper swallow one
/// silently (the `storage_full` alarm was once lost that way). Leaves say "nothing" out loud.
pub trait CommitHook: Send + 'static {
    /// Called with the accepted readings of a batch (in order); returns what to add to the
    /// same transaction.
    fn on_batch(&mut self, accepted: &[Record], now: OffsetDateTime) -> HookOutput;
    /// Called for each rejected reading.
    fn on_reject(&mut self, rejection: &Rejection) -> HookOutput;
    /// Called about once a second (see [`IngestHandle::tick`]), for time-based rules.
    /// `backlog` is the outbox's undelivered row count.
    fn on_tick(&mut self, now: OffsetDateTime, backlog: u64) -> HookOutput;
    /// Called when a storage condition is raised (`active`) or cleared. What it returns is
    /// committed as soon as the outbox can be written (for `Full`: with the held batch,
    /// once space returns), so the alarm reaches the platform too.
    fn on_storage(&mut self, now: OffsetDateTime, alarm: StorageAlarm, active: bool) -> HookOutput;
    /// Called every 100 ms or so while a failing commit is retried: the writer is alive
    /// and working on it (the systemd watchdog is fed from here then; see `daemon::systemd`).
    fn on_stalled(&mut self, now: OffsetDateTime);
}

/// No extra work.
pub struct NoHook;
impl CommitHook for NoHook {
    fn on_batch(&mut self, _accepted: &[Record], _now: OffsetDateTime) -> HookOutput {
        HookOutput::default()
    }
    fn on_reject(&mut self, _rejection: &Rejection) -> HookOutput {
        HookOutput::default()
    }
    fn on_tick(&mut self, _now: OffsetDateTime, _backlog: u64) -> HookOutput {
        HookOutput::default()
    }
    fn on_storage(
        &mut self,
        _now: OffsetDateTime,
        _alarm: StorageAlarm,
        _active: bool,
    ) -> HookOutput {
        HookOutput::default()
    }
    fn on_stalled(&mut self, _now: OffsetDateTime) {}
}

/// What the writer receives.
#[derive(Debug)]
enum Message {
    Frame(Frame),
    /// Run the hooks' time-based rules.
    Tick,
}

/// The device tasks' way in. Cheap to clone. When every handle is dropped, the writer
/// commits what it holds and stops.
#[derive(Clone)]
pub struct IngestHandle {
    tx: mpsc::Sender<Message>,
    pub counters: Arc<IngestCounters>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest has stopped; the reading was not stored")]
    Closed,
    #[error("commit failed: {0}")]
    Commit(String),
}

impl IngestHandle {
    /// Queues a frame; returns once queued (waits if the queue is full).
    pub async fn submit(&self, mut frame: Frame) -> Result<(), IngestError> {
        frame.done = None;
        self.tx
            .send(Message::Frame(frame))
            .await
            .map_err(|_| IngestError::Closed)
    }

    /// Asks the writer to run the time-based rules (device silent, alarms that persist).
    /// Never waits: when the queue is full (the writer is retrying a commit) the tick is
    /// skipped, as the next one will do.
    pub async fn tick(&self) -> Result<(), IngestError> {
        match self.tx.try_send(Message::Tick) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(IngestError::Closed),
        }
    }

    /// Queues a frame and waits until it is committed; returns its row ids.
    pub async fn submit_and_wait(&self, mut frame: Frame) -> Result<Vec<i64>, IngestError> {
        let (tx, rx) = oneshot::channel();
        frame.done = Some(tx);
        self.tx
            .send(Message::Frame(frame))
            .await
            .map_err(|_| IngestError::Closed)?;
        rx.await
            .map_err(|_| IngestError::Closed)?
            .map_err(IngestError::Commit)
    }
}

/// Starts the writer thread. It runs until every [`IngestHandle`] is dropped, then commits
/// what it holds and returns the outbox (so shutdown can close it cleanly).
pub fn start(
    outbox: Outbox,
    policy: GroupCommit,
    committed: Arc<Notify>,
    hook: Box<dyn CommitHook>,
) -> std::io::Result<(IngestHandle, std::thread::JoinHandle<Outbox>)> {
    start_with(outbox, policy, committed, hook, WriterExtras::default())
}

/// [`start`] with the daemon's extras: clock stamps and the byte cap (`ingest/extras.rs`).
pub fn start_with(
    outbox: Outbox,
    policy: GroupCommit,
    committed: Arc<Notify>,
    hook: Box<dyn CommitHook>,
    extras: WriterExtras,
) -> std::io::Result<(IngestHandle, std::thread::JoinHandle<Outbox>)> {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let counters = Arc::new(IngestCounters::default());
    let writer = Writer {
        outbox,
        rx,
        policy,
        arrivals: std::collections::VecDeque::new(),
        inbox: Vec::with_capacity(RECEIVE_AT_ONCE),
        inbox_next: 0,
        taken_at: Instant::now(),
        committed,
        hook,
        counters: counters.clone(),
        rejected_logged: RateLimit::new(Duration::from_secs(10)),
        failure_logged: RateLimit::new(Duration::from_secs(30)),
        permanent_alarm: false,
        extras: extras::ExtrasState::new(extras),
    };
    let join = std::thread::Builder::new()
        .name("ingest-writer".into())
        .spawn(move || writer.run())?;
    Ok((IngestHandle { tx, counters }, join))
}

struct Writer {
    outbox: Outbox,
    rx: mpsc::Receiver<Message>,
    policy: GroupCommit,
    /// When frames were taken from the queue over the last [`RHYTHM`] and `max_wait`.
    arrivals: std::collections::VecDeque<Instant>,
    /// Messages taken from the queue, in order: those before `inbox_next` are the batch
    /// being gathered (its frames and the ticks among them), the rest were taken with them
    /// and wait for the next batch ([`Writer::next_now`], [`Writer::commit_taken`]).
    inbox: Vec<Message>,
    inbox_next: usize,
    /// When the writer last took messages from the queue (or found it empty).
    taken_at: Instant,
    committed: Arc<Notify>,
    hook: Box<dyn CommitHook>,
    counters: Arc<IngestCounters>,
    rejected_logged: RateLimit,
    failure_logged: RateLimit,
    /// The `storage_error` alarm is raised (cleared by the next committed batch).
    permanent_alarm: bool,
    extras: extras::ExtrasState,
}

impl Writer {
    fn run(mut self) -> Outbox {
        loop {
            // A batch is gathered where the takes put its messages (`inbox[..inbox_next]`),
            // and the commit moves each frame out once: moved from the inbox to a batch
            // vector and then to the commit, a frame was copied twice more, and the batch
            // vector reallocated as it grew (issue 18, acceptance 4).
            if self.next_now().is_none() {
                let Some(message) = self.rx.blocking_recv() else {
                    break;
                };
                self.inbox.push(message);
                self.inbox_next = 1;
            }
            let mut readings = match &self.inbox[0] {
                Message::Frame(first) => first.readings.len(),
                Message::Tick => {
                    self.inbox.remove(0);
                    self.inbox_next = 0;
                    self.tick();
                    continue;
                }
            };
            let started = Instant::now();
            self.taken_at = started;
            self.arrived(started);
            let mut frames = 1;
            let mut tick = false;
            // Frames in the batch when the writer last lingered (None: not yet).
            let mut at_linger: Option<usize> = None;
            // The batch closes at `max_wait` after its first frame (one comparison per frame
            // against a deadline computed once: the writer runs this for every reading).
            let deadline = started + self.policy.max_wait;
            while readings < self.policy.max_batch && self.taken_at < deadline {
                match self.next_now() {
                    Some(at) => match &self.inbox[at] {
                        Message::Frame(frame) => {
                            readings += frame.readings.len();
                            frames += 1;
                            self.arrived(self.taken_at);
                        }
                        Message::Tick => tick = true,
                    },
                    None if self.expected_before(deadline).is_some() => {
                        // A device that sent a second ago, a little after this batch's
                        // first frame, is due again within `max_wait`: wait for it, so
                        // devices out of step by a few tens of milliseconds still share one
                        // transaction a second (a 1 Hz ward's commits halve; issue 18).
                        let due = self.expected_before(deadline);
                        let until = due.map_or(started, |t| t + LINGER);
                        let left = until.min(deadline);
                        std::thread::sleep(left.saturating_duration_since(Instant::now()));
                        // A device that stopped is waited for once: its due time has passed.
                        at_linger = Some(frames);
                    }
                    None if at_linger != Some(frames) => {
                        // Devices on the same clock (1 Hz monitors started together) send
                        // within a millisecond or two of each other, one after another:
                        // waiting while they keep coming (never past `max_wait` from the
                        // first) puts them in one transaction instead of several, each of
                        // which writes its own pages and sync to the WAL (SD-card wear;
                        // issue 18). A lone frame waits one linger.
                        at_linger = Some(frames);
                        let left = self.policy.max_wait.saturating_sub(started.elapsed());
                        std::thread::sleep(LINGER.min(left));
                    }
                    None => break,
                }
            }
            self.commit_taken(frames);
            if tick {
                self.tick();
            }
        }
        self.outbox
    }

    /// The index in `inbox` of the next message already queued, without waiting; the
    /// message joins the batch being gathered. Takes up to [`RECEIVE_AT_ONCE`] at a time:
    /// each take from the queue gives its slots back to the devices and may wake one, and
    /// doing that per frame cost the writer thread about a twentieth of its time (issue 18,
    /// acceptance 4). A take appends to the inbox, after the batch gathered so far.
    /// [`Writer::taken_at`] is read once per take, not per frame.
    fn next_now(&mut self) -> Option<usize> {
        if self.inbox_next == self.inbox.len() {
            self.taken_at = Instant::now();
            self.rx
                .recv_many(&mut self.inbox, RECEIVE_AT_ONCE)
                .now_or_never()?;
        }
        let at = self.inbox_next;
        // Nothing was taken: the queue is closed and empty.
        if at == self.inbox.len() {
            return None;
        }
        self.inbox_next += 1;
        Some(at)
    }

    /// Commits the batch gathered in `inbox[..inbox_next]` (`frames` frames; the ticks
    /// among them are the caller's to run), each frame moved out once. What was taken after
    /// the batch closed moves to the front of the inbox for the next one.
    fn commit_taken(&mut self, frames: usize) {
        let mut inbox = std::mem::take(&mut self.inbox);
        let taken = std::mem::replace(&mut self.inbox_next, 0);
        let batch = inbox.drain(..taken).filter_map(|message| match message {
            Message::Frame(frame) => Some(frame),
            Message::Tick => None,
        });
        self.commit(batch, frames);
        self.inbox = inbox;
    }

    /// Notes a frame taken from the queue at `at`, forgetting arrivals too old to predict
    /// anything.
    fn arrived(&mut self, at: Instant) {
        if self.arrivals.back() == Some(&at) {
            return; // taken with the frame before: one arrival is enough to predict
        }
        self.arrivals.push_back(at);
        while self
            .arrivals
            .front()
            .is_some_and(|&t| at.saturating_duration_since(t) > RHYTHM + self.policy.max_wait)
        {
            self.arrivals.pop_front();
        }
    }

    /// When the next frame is due, by the rhythm of the last second, if that is from now to
    /// `deadline`.
    fn expected_before(&self, deadline: Instant) -> Option<Instant> {
        let now = Instant::now();
        self.arrivals
            .iter()
            .map(|&t| t + RHYTHM)
            .find(|&due| due > now && due <= deadline)
    }

    fn tick(&mut self) {
        self.outbox.record_due_marks(); // marks no commit carried (store::delivery::deferred)
        let now = OffsetDateTime::now_utc();
        let backlog = match self.outbox.backlog() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the outbox backlog");
                return;
            }
        };
        let out = self.hook.on_tick(now, backlog);
        self.commit_extra(out, now);
        self.enforce_cap(now);
    }

    /// Commits what a hook produced outside a batch (time-based rules, storage alarms).
    fn commit_extra(&mut self, mut out: HookOutput, now: OffsetDateTime) {
        if out.records.is_empty() && out.state.is_empty() {
            return;
        }
        if self
            .append_with_retry(&mut out.records, &out.state, now)
            .is_some()
            && !out.records.is_empty()
        {
            self.committed.notify_one();
        }
    }

    /// Validates, groups and commits `batch` (`frames` frames), every frame of it: a frame
    /// left in the iterator would be dropped, its readings lost.
    fn commit(&mut self, batch: impl Iterator<Item = Frame>, frames: usize) {
        let now = OffsetDateTime::now_utc();
        self.counters
            .frames_received
            .fetch_add(frames as u64, Ordering::Relaxed);
        let mut records = Vec::with_capacity(frames);
        // The frame index of each reading record.
        let mut owners = Vec::with_capacity(frames);
        // Each frame's waiter (`submit_and_wait`), told its row ids or why not.
        let mut waiting = Vec::with_capacity(frames);
        // Cursors commit with the readings; the last one per device and key wins.
        let mut state: Vec<DeviceStateUpdate> = Vec::new();
        let mut extra = HookOutput::default();
        let clock = self.clock_sample();
        // Only a record not synchronised at receipt is ever corrected by its boot's anchor
        // (publish/clock.rs): a synced one needs no stamp, and leaving it out keeps 18 bytes
        // per row off the SD card.
        let boot = clock.filter(|c| !c.synced).and_then(|c| c.stamp);
        for (i, mut frame) in batch.enumerate() {
            let accepted = self.accept(&mut frame, now, &mut extra);
            // The frame is taken apart: its texts move into its record (shared with more
            // records only when it makes several), no copy and no reference count touched
            // per reading (issue 18, acceptance 4).
            let Frame {
                device_id,
                patient_id,
                nhs_number,
                received_at,
                clock_synced,
                cursor,
                done,
                readings: _,
            } = frame;
            if let Some((key, value)) = cursor {
                state.push(DeviceStateUpdate {
                    device_id: device_id.to_string(),
                    key,
                    value,
                });
            }
            waiting.push(done);
            let clock_synced = clock.map_or(clock_synced, |c| c.synced);
            let record = |device_id, patient_id, nhs_number, readings| {
                Record::Reading(ReadingRecord {
                    device_id,
                    patient_id,
                    nhs_number,
                    received_at,
                    clock_synced,
                    readings,
                    boot,
                })
            };
            // One reading (the common case) is its own group: its vector becomes the
            // record's as it is, with no regrouping and no allocation.
            if accepted.len() == 1 {
                records.push(record(device_id, patient_id, nhs_number, accepted));
                owners.push(i);
            } else {
                for group in crate::fhir::group_for_fhir(&accepted) {
                    let texts = (device_id.clone(), patient_id.clone(), nhs_number.clone());
                    records.push(record(texts.0, texts.1, texts.2, group));
                    owners.push(i);
                }
            }
        }
        let n_readings = records.len();
        extra.extend(self.hook.on_batch(&records, now));
        records.extend(extra.records);
        if records.is_empty() && extra.state.is_empty() && state.is_empty() {
            for done in waiting.into_iter().flatten() {
                let _ = done.send(Ok(Vec::new()));
            }
            return;
        }
        state.extend(extra.state);
        let ids = self.append_with_retry(&mut records, &state, now);
        let Some(ids) = ids else {
            // A permanent error, or shutdown during a failing commit (see append_with_retry).
            let lost: usize = records[..n_readings]
                .iter()
                .map(|r| match r {
                    Record::Reading(r) => r.readings.len(),
                    _ => 0,
                })
                .sum();
            self.counters
                .readings_not_stored
                .fetch_add(lost as u64, Ordering::Relaxed);
            for done in waiting.into_iter().flatten() {
                let _ = done.send(Err("the outbox cannot be written".into()));
            }
            return;
        };
        if self.permanent_alarm {
            self.permanent_alarm = false;
            let out = self.hook.on_storage(
                OffsetDateTime::now_utc(),
                StorageAlarm::PermanentFailure,
                false,
            );
            self.commit_extra(out, now);
        }
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        let committed_readings: usize = records[..n_readings]
            .iter()
            .map(|r| match r {
                Record::Reading(r) => r.readings.len(),
                _ => 0,
            })
            .sum();
        self.counters
            .readings_committed
            .fetch_add(committed_readings as u64, Ordering::Relaxed);
        if let (Some(first), Some(last)) = (ids.first(), ids.last()) {
            tracing::debug!(
                first_id = first,
                last_id = last,
                rows = ids.len(),
                "committed"
            );
            self.committed.notify_one();
        }

        // Row ids go only to the frames that wait for them (`submit_and_wait`): a frame's
        // records are contiguous in `records`, so its ids are one run of `ids`.
        let mut at = 0;
        for (i, done) in waiting.into_iter().enumerate() {
            let from = at;
            while owners.get(at) == Some(&i) {
                at += 1;
            }
            if let Some(done) = done {
                let _ = done.send(Ok(ids[from..at].to_vec()));
            }
        }
    }

    /// Takes the frame's valid readings, rejecting (counted, logged, hooked) the others.
    /// The common case, every reading valid, hands back the frame's own vector.
    fn accept(
        &mut self,
        frame: &mut Frame,
        now: OffsetDateTime,
        extra: &mut HookOutput,
    ) -> Vec<Reading> {
        let readings = std::mem::take(&mut frame.readings);
        if readings.iter().all(|r| r.validate().is_ok()) {
            return readings;
        }
        let mut accepted = Vec::with_capacity(readings.len());
        for r in readings {
            match r.validate() {
                Ok(()) => accepted.push(r),
                Err(why) => {
                    self.counters
                        .readings_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    if self.rejected_logged.allow() {
                        tracing::warn!(device = %frame.device_id, metric = %r.metric, reason = %why, "reading rejected");
                    }
                    extra.extend(self.hook.on_reject(&Rejection {
                        device_id: frame.device_id.clone(),
                        patient_id: frame.patient_id.clone(),
                        metric: r.metric,
                        reason: why.to_string(),
                        at: now,
                    }));
                }
            }
        }
        accepted
    }

    /// Appends, retrying with backoff while the failure may pass (disk full, I/O, busy).
    /// Returns `None` (the batch is not stored, said in the log) on a permanent error after
    /// one retry, or when the daemon stops while the commit still fails. Storage alarms
    /// raised meanwhile are added to `records`, so they commit with the batch.
    fn append_with_retry(
        &mut self,
        records: &mut Vec<Record>,
        state: &[DeviceStateUpdate],
        now: OffsetDateTime,
    ) -> Option<Vec<i64>> {
        let mut delay = RETRY_FIRST;
        let mut retried_permanent = false;
        loop {
            let e = match self.outbox.append_with_state(records, state, now) {
                Ok(ids) => {
                    if self.counters.storage_full.swap(false, Ordering::AcqRel) {
                        tracing::warn!(
                            rows = ids.len(),
                            "storage available again: the held batch is committed, ingest resumes"
                        );
                        let out = self.hook.on_storage(
                            OffsetDateTime::now_utc(),
                            StorageAlarm::Full,
                            false,
                        );
                        self.commit_extra(out, now);
                    }
                    return Some(ids);
                }
                Err(e) => e,
            };
            self.counters
                .commit_failures
                .fetch_add(1, Ordering::Relaxed);
            if e.is_permanent() {
                if !retried_permanent {
                    // Once: the outbox has re-read what another writer may have changed.
                    retried_permanent = true;
                    continue;
                }
                self.give_up_permanent(&e, records, now);
                return None;
            }
            if e.is_disk_full() && !self.counters.storage_full.swap(true, Ordering::AcqRel) {
                tracing::error!(error = %e, rows = records.len(), "STORAGE FULL: the outbox's file system has no space left; holding the batch in memory and retrying (devices are held back meanwhile)");
                let out = self
                    .hook
                    .on_storage(OffsetDateTime::now_utc(), StorageAlarm::Full, true);
                records.extend(out.records);
            } else if self.failure_logged.allow() {
                tracing::error!(
                    error = %e,
                    rows = records.len(),
                    disk_full = e.is_disk_full(),
                    retry_in_ms = delay.as_millis() as u64,
                    "commit failed; keeping the batch in memory and retrying (devices are held back meanwhile)"
                );
            }
            if self.stopping() {
                tracing::error!(rows = records.len(), error = %e, "shutting down with an uncommitted batch: these readings were NOT stored");
                return None;
            }
            self.wait_alive(delay);
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// A permanent error: the batch is logged, counted and alarmed, never retried again.
    fn give_up_permanent(&mut self, e: &StoreError, records: &[Record], now: OffsetDateTime) {
        self.counters
            .permanent_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, rows = records.len(), "STORAGE ERROR: the batch cannot be stored and will not be retried (a permanent error); these readings were NOT stored. The daemon goes on with new readings");
        if !self.permanent_alarm {
            self.permanent_alarm = true;
            let out = self.hook.on_storage(
                OffsetDateTime::now_utc(),
                StorageAlarm::PermanentFailure,
                true,
            );
            self.commit_extra(out, now);
        }
    }

    /// Whether to stop waiting for a failing commit: the daemon is stopping.
    fn stopping(&self) -> bool {
        self.counters.is_shutting_down() || self.rx.is_closed()
    }

    /// Sleeps `delay` in short steps, reporting the writer alive and returning early when the
    /// daemon starts stopping.
    fn wait_alive(&mut self, delay: Duration) {
        let until = Instant::now() + delay;
        loop {
            self.hook.on_stalled(OffsetDateTime::now_utc());
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stopping() {
                return;
            }
            std::thread::sleep(left.min(ALIVE_EVERY));
        }
    }
}

/// Allows one event per period (log rate limiting).
pub struct RateLimit {
    period: Duration,
    last: Option<Instant>,
}

impl RateLimit {
    pub fn new(period: Duration) -> Self {
        RateLimit { period, last: None }
    }

    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.period => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_one_per_period() {
        let mut r = RateLimit::new(Duration::from_secs(60));
        assert!(r.allow());
        assert!(!r.allow());
    }
}

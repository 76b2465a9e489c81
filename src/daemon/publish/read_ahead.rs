//! Read-ahead: while the publisher sends one batch, a worker thread reads, decrypts and renders
//! the next, so the network side does not stall on SQLite, AES-GCM or FHIR between batches.
//!
//! It is speculative and never the only path: after a full batch ending at row `X`, the worker
//! is asked for "the batches after `X`" (a stream). The publisher's next call takes the
//! stream's next result only if it asks for exactly that batch; anything else (another
//! `after` after a reconnect, a short result, a dead worker) is read on the spot as before,
//! and the stream is abandoned. So the worst a stale or lost read-ahead can cost is time,
//! never a row: rows with ids above `X` are not handed to the publisher (so not marked)
//! before the call that consumes the read-ahead, ingest only appends higher ids, and a result
//! that came back short is never used (a short batch tells the publisher the lane is drained,
//! and rows may have been committed since); the stream ends at it.
//!
//! The worker keeps up to [`READY_AHEAD`] batches ready, each following the one before (it
//! knows where the next starts once it has read one). With one, the worker had to be
//! scheduled within the time the network took to send a batch, or the publisher waited for
//! it between batches; on two busy cores a thread can wait longer than that for a CPU. A
//! stream is one channel: dropping its receiving end abandons it, and the worker, finding
//! nobody to send to, waits for the next request.
//!
//! While it reads ahead (a drain in progress), the worker also has the WAL checkpointed, on a
//! connection and a thread of their own (`outbox-checkpoint`). SQLite otherwise runs the
//! checkpoint inside whichever commit crosses 1000 WAL pages; in a drain that is a delivery
//! mark, so the publisher stopped for a copy of 4 MB and two disk syncs, and the broker went
//! idle. Run on this worker instead, it held up the next read-ahead the same way. The
//! publisher's connection has automatic checkpoints off while both threads run. Ingest's
//! connection keeps its own (readings commit there), so the WAL stays bounded when nothing
//! is being drained.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{lock, RenderContext, Rendered, SharedOutbox};
use crate::store::Lane;

/// A `next_batch` call: which rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub lane: Lane,
    pub after: i64,
    pub limit: usize,
}

type Reply = Result<Vec<Rendered>, String>;

/// Batches the worker keeps ready ahead of the publisher in a drain (see the module docs);
/// at most this many plus the one it is reading are held in memory.
pub(crate) const READY_AHEAD: usize = 2;

/// A stream of read-ahead batches, from `first` on, sent to `replies`.
struct Stream {
    first: Request,
    replies: SyncSender<Reply>,
}

/// The stream the publisher reads from: what its next result is for, and where it arrives.
struct Active {
    next: Request,
    replies: Receiver<Reply>,
}

/// How often the WAL is checkpointed while the worker reads ahead (a drain in progress).
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

pub(crate) struct ReadAhead {
    requests: Option<Sender<Stream>>,
    stream: Option<Active>,
    /// What the publisher waited for (tests, benchmarks).
    timings: Arc<SourceTimings>,
    worker: Option<JoinHandle<()>>,
}

/// Where the publisher's calls into its source spent their time: for the drain benchmark,
/// which prints them beside each drain to tell a stall on the read-ahead, on a read on
/// demand or on a delivery mark from the network's own pace.
#[derive(Debug, Default)]
pub struct SourceTimings {
    /// Batches the worker read ahead.
    pub read_ahead: AtomicU64,
    /// Batches served from the read-ahead.
    pub served_ahead: AtomicU64,
    /// Of those, batches the publisher had to wait for (the worker was still on them).
    pub waited: AtomicU64,
    /// Nanoseconds the publisher waited for the read-ahead.
    pub waited_ns: AtomicU64,
    /// Batches read on the publisher's own thread (no matching read-ahead).
    pub on_demand: AtomicU64,
    /// Nanoseconds spent reading on demand.
    pub on_demand_ns: AtomicU64,
    /// Delivery marks recorded, and nanoseconds spent in them.
    pub marks: AtomicU64,
    pub marks_ns: AtomicU64,
}

impl SourceTimings {
    pub(crate) fn add(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub(crate) fn add_time(count: &AtomicU64, ns: &AtomicU64, since: Instant) {
        count.fetch_add(1, Ordering::Relaxed);
        ns.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

impl std::fmt::Display for SourceTimings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let ms = |c: &AtomicU64| get(c) as f64 / 1e6;
        write!(
            f,
            "batches ahead {} (waited for {} of them, {:.1} ms), on demand {} ({:.1} ms), marks {} ({:.1} ms)",
            get(&self.served_ahead),
            get(&self.waited),
            ms(&self.waited_ns),
            get(&self.on_demand),
            ms(&self.on_demand_ns),
            get(&self.marks),
            ms(&self.marks_ns),
        )
    }
}

impl ReadAhead {
    /// Reads with `reads`; checkpoints for `writer`, the connection delivery marks are
    /// written on (the same one when the source has a single connection).
    pub fn start(
        reads: SharedOutbox,
        writer: SharedOutbox,
        render: Arc<RenderContext>,
    ) -> ReadAhead {
        let (requests, inbox) = mpsc::channel::<Stream>();
        let timings = Arc::<SourceTimings>::default();
        let counts = timings.clone();
        let worker = std::thread::Builder::new()
            .name("publish-ahead".into())
            .spawn(move || {
                let checkpoints = Checkpoints::start(&writer);
                let mut last_checkpoint = Instant::now();
                for Stream { first, replies } in inbox {
                    let mut r = first;
                    loop {
                        // The lock covers SQL and decryption; rendering runs without it.
                        let rows = lock(&reads).pending(r.lane, r.after, r.limit);
                        let result = rows
                            .map(|rows| render.render_rows(rows))
                            .map_err(|e| e.to_string());
                        SourceTimings::add(&counts.read_ahead, 1);
                        let next = match &result {
                            Ok(rows) if rows.len() == r.limit => {
                                rows.last().map(|(after, _)| Request { after: *after, ..r })
                            }
                            _ => None,
                        };
                        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                            last_checkpoint = Instant::now();
                            checkpoints.kick();
                        }
                        // Blocks while READY_AHEAD batches wait; fails once abandoned.
                        if replies.send(result).is_err() {
                            break;
                        }
                        match next {
                            Some(n) => r = n,
                            None => break,
                        }
                    }
                }
                checkpoints.stop(&writer);
            });
        let (requests, worker) = match worker {
            Ok(w) => (Some(requests), Some(w)),
            Err(e) => {
                tracing::warn!(error = %e, "publisher: cannot start the read-ahead thread; reading each batch on demand");
                (None, None)
            }
        };
        ReadAhead {
            requests,
            stream: None,
            timings,
            worker,
        }
    }

    /// Starts reading the batches from `r` on ahead, unless a stream is in progress (after a
    /// batch it served, it already reads on from there).
    pub fn request(&mut self, r: Request) {
        if self.stream.is_some() {
            return;
        }
        let Some(tx) = &self.requests else { return };
        // The stream's first batch and READY_AHEAD - 1 more wait in the channel; the worker
        // holds one more in `send` until there is room.
        let (replies, receiver) = mpsc::sync_channel(READY_AHEAD - 1);
        if tx.send(Stream { first: r, replies }).is_ok() {
            self.stream = Some(Active {
                next: r,
                replies: receiver,
            });
        } else {
            self.worker_gone();
        }
    }

    /// The rows read ahead for `r`, if that is what the stream reads next and it came back
    /// full. Waits for the worker when it is still on it (it started earlier than we would).
    pub fn take(&mut self, r: Request) -> Option<Vec<Rendered>> {
        let stream = self.stream.as_mut()?;
        if stream.next.lane != r.lane {
            return None; // kept for when the publisher comes back to that lane
        }
        if stream.next != r {
            self.stream = None; // abandoned: the worker stops at its next send
            return None;
        }
        let started = Instant::now();
        let (reply, waited) = match stream.replies.try_recv() {
            Ok(reply) => (Ok(reply), false),
            Err(mpsc::TryRecvError::Empty) => (stream.replies.recv().map_err(|_| ()), true),
            Err(mpsc::TryRecvError::Disconnected) => (Err(()), false),
        };
        match reply {
            Ok(Ok(rows)) if rows.len() == r.limit => {
                if let Some((after, _)) = rows.last() {
                    stream.next = Request { after: *after, ..r };
                }
                SourceTimings::add(&self.timings.served_ahead, 1);
                if waited {
                    SourceTimings::add_time(&self.timings.waited, &self.timings.waited_ns, started);
                }
                Some(rows)
            }
            Ok(Ok(_)) => {
                self.stream = None; // short: the stream ended there
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "read-ahead failed; reading on demand");
                self.stream = None;
                None
            }
            Err(()) => {
                self.worker_gone();
                None
            }
        }
    }

    /// How many batches were served from the read-ahead.
    pub fn used(&self) -> u64 {
        self.timings.served_ahead.load(Ordering::Relaxed)
    }

    /// The publisher's waits, shared with whoever reports them.
    pub fn timings(&self) -> &Arc<SourceTimings> {
        &self.timings
    }

    fn worker_gone(&mut self) {
        tracing::warn!(
            "publisher: the read-ahead thread stopped; reading each batch on demand from now on"
        );
        self.requests = None;
        self.stream = None;
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stream = None; // ends the stream the worker may be sending to
        self.requests = None; // ends the worker's loop
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The `outbox-checkpoint` thread (see the module docs). Without it (no connection, no
/// thread), the publisher's connection keeps its automatic checkpoints.
struct Checkpoints {
    kick: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpoints {
    fn start(outbox: &SharedOutbox) -> Checkpoints {
        let none = Checkpoints {
            kick: None,
            thread: None,
        };
        let checkpointer = match lock(outbox).checkpointer() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "publisher: no checkpoint connection; the publisher's own connection checkpoints");
                return none;
            }
        };
        let (kick, kicked) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("outbox-checkpoint".into())
            .spawn(move || {
                for () in kicked {
                    if let Err(e) = checkpointer.run() {
                        tracing::debug!(error = %e, "outbox checkpoint failed; retried later");
                    }
                }
            });
        match thread {
            Ok(thread) => {
                if let Err(e) = lock(outbox).set_auto_checkpoint(false) {
                    tracing::warn!(error = %e, "publisher: its connection keeps checkpointing");
                }
                Checkpoints {
                    kick: Some(kick),
                    thread: Some(thread),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "publisher: no checkpoint thread; the publisher's own connection checkpoints");
                none
            }
        }
    }

    /// Asks for a checkpoint; when one is already running or due, that one will do.
    fn kick(&self) {
        if let Some(k) = &self.kick {
            let _ = k.try_send(());
        }
    }

    /// Ends the thread and gives checkpoints back to the publisher's connection.
    fn stop(mut self, outbox: &SharedOutbox) {
        if self.kick.take().is_some() {
            if let Err(e) = lock(outbox).set_auto_checkpoint(true) {
                tracing::warn!(error = %e, "publisher: cannot turn its connection's checkpoints back on");
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! Read-ahead: while the publisher sends one batch, a worker thread reads, decrypts and renders
//! the next, so the network side does not stall on SQLite, AES-GCM or FHIR between batches.
//!
//! It is speculative and never the only path: after a full batch ending at row `X`, the worker
//! is asked for "the next batch after `X`". The publisher's next call takes that result only if
//! it asks for exactly that batch; anything else (another `after` after a reconnect, a short
//! result, a dead worker) is read on the spot as before. So the worst a stale or lost
//! read-ahead can cost is time, never a row: rows with ids above `X` are not handed to the
//! publisher (so not marked) before the call that consumes the read-ahead, ingest only appends
//! higher ids, and a result that came back short is never used (a short batch tells the
//! publisher the lane is drained, and rows may have been committed since).
//!
//! One request is outstanding at a time. Results carry a sequence number; a request the
//! publisher moved away from is abandoned and its result discarded when it arrives.
//!
//! While it reads ahead (a drain in progress), the worker also has the WAL checkpointed, on a
//! connection and a thread of their own (`outbox-checkpoint`). SQLite otherwise runs the
//! checkpoint inside whichever commit crosses 1000 WAL pages; in a drain that is a delivery
//! mark, so the publisher stopped for a copy of 4 MB and two disk syncs, and the broker went
//! idle. Run on this worker instead, it held up the next read-ahead the same way. The
//! publisher's connection has automatic checkpoints off while both threads run. Ingest's
//! connection keeps its own (readings commit there), so the WAL stays bounded when nothing
//! is being drained.

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

type Reply = (u64, Result<Vec<Rendered>, String>);

/// How often the WAL is checkpointed while the worker reads ahead (a drain in progress).
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

pub(crate) struct ReadAhead {
    requests: Option<Sender<(u64, Request)>>,
    replies: Receiver<Reply>,
    outstanding: Option<(u64, Request)>,
    seq: u64,
    /// Batches served from the read-ahead (tests, benchmarks).
    used: u64,
    worker: Option<JoinHandle<()>>,
}

impl ReadAhead {
    /// Reads with `reads`; checkpoints for `writer`, the connection delivery marks are
    /// written on (the same one when the source has a single connection).
    pub fn start(
        reads: SharedOutbox,
        writer: SharedOutbox,
        render: Arc<RenderContext>,
    ) -> ReadAhead {
        let (requests, inbox) = mpsc::channel::<(u64, Request)>();
        let (reply, replies) = mpsc::channel::<Reply>();
        let worker = std::thread::Builder::new()
            .name("publish-ahead".into())
            .spawn(move || {
                let checkpoints = Checkpoints::start(&writer);
                let mut last_checkpoint = Instant::now();
                for (seq, r) in inbox {
                    // The lock covers SQL and decryption; rendering runs without it.
                    let rows = lock(&reads).pending(r.lane, r.after, r.limit);
                    let result = rows
                        .map(|rows| render.render_rows(rows))
                        .map_err(|e| e.to_string());
                    if reply.send((seq, result)).is_err() {
                        break;
                    }
                    if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                        last_checkpoint = Instant::now();
                        checkpoints.kick();
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
            replies,
            outstanding: None,
            seq: 0,
            used: 0,
            worker,
        }
    }

    /// Starts reading `r` ahead, unless a request is already outstanding.
    pub fn request(&mut self, r: Request) {
        if self.outstanding.is_some() {
            return;
        }
        let Some(tx) = &self.requests else { return };
        self.seq += 1;
        if tx.send((self.seq, r)).is_ok() {
            self.outstanding = Some((self.seq, r));
        } else {
            self.worker_gone();
        }
    }

    /// The rows read ahead for `r`, if that is what was read ahead and it came back full.
    /// Waits for the worker when it is still on it (it started earlier than we would now).
    pub fn take(&mut self, r: Request) -> Option<Vec<Rendered>> {
        let (seq, ahead) = self.outstanding?;
        if ahead.lane != r.lane {
            return None; // kept for when the publisher comes back to that lane
        }
        self.outstanding = None;
        if ahead != r {
            return None; // abandoned: its reply is discarded when it arrives
        }
        loop {
            match self.replies.recv() {
                Ok((s, _)) if s != seq => continue,
                Ok((_, Ok(rows))) if rows.len() == r.limit => {
                    self.used += 1;
                    return Some(rows);
                }
                Ok((_, Ok(_))) => return None,
                Ok((_, Err(e))) => {
                    tracing::debug!(error = %e, "read-ahead failed; reading on demand");
                    return None;
                }
                Err(_) => {
                    self.worker_gone();
                    return None;
                }
            }
        }
    }

    /// How many batches were served from the read-ahead.
    pub fn used(&self) -> u64 {
        self.used
    }

    fn worker_gone(&mut self) {
        tracing::warn!(
            "publisher: the read-ahead thread stopped; reading each batch on demand from now on"
        );
        self.requests = None;
        self.outstanding = None;
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
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

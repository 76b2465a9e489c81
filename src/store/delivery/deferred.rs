//! Delivery marks carried by the ingest writer's next commit instead of a commit of their own.
//!
//! Why (issue 18, bytes written per reading): at 1 Hz the publisher records its
//! acknowledgements about once a second, and each record was a transaction of its own: a
//! WAL commit with its disk sync, the `delivered` and `meta` pages, and the 4 KiB file-system
//! pages those frames straddle, some 40 bytes per reading on the SD card. The ingest writer
//! commits about once a second anyway, and its commit already writes `meta`; the marks ride
//! along for one more page (`delivered`'s last leaf).
//!
//! The publisher's connection hands a mark over ([`DeferredMarks::offer`]) only while the
//! publisher keeps up with live readings and the writer is serving the queue: at most
//! [`DEFER_AT_MOST_ROWS`] rows wait, none longer than [`HOLD_AT_MOST`]. A record that would
//! pass that (a backlog draining: records in quick succession; a large one), one while the
//! oldest waiting is due, or one when the writer has not taken marks or ticked within
//! [`SERVED_WITHIN`] (stopped, or retrying a failing commit) is recorded at once on the
//! publisher's connection, with whatever waits; and so is every record of a drain after
//! it, until a gap of [`DRAIN_GAP`]. A mark waits at most [`HOLD_AT_MOST`] plus one writer
//! tick (the writer records it alone when no ingest commit came). So what a crash can send
//! again stays bounded (HAZ-05): the in-flight window, the acknowledgements the publisher
//! has not recorded yet, and at most [`DEFER_AT_MOST_ROWS`] handed-over rows about a second
//! old (during a drain, none past its first records), each sent again with its own
//! Observation id. A row is never lost: an unrecorded mark only means the row is sent again.
//!
//! Until a handed-over mark is committed, the publisher must not read its rows as
//! undelivered (after a reconnect it reads the outbox again from the start): the outbox's
//! `pending` leaves out every id waiting or in a transaction not yet committed
//! ([`DeferredMarks::hidden`], taken before it reads, so a mark committed in between is in
//! what it reads). Those rows were acknowledged by the broker, so leaving them out is never
//! wrong; once committed they are hidden no more (a resync may re-open them).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Records within this of each other belong to one burst (a commit's rows acknowledged a
/// window at a time) or to a backlog draining.
pub const DRAIN_GAP: Duration = Duration::from_millis(250);

/// At most this many rows wait to be committed; records in quick succession that would
/// pass it are a backlog draining: recorded at once, each, until a gap of [`DRAIN_GAP`].
pub const DEFER_AT_MOST_ROWS: usize = 256;

/// A handed-over mark older than this is recorded alone at the writer's next tick.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(1);

/// Marks are handed over only while the writer took marks or ticked this recently (it stops
/// at shutdown, and a writer retrying a failing commit does not tick).
pub const SERVED_WITHIN: Duration = Duration::from_secs(2);

/// One handed-over record: runs of consecutive ids acknowledged at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::store) struct Mark {
    pub runs: Vec<(i64, i64)>,
    rows: usize,
    pub at_ms: i64,
    since: Instant,
    /// Tells handed-over marks apart (0: not handed over).
    seq: u64,
}

impl Mark {
    /// A record made now, not handed over (committed at once).
    pub(in crate::store) fn now(runs: Vec<(i64, i64)>, at_ms: i64) -> Mark {
        Mark {
            rows: runs.iter().map(|(x, y)| (y - x + 1) as usize).sum(),
            runs,
            at_ms,
            since: Instant::now(),
            seq: 0,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Handed over, not yet taken into a transaction.
    waiting: Vec<Mark>,
    /// Taken into a transaction not known to be committed yet.
    committing: Vec<Mark>,
    next_seq: u64,
    last_record: Option<Instant>,
    /// Records came in quick succession past [`DEFER_AT_MOST_ROWS`]: a backlog draining,
    /// recorded at once until a record comes [`DRAIN_GAP`] after the one before.
    draining: bool,
    served_at: Option<Instant>,
    stopped: bool,
}

/// The queue between the publisher's outbox connection and the ingest writer's. Cloned
/// handles share it.
#[derive(Debug, Clone, Default)]
pub struct DeferredMarks {
    inner: Arc<Mutex<Inner>>,
}

impl DeferredMarks {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a record of `runs` (`rows` ids, acknowledged at `at_ms`) to be committed with the
    /// writer's next transaction, if the rules above allow; `false`: record it now.
    pub(in crate::store) fn offer(
        &self,
        runs: &[(i64, i64)],
        rows: usize,
        at_ms: i64,
        now: Instant,
    ) -> bool {
        let mut g = self.lock();
        if g.last_record
            .is_none_or(|t| now.saturating_duration_since(t) >= DRAIN_GAP)
        {
            g.draining = false;
        }
        g.last_record = Some(now);
        let waiting: usize = g.waiting.iter().map(|m| m.rows).sum();
        if waiting + rows > DEFER_AT_MOST_ROWS {
            g.draining = true;
        }
        let served = !g.stopped
            && g.served_at
                .is_some_and(|t| now.saturating_duration_since(t) <= SERVED_WITHIN);
        let fresh = g
            .waiting
            .first()
            .is_none_or(|m| now.saturating_duration_since(m.since) < HOLD_AT_MOST);
        if !(served && !g.draining && fresh) {
            tracing::debug!(
                rows,
                waiting,
                served,
                draining = g.draining,
                fresh,
                "delivery marks recorded at once, not handed to the writer"
            );
            return false;
        }
        g.next_seq += 1;
        let seq = g.next_seq;
        g.waiting.push(Mark {
            runs: runs.to_vec(),
            rows,
            at_ms,
            since: now,
            seq,
        });
        true
    }

    /// Everything waiting, for a transaction about to commit it: tell the outcome with
    /// [`DeferredMarks::committed`] or [`DeferredMarks::restore`].
    pub(in crate::store) fn take(&self) -> Vec<Mark> {
        let mut g = self.lock();
        let taken = std::mem::take(&mut g.waiting);
        g.committing.extend(taken.iter().cloned());
        taken
    }

    /// The transaction holding `marks` committed: their rows are read as delivered from the
    /// file now.
    pub(in crate::store) fn committed(&self, marks: &[Mark]) {
        let mut g = self.lock();
        g.committing
            .retain(|c| !marks.iter().any(|m| m.seq != 0 && m.seq == c.seq));
    }

    /// Puts back marks whose transaction failed, ahead of any handed over since.
    pub(in crate::store) fn restore(&self, mut marks: Vec<Mark>) {
        marks.retain(|m| m.seq != 0);
        if marks.is_empty() {
            return;
        }
        let mut g = self.lock();
        g.committing
            .retain(|c| !marks.iter().any(|m| m.seq == c.seq));
        marks.append(&mut g.waiting);
        g.waiting = marks;
    }

    /// Settles marks taken into a transaction by its outcome: forgotten once it committed
    /// ([`Self::committed`]), put back if it failed ([`Self::restore`]).
    pub(in crate::store) fn settle<T, E>(&self, marks: Vec<Mark>, outcome: &Result<T, E>) {
        match outcome {
            Ok(_) => self.committed(&marks),
            Err(_) => self.restore(marks),
        }
    }

    /// The writer is serving the queue (it took marks or ticked at `now`).
    pub(in crate::store) fn served(&self, now: Instant) {
        self.lock().served_at = Some(now);
    }

    /// The writer has stopped: from now on every record is committed by the publisher's
    /// connection at once (with what still waits).
    pub fn writer_stopped(&self) {
        self.lock().stopped = true;
    }

    /// Whether a mark has waited [`HOLD_AT_MOST`] or longer.
    pub(in crate::store) fn due(&self, now: Instant) -> bool {
        self.lock()
            .waiting
            .first()
            .is_some_and(|m| now.saturating_duration_since(m.since) >= HOLD_AT_MOST)
    }

    /// The runs handed over as delivered and not known to be committed: `pending` leaves
    /// them out. Taken before reading, so a mark committed meanwhile is in the read.
    pub(in crate::store) fn hidden(&self) -> Vec<(i64, i64)> {
        let g = self.lock();
        g.waiting
            .iter()
            .chain(&g.committing)
            .flat_map(|m| m.runs.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(q: &DeferredMarks, now: Instant) -> &DeferredMarks {
        q.served(now);
        q
    }

    fn hides(q: &DeferredMarks, id: i64) -> bool {
        q.hidden().iter().any(|&(x, y)| (x..=y).contains(&id))
    }

    #[test]
    fn a_record_at_live_pace_is_handed_over_and_hidden_until_committed() {
        let q = DeferredMarks::default();
        let t = Instant::now();
        assert!(served(&q, t).offer(&[(1, 50)], 50, 7, t));
        assert!(hides(&q, 1) && hides(&q, 50) && !hides(&q, 51));
        let taken = q.take();
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].runs.clone(), taken[0].at_ms), (vec![(1, 50)], 7));
        assert!(hides(&q, 50), "still hidden while its transaction runs");
        q.committed(&taken);
        assert!(!hides(&q, 50), "read from the file once committed");
    }

    #[test]
    fn a_burst_within_the_limit_waits_and_a_drain_is_recorded_at_once_until_a_gap() {
        let q = DeferredMarks::default();
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        // One commit's rows acknowledged a window at a time: both wait.
        assert!(served(&q, t).offer(&[(1, 64)], 64, 1, t));
        assert!(q.offer(&[(65, 92)], 28, 1, ms(5)));
        q.take();
        // A drain: records in quick succession pass the limit; from then on each is
        // recorded at once, until a record comes after a gap.
        let step = DEFER_AT_MOST_ROWS as i64 / 2;
        let (mut at, mut first) = (1000, 100);
        let mut handed = Vec::new();
        for _ in 0..6 {
            q.served(ms(at));
            handed.push(q.offer(&[(first, first + step - 1)], step as usize, 2, ms(at)));
            if !handed[handed.len() - 1] {
                q.take(); // recorded at once with what waited
            }
            first += step;
            at += 3;
        }
        assert_eq!(handed, [true, true, false, false, false, false]);
        let later = ms(at) + DRAIN_GAP;
        q.served(later);
        assert!(q.offer(&[(first, first)], 1, 3, later), "after a gap");
        q.take();
        let much_later = later + DRAIN_GAP;
        q.served(much_later);
        let large = DEFER_AT_MOST_ROWS + 1;
        assert!(
            !q.offer(&[(1, large as i64)], large, 4, much_later),
            "too large"
        );
    }

    #[test]
    fn nothing_is_handed_over_to_a_writer_that_is_not_serving() {
        let q = DeferredMarks::default();
        let t = Instant::now();
        assert!(!q.offer(&[(1, 1)], 1, 1, t), "never served");
        let later = t + DRAIN_GAP + SERVED_WITHIN + Duration::from_millis(1);
        q.served(t);
        assert!(!q.offer(&[(2, 2)], 1, 1, later), "served too long ago");
        let q = DeferredMarks::default();
        q.served(t);
        q.writer_stopped();
        assert!(!q.offer(&[(3, 3)], 1, 1, t), "stopped");
    }

    #[test]
    fn a_mark_is_due_after_the_hold_and_a_failed_one_goes_back_first() {
        let q = DeferredMarks::default();
        let t = Instant::now();
        assert!(served(&q, t).offer(&[(1, 5)], 5, 1, t));
        assert!(!q.due(t));
        assert!(q.due(t + HOLD_AT_MOST));
        let taken = q.take();
        assert!(!q.due(t + HOLD_AT_MOST));
        q.restore(taken);
        assert!(q.due(t + HOLD_AT_MOST));
        assert_eq!(q.take()[0].runs, vec![(1, 5)]);
    }
}

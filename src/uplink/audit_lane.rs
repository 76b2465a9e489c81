//! The audit lane of the publisher: audit entries to `{prefix}/gw/{gw}/audit`, in order,
//! at-least-once, behind alerts and taking turns with readings.
//!
//! The entries come from an [`AuditSource`] (the audit log file and a cursor in the outbox,
//! `audit::forward`). The lane hands entries out in sequence order, remembers which of those
//! in flight were acknowledged, and moves the cursor only over a run of acknowledged entries
//! from its start: the cursor never passes an entry the broker has not taken. Any failure
//! (a refusal, "no matching subscribers", a lost connection) rewinds to the cursor, so
//! entries after it are sent again (duplicates, never a gap) once the lane's own backoff
//! ends. The lane's pause is its own: a platform that does not subscribe to `audit` holds
//! back audit entries only, never readings or alerts.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How often an exhausted lane looks at the log again (appends do not wake the publisher).
pub const RECHECK: Duration = Duration::from_secs(1);

/// One audit entry: its sequence number and its line exactly as written (no newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: u64,
    pub line: Vec<u8>,
}

/// Where audit entries and the forwarding cursor live.
pub trait AuditSource: Send + 'static {
    /// The last sequence number acknowledged in order (0 before the first).
    fn forwarded(&mut self) -> Result<u64, String>;
    /// Entries with a sequence number above `after`, in log order, at most `limit`.
    fn entries_after(&mut self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, String>;
    /// Records the cursor (durable enough that a loss only re-sends entries).
    fn set_forwarded(&mut self, seq: u64) -> Result<(), String>;
}

/// The lane's state; the publisher owns it.
pub(crate) struct AuditLane {
    source: Box<dyn AuditSource>,
    /// Acknowledged in order up to here (`None` until read from the source).
    cursor: Option<u64>,
    /// The cursor as last recorded by the source.
    saved: u64,
    /// The last sequence number read from the source.
    read_to: u64,
    queue: VecDeque<AuditEntry>,
    /// Handed out, in order, with whether each was acknowledged.
    outstanding: VecDeque<(u64, bool)>,
    /// Nothing more in the log: look again at `recheck_at`.
    recheck_at: Option<Instant>,
    /// Backing off after a failure.
    paused_until: Option<Instant>,
    failures: u32,
}

impl AuditLane {
    pub(crate) fn new(source: Box<dyn AuditSource>) -> AuditLane {
        AuditLane {
            source,
            cursor: None,
            saved: 0,
            read_to: 0,
            queue: VecDeque::new(),
            outstanding: VecDeque::new(),
            recheck_at: None,
            paused_until: None,
            failures: 0,
        }
    }

    /// A new connection: everything not acknowledged is sent again, from the cursor.
    pub(crate) fn rewind(&mut self) {
        self.queue.clear();
        self.outstanding.clear();
        self.read_to = self.cursor.unwrap_or(0);
        self.recheck_at = None;
    }

    /// The next entry to send, if the lane has one now. Errors are the source's, as a sentence.
    pub(crate) fn next(
        &mut self,
        now: Instant,
        batch: usize,
    ) -> Result<Option<AuditEntry>, String> {
        if self.paused_until.is_some_and(|t| now < t) {
            return Ok(None);
        }
        self.paused_until = None;
        if self.queue.is_empty() {
            if self.recheck_at.is_some_and(|t| now < t) {
                return Ok(None);
            }
            self.recheck_at = None;
            let cursor = match self.cursor {
                Some(c) => c,
                None => match self.source.forwarded() {
                    Ok(c) => {
                        self.cursor = Some(c);
                        self.saved = c;
                        self.read_to = c;
                        c
                    }
                    Err(e) => {
                        self.recheck_at = Some(now + RECHECK);
                        return Err(format!("audit forwarding cursor unreadable: {e}"));
                    }
                },
            };
            debug_assert!(self.read_to >= cursor);
            match self.source.entries_after(self.read_to, batch.max(1)) {
                Ok(entries) if entries.is_empty() => {
                    self.recheck_at = Some(now + RECHECK);
                    return Ok(None);
                }
                Ok(entries) => {
                    if let Some(last) = entries.last() {
                        self.read_to = last.seq;
                    }
                    self.queue.extend(entries);
                }
                Err(e) => {
                    self.recheck_at = Some(now + RECHECK);
                    return Err(e);
                }
            }
        }
        let entry = self.queue.pop_front();
        if let Some(e) = &entry {
            self.outstanding.push_back((e.seq, false));
        }
        Ok(entry)
    }

    /// The broker took `seq` (PUBACK `Success`): the cursor moves over every acknowledged
    /// entry from the front.
    pub(crate) fn on_ack(&mut self, seq: u64) {
        if let Some(slot) = self.outstanding.iter_mut().find(|(s, _)| *s == seq) {
            slot.1 = true;
        }
        while let Some(&(s, true)) = self.outstanding.front() {
            self.outstanding.pop_front();
            self.cursor = Some(self.cursor.unwrap_or(0).max(s));
        }
        self.failures = 0;
    }

    /// `seq` was not taken: back off by `delay(failures)`, then resend from the cursor.
    pub(crate) fn on_failure(&mut self, now: Instant, delay: impl Fn(u32) -> Duration) {
        self.failures = self.failures.saturating_add(1);
        self.paused_until = Some(now + delay(self.failures));
        self.rewind();
    }

    /// Records the cursor if it moved.
    pub(crate) fn flush(&mut self) -> Result<(), String> {
        match self.cursor {
            Some(c) if c > self.saved => {
                self.source.set_forwarded(c)?;
                self.saved = c;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// When the lane wants to be looked at again (end of a pause, a re-check of the log),
    /// if that is still ahead of `now`. A time already past is no timer: the next fill looks
    /// at the lane anyway, and the publisher may not reach it (its window full, or every lane
    /// paused while the platform does not subscribe), so a past time would fire forever and
    /// starve the event loop.
    pub(crate) fn timer(&self, now: Instant) -> Option<Instant> {
        self.paused_until
            .into_iter()
            .chain(self.recheck_at)
            .filter(|t| *t > now)
            .min()
    }

    /// Whether entries are handed out and not yet acknowledged.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.outstanding.len()
    }
}

/// An in-memory audit log for tests and benchmarks: entries `{"seq":N}` for each sequence
/// number in `entries`, and the forwarded cursor. Clones share both, so a test keeps one
/// handle to inspect while the lane owns another (as [`super::MemorySource`] for the outbox).
#[derive(Debug, Clone, Default)]
pub struct MemoryAudit {
    pub entries: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    pub cursor: std::sync::Arc<std::sync::Mutex<u64>>,
}

impl AuditSource for MemoryAudit {
    fn forwarded(&mut self) -> Result<u64, String> {
        Ok(*self.cursor.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn entries_after(&mut self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, String> {
        Ok(self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| **s > after)
            .take(limit)
            .map(|s| AuditEntry {
                seq: *s,
                line: format!("{{\"seq\":{s}}}").into_bytes(),
            })
            .collect())
    }
    fn set_forwarded(&mut self, seq: u64) -> Result<(), String> {
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(seqs: &[u64], cursor: u64) -> (AuditLane, MemoryAudit) {
        let log = MemoryAudit::default();
        log.entries.lock().unwrap().extend_from_slice(seqs);
        *log.cursor.lock().unwrap() = cursor;
        (AuditLane::new(Box::new(log.clone())), log)
    }

    fn take(l: &mut AuditLane, now: Instant, n: usize) -> Vec<u64> {
        (0..n)
            .filter_map(|_| l.next(now, 2).unwrap().map(|e| e.seq))
            .collect()
    }

    #[test]
    fn entries_go_out_in_order_from_after_the_stored_cursor() {
        let (mut l, _) = lane(&[1, 2, 3, 4, 5], 2);
        assert_eq!(take(&mut l, Instant::now(), 10), [3, 4, 5]);
    }

    #[test]
    fn the_cursor_moves_only_over_acknowledged_entries_from_the_front() {
        let (mut l, log) = lane(&[1, 2, 3], 0);
        let now = Instant::now();
        take(&mut l, now, 3);
        l.on_ack(2);
        l.flush().unwrap();
        assert_eq!(*log.cursor.lock().unwrap(), 0, "1 is not acknowledged yet");
        l.on_ack(1);
        l.flush().unwrap();
        assert_eq!(*log.cursor.lock().unwrap(), 2);
        assert_eq!(l.in_flight(), 1);
    }

    #[test]
    fn a_failure_pauses_the_lane_then_resends_from_the_cursor() {
        let (mut l, _) = lane(&[1, 2, 3], 0);
        let now = Instant::now();
        take(&mut l, now, 3);
        l.on_ack(1);
        l.on_failure(now, |_| Duration::from_secs(5));
        assert_eq!(take(&mut l, now, 3), Vec::<u64>::new(), "paused");
        assert_eq!(l.timer(now), Some(now + Duration::from_secs(5)));
        assert_eq!(
            l.timer(now + Duration::from_secs(5)),
            None,
            "no timer once due"
        );
        assert_eq!(take(&mut l, now + Duration::from_secs(5), 3), [2, 3]);
    }

    #[test]
    fn a_rewind_after_reconnecting_resends_everything_unacknowledged() {
        let (mut l, _) = lane(&[1, 2, 3], 0);
        let now = Instant::now();
        take(&mut l, now, 3);
        l.on_ack(1);
        l.rewind();
        assert_eq!(take(&mut l, now, 3), [2, 3]);
    }

    #[test]
    fn an_exhausted_lane_looks_again_after_the_recheck_interval() {
        let (mut l, log) = lane(&[1], 0);
        let now = Instant::now();
        assert_eq!(take(&mut l, now, 2), [1]);
        log.entries.lock().unwrap().push(2);
        assert_eq!(take(&mut l, now, 1), Vec::<u64>::new());
        assert_eq!(l.timer(now), Some(now + RECHECK));
        assert_eq!(take(&mut l, now + RECHECK, 1), [2]);
    }

    #[test]
    fn gaps_in_sequence_numbers_do_not_hold_the_cursor() {
        let (mut l, log) = lane(&[4, 9], 0);
        let now = Instant::now();
        take(&mut l, now, 2);
        l.on_ack(4);
        l.on_ack(9);
        l.flush().unwrap();
        assert_eq!(*log.cursor.lock().unwrap(), 9);
    }
}

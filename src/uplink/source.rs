//! The boundary between the outbox and the publisher.
//!
//! The publisher sees the outbox only through [`OutboxSource`]: it reads undelivered rows oldest
//! first, per lane, and reports back which rows the broker acknowledged or refused. The outbox
//! stays the single source of truth: nothing here deletes a row, and the publisher keeps no
//! copy of a row beyond its bounded in-flight window.
//!
//! [`MemorySource`] is an in-memory implementation for tests and benchmarks. It counts every
//! `mark_delivered` per row, so a test can assert "each row delivered exactly once in the
//! outbox's accounting", and every hand-out per row, so a test can bound re-sends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Which queue a row belongs to: the outbox's own lanes. Alerts (published on `.../alert`)
/// always go before readings (`.../obs`, oldest first).
pub use crate::store::Lane;

/// One row ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The outbox row id; ids grow with commit order within a lane.
    pub row_id: i64,
    /// The queue it came from (decides the topic and the priority).
    pub lane: Lane,
    /// The ready JSON payload.
    pub payload: Vec<u8>,
}

/// Why the outbox could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The backing store failed (e.g. SQLite busy or disk error); the publisher retries later.
    #[error("outbox unavailable: {0}")]
    Unavailable(String),
    /// A row id the outbox does not know (a publisher bug, reported, never ignored silently).
    #[error("outbox has no row {0}")]
    UnknownRow(i64),
}

/// The outbox as the publisher sees it. Implementations may block briefly (SQLite on local disk).
pub trait OutboxSource: Send + 'static {
    /// Undelivered rows of `lane` with id > `after`, oldest first, at most `limit`.
    ///
    /// Rows marked refused are still undelivered and are returned again (the publisher decides
    /// when to retry them; a row too large to ever send is remembered by the publisher and not
    /// re-sent).
    fn next_batch(
        &mut self,
        lane: Lane,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Outgoing>, SourceError>;
    /// Marks rows delivered (their PUBACK said success). Durable before returning, or (the
    /// daemon's outbox at live pace) committed with the ingest writer's next transaction
    /// within about a second (`store::delivery::deferred`): a crash in between only sends
    /// those rows again, and until then the source does not hand them out again.
    fn mark_delivered(&mut self, row_ids: &[i64]) -> Result<(), SourceError>;
    /// A row the broker refused (PUBACK >= 0x80) or that can never be sent (too large): kept,
    /// not delivered; the source records the reason (for status) — never deletes it.
    fn mark_refused(&mut self, row_id: i64, reason: &str) -> Result<(), SourceError>;
}

#[derive(Debug, Clone)]
struct MemRow {
    payload: Vec<u8>,
    delivered: u32,
    fetched: u32,
    refused: Option<String>,
}

#[derive(Debug, Default)]
struct MemInner {
    next_id: i64,
    alerts: BTreeMap<i64, MemRow>,
    readings: BTreeMap<i64, MemRow>,
}

impl MemInner {
    fn lane_mut(&mut self, lane: Lane) -> &mut BTreeMap<i64, MemRow> {
        match lane {
            Lane::Alert => &mut self.alerts,
            Lane::Reading => &mut self.readings,
        }
    }

    fn row_mut(&mut self, id: i64) -> Option<&mut MemRow> {
        if self.alerts.contains_key(&id) {
            self.alerts.get_mut(&id)
        } else {
            self.readings.get_mut(&id)
        }
    }

    fn row(&self, id: i64) -> Option<&MemRow> {
        self.alerts.get(&id).or_else(|| self.readings.get(&id))
    }
}

/// An in-memory outbox for tests and benchmarks. Clones share the same rows, so a test keeps
/// one handle to inspect while the publisher owns another.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    inner: Arc<Mutex<MemInner>>,
}

impl MemorySource {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemInner> {
        // A poisoned lock only means a test thread panicked; the data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a row (ids are global and increasing, as in the SQLite outbox) and returns its id.
    pub fn push(&self, lane: Lane, payload: Vec<u8>) -> i64 {
        let mut g = self.lock();
        g.next_id += 1;
        let id = g.next_id;
        g.lane_mut(lane).insert(
            id,
            MemRow {
                payload,
                delivered: 0,
                fetched: 0,
                refused: None,
            },
        );
        id
    }

    /// How many times `mark_delivered` named this row (exactly 1 is correct once acknowledged).
    pub fn delivered_count(&self, row_id: i64) -> u32 {
        self.lock().row(row_id).map_or(0, |r| r.delivered)
    }

    /// How many times `next_batch` handed this row out (more than 1 means it was re-sent).
    pub fn fetch_count(&self, row_id: i64) -> u32 {
        self.lock().row(row_id).map_or(0, |r| r.fetched)
    }

    /// The last refusal reason recorded for this row.
    pub fn refused_reason(&self, row_id: i64) -> Option<String> {
        self.lock().row(row_id).and_then(|r| r.refused.clone())
    }

    /// All row ids with their delivery counts, oldest first.
    pub fn delivery_counts(&self) -> Vec<(i64, u32)> {
        let g = self.lock();
        let mut v: Vec<(i64, u32)> = g
            .alerts
            .iter()
            .chain(g.readings.iter())
            .map(|(id, r)| (*id, r.delivered))
            .collect();
        v.sort_unstable();
        v
    }

    /// All row ids with their hand-out counts, oldest first.
    pub fn fetch_counts(&self) -> Vec<(i64, u32)> {
        let g = self.lock();
        let mut v: Vec<(i64, u32)> = g
            .alerts
            .iter()
            .chain(g.readings.iter())
            .map(|(id, r)| (*id, r.fetched))
            .collect();
        v.sort_unstable();
        v
    }

    /// Rows not yet delivered.
    pub fn undelivered(&self) -> usize {
        let g = self.lock();
        g.alerts
            .values()
            .chain(g.readings.values())
            .filter(|r| r.delivered == 0)
            .count()
    }
}

impl OutboxSource for MemorySource {
    fn next_batch(
        &mut self,
        lane: Lane,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Outgoing>, SourceError> {
        let mut g = self.lock();
        let rows = g.lane_mut(lane);
        let mut out = Vec::with_capacity(limit.min(1024));
        for (id, row) in rows.range_mut(after.saturating_add(1)..) {
            if out.len() >= limit {
                break;
            }
            if row.delivered > 0 {
                continue;
            }
            row.fetched += 1;
            out.push(Outgoing {
                row_id: *id,
                lane,
                payload: row.payload.clone(),
            });
        }
        Ok(out)
    }

    fn mark_delivered(&mut self, row_ids: &[i64]) -> Result<(), SourceError> {
        let mut g = self.lock();
        for id in row_ids {
            let row = g.row_mut(*id).ok_or(SourceError::UnknownRow(*id))?;
            row.delivered += 1;
        }
        Ok(())
    }

    fn mark_refused(&mut self, row_id: i64, reason: &str) -> Result<(), SourceError> {
        let mut g = self.lock();
        let row = g.row_mut(row_id).ok_or(SourceError::UnknownRow(row_id))?;
        row.refused = Some(reason.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_source_next_batch_returns_undelivered_rows_of_lane_oldest_first() {
        let mut s = MemorySource::new();
        let a = s.push(Lane::Reading, b"a".to_vec());
        let _alert = s.push(Lane::Alert, b"x".to_vec());
        let b = s.push(Lane::Reading, b"b".to_vec());
        let c = s.push(Lane::Reading, b"c".to_vec());
        s.mark_delivered(&[b]).unwrap();
        let got: Vec<i64> = s
            .next_batch(Lane::Reading, 0, 10)
            .unwrap()
            .iter()
            .map(|o| o.row_id)
            .collect();
        assert_eq!(got, vec![a, c]);
    }

    #[test]
    fn memory_source_next_batch_respects_after_and_limit() {
        let mut s = MemorySource::new();
        let ids: Vec<i64> = (0..5).map(|_| s.push(Lane::Reading, vec![])).collect();
        let got: Vec<i64> = s
            .next_batch(Lane::Reading, ids[1], 2)
            .unwrap()
            .iter()
            .map(|o| o.row_id)
            .collect();
        assert_eq!(got, vec![ids[2], ids[3]]);
    }

    #[test]
    fn memory_source_counts_each_mark_delivered() {
        let mut s = MemorySource::new();
        let a = s.push(Lane::Alert, vec![]);
        s.mark_delivered(&[a]).unwrap();
        s.mark_delivered(&[a]).unwrap();
        assert_eq!(s.delivered_count(a), 2);
    }

    #[test]
    fn memory_source_refused_row_is_kept_and_still_undelivered() {
        let mut s = MemorySource::new();
        let a = s.push(Lane::Reading, vec![1]);
        s.mark_refused(a, "too large").unwrap();
        assert_eq!(s.refused_reason(a).as_deref(), Some("too large"));
        assert_eq!(s.next_batch(Lane::Reading, 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn memory_source_unknown_row_is_an_error() {
        let mut s = MemorySource::new();
        assert!(matches!(
            s.mark_delivered(&[42]),
            Err(SourceError::UnknownRow(42))
        ));
    }
}

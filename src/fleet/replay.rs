//! The replay store: nonces of accepted commands, kept until their command expires, in
//! `fleet-nonces.json` (atomic rename), so a captured command is refused also after a restart.
//!
//! A command is recorded before it runs: a crash in between loses one run, never allows two.
//! Expired entries are dropped on every write (an expired command is refused anyway), and the
//! store is capped: when full of live nonces, new commands are refused rather than the oldest
//! forgotten.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

pub const NONCE_FILE: &str = "fleet-nonces.json";
/// Live nonces kept at most (commands live a day at most: 10,000 a day is far above need).
pub const MAX_NONCES: usize = 10_000;

#[derive(Debug)]
pub struct ReplayStore {
    path: PathBuf,
    /// nonce -> expiry (unix seconds).
    seen: BTreeMap<String, i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} unexpired commands are remembered already; refusing more until some expire")]
    Full(usize),
}

impl ReplayStore {
    /// Opens the store in `state_dir`; an unreadable file is an error (never an empty store,
    /// which would let every remembered command run again).
    pub fn open(state_dir: &Path) -> Result<ReplayStore, ReplayError> {
        let path = state_dir.join(NONCE_FILE);
        let seen = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ReplayError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(ReplayError::Io { path, source }),
        };
        Ok(ReplayStore { path, seen })
    }

    pub fn seen(&self, nonce: &str) -> bool {
        self.seen.contains_key(nonce)
    }

    /// Records `nonce` until `expires_at`, durably, dropping expired entries.
    pub fn record(
        &mut self,
        nonce: &str,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), ReplayError> {
        let now_s = now.unix_timestamp();
        self.seen.retain(|_, exp| *exp > now_s);
        if self.seen.len() >= MAX_NONCES {
            return Err(ReplayError::Full(self.seen.len()));
        }
        self.seen
            .insert(nonce.to_owned(), expires_at.unix_timestamp());
        let json = serde_json::to_vec(&self.seen).unwrap_or_default();
        super::agent::write_atomic(&self.path, &json).map_err(|source| ReplayError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-01 12:00 UTC);

    #[test]
    fn recorded_nonce_is_seen_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ReplayStore::open(dir.path()).unwrap();
        s.record("n1", NOW + time::Duration::minutes(5), NOW)
            .unwrap();
        assert!(ReplayStore::open(dir.path()).unwrap().seen("n1"));
        assert!(!ReplayStore::open(dir.path()).unwrap().seen("n2"));
    }

    #[test]
    fn expired_nonces_are_forgotten_on_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ReplayStore::open(dir.path()).unwrap();
        s.record("old", NOW + time::Duration::minutes(1), NOW)
            .unwrap();
        s.record(
            "new",
            NOW + time::Duration::hours(1),
            NOW + time::Duration::minutes(2),
        )
        .unwrap();
        let s = ReplayStore::open(dir.path()).unwrap();
        assert!(!s.seen("old") && s.seen("new"));
    }

    #[test]
    fn unreadable_store_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NONCE_FILE), b"{\"n1\":").unwrap();
        assert!(ReplayStore::open(dir.path()).is_err());
    }
}

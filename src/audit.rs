//! The audit log: an append-only, hash-chained JSON-lines file (`audit.log` in the state dir).
//!
//! Every configuration change, key operation (keygen, rotation, wrong-key refusal), corrupt
//! outbox set aside and retention purge is one line. Each line carries the SHA-256 of the line
//! before it, so removing or editing a line breaks the chain, which [`verify`] reports. The
//! log holds no secrets and no NHS Numbers: only ids, counts and paths.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub const FILE_NAME: &str = "audit.log";

/// The hash the first entry chains to.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub event: String,
    pub details: serde_json::Value,
    pub prev: String,
    pub hash: String,
}

fn entry_hash(
    seq: u64,
    time: &OffsetDateTime,
    event: &str,
    details: &serde_json::Value,
    prev: &str,
) -> String {
    let time = time.unix_timestamp_nanos();
    let body = serde_json::json!([seq, time.to_string(), event, details, prev]).to_string();
    hex::encode(digest(&SHA256, body.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: cannot write the audit log: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {why}")]
    Broken {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// An open audit log. Appends are serialized by a mutex and synced to disk.
pub struct AuditLog {
    path: PathBuf,
    state: Mutex<(u64, String)>,
}

impl AuditLog {
    /// Opens (creating with mode 0600) the log in `dir`, continuing its chain.
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        let path = dir.join(FILE_NAME);
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (mut seq, mut prev) = (0, GENESIS.to_string());
        if path.exists() {
            let file = File::open(&path).map_err(io)?;
            for line in BufReader::new(file).lines() {
                let line = line.map_err(io)?;
                if let Ok(e) = serde_json::from_str::<Entry>(&line) {
                    seq = e.seq;
                    prev = e.hash;
                }
            }
        }
        Ok(AuditLog {
            path,
            state: Mutex::new((seq, prev)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event. `details` must hold no secrets.
    pub fn record(&self, event: &str, details: serde_json::Value) -> Result<(), AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let seq = state.0 + 1;
        let time = OffsetDateTime::now_utc();
        let hash = entry_hash(seq, &time, event, &details, &state.1);
        let entry = Entry {
            seq,
            time,
            event: event.to_string(),
            details,
            prev: state.1.clone(),
            hash: hash.clone(),
        };
        let mut line = serde_json::to_string(&entry).map_err(|e| io(std::io::Error::other(e)))?;
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(io)?;
        file.write_all(line.as_bytes())
            .and_then(|_| file.sync_data())
            .map_err(io)?;
        *state = (seq, hash);
        tracing::info!(audit_seq = seq, event, "audit");
        Ok(())
    }

    /// Like [`AuditLog::record`], but a failure is logged rather than returned (for events
    /// that must not stop the daemon).
    pub fn note(&self, event: &str, details: serde_json::Value) {
        if let Err(e) = self.record(event, details) {
            tracing::error!(error = %e, event, "audit log write failed");
        }
    }
}

/// Checks the whole chain; returns the number of entries.
pub fn verify(path: &Path) -> Result<u64, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut prev = GENESIS.to_string();
    let mut count = 0;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        let broken = |why: String| AuditError::Broken {
            path: path.to_path_buf(),
            line: i + 1,
            why,
        };
        let e: Entry =
            serde_json::from_str(&line).map_err(|e| broken(format!("not an audit entry: {e}")))?;
        if e.prev != prev {
            return Err(broken(
                "chain broken: an entry before this one was removed or changed".into(),
            ));
        }
        if entry_hash(e.seq, &e.time, &e.event, &e.details, &e.prev) != e.hash {
            return Err(broken("entry was modified after it was written".into()));
        }
        prev = e.hash;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_chain_verifies_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        AuditLog::open(dir.path())
            .unwrap()
            .record("keygen", serde_json::json!({"path": "/x"}))
            .unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.record("config_applied", serde_json::json!({"version": 2}))
            .unwrap();
        assert_eq!(verify(log.path()).unwrap(), 2);
    }

    #[test]
    fn audit_detects_an_edited_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.record("purge", serde_json::json!({"rows": 10}))
            .unwrap();
        log.record("purge", serde_json::json!({"rows": 20}))
            .unwrap();
        let text = std::fs::read_to_string(log.path())
            .unwrap()
            .replace("\"rows\":10", "\"rows\":99");
        std::fs::write(log.path(), text).unwrap();
        let e = verify(log.path()).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("modified"), "{e}");
    }

    #[test]
    fn audit_detects_a_removed_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for i in 0..3 {
            log.record("purge", serde_json::json!({ "rows": i }))
                .unwrap();
        }
        let text = std::fs::read_to_string(log.path()).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(log.path(), kept.join("\n") + "\n").unwrap();
        assert!(verify(log.path())
            .unwrap_err()
            .to_string()
            .contains("chain broken"));
    }

    #[test]
    fn audit_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.record("x", serde_json::json!({})).unwrap();
        assert_eq!(
            std::fs::metadata(log.path()).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

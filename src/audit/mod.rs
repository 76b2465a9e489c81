//! The audit log: an append-only, MAC-chained JSON-lines file (`audit.log` in the state dir)
//! that nobody without the hub's master key can rewrite unnoticed.
//!
//! - **One writer per process.** [`AuditLog`] is opened once and shared (`Arc`) by everything
//!   that audits; its mutex orders appends, so sequence numbers only grow and never fork.
//! - **MACed and chained.** Each line carries HMAC-SHA256 (key derived from the master key by
//!   HKDF with its own salt and label, [`line::MAC_KEY_LABEL`]) over the whole entry, which
//!   includes its sequence number and `prev`, the MAC of the entry before. Editing, removing,
//!   reordering or re-computing entries without the key breaks a MAC or a link.
//! - **Head in the outbox.** The last (sequence, MAC) is also written to the outbox's `meta`
//!   after each append ([`head`]), so lines cut from the end are detected too.
//! - **Checked at every start** ([`AuditLog::attach`]): a break is logged, raised as a
//!   technical alarm and recorded in the chain (once per break); the daemon keeps running.
//! - **Migration.** A log of the earlier plain SHA-256 format is checked the old way and the
//!   MAC chain starts with an `audit_chain_migrated` entry naming the old head.
//!
//! Entries hold no secrets and no NHS Numbers: only ids (device, patient pseudonym, alert),
//! counts, paths and reasons. `vitalgate audit verify` and `vitalgate audit export` ([`cli`])
//! read the log back.

pub mod cli;
pub mod events;
pub mod forward;
pub mod head;
pub mod line;
pub mod walk;
pub mod watch;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ring::hmac;
use time::OffsetDateTime;

use crate::store::MasterKey;
pub use head::{Head, HeadStore};
pub use walk::{Break, Walk};

pub const FILE_NAME: &str = "audit.log";

/// Breaks listed in one `audit_chain_broken` entry at most (a whole file rewritten without
/// the key breaks every line); the rest are counted.
const MAX_BREAKS_RECORDED: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: cannot write the audit log: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot read the audit log: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: audit log broken: first bad {first}")]
    Broken { path: PathBuf, first: Break },
    #[error("cannot derive the audit MAC key from the master key: {0}")]
    Key(#[from] crate::store::KeyError),
}

/// What the check at start found (see [`AuditLog::attach`]).
#[derive(Debug, Default)]
pub struct StartCheck {
    /// Authentic entries in the file.
    pub entries: u64,
    /// Breaks found now and recorded in the chain by this start.
    pub new_breaks: Vec<Break>,
    /// Breaks already recorded by an earlier start.
    pub known_breaks: usize,
    /// The plain SHA-256 log was migrated to a MAC chain.
    pub migrated: bool,
}

struct State {
    next_seq: u64,
    prev: String,
    mac_from: Option<u64>,
    /// Writes heads to the outbox while attached.
    head: Option<head::HeadWriter>,
    /// The file lacks its final newline (a write cut short): the next append adds it first.
    unterminated: bool,
    started: bool,
    /// The whole log was checked by an earlier `attach` of this writer (a reload's pipeline
    /// only re-attaches the head).
    checked: bool,
}

/// The open audit log: the process's one writer.
pub struct AuditLog {
    path: PathBuf,
    key: hmac::Key,
    state: Mutex<State>,
    broken: Arc<AtomicBool>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({})", self.path.display())
    }
}

impl AuditLog {
    /// Opens (creating the directory; the file is created 0600 on first append) the log in
    /// `dir`, continuing its chain. Nothing is checked against the outbox until [`attach`].
    ///
    /// Under a key that is not the hub's (a start refused for a wrong key), entries are still
    /// appended: they are evidence, and the hub's key later reports them as breaks.
    ///
    /// [`attach`]: AuditLog::attach
    pub fn open(dir: &Path, master: &MasterKey) -> Result<AuditLog, AuditError> {
        let path = dir.join(FILE_NAME);
        // Private like the rest of the state directory (the daemon may open the log first).
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|source| AuditError::Io {
                path: path.clone(),
                source,
            })?;
        let key = master.audit_mac_key(line::MAC_KEY_LABEL)?;
        let w = walk::walk(&path, &key, None).map_err(|source| AuditError::Read {
            path: path.clone(),
            source,
        })?;
        let (next_seq, prev) = w.continuation(None);
        Ok(AuditLog {
            state: Mutex::new(State {
                next_seq,
                prev,
                mac_from: w.mac_from,
                head: None,
                unterminated: w.unterminated,
                started: false,
                checked: false,
            }),
            path,
            key,
            broken: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Set once a start check found a break not recorded before (drives the technical alarm).
    pub fn broken_flag(&self) -> Arc<AtomicBool> {
        self.broken.clone()
    }

    /// For `status`: the last entry written (the head) and whether a break was found.
    pub fn status(&self) -> serde_json::Value {
        let state = self.lock();
        let last = state.mac_from.map(|_| state.next_seq.saturating_sub(1));
        serde_json::json!({
            "last_seq": last,
            "last_mac": last.map(|_| state.prev.clone()),
            "chain_broken": self.chain_broken(),
        })
    }

    /// Whether this process found the chain broken (see [`AuditLog::broken_flag`]).
    pub fn chain_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Checks the whole log against `store`'s head (the outbox, whose key check has passed),
    /// records any new break and any migration in the chain, and from then on writes the
    /// head to `store` after every append. Never fails for a broken log: that is reported.
    pub fn attach(&self, mut store: Box<dyn HeadStore>) -> Result<StartCheck, AuditError> {
        let mut state = self.lock();
        // The previous pipeline's head writer flushes and ends before the head is read.
        drop(state.head.take());
        if state.checked {
            let writer = head::HeadWriter::start(store).map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?;
            if let (Some(mac_from), Some(seq)) = (state.mac_from, state.next_seq.checked_sub(1)) {
                writer.send(Head {
                    seq,
                    mac: state.prev.clone(),
                    mac_from,
                });
            }
            state.head = Some(writer);
            return Ok(StartCheck::default());
        }
        state.checked = true;
        let head = match store.load() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "audit head in the outbox unreadable; checking the log file alone");
                None
            }
        };
        let w = walk::walk(&self.path, &self.key, head.as_ref()).map_err(|source| {
            AuditError::Read {
                path: self.path.clone(),
                source,
            }
        })?;
        let (next_seq, prev) = w.continuation(head.as_ref());
        state.next_seq = next_seq;
        state.prev = prev;
        state.mac_from = head.as_ref().map(|h| h.mac_from).or(w.mac_from);
        state.unterminated = w.unterminated;
        state.head = Some(
            head::HeadWriter::start(store).map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?,
        );
        let new_breaks = w.new_breaks();
        let mut check = StartCheck {
            entries: w.entries,
            known_breaks: w.breaks.len() - new_breaks.len(),
            migrated: false,
            new_breaks: Vec::new(),
        };
        let mut appended = false;
        if w.legacy > 0 && w.mac_from.is_none() && head.is_none() {
            let (legacy_seq, legacy_hash) = w.last.clone().unwrap_or_default();
            self.append(
                &mut state,
                "audit_chain_migrated",
                serde_json::json!({
                    "from": "sha256 chain", "to": "hmac-sha256 chain",
                    "legacy_entries": w.legacy, "legacy_head_seq": legacy_seq, "legacy_head_hash": legacy_hash,
                }),
            )?;
            check.migrated = true;
            appended = true;
        }
        if !new_breaks.is_empty() {
            self.broken.store(true, Ordering::SeqCst);
            for b in new_breaks.iter().take(5) {
                tracing::error!(log = %self.path.display(), "AUDIT LOG BROKEN: {b}");
            }
            let listed: Vec<&Break> = new_breaks.iter().take(MAX_BREAKS_RECORDED).collect();
            self.append(
                &mut state,
                walk::BROKEN_EVENT,
                serde_json::json!({
                    "breaks": listed,
                    "more_breaks": new_breaks.len() - listed.len(),
                    "first": new_breaks[0].to_string(),
                }),
            )?;
            appended = true;
        }
        if !appended {
            // The head catches up with the file (a crash between append and head write, a
            // new outbox, or the first start with a head at all).
            if let (Some((seq, mac)), Some(from)) = (&w.last, state.mac_from) {
                let behind = head.as_ref().is_none_or(|h| h.seq < *seq);
                if behind && w.mac_from.is_some() {
                    if let Some(hw) = &state.head {
                        hw.send(Head {
                            seq: *seq,
                            mac: mac.clone(),
                            mac_from: from,
                        });
                    }
                }
            }
        }
        check.new_breaks = new_breaks;
        Ok(check)
    }

    /// Stops writing heads (the pipeline's outbox is closing); queued heads are written first.
    pub fn detach(&self) {
        let writer = self.lock().head.take();
        drop(writer);
    }

    /// Appends one event and returns its sequence number. `details` must hold no secrets and
    /// no NHS Numbers.
    pub fn record(&self, event: &str, details: serde_json::Value) -> Result<u64, AuditError> {
        let mut state = self.lock();
        self.append(&mut state, event, details)
    }

    /// Like [`AuditLog::record`], but a failure is logged rather than returned (for events
    /// that must not stop the daemon).
    pub fn note(&self, event: &str, details: serde_json::Value) {
        if let Err(e) = self.record(event, details) {
            tracing::error!(error = %e, event, "audit log write failed");
        }
    }

    /// Records `daemon_started` once per writer, however many pipelines it serves (reloads).
    pub fn note_started(&self, details: serde_json::Value) {
        let first = !std::mem::replace(&mut self.lock().started, true);
        if first {
            self.note("daemon_started", details);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// File first (appended and fsynced), then the head: see [`head`].
    fn append(
        &self,
        state: &mut State,
        event: &str,
        details: serde_json::Value,
    ) -> Result<u64, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut details = details;
        events::scrub_nhs_numbers(&mut details);
        let seq = state.next_seq;
        let time = OffsetDateTime::now_utc();
        let (line, mac) = line::seal(&self.key, seq, time, event, &details, &state.prev)
            .map_err(|e| io(std::io::Error::other(e)))?;
        let mut bytes = Vec::with_capacity(line.len() + 2);
        if state.unterminated {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(io)?;
        file.write_all(&bytes)
            .and_then(|_| file.sync_data())
            .map_err(io)?;
        state.unterminated = false;
        state.next_seq = seq + 1;
        state.prev = mac.clone();
        let mac_from = *state.mac_from.get_or_insert(seq);
        if let Some(hw) = &state.head {
            hw.send(Head { seq, mac, mac_from });
        }
        tracing::info!(audit_seq = seq, event, "audit");
        Ok(seq)
    }
}

/// Checks the log file at `path` alone (no outbox head) under `master`; returns the number of
/// authentic entries, or the first break. `vitalgate audit verify` also checks the head.
pub fn verify(path: &Path, master: &MasterKey) -> Result<u64, AuditError> {
    let key = master.audit_mac_key(line::MAC_KEY_LABEL)?;
    let w = walk::walk(path, &key, None).map_err(|source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    match w.breaks.into_iter().next() {
        None => Ok(w.entries),
        Some(first) => Err(AuditError::Broken {
            path: path.to_path_buf(),
            first,
        }),
    }
}

#[cfg(test)]
mod tests;

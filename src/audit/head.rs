//! The chain's head (last sequence number and MAC), kept a second time in the outbox
//! database so a log file cut short is noticed: the file alone cannot say that its last
//! lines are missing.
//!
//! Order (crash consistency): a line is appended and fsynced first, then the head is written.
//! A crash in between leaves the file ahead of the head, which the next start accepts (every
//! line still carries a MAC only the hub can make) and catches up. A file *behind* the head
//! can only mean lost or removed lines.
//!
//! Head writes go to the outbox from a thread of their own: an entry recorded by a thread
//! that holds the outbox's write transaction (the ingest writer, auditing an alert) must not
//! wait for that same lock.

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::store::Outbox;

/// `seq` (u64 big-endian), `mac` (32 bytes), `mac_from` (u64 big-endian).
const ENCODED_LEN: usize = 8 + 32 + 8;

/// The last entry written: its sequence number and MAC, and the first sequence number that
/// carries a MAC (earlier ones are from the plain SHA-256 format, before migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub mac: String,
    pub mac_from: u64,
}

impl Head {
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mac = hex::decode(&self.mac).ok().filter(|m| m.len() == 32)?;
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&mac);
        out.extend_from_slice(&self.mac_from.to_be_bytes());
        Some(out)
    }

    pub fn decode(bytes: &[u8]) -> Option<Head> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let seq = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let mac_from = u64::from_be_bytes(bytes[40..].try_into().ok()?);
        Some(Head {
            seq,
            mac: hex::encode(&bytes[8..40]),
            mac_from,
        })
    }
}

/// Where the head is kept: the outbox in the daemon, anything in tests.
pub trait HeadStore: Send {
    fn load(&mut self) -> Result<Option<Head>, String>;
    fn save(&mut self, head: &Head) -> Result<(), String>;
}

impl HeadStore for Outbox {
    fn load(&mut self) -> Result<Option<Head>, String> {
        match self.audit_head().map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(bytes) => Head::decode(&bytes)
                .map(Some)
                .ok_or_else(|| "the audit head in the outbox is not 48 bytes".to_string()),
        }
    }

    fn save(&mut self, head: &Head) -> Result<(), String> {
        let bytes = head
            .encode()
            .ok_or_else(|| "BUG: audit head MAC is not 32 bytes of hex".to_string())?;
        self.set_audit_head(&bytes).map_err(|e| e.to_string())
    }
}

/// The thread that writes heads, latest first: a backlog collapses to its newest head.
pub struct HeadWriter {
    tx: Option<mpsc::Sender<Head>>,
    thread: Option<JoinHandle<()>>,
}

impl HeadWriter {
    pub fn start(mut store: Box<dyn HeadStore>) -> std::io::Result<HeadWriter> {
        let (tx, rx) = mpsc::channel::<Head>();
        let thread = std::thread::Builder::new()
            .name("audit-head".into())
            .spawn(move || {
                while let Ok(mut head) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        head = newer;
                    }
                    if let Err(e) = store.save(&head) {
                        tracing::error!(error = %e, seq = head.seq, "cannot record the audit head in the outbox; the log file stays ahead of it");
                    }
                }
            })?;
        Ok(HeadWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn send(&self, head: Head) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(head);
        }
    }
}

impl Drop for HeadWriter {
    /// Writes what is queued, then ends: after a clean stop the head matches the file.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_survives_encoding_and_a_wrong_length_is_refused() {
        let head = Head {
            seq: 42,
            mac: "ab".repeat(32),
            mac_from: 7,
        };
        assert_eq!(Head::decode(&head.encode().unwrap()), Some(head));
        assert_eq!(Head::decode(&[0; 47]), None);
    }
}

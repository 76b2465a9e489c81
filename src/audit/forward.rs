//! Forwarding the audit log to the platform (`{prefix}/gw/{gw}/audit`, QoS 1, at-least-once):
//! the log file is the queue, and a cursor kept in the outbox's `meta` says how far the
//! platform has acknowledged it.
//!
//! Why a cursor and not a copy of every entry as an outbox row: `audit.log` is already
//! appended and fsynced before anything else sees an entry, it is MACed and chained, and it
//! is kept anyway. A second, encrypted copy of each entry in the outbox would double the
//! SD-card writes of every audited event and add a second truth to reconcile. The cursor is
//! one integer, moved forward only after the broker's PUBACK `Success` for every entry up to
//! it (`uplink::audit_lane`); a crash or a lost cursor write re-sends entries after it
//! (duplicates, never gaps). Each entry goes out as its line exactly as written, so the
//! platform can check every MAC link (`seq`, `prev`, `mac`) with nothing re-serialized.
//!
//! Lines that are not an entry (no `seq`: garbage, a tampered line) are not forwarded: the
//! start check records every break in the chain itself (`audit_chain_broken`), and that
//! entry is forwarded like any other. A line without its newline is not complete yet and is
//! read again later.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::store::Outbox;
use crate::uplink::audit_lane::{AuditEntry, AuditSource};

/// The audit log as the publisher reads it, and the cursor in the outbox.
pub struct LogFeed {
    path: PathBuf,
    outbox: Outbox,
    /// Where the line after `after_seq` starts, when known (saves re-reading the file).
    resume: Option<(u64, u64)>,
}

impl LogFeed {
    /// `outbox` is a connection of its own (the cursor is written from the publisher's task).
    pub fn new(path: &Path, outbox: Outbox) -> LogFeed {
        LogFeed {
            path: path.to_path_buf(),
            outbox,
            resume: None,
        }
    }

    fn read(&mut self, after: u64, limit: usize) -> std::io::Result<Vec<AuditEntry>> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let start = match self.resume {
            Some((seq, offset)) if seq == after && offset <= len => offset,
            _ => 0,
        };
        file.seek(SeekFrom::Start(start))?;
        let mut reader = BufReader::new(file);
        let mut offset = start;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while out.len() < limit {
            buf.clear();
            let n = (&mut reader)
                .take(super::walk::MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)?;
            if n > super::walk::MAX_LINE && buf.last() != Some(&b'\n') {
                // Not an entry (the walk lists it as a break): passed over whole, once its
                // end is in the file.
                let mut rest = Vec::new();
                let more = reader.read_until(b'\n', &mut rest)?;
                if rest.last() != Some(&b'\n') {
                    break;
                }
                offset += (n + more) as u64;
                continue;
            }
            if n == 0 || buf.last() != Some(&b'\n') {
                break; // the end, or a line still being written
            }
            offset += n as u64;
            buf.pop();
            let Some(seq) = seq_of(&buf) else { continue };
            if seq <= after {
                continue;
            }
            out.push(AuditEntry {
                seq,
                line: buf.clone(),
            });
            self.resume = Some((seq, offset));
        }
        if out.is_empty() {
            self.resume = Some((after, offset));
        }
        Ok(out)
    }
}

/// The `seq` of an entry's line, or `None` when the line is not an entry.
fn seq_of(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_slice::<Seq>(line).ok().map(|s| s.seq)
}

impl AuditSource for LogFeed {
    fn forwarded(&mut self) -> Result<u64, String> {
        self.outbox.audit_forwarded().map_err(|e| e.to_string())
    }

    fn entries_after(&mut self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, String> {
        self.read(after, limit)
            .map_err(|e| format!("{}: cannot read the audit log: {e}", self.path.display()))
    }

    fn set_forwarded(&mut self, seq: u64) -> Result<(), String> {
        self.outbox
            .set_audit_forwarded(seq)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MasterKey;
    use std::io::Write;

    fn feed(dir: &Path) -> LogFeed {
        feed_under(dir, &MasterKey::ephemeral().unwrap())
    }

    fn feed_under(dir: &Path, key: &MasterKey) -> LogFeed {
        let (outbox, _) = Outbox::open(&dir.join("outbox.db"), key).unwrap();
        LogFeed::new(&dir.join("audit.log"), outbox)
    }

    fn append(dir: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("audit.log"))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn seqs(v: &[AuditEntry]) -> Vec<u64> {
        v.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn entries_after_the_cursor_come_back_in_file_order_with_their_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        append(
            dir.path(),
            "{\"seq\":1,\"x\":1}\n{\"seq\":2, \"x\" : 2}\n{\"seq\":3}\n",
        );
        let mut f = feed(dir.path());
        let got = f.entries_after(1, 10).unwrap();
        assert_eq!(seqs(&got), [2, 3]);
        assert_eq!(got[0].line, b"{\"seq\":2, \"x\" : 2}");
    }

    #[test]
    fn a_line_without_its_newline_is_not_read_until_it_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "{\"seq\":1}\n{\"seq\":2");
        let mut f = feed(dir.path());
        assert_eq!(seqs(&f.entries_after(0, 10).unwrap()), [1]);
        assert!(f.entries_after(1, 10).unwrap().is_empty());
        append(dir.path(), "}\n{\"seq\":3}\n");
        assert_eq!(seqs(&f.entries_after(1, 10).unwrap()), [2, 3]);
    }

    #[test]
    fn lines_that_are_not_entries_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "{\"seq\":1}\ngarbage\n\n{\"seq\":4}\n");
        let mut f = feed(dir.path());
        assert_eq!(seqs(&f.entries_after(0, 10).unwrap()), [1, 4]);
    }

    #[test]
    fn the_limit_is_kept_and_the_next_read_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (1..=5).map(|i| format!("{{\"seq\":{i}}}\n")).collect();
        append(dir.path(), &text);
        let mut f = feed(dir.path());
        assert_eq!(seqs(&f.entries_after(0, 2).unwrap()), [1, 2]);
        assert_eq!(seqs(&f.entries_after(2, 2).unwrap()), [3, 4]);
        // A rewind (after a failure) reads from the file's start again.
        assert_eq!(seqs(&f.entries_after(1, 2).unwrap()), [2, 3]);
    }

    #[test]
    fn a_log_cut_shorter_than_the_resume_point_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "{\"seq\":1}\n{\"seq\":2}\n");
        let mut f = feed(dir.path());
        assert_eq!(seqs(&f.entries_after(0, 10).unwrap()), [1, 2]);
        std::fs::write(dir.path().join("audit.log"), "{\"seq\":3}\n").unwrap();
        assert_eq!(seqs(&f.entries_after(2, 10).unwrap()), [3]);
    }

    #[test]
    fn the_cursor_survives_reopening_and_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::ephemeral().unwrap();
        let mut f = feed_under(dir.path(), &key);
        assert_eq!(f.forwarded().unwrap(), 0);
        f.set_forwarded(5).unwrap();
        f.set_forwarded(3).unwrap();
        drop(f);
        assert_eq!(feed_under(dir.path(), &key).forwarded().unwrap(), 5);
    }

    #[test]
    fn a_missing_log_has_no_entries() {
        let dir = tempfile::tempdir().unwrap();
        assert!(feed(dir.path()).entries_after(0, 10).unwrap().is_empty());
    }
}

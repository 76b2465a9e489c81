//! Reading a log back and checking every line: its MAC (or, before migration, its plain
//! hash), its link to the line before (sequence number + 1, `prev` = that line's MAC) and the
//! head kept in the outbox.
//!
//! The walk does not stop at the first break: after one it picks the chain up again at the
//! next authentic line, so every break is listed once (the daemon records them in the chain,
//! and a break already recorded is not raised again at the next start).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use ring::hmac;
use serde::Serialize;

use super::head::Head;
use super::line::{self, Entry, GENESIS};

/// The event under which detected breaks are recorded in the chain itself.
pub const BROKEN_EVENT: &str = "audit_chain_broken";

/// One place where the log is not what the hub wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// 1-based line in the file (one past the last line for entries missing at the end).
    pub line: usize,
    /// The entry's sequence number, when the line has one.
    pub seq: Option<u64>,
    pub why: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "entry seq {seq} (line {}): {}", self.line, self.why),
            None => write!(f, "line {}: {}", self.line, self.why),
        }
    }
}

/// What a walk over the whole file found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Lines in the file, a final line without its newline included.
    pub lines: usize,
    /// Entries whose MAC (or legacy hash) verifies.
    pub entries: u64,
    /// Of those, entries in the plain SHA-256 format of earlier versions.
    pub legacy: u64,
    /// Lines that carry a `mac` field, and how many of them verify under the key.
    pub mac_lines: u64,
    pub mac_verified: u64,
    pub breaks: Vec<Break>,
    /// Breaks already recorded in the chain (line, seq) by an authentic `audit_chain_broken`.
    pub acknowledged: Vec<(usize, Option<u64>)>,
    /// The highest sequence number on any line, authentic or not.
    pub max_seq: u64,
    /// The last authentic entry: its sequence number and MAC (or legacy hash).
    pub last: Option<(u64, String)>,
    /// The first authentic entry that carries a MAC.
    pub mac_from: Option<u64>,
    /// The file does not end with a newline (a write cut short).
    pub unterminated: bool,
}

impl Walk {
    /// Breaks not yet recorded in the chain.
    pub fn new_breaks(&self) -> Vec<Break> {
        self.breaks
            .iter()
            .filter(|b| !self.acknowledged.contains(&(b.line, b.seq)))
            .cloned()
            .collect()
    }

    /// Whether the key could have written this log: some MAC verifies, or there is none yet.
    pub fn key_fits(&self) -> bool {
        self.mac_lines == 0 || self.mac_verified > 0
    }

    /// Where the next entry goes: a sequence number above every one seen (in the file or the
    /// head, so none is ever reused), chained to the newest authentic entry.
    pub fn continuation(&self, head: Option<&Head>) -> (u64, String) {
        let head_seq = head.map_or(0, |h| h.seq);
        let next = self.max_seq.max(head_seq).saturating_add(1);
        let last_seq = self.last.as_ref().map_or(0, |l| l.0);
        let prev = match (head, &self.last) {
            (Some(h), _) if h.seq > last_seq => h.mac.clone(),
            (_, Some((_, mac))) => mac.clone(),
            (_, None) => GENESIS.to_string(),
        };
        (next, prev)
    }
}

/// The longest line read as an entry (entries are a few hundred bytes); longer ones are
/// breaks, skipped without holding them in memory.
pub const MAX_LINE: usize = 1 << 20;

/// The file's lines one at a time: (1-based number, bytes without the newline, whether the
/// newline was there), or `Err(n)` for a line longer than [`MAX_LINE`].
pub struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    n: usize,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R) -> Self {
        Lines {
            reader,
            buf: Vec::new(),
            n: 0,
        }
    }

    #[allow(clippy::type_complexity)]
    pub fn next_line(&mut self) -> std::io::Result<Option<Result<(usize, &[u8], bool), usize>>> {
        self.buf.clear();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)?;
        if read == 0 {
            return Ok(None);
        }
        self.n += 1;
        let terminated = self.buf.last() == Some(&b'\n');
        if !terminated && self.buf.len() > MAX_LINE {
            // Skip the rest of the over-long line.
            loop {
                self.buf.clear();
                let more = (&mut self.reader)
                    .take(64 * 1024)
                    .read_until(b'\n', &mut self.buf)?;
                if more == 0 || self.buf.last() == Some(&b'\n') {
                    break;
                }
            }
            return Ok(Some(Err(self.n)));
        }
        if terminated {
            self.buf.pop();
        }
        Ok(Some(Ok((self.n, &self.buf, terminated))))
    }
}

/// Opens the log for reading; a missing file reads as empty.
pub fn open_lines(path: &Path) -> std::io::Result<Lines<Box<dyn BufRead>>> {
    let reader: Box<dyn BufRead> = match std::fs::File::open(path) {
        Ok(f) => Box::new(BufReader::new(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Box::new(std::io::empty()),
        Err(e) => return Err(e),
    };
    Ok(Lines::new(reader))
}

/// Walks the log at `path` (a missing file is an empty log), one line at a time.
pub fn walk(path: &Path, key: &hmac::Key, head: Option<&Head>) -> std::io::Result<Walk> {
    let mut lines = open_lines(path)?;
    let mut w = Walk::default();
    // The link the next line must make: (seq, mac or hash) of the line before, `None` after
    // a line that is not authentic (the chain is picked up again at the next one).
    let mut expect: Option<(u64, String)> = None;
    let mut head_match: Option<(usize, bool)> = None;
    while let Some(next) = lines.next_line()? {
        let (n, raw, terminated) = match next {
            Ok(l) => l,
            Err(n) => {
                w.lines = n;
                w.breaks.push(Break {
                    line: n,
                    seq: None,
                    why: format!("longer than {MAX_LINE} bytes: not an audit entry"),
                });
                expect = None;
                continue;
            }
        };
        w.lines = n;
        w.unterminated = !terminated;
        let mut bad = |seq: Option<u64>, why: String| {
            w.breaks.push(Break { line: n, seq, why });
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            bad(None, "not UTF-8 text: not an audit entry".into());
            expect = None;
            continue;
        };
        let e: Entry = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(err) => {
                let why = if !terminated {
                    format!("incomplete entry (a write cut short, or an edit): {err}")
                } else {
                    format!("not an audit entry: {err}")
                };
                bad(None, why);
                expect = None;
                continue;
            }
        };
        w.max_seq = w.max_seq.max(e.seq);
        let seq = Some(e.seq);
        let own = if let Some(mac) = &e.mac {
            w.mac_lines += 1;
            if !line::mac_verifies(key, text) {
                bad(seq, "its MAC does not match: changed after it was written, or written without the hub's key".into());
                expect = None;
                continue;
            }
            w.mac_verified += 1;
            w.mac_from.get_or_insert(e.seq);
            if let Some(h) = head.filter(|h| h.seq == e.seq) {
                head_match = Some((n, h.mac == *mac));
            }
            if e.event == BROKEN_EVENT {
                acknowledge(&e.details, &mut w.acknowledged);
            }
            mac.clone()
        } else if let Some(hash) = &e.hash {
            if let Some(from) = w.mac_from {
                bad(seq, format!("it carries no MAC, yet the chain carries MACs from seq {from}: written without the hub's key"));
                expect = None;
                continue;
            }
            if let Some(h) = head.filter(|h| e.seq >= h.mac_from) {
                bad(seq, format!("it carries no MAC, yet the outbox records MACs from seq {}: rewritten without the hub's key", h.mac_from));
                expect = None;
                continue;
            }
            if line::legacy_hash(&e) != *hash {
                bad(
                    seq,
                    "its hash does not match: changed after it was written".into(),
                );
                expect = None;
                continue;
            }
            w.legacy += 1;
            hash.clone()
        } else {
            bad(seq, "it carries neither a MAC nor a hash".into());
            expect = None;
            continue;
        };
        if let Some(why) = link_problem(n, &e, expect.as_ref()) {
            bad(seq, why);
        }
        w.entries += 1;
        expect = Some((e.seq, own.clone()));
        w.last = Some((e.seq, own));
    }
    if let Some(h) = head {
        let last_seq = w.last.as_ref().map_or(0, |l| l.0);
        if h.seq > w.max_seq {
            w.breaks.push(Break {
                line: w.lines + 1,
                seq: Some(h.seq + 1),
                why: format!(
                    "the log ends at seq {last_seq} but the outbox records seq {} as written: entries removed from the end",
                    h.seq
                ),
            });
        } else if let Some((n, false)) = head_match {
            w.breaks.push(Break {
                line: n,
                seq: Some(h.seq),
                why: "it is not the entry the outbox records as written under this sequence number: the log was rewritten".into(),
            });
        }
    }
    w.breaks.sort_by_key(|b| b.line);
    Ok(w)
}

/// Why an authentic entry does not follow the one before (`None` when it does).
fn link_problem(n: usize, e: &Entry, expect: Option<&(u64, String)>) -> Option<String> {
    match expect {
        None if n == 1 => (e.seq != 1 || e.prev != GENESIS).then(|| {
            format!(
                "the log starts at seq {} instead of seq 1: entries before it were removed",
                e.seq
            )
        }),
        // After a line that is not authentic: picked up again here.
        None => None,
        Some((seq, mac)) => {
            if e.seq == seq + 1 && e.prev == *mac {
                None
            } else if e.seq <= *seq {
                Some(format!(
                    "out of order: seq {} follows seq {seq} (entries reordered or replayed)",
                    e.seq
                ))
            } else if e.seq > seq + 1 {
                Some(format!(
                    "entries seq {}..={} are missing before it",
                    seq + 1,
                    e.seq - 1
                ))
            } else {
                Some("it does not chain to the entry before it: that entry was replaced".into())
            }
        }
    }
}

fn acknowledge(details: &serde_json::Value, out: &mut Vec<(usize, Option<u64>)>) {
    let Some(list) = details.get("breaks").and_then(|b| b.as_array()) else {
        return;
    };
    for b in list {
        if let Some(line) = b.get("line").and_then(|l| l.as_u64()) {
            out.push((line as usize, b.get("seq").and_then(|s| s.as_u64())));
        }
    }
}

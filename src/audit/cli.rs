//! `vitalgate audit verify` and `vitalgate audit export`: the log read back by a person or a
//! script, beside a running daemon (the head is read before the file, and the daemon writes
//! the file before the head, so a concurrent append never looks like a truncation).

use std::io::Write;
use std::path::Path;

use time::OffsetDateTime;

use super::head::Head;
use super::line::{self, Entry};
use super::walk::{self, Walk};
use super::{AuditError, FILE_NAME};
use crate::store::MasterKey;

/// What `verify` found.
#[derive(Debug)]
pub struct Verified {
    pub walk: Walk,
    pub head: Option<Head>,
}

impl Verified {
    pub fn intact(&self) -> bool {
        self.walk.breaks.is_empty()
    }
}

/// Checks the log in `state_dir` against the head kept in the outbox at `outbox`.
pub fn verify(state_dir: &Path, outbox: &Path, master: &MasterKey) -> Result<Verified, AuditError> {
    let path = state_dir.join(FILE_NAME);
    let key = master.audit_mac_key(line::MAC_KEY_LABEL)?;
    let read_err = |e: String| AuditError::Read {
        path: outbox.to_path_buf(),
        source: std::io::Error::other(e),
    };
    let head = match crate::store::outbox::audit_head_readonly(outbox)
        .map_err(|e| read_err(e.to_string()))?
    {
        None => None,
        Some(bytes) => Some(
            Head::decode(&bytes)
                .ok_or_else(|| read_err("the audit head in the outbox is not 48 bytes".into()))?,
        ),
    };
    let walk = walk::walk(&path, &key, head.as_ref()).map_err(|source| AuditError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(Verified { walk, head })
}

/// The human report of `verify`: one summary line, then every break.
pub fn write_report(path: &Path, v: &Verified, out: &mut dyn Write) -> std::io::Result<()> {
    let w = &v.walk;
    let head = match &v.head {
        Some(h) => format!("the outbox records seq {} as the last written", h.seq),
        None => "no head recorded in the outbox".to_string(),
    };
    if v.intact() {
        let last = w.last.as_ref().map_or(0, |l| l.0);
        writeln!(
            out,
            "{}: intact: {} entries (last seq {last}, {} in the old unkeyed format); {head}",
            path.display(),
            w.entries,
            w.legacy
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{}: BROKEN: {} problem(s); first bad {}; {head}",
        path.display(),
        w.breaks.len(),
        w.breaks[0]
    )?;
    if !w.key_fits() {
        writeln!(
            out,
            "no entry verifies under this key: is the configured key the hub's master key?"
        )?;
    }
    for b in &w.breaks {
        let known = if w.acknowledged.contains(&(b.line, b.seq)) {
            " (recorded by the daemon)"
        } else {
            ""
        };
        writeln!(out, "  {b}{known}")?;
    }
    Ok(())
}

/// What `export` wrote and skipped.
#[derive(Debug, Default)]
pub struct Exported {
    pub written: u64,
    /// Lines that are not audit entries (1-based line numbers).
    pub unreadable: Vec<usize>,
}

/// Writes the entries with `since <= time < until` to `out`, one JSON object per line, exactly
/// as stored (so each still carries its MAC).
pub fn export(
    state_dir: &Path,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    out: &mut dyn Write,
) -> Result<Exported, AuditError> {
    let path = state_dir.join(FILE_NAME);
    let io = |source| AuditError::Read {
        path: path.clone(),
        source,
    };
    let mut lines = walk::open_lines(&path).map_err(io)?;
    let mut done = Exported::default();
    while let Some(next) = lines.next_line().map_err(io)? {
        let (n, raw) = match next {
            Ok((n, raw, _)) => (n, raw),
            Err(n) => {
                done.unreadable.push(n);
                continue;
            }
        };
        if raw.is_empty() {
            continue;
        }
        let entry = std::str::from_utf8(raw)
            .ok()
            .and_then(|t| serde_json::from_str::<Entry>(t).ok().map(|e| (t, e)));
        let Some((line, e)) = entry else {
            done.unreadable.push(n);
            continue;
        };
        if since.is_some_and(|s| e.time < s) || until.is_some_and(|u| e.time >= u) {
            continue;
        }
        writeln!(out, "{line}").map_err(io)?;
        done.written += 1;
    }
    Ok(done)
}

/// A time for `--since` / `--until`: RFC 3339 (`2026-01-31T08:00:00Z`) or a date
/// (`2026-01-31`, midnight UTC).
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &format)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| {
            format!(
                "{s:?} is not a time: use RFC 3339 (2026-01-31T08:00:00Z) or a date (2026-01-31)"
            )
        })
}

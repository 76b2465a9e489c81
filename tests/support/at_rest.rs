//! Searching a state directory for what must never be there in clear (NHS Numbers, reading
//! values, alert state): `tests/at_rest.rs` and the fleet's at-rest test.

use std::path::{Path, PathBuf};

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// (file, marker) for each marker found in clear in a file under `dir`.
pub fn in_clear(dir: &Path, markers: &[&str]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for file in files_under(dir) {
        let Ok(bytes) = std::fs::read(&file) else {
            continue; // removed meanwhile (the status temp file)
        };
        for m in markers {
            if bytes.windows(m.len()).any(|w| w == m.as_bytes()) {
                found.push((file.clone(), (*m).to_owned()));
            }
        }
    }
    found
}

//! One daemon per state dir: an exclusive `flock(2)` on `<state_dir>/vitalgate.lock`, held
//! for as long as the pipeline runs, with the holder's pid written in the file.
//!
//! Two daemons on one outbox both believe they own the row ids: the second one's commits
//! fail for ever (`UNIQUE constraint failed`) and its readings are not stored. The lock makes
//! the second one stop at start with the first one's pid, before it opens anything.
//!
//! Why `flock` and not a pid file alone: the kernel drops the lock when the process dies
//! (even by SIGKILL), so a stale file never blocks a restart; the pid in it is only there to
//! name the holder in the error.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name in the state dir.
pub const LOCK_FILE: &str = "vitalgate.lock";

/// Held while the daemon runs; the lock is released when this is dropped (or the process ends).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another vitalgate (pid {pid}) is already running with the state dir {dir}; stop it first (`systemctl stop vitalgate`), or give this one its own gateway.state_dir")]
    Held { dir: PathBuf, pid: String },
    #[error("{path}: cannot take the instance lock: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl InstanceLock {
    /// Takes the lock on `state_dir` without waiting; fails naming the holder's pid.
    pub fn acquire(state_dir: &Path) -> Result<InstanceLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        // `flock(2)` through rustix (std's `File::try_lock` needs Rust 1.89; MSRV is 1.85).
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = text.trim();
                let pid = if !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) {
                    pid.to_string()
                } else {
                    "unknown".to_string()
                };
                return Err(LockError::Held {
                    dir: state_dir.to_path_buf(),
                    pid,
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(InstanceLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_state_dir_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = InstanceLock::acquire(dir.path()).unwrap();
        let e = InstanceLock::acquire(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(held);
        InstanceLock::acquire(dir.path()).unwrap();
    }
}

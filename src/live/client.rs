//! The client end of the live socket, for `status`, `top` and the demo. Blocking, with
//! deadlines: a hung daemon makes `status` report it unreachable, never hang a probe.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::{LiveState, PROTOCOL};
use super::server::{Request, Response};

/// How long a request may take.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// Why the live state could not be read. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("{path}: no live socket: the daemon is not running on this state directory (systemctl status vitalgate)")]
    NotRunning { path: PathBuf },
    #[error("{path}: permission denied: run as the vitalgate user or a member of group vitalgate (sudo -u vitalgate vitalgate ...)")]
    Denied { path: PathBuf },
    #[error("{path}: the daemon did not answer within {secs} s: {source}")]
    NoAnswer {
        path: PathBuf,
        secs: u64,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Refused { path: PathBuf, message: String },
    #[error("{path}: unreadable answer from the daemon ({reason}); is this vitalgate the same version as the daemon?")]
    Protocol { path: PathBuf, reason: String },
}

/// A connection to the daemon's live socket.
pub struct LiveClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl LiveClient {
    pub fn connect(path: &Path) -> Result<LiveClient, LiveError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => LiveError::Denied {
                path: path.to_path_buf(),
            },
            _ => LiveError::NotRunning {
                path: path.to_path_buf(),
            },
        })?;
        let no_answer = |source| LiveError::NoAnswer {
            path: path.to_path_buf(),
            secs: DEADLINE.as_secs(),
            source,
        };
        stream.set_read_timeout(Some(DEADLINE)).map_err(no_answer)?;
        stream
            .set_write_timeout(Some(DEADLINE))
            .map_err(no_answer)?;
        let writer = stream.try_clone().map_err(no_answer)?;
        Ok(LiveClient {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Asks for the current state.
    pub fn state(&mut self) -> Result<LiveState, LiveError> {
        let no_answer = |source| LiveError::NoAnswer {
            path: self.path.clone(),
            secs: DEADLINE.as_secs(),
            source,
        };
        let mut req = serde_json::to_string(&Request {
            get: "state".into(),
        })
        .unwrap_or_default();
        req.push('\n');
        self.writer.write_all(req.as_bytes()).map_err(no_answer)?;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(no_answer)?;
        if n == 0 {
            return Err(LiveError::NotRunning {
                path: self.path.clone(),
            });
        }
        let protocol = |reason: String| LiveError::Protocol {
            path: self.path.clone(),
            reason,
        };
        let response: Response =
            serde_json::from_str(&line).map_err(|e| protocol(e.to_string()))?;
        match (response.ok, response.state) {
            (true, Some(s)) if s.protocol == PROTOCOL => Ok(*s),
            (true, Some(s)) => Err(protocol(format!(
                "live protocol {}, this client speaks {PROTOCOL}",
                s.protocol
            ))),
            _ => Err(LiveError::Refused {
                path: self.path.clone(),
                message: response.error.unwrap_or_else(|| "no state".into()),
            }),
        }
    }
}

/// Connects and reads the state once, retrying briefly while the daemon is still assembling
/// its first document.
pub fn fetch(path: &Path) -> Result<LiveState, LiveError> {
    let mut client = LiveClient::connect(path)?;
    let mut tries = 0;
    loop {
        match client.state() {
            Err(LiveError::Refused { .. }) if tries < 3 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

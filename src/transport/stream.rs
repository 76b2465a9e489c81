//! A byte stream from a path: regular file, FIFO, or character device.
//!
//! - **Regular file**: read from the committed offset, then followed for appended data. If
//!   the file shrinks (rotated or truncated), reading restarts at 0.
//! - **FIFO**: opened (which waits for a writer); at end of data it is reopened.
//! - **Character device** (a serial port driven by `stty`, a pty): reopened with backoff when
//!   it vanishes, so unplugging and replugging needs no restart.
//!
//! The caller owns decoding; this only produces chunks and tracks the offset of what it gave.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Backoff between reopen attempts: doubles from `MIN` up to `MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often a followed regular file is polled for appended data.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    File,
    Fifo,
    CharDevice,
    /// A serial port opened with its link settings ([`super::serial::SerialSource`]).
    SerialPort,
}

/// What [`StreamSource::next`] produced.
#[derive(Debug)]
pub enum Event {
    /// Bytes read. `offset_after` is the file offset after them (regular files only).
    Data {
        bytes: Vec<u8>,
        offset_after: Option<u64>,
    },
    /// The source was (re)opened.
    Opened {
        kind: SourceKind,
        resumed_at: Option<u64>,
    },
    /// The source went away or failed to open; the next call retries after `retry_in`.
    Lost { error: String, retry_in: Duration },
}

pub struct StreamSource {
    path: PathBuf,
    file: Option<(tokio::fs::File, SourceKind)>,
    offset: u64,
    backoff: Duration,
    buf: Vec<u8>,
}

impl StreamSource {
    /// `resume_offset`: where a regular file's committed data ends (from the outbox).
    pub fn new(path: &Path, resume_offset: Option<u64>) -> Self {
        StreamSource {
            path: path.to_path_buf(),
            file: None,
            offset: resume_offset.unwrap_or(0),
            backoff: BACKOFF_MIN,
            buf: vec![0u8; 8192],
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next event. Cancel-safe between events (drop the future to stop).
    pub async fn next(&mut self) -> Event {
        loop {
            let Some((file, kind)) = self.file.as_mut() else {
                return self.open().await;
            };
            let kind = *kind;
            match file.read(&mut self.buf).await {
                Ok(0) => match kind {
                    SourceKind::File => {
                        // Follow: detect truncation, else wait for appended data.
                        if let Ok(meta) = tokio::fs::metadata(&self.path).await {
                            if meta.len() < self.offset {
                                tracing::warn!(path = %self.path.display(), "file shrank (rotated or truncated); reading from the start");
                                self.file = None;
                                self.offset = 0;
                                continue;
                            }
                        } else {
                            self.file = None;
                            return self.lost("file removed".into());
                        }
                        tokio::time::sleep(FOLLOW_POLL).await;
                    }
                    SourceKind::Fifo => {
                        // The writer closed its end; reopen and wait for the next one.
                        self.file = None;
                    }
                    SourceKind::CharDevice | SourceKind::SerialPort => {
                        self.file = None;
                        return self.lost("device returned end of file (unplugged?)".into());
                    }
                },
                Ok(n) => {
                    self.backoff = BACKOFF_MIN;
                    let offset_after = match kind {
                        SourceKind::File => {
                            self.offset += n as u64;
                            Some(self.offset)
                        }
                        _ => None,
                    };
                    return Event::Data {
                        bytes: self.buf[..n].to_vec(),
                        offset_after,
                    };
                }
                Err(e) => {
                    self.file = None;
                    return self.lost(format!("read failed: {e}"));
                }
            }
        }
    }

    fn lost(&mut self, error: String) -> Event {
        let retry_in = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Event::Lost { error, retry_in }
    }

    async fn open(&mut self) -> Event {
        use std::os::unix::fs::FileTypeExt;
        let meta = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m,
            Err(e) => return self.lost(format!("cannot open {}: {e}", self.path.display())),
        };
        let ft = meta.file_type();
        let kind = if ft.is_fifo() {
            SourceKind::Fifo
        } else if ft.is_char_device() {
            SourceKind::CharDevice
        } else {
            SourceKind::File
        };
        let mut file = match tokio::fs::File::open(&self.path).await {
            Ok(f) => f,
            Err(e) => return self.lost(format!("cannot open {}: {e}", self.path.display())),
        };
        let mut resumed_at = None;
        if kind == SourceKind::File {
            if meta.len() < self.offset {
                self.offset = 0;
            }
            if let Err(e) = file.seek(std::io::SeekFrom::Start(self.offset)).await {
                return self.lost(format!("cannot seek {}: {e}", self.path.display()));
            }
            resumed_at = Some(self.offset);
        }
        self.file = Some((file, kind));
        Event::Opened { kind, resumed_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn regular_file_resumes_at_committed_offset_and_follows_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.jsonl");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut s = StreamSource::new(&p, Some(4));
        assert!(matches!(
            s.next().await,
            Event::Opened {
                kind: SourceKind::File,
                resumed_at: Some(4)
            }
        ));
        match s.next().await {
            Event::Data {
                bytes,
                offset_after,
            } => {
                assert_eq!(bytes, b"456789");
                assert_eq!(offset_after, Some(10));
            }
            e => panic!("{e:?}"),
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"ab")
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .unwrap()
        {
            Event::Data { bytes, .. } => assert_eq!(bytes, b"ab"),
            e => panic!("{e:?}"),
        }
    }

    #[tokio::test]
    async fn missing_path_is_lost_with_growing_backoff() {
        let mut s = StreamSource::new(Path::new("/nonexistent/dev/ttyX"), None);
        let Event::Lost { retry_in: a, error } = s.next().await else {
            panic!()
        };
        assert!(error.contains("/nonexistent/dev/ttyX"), "{error}");
        let Event::Lost { retry_in: b, .. } = s.next().await else {
            panic!()
        };
        assert!(b > a);
    }
}

//! A byte stream from a path: regular file, FIFO, or character device.
//!
//! - **Regular file**: read from the committed offset, then followed for appended data. If
//!   the file shrinks (rotated or truncated), reading restarts at 0.
//! - **FIFO**: opened without waiting for a writer; at end of data (the writer closed its end)
//!   it is reopened for the next writer.
//! - **Character device** (a serial port driven by `stty`, a pty): reopened with backoff when
//!   it vanishes, so unplugging and replugging needs no restart.
//!
//! FIFOs and character devices are opened `O_NONBLOCK` and read through the runtime's poller
//! ([`tokio::net::unix::pipe::Receiver`]), never on tokio's blocking pool: an `open` of a FIFO
//! with no writer, or a `read` from a writer that stays open but silent, would otherwise sit
//! in a blocking-pool thread that no cancellation reaches, and the runtime waits for those
//! threads when it shuts down, so SIGTERM would never complete. Here both are plain pending
//! futures, dropped on cancel. Regular files keep tokio's file reads: a regular file's read
//! never waits for a peer.
//!
//! The caller owns decoding; this only produces chunks and tracks the offset of what it gave.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::unix::pipe;

/// Backoff between reopen attempts: doubles from `MIN` up to `MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often a followed regular file is polled for appended data.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// `EPERM` (Linux, all architectures): what epoll says of a file it cannot poll.
const EPERM: i32 = 1;

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

/// An open source. Only regular files are read on tokio's blocking pool.
enum Reader {
    /// A regular file (reads return at once, with data or at end of file).
    File(tokio::fs::File),
    /// A FIFO or character device, non-blocking and polled: waiting for data is cancellable.
    Polled(pipe::Receiver),
}

impl Reader {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Reader::File(f) => f.read(buf).await,
            Reader::Polled(r) => r.read(buf).await,
        }
    }
}

pub struct StreamSource {
    path: PathBuf,
    file: Option<(Reader, SourceKind)>,
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
        if kind != SourceKind::File {
            // Never blocks: O_NONBLOCK, and a FIFO opened for reading needs no writer yet.
            // A character device is checked only by the stat above, hence `unchecked`.
            let opened = pipe::OpenOptions::new()
                .unchecked(kind == SourceKind::CharDevice)
                .open_receiver(&self.path);
            let reader = match opened {
                Ok(r) => Reader::Polled(r),
                // EPERM from epoll: a character device without poll support (e.g. /dev/zero)
                // never waits for a peer either, so it is read like a file.
                Err(e) if kind == SourceKind::CharDevice && e.raw_os_error() == Some(EPERM) => {
                    match tokio::fs::File::open(&self.path).await {
                        Ok(f) => Reader::File(f),
                        Err(e) => {
                            return self.lost(format!("cannot open {}: {e}", self.path.display()))
                        }
                    }
                }
                Err(e) => return self.lost(format!("cannot open {}: {e}", self.path.display())),
            };
            self.file = Some((reader, kind));
            return Event::Opened {
                kind,
                resumed_at: None,
            };
        }
        let mut file = match tokio::fs::File::open(&self.path).await {
            Ok(f) => f,
            Err(e) => return self.lost(format!("cannot open {}: {e}", self.path.display())),
        };
        if meta.len() < self.offset {
            self.offset = 0;
        }
        if let Err(e) = file.seek(std::io::SeekFrom::Start(self.offset)).await {
            return self.lost(format!("cannot seek {}: {e}", self.path.display()));
        }
        let resumed_at = Some(self.offset);
        self.file = Some((Reader::File(file), kind));
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

    fn mkfifo(dir: &Path) -> PathBuf {
        let p = dir.join("manual.jsonl");
        let st = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success(), "mkfifo: {st}");
        p
    }

    /// Opens `fifo` for writing on another thread (that open waits for a reader).
    fn writer(fifo: &Path) -> std::sync::mpsc::Receiver<std::fs::File> {
        let (tx, rx) = std::sync::mpsc::channel();
        let fifo = fifo.to_path_buf();
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            let _ = tx.send(f);
        });
        rx
    }

    /// Runs `test` on a runtime of its own in a thread, and waits for it *and the runtime's
    /// shutdown* at most 30 s: a FIFO open or read stuck on tokio's blocking pool holds that
    /// shutdown, and must fail the test instead of hanging it.
    fn on_own_runtime<F>(test: impl FnOnce() -> F + Send + 'static)
    where
        F: std::future::Future<Output = ()>,
    {
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(test());
            }));
            drop(rt);
            let _ = done_tx.send(outcome.is_ok());
        });
        let passed = done
            .recv_timeout(Duration::from_secs(30))
            .expect("the test or its runtime's shutdown did not finish within 30 s");
        assert!(passed, "the test panicked (see above)");
    }

    async fn next(s: &mut StreamSource) -> Event {
        tokio::time::timeout(Duration::from_secs(20), s.next())
            .await
            .expect("no event within 20 s")
    }

    #[test]
    fn fifo_with_no_writer_opens_without_waiting_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = mkfifo(dir.path());
        on_own_runtime(move || async move {
            let mut s = StreamSource::new(&fifo, None);
            let ev = next(&mut s).await;
            assert!(
                matches!(
                    ev,
                    Event::Opened {
                        kind: SourceKind::Fifo,
                        resumed_at: None
                    }
                ),
                "{ev:?}"
            );
        });
    }

    /// The runtime is dropped while `next` waits for a silent writer's data: as at SIGTERM,
    /// the drop must not wait for that read (it waited forever on tokio's blocking pool).
    #[test]
    fn fifo_read_waiting_on_a_silent_writer_does_not_hold_runtime_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = mkfifo(dir.path());
        let silent_writer = writer(&fifo);
        on_own_runtime(move || async move {
            let mut s = StreamSource::new(&fifo, None);
            assert!(matches!(next(&mut s).await, Event::Opened { .. }));
            tokio::select! {
                ev = s.next() => panic!("the silent writer sent nothing, got {ev:?}"),
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        });
        drop(silent_writer);
    }

    #[test]
    fn fifo_is_reopened_for_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = mkfifo(dir.path());
        on_own_runtime(move || async move {
            let mut s = StreamSource::new(&fifo, None);
            assert!(matches!(next(&mut s).await, Event::Opened { .. }));
            let mut w = writer(&fifo).recv_timeout(Duration::from_secs(20)).unwrap();
            w.write_all(b"a\n").unwrap();
            drop(w);
            match next(&mut s).await {
                Event::Data { bytes, .. } => assert_eq!(bytes, b"a\n"),
                e => panic!("{e:?}"),
            }
            // End of data: the writer went away; reopened for the next one.
            assert!(matches!(
                next(&mut s).await,
                Event::Opened {
                    kind: SourceKind::Fifo,
                    ..
                }
            ));
            let mut w = writer(&fifo).recv_timeout(Duration::from_secs(20)).unwrap();
            w.write_all(b"b\n").unwrap();
            match next(&mut s).await {
                Event::Data { bytes, .. } => assert_eq!(bytes, b"b\n"),
                e => panic!("{e:?}"),
            }
        });
    }

    /// A character device that is not a tty: polled when it supports poll (/dev/urandom),
    /// read like a file when it does not (/dev/zero: epoll refuses it with EPERM).
    #[tokio::test]
    async fn character_devices_with_and_without_poll_support_are_read() {
        for dev in ["/dev/urandom", "/dev/zero"] {
            let mut s = StreamSource::new(Path::new(dev), None);
            let ev = next(&mut s).await;
            assert!(
                matches!(
                    ev,
                    Event::Opened {
                        kind: SourceKind::CharDevice,
                        resumed_at: None
                    }
                ),
                "{dev}: {ev:?}"
            );
            match next(&mut s).await {
                Event::Data {
                    bytes,
                    offset_after: None,
                } => assert!(!bytes.is_empty(), "{dev}"),
                e => panic!("{dev}: {e:?}"),
            }
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

//! A serial port (USB-serial adapter, RS-232, Bluetooth SPP `rfcomm`, a pseudo-terminal),
//! opened with a device profile's link settings and kept open across unplug and replug.
//!
//! What it does, per open:
//! 1. opens the path with the profile's baud rate, data bits, parity, stop bits and flow
//!    control (`rust-stack.md` §3). If the port refuses the settings (a pty ignores or rejects
//!    termios on some hosts), it opens without them and applies each one separately, logging
//!    each refusal as a warning: a pty must still work, and a real port that ignores one
//!    setting is better read and warned about than not read at all;
//! 2. writes the profile's `init` byte strings in order (select a data format, start a stream);
//! 3. reads bytes, and writes the `keepalive` bytes every N seconds while open;
//! 4. on a read or write error, or end of file (the adapter was unplugged), reports
//!    [`Event::Lost`] and reopens *by path* with backoff (200 ms doubling to 10 s), so a stable
//!    name such as `/dev/serial/by-id/usb-...` (udev) survives replugging.
//!
//! It yields the same [`Event`]s as [`StreamSource`](super::stream::StreamSource), so the
//! daemon's device task is one piece of code for files, FIFOs and serial ports.
//!
//! Deliberately not here: decoding (the caller owns the decoder and resets it on `Opened`),
//! choosing a port for a USB id (udev rules do that, from `devices/*.toml` `[[usb]]`), and
//! answering device requests (no device we support needs more than `init` and `keepalive`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use super::stream::{Event, SourceKind};
use crate::drivers::serial::profile::{FlowControl, Parity, SerialSettings};

/// Backoff between reopen attempts: doubles from `MIN` up to `MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A write (init, keepalive) that does not complete in this time means the port is stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Link settings for a device without a profile: 9600 baud, 8 data bits, no parity, 1 stop
/// bit, no flow control, nothing written. The config's `baud` overrides the rate.
pub fn plain_settings(baud: u32) -> SerialSettings {
    SerialSettings {
        baud,
        data_bits: 8,
        parity: Parity::None,
        stop_bits: 1,
        flow_control: FlowControl::None,
        init: Vec::new(),
        keepalive: None,
    }
}

/// Whether `path` (symlinks followed) is a terminal device: a serial port (its sysfs class is
/// `tty`) or a Unix98 pty slave (`/dev/pts/N`, majors 136-143). Answered from the device
/// number alone: opening a real serial port to ask could block on its modem lines or toggle
/// DTR (which resets some devices).
pub fn is_tty(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.file_type().is_char_device() {
        return false;
    }
    let (major, minor) = dev_major_minor(meta.rdev());
    if (136..=143).contains(&major) {
        return true;
    }
    let subsystem = PathBuf::from(format!("/sys/dev/char/{major}:{minor}/subsystem"));
    std::fs::read_link(subsystem).is_ok_and(|target| target.file_name().is_some_and(|n| n == "tty"))
}

/// Linux `dev_t` to (major, minor), as glibc's `gnu_dev_major` / `gnu_dev_minor`.
fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// A serial port followed across unplug and replug. See the module docs.
pub struct SerialSource {
    path: PathBuf,
    settings: SerialSettings,
    port: Option<SerialStream>,
    backoff: Duration,
    buf: Vec<u8>,
    /// When the next keepalive is due (only while open, and only with a keepalive).
    keepalive_at: Option<Instant>,
    /// Zero-length reads in a row (see `next`).
    zero_reads: u32,
}

impl SerialSource {
    pub fn new(path: &Path, settings: SerialSettings) -> Self {
        SerialSource {
            zero_reads: 0,
            path: path.to_path_buf(),
            settings,
            port: None,
            backoff: BACKOFF_MIN,
            buf: vec![0u8; 4096],
            keepalive_at: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn settings(&self) -> &SerialSettings {
        &self.settings
    }

    /// Waits for the next event. Cancel-safe between events (drop the future to stop); a
    /// keepalive write interrupted by cancellation is simply not sent.
    pub async fn next(&mut self) -> Event {
        loop {
            let Some(port) = self.port.as_mut() else {
                return self.open().await;
            };
            let due = self.keepalive_at;
            let buf = &mut self.buf;
            tokio::select! {
                read = port.read(buf) => match read {
                    Ok(0) => {
                        // A tty read can return 0 bytes without the device going away (VMIN=0
                        // semantics, seen on ptys under load). Only a vanished device node, or 5 s of
                        // zero-length reads in a row (a hung-up line), mean unplugged.
                        self.zero_reads += 1;
                        if !self.path.exists() || self.zero_reads > 250 {
                            self.close();
                            return self.lost("the port returned end of file (unplugged?)".into());
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(n) => {
                        self.zero_reads = 0;
                        self.backoff = BACKOFF_MIN;
                        return Event::Data {
                            bytes: self.buf.get(..n).unwrap_or_default().to_vec(),
                            offset_after: None,
                        };
                    }
                    Err(e) => {
                        self.close();
                        return self.lost(format!("read from {} failed: {e}", self.path.display()));
                    }
                },
                _ = sleep_until_opt(due) => {
                    let Some((bytes, secs)) = self.settings.keepalive.clone() else {
                        self.keepalive_at = None;
                        continue;
                    };
                    if let Err(e) = write_with_timeout(port, &bytes).await {
                        self.close();
                        return self.lost(format!("keepalive write to {} failed: {e}", self.path.display()));
                    }
                    self.keepalive_at = Some(Instant::now() + Duration::from_secs(u64::from(secs)));
                }
            }
        }
    }

    fn close(&mut self) {
        self.port = None;
        self.keepalive_at = None;
    }

    fn lost(&mut self, error: String) -> Event {
        let retry_in = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Event::Lost { error, retry_in }
    }

    async fn open(&mut self) -> Event {
        if let Err(e) = std::fs::metadata(&self.path) {
            return self.lost(format!("cannot open {}: {e}", self.path.display()));
        }
        let mut port = match open_port(&self.path, &self.settings) {
            Ok((port, warnings)) => {
                for w in warnings {
                    tracing::warn!(path = %self.path.display(), "{w}");
                }
                port
            }
            Err(e) => return self.lost(e),
        };
        for (i, bytes) in self.settings.init.iter().enumerate() {
            if let Err(e) = write_with_timeout(&mut port, bytes).await {
                return self.lost(format!(
                    "{}: writing init command {} of {} failed: {e}",
                    self.path.display(),
                    i + 1,
                    self.settings.init.len()
                ));
            }
        }
        self.keepalive_at = self
            .settings
            .keepalive
            .as_ref()
            .map(|(_, secs)| Instant::now() + Duration::from_secs(u64::from(*secs)));
        self.port = Some(port);
        Event::Opened {
            kind: SourceKind::SerialPort,
            resumed_at: None,
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn write_with_timeout(port: &mut SerialStream, bytes: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        port.write_all(bytes).await?;
        port.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "not written within {WRITE_TIMEOUT:?} (flow control holding it?)"
        )),
    }
}

fn data_bits(n: u8) -> tokio_serial::DataBits {
    match n {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    }
}

fn parity(p: Parity) -> tokio_serial::Parity {
    match p {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    }
}

fn stop_bits(n: u8) -> tokio_serial::StopBits {
    if n == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    }
}

fn flow_control(f: FlowControl) -> tokio_serial::FlowControl {
    match f {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    }
}

/// Whether an open error means "no such port / not allowed" rather than "settings refused".
fn is_access_error(e: &tokio_serial::Error) -> bool {
    use std::io::ErrorKind as Io;
    use tokio_serial::ErrorKind as K;
    matches!(
        e.kind,
        K::NoDevice | K::Io(Io::NotFound) | K::Io(Io::PermissionDenied)
    )
}

/// Opens the port with `s`. If the settings are refused, opens it without changing the speed
/// (baud 0, as for a pty) and applies each setting separately; the refusals come back as
/// warnings. Errors name the path and say what to check.
fn open_port(path: &Path, s: &SerialSettings) -> Result<(SerialStream, Vec<String>), String> {
    let name = path.to_string_lossy().into_owned();
    let full = tokio_serial::new(name.as_str(), s.baud)
        .data_bits(data_bits(s.data_bits))
        .parity(parity(s.parity))
        .stop_bits(stop_bits(s.stop_bits))
        .flow_control(flow_control(s.flow_control))
        .open_native_async();
    let first = match full {
        Ok(port) => return Ok((port, Vec::new())),
        Err(e) if is_access_error(&e) => {
            return Err(format!(
                "cannot open {}: {e} (is it plugged in, not in use by another program, and is the daemon in the `dialout` group?)",
                path.display()
            ))
        }
        Err(e) => e,
    };
    let mut port = tokio_serial::new(name.as_str(), 0)
        .open_native_async()
        .map_err(|e| {
            format!(
                "cannot open {} with its settings ({first}) nor without them ({e})",
                path.display()
            )
        })?;
    let mut warnings = vec![format!(
        "the port refused its settings together ({first}); applying them one by one"
    )];
    let mut check = |what: String, r: tokio_serial::Result<()>| {
        if let Err(e) = r {
            warnings.push(format!("{what} not applied: {e} (normal for a pseudo-terminal; on a real port check the adapter supports it)"));
        }
    };
    check(format!("baud {}", s.baud), port.set_baud_rate(s.baud));
    check(
        format!("data bits {}", s.data_bits),
        port.set_data_bits(data_bits(s.data_bits)),
    );
    check(
        format!("parity {:?}", s.parity),
        port.set_parity(parity(s.parity)),
    );
    check(
        format!("stop bits {}", s.stop_bits),
        port.set_stop_bits(stop_bits(s.stop_bits)),
    );
    check(
        format!("flow control {:?}", s.flow_control),
        port.set_flow_control(flow_control(s.flow_control)),
    );
    Ok((port, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_within(s: &mut SerialSource) -> Event {
        tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .unwrap_or_else(|_| panic!("no event from {} within 30 s", s.path().display()))
    }

    #[test]
    fn dev_major_minor_splits_like_glibc() {
        // /dev/pts/5 is 136:5, /dev/ttyUSB0 188:0; minors above 255 keep their high bits
        // from bit 20 up (Linux `new_encode_dev`), e.g. /dev/pts/300.
        assert_eq!(dev_major_minor((136 << 8) | 5), (136, 5));
        assert_eq!(dev_major_minor(188 << 8), (188, 0));
        assert_eq!(dev_major_minor((136 << 8) | 44 | (1 << 20)), (136, 300));
    }

    #[test]
    fn regular_file_and_missing_path_are_not_ttys() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(!is_tty(f.path()));
        assert!(!is_tty(Path::new("/nonexistent/ttyUSB9")));
    }

    #[tokio::test]
    async fn char_device_that_is_no_serial_port_is_lost_saying_both_attempts_failed() {
        let _pty = crate::transport::PTY_TESTS.lock().await;
        // /dev/null accepts no termios at all: neither with the settings nor without them.
        let mut s = SerialSource::new(Path::new("/dev/null"), plain_settings(9600));
        let Event::Lost { error, .. } = next_within(&mut s).await else {
            panic!("/dev/null is not a serial port")
        };
        assert!(
            error.contains("/dev/null") && error.contains("nor without them"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn pty_slave_is_a_tty_and_reads_what_the_device_writes() {
        let _pty = crate::transport::PTY_TESTS.lock().await;
        let (mut master, slave) = SerialStream::pair().unwrap();
        let slave_path = PathBuf::from(slave.name().unwrap());
        assert!(is_tty(&slave_path), "{}", slave_path.display());
        // Nonin 3012 settings (protocols.md §2.1): 9600 8N1; a pty may ignore them.
        let mut s = SerialSource::new(&slave_path, plain_settings(9600));
        assert!(matches!(
            next_within(&mut s).await,
            Event::Opened {
                kind: SourceKind::SerialPort,
                resumed_at: None
            }
        ));
        master
            .write_all(&[0x01, 0x81, 0x01, 0x00, 0x83])
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            match next_within(&mut s).await {
                Event::Data {
                    bytes,
                    offset_after,
                } => {
                    assert_eq!(offset_after, None);
                    got.extend(bytes);
                }
                e => panic!("{e:?}"),
            }
        }
        assert_eq!(got, [0x01, 0x81, 0x01, 0x00, 0x83]);
        drop(slave);
    }

    #[tokio::test]
    async fn init_is_written_after_open_and_keepalive_repeats() {
        let _pty = crate::transport::PTY_TESTS.lock().await;
        // protocols.md §2.2 B: the Contec V7 stream starts on A1 and needs AF every few seconds.
        let (mut master, slave) = SerialStream::pair().unwrap();
        let slave_path = PathBuf::from(slave.name().unwrap());
        let mut settings = plain_settings(115_200);
        settings.init = vec![vec![0x7D, 0x81, 0xA1]];
        settings.keepalive = Some((vec![0x7D, 0x81, 0xAF], 1));
        let mut s = SerialSource::new(&slave_path, settings);
        assert!(matches!(next_within(&mut s).await, Event::Opened { .. }));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while got.len() < 9 {
                let n = master.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            // Hand the device end back: dropping it here would hang up the line while the
            // source is still being polled below (a real unplug, not what this test is about).
            (got, master)
        });
        // Drive the source (keepalives are written from inside `next`) until the reader has
        // seen init plus two keepalives.
        let got = tokio::time::timeout(Duration::from_secs(30), async {
            let mut reader = reader;
            loop {
                tokio::select! {
                    r = &mut reader => return r.unwrap().0,
                    e = s.next() => assert!(!matches!(e, Event::Lost { .. }), "{e:?}"),
                }
            }
        })
        .await
        .expect("init and two keepalives within 30 s");
        assert_eq!(got, [0x7D, 0x81, 0xA1, 0x7D, 0x81, 0xAF, 0x7D, 0x81, 0xAF]);
        drop(slave);
    }

    #[tokio::test]
    async fn device_gone_is_lost_then_retried_with_growing_backoff() {
        let _pty = crate::transport::PTY_TESTS.lock().await;
        let (master, slave) = SerialStream::pair().unwrap();
        let slave_path = PathBuf::from(slave.name().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyTEST");
        std::os::unix::fs::symlink(&slave_path, &link).unwrap();
        let mut s = SerialSource::new(&link, plain_settings(9600));
        assert!(matches!(next_within(&mut s).await, Event::Opened { .. }));
        // Unplug: the device end closes and the stable name disappears.
        drop(master);
        drop(slave);
        std::fs::remove_file(&link).unwrap();
        let Event::Lost { retry_in: a, .. } = next_within(&mut s).await else {
            panic!("expected Lost after the device end closed")
        };
        let Event::Lost { retry_in: b, error } = next_within(&mut s).await else {
            panic!("expected Lost while the path is missing")
        };
        assert!(
            error.contains("ttyTEST"),
            "the error names the path: {error}"
        );
        assert!(b > a, "backoff grows: {a:?} then {b:?}");
        assert_eq!(a, BACKOFF_MIN);
    }

    #[tokio::test]
    async fn replugged_device_under_the_same_path_is_reopened() {
        let _pty = crate::transport::PTY_TESTS.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyTEST");
        let (master, slave) = SerialStream::pair().unwrap();
        std::os::unix::fs::symlink(slave.name().unwrap(), &link).unwrap();
        let mut s = SerialSource::new(&link, plain_settings(9600));
        assert!(matches!(next_within(&mut s).await, Event::Opened { .. }));
        drop((master, slave));
        std::fs::remove_file(&link).unwrap();
        assert!(matches!(next_within(&mut s).await, Event::Lost { .. }));
        // Replug: a new pty under the same name.
        let (mut master2, slave2) = SerialStream::pair().unwrap();
        std::os::unix::fs::symlink(slave2.name().unwrap(), &link).unwrap();
        assert!(matches!(next_within(&mut s).await, Event::Opened { .. }));
        master2.write_all(b"ok\n").await.unwrap();
        let Event::Data { bytes, .. } = next_within(&mut s).await else {
            panic!("expected data after the replug")
        };
        assert_eq!(bytes.first(), Some(&b'o'));
    }
}

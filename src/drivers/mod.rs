//! Drivers: pure decoders that turn a device's bytes into [`Reading`]s.
//!
//! A driver knows nothing of storage, MQTT or the clock: it is a function over bytes, so it
//! can be tested with the public vectors in `specs/protocols.md` and fuzzed. Two shapes exist:
//!
//! - [`StreamDecoder`]: for byte streams (serial ports, pipes). The transport owns the buffer,
//!   calls [`StreamDecoder::feed`] with what it holds, drops the bytes reported consumed, and
//!   keeps the device connected whatever the bytes were: a bad frame is counted, logged
//!   (rate-limited) and skipped.
//! - [`ValueDecoder`]: for whole values (a BLE characteristic notification). Leftover bytes
//!   are an error.
//!
//! Every driver is listed in [`registry`] under its public name (DESIGN.md), which is what
//! config files and `vitalgate decode` use.

pub mod ble;
pub mod jsonl;
pub mod serial;
pub mod sim;

use crate::reading::Reading;

/// Why some bytes did not decode. Each variant says what was wrong, so a log line is
/// actionable; the transport skips the bytes and carries on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad checksum: expected {expected:#04x}, got {got:#04x}")]
    BadChecksum { expected: u32, got: u32 },
    #[error("bad length: {0}")]
    BadLength(String),
    #[error("not a frame start: {0}")]
    NoSync(String),
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("reserved or unsupported: {0}")]
    Unsupported(String),
    #[error("{0} trailing byte(s) after a complete value")]
    TrailingBytes(usize),
    #[error("value too short: needs {needed} bytes, has {got}")]
    TooShort { needed: usize, got: usize },
}

/// What one call to [`StreamDecoder::feed`] found at the front of the buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// No complete frame yet: read more bytes and call again. Nothing was consumed.
    NeedMore,
    /// A complete frame: drop `consumed` bytes. A frame may give zero readings (e.g. a
    /// keep-alive) or several (e.g. SpO2 and pulse rate).
    Frame {
        consumed: usize,
        readings: Vec<Reading>,
    },
    /// Bytes that are not a valid frame: drop `consumed` (at least 1) and count `error`.
    Skip { consumed: usize, error: DecodeError },
}

/// A decoder for a byte stream. It may keep state between frames (e.g. a multi-frame packet).
///
/// Contract: never panics; `consumed` is always `1..=buf.len()`; `NeedMore` only when a valid
/// frame could still start at `buf[0]`, so a stream always makes progress once it has at least
/// one maximum-length frame of bytes.
pub trait StreamDecoder: Send {
    fn feed(&mut self, buf: &[u8]) -> Step;
}

/// A decoder for one whole value (a BLE characteristic value).
pub type ValueDecoder = fn(&[u8]) -> Result<Vec<Reading>, DecodeError>;

/// How a driver consumes bytes.
#[derive(Clone, Copy)]
pub enum DriverKind {
    /// A byte stream; the function makes a fresh decoder.
    Stream(fn() -> Box<dyn StreamDecoder>),
    /// Whole values (each `decode` argument is one value).
    Value(ValueDecoder),
}

/// A driver as listed in the registry.
#[derive(Clone, Copy)]
pub struct DriverInfo {
    /// Public name (config files, `vitalgate decode`), e.g. `nonin-fmt2`.
    pub name: &'static str,
    /// One line for `--help` and error messages.
    pub summary: &'static str,
    /// Line-oriented text protocol (`decode --text` takes lines, not hex).
    pub text: bool,
    pub kind: DriverKind,
}

/// Every built-in driver, by public name. Data-driven profiles from `devices/` are looked up
/// separately (they need their TOML).
pub fn registry() -> Vec<DriverInfo> {
    let mut all = vec![jsonl::DRIVER];
    all.extend(serial::drivers());
    all.extend(ble::drivers());
    all
}

/// Looks a built-in driver up by name.
pub fn find(name: &str) -> Option<DriverInfo> {
    registry().into_iter().find(|d| d.name == name)
}

/// Runs a stream decoder over `buf` until it needs more input, collecting readings and the
/// errors of skipped bytes. Returns bytes consumed. Used by `vitalgate decode` and tests; the
/// transport does the same incrementally.
pub fn drain(
    decoder: &mut dyn StreamDecoder,
    buf: &[u8],
    out: &mut Vec<Reading>,
    errors: &mut Vec<DecodeError>,
) -> usize {
    let mut pos = 0;
    while pos < buf.len() {
        match decoder.feed(&buf[pos..]) {
            Step::NeedMore => break,
            Step::Frame { consumed, readings } => {
                out.extend(readings);
                pos += consumed.clamp(1, buf.len() - pos);
            }
            Step::Skip { consumed, error } => {
                errors.push(error);
                pos += consumed.clamp(1, buf.len() - pos);
            }
        }
    }
    pos
}

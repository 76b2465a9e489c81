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

/// Fuzzing support (the `fuzz/` targets call these; a panic is a finding).
#[doc(hidden)]
pub mod fuzzing {
    use super::{drain, DecodeError, Step, StreamDecoder};

    /// Feeds `data` to fresh decoders from `make`: through [`drain`], and step by step,
    /// asserting the [`StreamDecoder`] contract (every step consumes `1..=len` bytes).
    pub fn stream_contract(make: &dyn Fn() -> Box<dyn StreamDecoder>, data: &[u8]) {
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        let n = drain(make().as_mut(), data, &mut out, &mut errors);
        assert!(n <= data.len());
        let mut dec = make();
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            let consumed = match dec.feed(rest) {
                Step::NeedMore => break,
                Step::Frame { consumed, .. } | Step::Skip { consumed, .. } => consumed,
            };
            assert!(
                (1..=rest.len()).contains(&consumed),
                "consumed {consumed} of {}",
                rest.len()
            );
            pos += consumed;
        }
    }

    /// [`stream_contract`] for a registered stream driver, by name.
    pub fn stream_driver(name: &str, data: &[u8]) {
        let Some(super::DriverKind::Stream(make)) = super::find(name).map(|d| d.kind) else {
            panic!("driver {name} is not a registered stream driver");
        };
        stream_contract(&make, data);
    }

    /// An accepted BLE value is exactly as long as its flags say (DESIGN.md: a BLE value is
    /// whole): one byte fewer or one more is refused.
    pub fn value_is_whole<T>(decode: fn(&[u8]) -> Result<T, DecodeError>, data: &[u8]) {
        if decode(data).is_ok() {
            if let Some((_, head)) = data.split_last() {
                assert!(decode(head).is_err(), "a strict prefix was accepted");
            }
            let mut longer = data.to_vec();
            longer.push(0);
            assert!(decode(&longer).is_err(), "a trailing byte was accepted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_driver_honours_the_contract_on_arbitrary_bytes() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let bytes: Vec<u8> = (0..20_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        for d in registry() {
            if let DriverKind::Stream(_) = d.kind {
                fuzzing::stream_driver(d.name, &bytes);
            }
        }
    }
}

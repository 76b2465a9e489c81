//! Serial-device protocols: Nonin data formats #2, #7 and #8, the Contec CMS50D+ (both of its
//! protocols), Masimo ASCII 1 serial output, and data-driven line devices described by a
//! `devices/*.toml` profile (`specs/protocols.md` §2).
//!
//! Every decoder here is a pure [`StreamDecoder`]: it looks at the front of the buffer the
//! transport holds and answers `NeedMore`, `Frame` or `Skip`. It verifies checksums and sync
//! bits, caps every length before use, resynchronises after garbage or a partial frame by
//! skipping to the next byte that could start a frame, and never panics.
//!
//! Every decoder also has a pure *encoder* ([`encoder`]) that turns a [`SimSample`] into valid
//! wire bytes, optionally with [`Faults`] injected, for the device simulator and for the
//! encode -> decode round-trip tests.
//!
//! Deliberately not here:
//! - No IO, no clock, no port settings applied: the serial transport opens the port with the
//!   profile's [`profile::SerialSettings`], writes its `init` and `keepalive` bytes, and feeds
//!   what it reads to `Profile::decoder()`.
//! - No downsampling by time. Some devices repeat the same values 60 times a second; the
//!   decoders use [`Throttle`] (counted in frames, not seconds) to pass a set of readings on
//!   only when something changed or after about one second's worth of frames, so the outbox is
//!   not filled with identical rows while no change of value or status is ever lost.
//! - Special values are never numbers: each protocol's "missing" marker becomes
//!   [`Absent::Missing`](crate::reading::Absent::Missing), and a reading taken while the device
//!   reports its sensor off carries no number at all (a held value is a stale value).

pub mod contec;
pub mod line;
pub mod masimo;
pub mod nonin;
pub mod profile;

use time::PrimitiveDateTime;

use super::{DecodeError, DriverInfo, Step};
use crate::reading::{Decimal, Flag, Reading};

/// The serial drivers, by public name (DESIGN.md). Data-driven line profiles are not listed:
/// they exist only with their TOML (see [`profile::load_profile`]).
pub fn drivers() -> Vec<DriverInfo> {
    vec![
        nonin::DRIVER_FMT2,
        nonin::DRIVER_FMT7,
        nonin::DRIVER_FMT8,
        contec::DRIVER,
        masimo::DRIVER,
    ]
}

/// What the simulator wants a device to say. `None` means "the device sends its missing
/// marker" (e.g. Nonin 127 / 511, Masimo dashes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimSample {
    pub spo2: Option<u8>,
    pub pulse: Option<u16>,
    /// Perfusion index in %, for protocols that carry it (Masimo).
    pub pi: Option<Decimal>,
    /// Status to encode; a protocol encodes the flags it can express and ignores the rest.
    pub flags: Vec<Flag>,
    /// The device clock, for protocols that print one (Masimo); a fixed date if `None`.
    pub time: Option<PrimitiveDateTime>,
}

/// Faults the simulator can inject into an encoded frame.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    /// Break the frame the way the protocol detects: a wrong checksum where there is one,
    /// otherwise a broken sync bit or a malformed token.
    pub corrupt: bool,
    /// Bytes sent before the frame (line noise, a partial frame from before a reconnect).
    pub garbage_before: Vec<u8>,
    /// Send only the first `n` bytes of the frame (a cable pulled mid-frame).
    pub truncate: Option<usize>,
}

/// An encoder: sample and faults in, wire bytes out.
pub type Encoder = fn(&SimSample, &Faults) -> Vec<u8>;

/// The encoder for a serial driver name, for `vitalgate simulate DRIVER --pty`.
/// `contec-cms50d` simulates the V7 protocol; `contec-cms50d-legacy` (an encoder name only:
/// the one decoder reads both) simulates the legacy live stream. Line profiles encode with
/// [`line::LineSpec::encode_line`].
pub fn encoder(name: &str) -> Option<Encoder> {
    Some(match name {
        "nonin-fmt2" => nonin::encode_fmt2,
        "nonin-fmt7" => nonin::encode_fmt7,
        "nonin-fmt8" => nonin::encode_fmt8,
        "contec-cms50d" => contec::encode_v7,
        "contec-cms50d-legacy" => contec::encode_legacy,
        "masimo-ascii" => masimo::encode,
        _ => return None,
    })
}

/// Applies the framing-independent faults (garbage, truncation) to an encoded frame.
fn apply_faults(frame: Vec<u8>, faults: &Faults) -> Vec<u8> {
    let mut out = faults.garbage_before.clone();
    let keep = faults.truncate.unwrap_or(frame.len()).min(frame.len());
    out.extend(frame.iter().take(keep));
    out
}

/// Skips to the next byte (after the first) for which `could_start` holds, reporting `error`.
/// Always consumes at least one byte and at most `buf.len()`.
fn skip_to(buf: &[u8], could_start: impl Fn(u8) -> bool, error: DecodeError) -> Step {
    let consumed = buf
        .iter()
        .skip(1)
        .position(|&b| could_start(b))
        .map_or(buf.len(), |i| i + 1)
        .max(1);
    Step::Skip { consumed, error }
}

/// Checks a frame whose first byte has bit 7 set and whose other `len - 1` bytes have it clear
/// (Nonin #8, Contec legacy). Returns the frame, or the step to return instead.
fn sync_bit_frame(buf: &[u8], len: usize, what: &str) -> Result<Vec<u8>, Step> {
    let Some(&first) = buf.first() else {
        return Err(Step::NeedMore);
    };
    if first & 0x80 == 0 {
        return Err(skip_to(
            buf,
            |b| b & 0x80 != 0,
            DecodeError::NoSync(format!(
                "{what}: byte {first:#04x} has bit 7 clear; a frame starts with bit 7 set"
            )),
        ));
    }
    for (i, &b) in buf.iter().enumerate().take(len).skip(1) {
        if b & 0x80 != 0 {
            // A new frame starts here: the one before was cut short.
            return Err(Step::Skip {
                consumed: i,
                error: DecodeError::BadLength(format!(
                    "{what}: frame cut short after {i} of {len} bytes (byte {b:#04x} has the sync bit)"
                )),
            });
        }
    }
    if buf.len() < len {
        return Err(Step::NeedMore);
    }
    Ok(buf.iter().take(len).copied().collect())
}

/// Passes a frame's readings on only when they differ from the last ones passed on, or after
/// `every` frames: a device repeating identical values many times a second gives one set of
/// readings per second, while every change of value or status goes through at once.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: u32,
    since: u32,
    last: Option<Vec<Reading>>,
}

impl Throttle {
    /// `every` is the number of frames in about one second (1 = pass everything on).
    pub fn new(every: u32) -> Self {
        Throttle {
            every: every.max(1),
            since: 0,
            last: None,
        }
    }

    /// The readings to emit for this frame (empty when suppressed as a repeat).
    pub fn offer(&mut self, readings: Vec<Reading>) -> Vec<Reading> {
        self.since = self.since.saturating_add(1);
        if self.last.as_ref() == Some(&readings) && self.since < self.every {
            return Vec::new();
        }
        self.since = 0;
        self.last = Some(readings.clone());
        readings
    }

    /// Forgets the last readings (after a resync), so the next frame is always passed on.
    pub fn reset(&mut self) {
        self.last = None;
        self.since = 0;
    }
}

/// Hex helpers for tests and the `devices/` profiles: `"01 81 01 00 83"` -> bytes.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in {s:?}"));
    }
    hex::decode(&digits).map_err(|e| format!("not hex: {s:?}: {e}"))
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers shared by the serial decoders' tests.
    use crate::drivers::{drain, DecodeError, Step, StreamDecoder};
    use crate::reading::Reading;

    pub fn hex(s: &str) -> Vec<u8> {
        super::parse_hex(s).unwrap()
    }

    /// Drains `bytes`, returning readings, errors and bytes consumed.
    pub fn run(
        dec: &mut dyn StreamDecoder,
        bytes: &[u8],
    ) -> (Vec<Reading>, Vec<DecodeError>, usize) {
        let (mut out, mut errs) = (Vec::new(), Vec::new());
        let n = drain(dec, bytes, &mut out, &mut errs);
        (out, errs, n)
    }

    /// Feeds `bytes` step by step, checking the `StreamDecoder` contract on every step:
    /// `consumed` within `1..=len`, and `NeedMore` only with fewer than `max_frame` bytes left
    /// (the stream makes progress once it holds one maximum-length frame).
    pub fn check_contract(
        dec: &mut dyn StreamDecoder,
        bytes: &[u8],
        max_frame: usize,
    ) -> Result<(), String> {
        let mut pos = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            let consumed = match dec.feed(rest) {
                Step::NeedMore if rest.len() >= max_frame => {
                    return Err(format!(
                        "NeedMore with {} bytes left at offset {pos}",
                        rest.len()
                    ))
                }
                Step::NeedMore => return Ok(()),
                Step::Frame { consumed, .. } | Step::Skip { consumed, .. } => consumed,
            };
            if consumed == 0 || consumed > rest.len() {
                return Err(format!(
                    "consumed {consumed} of {} bytes at offset {pos}",
                    rest.len()
                ));
            }
            pos += consumed;
        }
        Ok(())
    }

    /// Garbage, then the same valid frame twice: whatever the garbage did to the first copy,
    /// the decoder is back in sync by the second, so the last readings are the frame's.
    pub fn check_resync(
        dec: &mut dyn StreamDecoder,
        garbage: &[u8],
        frame: &[u8],
        want: &[Reading],
    ) -> Result<(), String> {
        // The garbage may end in what looks like the start of a longer unit (a Nonin control
        // reply `02 cmd len ...`): a decoder rightly waits for it to complete or fail, so at
        // least 64 bytes of real frames follow, as they would on a live line.
        let mut bytes = garbage.to_vec();
        let mut after = 0;
        while after < 2 * frame.len() || after < 64 {
            bytes.extend(frame);
            after += frame.len();
        }
        let (got, _, _) = run(dec, &bytes);
        if got.len() >= want.len() && got[got.len() - want.len()..] == *want {
            Ok(())
        } else {
            Err(format!("after garbage {garbage:02x?}: got {got:?}"))
        }
    }

    /// Every proper prefix of `frame` must be `NeedMore` for a fresh decoder.
    pub fn assert_truncations_need_more(make: fn() -> Box<dyn StreamDecoder>, frame: &[u8]) {
        for n in 1..frame.len() {
            let mut dec = make();
            assert_eq!(
                dec.feed(&frame[..n]),
                Step::NeedMore,
                "prefix of {n} bytes of {frame:02x?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Decimal, Metric};

    #[test]
    fn drivers_lists_the_design_names() {
        let names: Vec<_> = drivers().iter().map(|d| d.name).collect();
        assert_eq!(
            names,
            [
                "nonin-fmt2",
                "nonin-fmt7",
                "nonin-fmt8",
                "contec-cms50d",
                "masimo-ascii"
            ]
        );
    }

    #[test]
    fn encoder_exists_for_every_serial_driver() {
        for d in drivers() {
            assert!(encoder(d.name).is_some(), "{}", d.name);
        }
        assert!(encoder("ble-heart-rate").is_none());
    }

    #[test]
    fn throttle_suppresses_repeats_until_a_second_of_frames() {
        let r = vec![Reading::canonical(Metric::Spo2, Decimal::int(97))];
        let mut t = Throttle::new(3);
        assert_eq!(t.offer(r.clone()).len(), 1);
        assert!(t.offer(r.clone()).is_empty());
        assert!(t.offer(r.clone()).is_empty());
        assert_eq!(
            t.offer(r.clone()).len(),
            1,
            "third repeat is one second later"
        );
    }

    #[test]
    fn throttle_passes_a_change_at_once() {
        let mut t = Throttle::new(60);
        t.offer(vec![Reading::canonical(Metric::Spo2, Decimal::int(97))]);
        let changed = vec![Reading::canonical(Metric::Spo2, Decimal::int(88))];
        assert_eq!(t.offer(changed.clone()), changed);
    }

    #[test]
    fn apply_faults_truncates_and_prefixes() {
        let f = Faults {
            corrupt: false,
            garbage_before: vec![0xAA],
            truncate: Some(2),
        };
        assert_eq!(apply_faults(vec![1, 2, 3], &f), vec![0xAA, 1, 2]);
    }
}

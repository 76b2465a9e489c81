//! Contec CMS50D+ / CMS50E / CMS50F pulse oximeters (`specs/protocols.md` §2.2): driver
//! `contec-cms50d`, for both of the device's incompatible protocols.
//!
//! - **Legacy live stream** (CMS50D+ firmware up to about 4.5; 19200 baud, 8 data bits, *odd*
//!   parity, XON/XOFF): 5-byte packets at 60 Hz, bit 7 set only in byte 1.
//! - **Contec "V7.0"** (firmware 4.6 and later, CMS50E/F; 115200 8N1): a type byte (bit 7 clear),
//!   a "high bits" byte, then data bytes with bit 7 always set on the wire; the real bit 7 of data
//!   byte *i* is bit *i − 2* of the high-bits byte. The stream only flows after the host sends
//!   [`V7_START_REALTIME`] and stops unless [`V7_KEEPALIVE`] is resent about every 5 s: the
//!   serial transport does that, from the profile's `[serial] init_hex` / `keepalive_hex`.
//!
//! **One driver name, auto-detected per packet.** A legacy packet starts with a byte with bit 7
//! set followed by four without; a V7 packet starts with a byte with bit 7 clear followed by bytes
//! with it set. No position in either stream looks like the start of the other, so the decoder
//! decides at each packet and needs no mode: `vitalgate decode contec-cms50d` takes captures of
//! either. The link settings still differ, so each firmware has its own `devices/` profile.
//!
//! Choices (and why):
//! - Missing values: SpO2 0, 127 or above 100, pulse rate 0 or 255 are published as
//!   [`Absent::Missing`]. A pulse oximeter shows dashes, not 0, when it has no pulse; OSCAR uses
//!   127/255 for "no data".
//! - V7 finger out (high-bits byte bit 0, observed by two community decoders) -> `sensor_off` and
//!   no numbers. The other V7 status bits are unverified (§2.2) and ignored.
//! - Legacy byte 1 bit 4 ("searching too long"; ATB: finger out) -> `sensor_off` and no numbers;
//!   byte 3 bit 5 (searching pulse) -> `searching`; bit 4 (sensor/probe error) -> `sensor_fault`.
//! - Both streams repeat at 60 Hz; [`Throttle`] passes on one set per second unless something
//!   changed.
//! - Stored data (legacy download, V7 type 0x0F) has no timestamps of its own: the records are
//!   decoded by [`decode_legacy_download`] and [`decode_v7_stored`] and timed by
//!   [`stored_readings`] from a start time the caller knows. In the live stream a V7 stored packet
//!   is skipped as unsupported, so a stored value is never stamped as if it were current.

use time::{Duration, OffsetDateTime};

use super::{apply_faults, skip_to, sync_bit_frame, Faults, SimSample, Throttle};
use crate::drivers::{DecodeError, DriverInfo, DriverKind, Step, StreamDecoder};
use crate::reading::{Absent, Decimal, Flag, Metric, Reading};

pub const DRIVER: DriverInfo = DriverInfo {
    name: "contec-cms50d",
    summary: "Contec CMS50D+/E/F, legacy 19200 8O1 live stream and V7.0 115200 8N1 protocol (auto-detected)",
    text: false,
    kind: DriverKind::Stream(|| Box::new(Cms50dDecoder::default())),
};

/// Host command: start the V7 real-time stream (§2.2 vector C8).
pub const V7_START_REALTIME: [u8; 9] = [0x7D, 0x81, 0xA1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80];
/// Host command: keep the V7 stream alive; resend about every 5 s.
pub const V7_KEEPALIVE: [u8; 9] = [0x7D, 0x81, 0xAF, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80];
/// Host command: start the legacy recorded-data download.
pub const LEGACY_START_DOWNLOAD: [u8; 2] = [0xF5, 0xF5];
/// Host command: return from a legacy download to live mode.
pub const LEGACY_STOP_DOWNLOAD: [u8; 3] = [0xF6, 0xF6, 0xF6];

const LEGACY_LEN: usize = 5;
const V7_REALTIME: u8 = 0x01;
const V7_REALTIME_LEN: usize = 9;
const V7_STORED: u8 = 0x0F;
const V7_STORED_LEN: usize = 8;
/// Longest V7 packet of an unknown type we wait for before giving up on it.
const V7_MAX_LEN: usize = 32;
/// Packets per second in both live streams.
const RATE_HZ: u32 = 60;

/// Auto-detecting decoder for both protocols (see the module docs).
#[derive(Debug, Clone)]
pub struct Cms50dDecoder {
    legacy: Throttle,
    v7: Throttle,
}

impl Default for Cms50dDecoder {
    fn default() -> Self {
        Cms50dDecoder {
            legacy: Throttle::new(RATE_HZ),
            v7: Throttle::new(RATE_HZ),
        }
    }
}

impl StreamDecoder for Cms50dDecoder {
    fn feed(&mut self, buf: &[u8]) -> Step {
        let Some(&b0) = buf.first() else {
            return Step::NeedMore;
        };
        if b0 & 0x80 != 0 {
            match sync_bit_frame(buf, LEGACY_LEN, "contec legacy") {
                Err(Step::Skip { consumed, error }) => {
                    // Don't skip past a possible V7 type byte: in a V7 stream a stray byte with
                    // bit 7 set is followed by one.
                    self.legacy.reset();
                    let consumed = buf
                        .iter()
                        .take(consumed)
                        .skip(1)
                        .position(|&b| b == V7_REALTIME || b == V7_STORED)
                        .map_or(consumed, |i| i + 1);
                    Step::Skip { consumed, error }
                }
                Err(step) => step,
                Ok(frame) => match decode_legacy(&frame) {
                    Ok(readings) => Step::Frame {
                        consumed: LEGACY_LEN,
                        readings: self.legacy.offer(readings),
                    },
                    Err(error) => Step::Skip { consumed: 1, error },
                },
            }
        } else {
            let step = self.feed_v7(buf);
            if matches!(step, Step::Skip { .. }) {
                self.v7.reset();
            }
            step
        }
    }
}

impl Cms50dDecoder {
    fn feed_v7(&mut self, buf: &[u8]) -> Step {
        let Some(&kind) = buf.first() else {
            return Step::NeedMore;
        };
        // Every byte after the type byte has bit 7 set; the packet ends where one has it clear.
        let body = buf
            .iter()
            .skip(1)
            .take(V7_MAX_LEN)
            .take_while(|&&b| b & 0x80 != 0)
            .count();
        let ended = body < buf.len() - 1 || body == V7_MAX_LEN;
        let expected = match kind {
            V7_REALTIME => Some(V7_REALTIME_LEN),
            V7_STORED => Some(V7_STORED_LEN),
            _ => None,
        };
        if ended && body < 2 {
            // Not a V7 packet (those have a high-bits byte and data bytes after the type byte):
            // a legacy data byte or noise. Skip to the next byte that could start either.
            return skip_to(
                buf,
                |b| b & 0x80 != 0 || b == V7_REALTIME || b == V7_STORED,
                DecodeError::NoSync(format!(
                    "contec: byte {kind:#04x} starts no packet (legacy needs bit 7 set, V7 a type byte and a high-bits byte)"
                )),
            );
        }
        match expected {
            Some(len) if body + 1 >= len => {
                let Some(packet) = buf.get(..len) else {
                    return Step::NeedMore;
                };
                if kind == V7_STORED {
                    return Step::Skip {
                        consumed: len,
                        error: DecodeError::Unsupported(
                            "contec V7 stored-data packet in the live stream: stored records need the session's start \
                             time (use contec::decode_v7_stored and stored_readings)"
                                .into(),
                        ),
                    };
                }
                match decode_v7_realtime(packet) {
                    Ok(readings) => Step::Frame {
                        consumed: len,
                        readings: self.v7.offer(readings),
                    },
                    Err(error) => Step::Skip { consumed: 1, error },
                }
            }
            Some(len) if ended => Step::Skip {
                consumed: body + 1,
                error: DecodeError::BadLength(format!(
                    "contec V7 packet type {kind:#04x} cut short after {} of {len} bytes",
                    body + 1
                )),
            },
            Some(_) => Step::NeedMore,
            None if ended => Step::Skip {
                consumed: body + 1,
                error: DecodeError::Unsupported(format!(
                    "contec V7 packet type {kind:#04x} ({} bytes) is not decoded",
                    body + 1
                )),
            },
            None => Step::NeedMore,
        }
    }
}

/// Decodes one legacy live packet (exactly 5 bytes, §2.2 A).
pub fn decode_legacy(p: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let &[b1, _pleth, b3, pr_low, spo2] = p else {
        return Err(DecodeError::BadLength(format!(
            "contec legacy: packet of {} bytes, 5 expected",
            p.len()
        )));
    };
    if b1 & 0x80 == 0 || (p.iter().skip(1).any(|&b| b & 0x80 != 0)) {
        return Err(DecodeError::NoSync(
            "contec legacy: only byte 1 may have bit 7 set".into(),
        ));
    }
    let pr = (u16::from(b3 & 0x40) << 1) | u16::from(pr_low & 0x7F);
    let finger_out = b1 & 0x10 != 0;
    let mut flags = Vec::new();
    if finger_out {
        flags.push(Flag::SensorOff);
    }
    if b3 & 0x20 != 0 {
        flags.push(Flag::Searching);
    }
    if b3 & 0x10 != 0 {
        flags.push(Flag::SensorFault);
    }
    Ok(vitals(spo2, pr, finger_out, &flags))
}

/// Real value of data byte `i` (i >= 2) of a V7 packet: its low 7 bits and bit `i - 2` of byte 1.
fn v7_byte(p: &[u8], i: usize) -> u8 {
    let hi = p.get(1).copied().unwrap_or(0);
    let b = p.get(i).copied().unwrap_or(0);
    let shift = i.saturating_sub(2).min(7);
    (b & 0x7F) | (((hi >> shift) & 1) << 7)
}

/// Decodes one V7 real-time packet (type 0x01, 9 bytes): byte 5 pulse rate, byte 6 SpO2,
/// both with their high bit from byte 1 (pitfall 8: a plain `& 0x7F` loses PR above 127).
pub fn decode_v7_realtime(p: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    if p.len() != V7_REALTIME_LEN || p.first() != Some(&V7_REALTIME) {
        return Err(DecodeError::BadLength(format!(
            "contec V7 real-time packet: {} bytes, 9 starting 0x01 expected",
            p.len()
        )));
    }
    if p.iter().skip(1).any(|&b| b & 0x80 == 0) {
        return Err(DecodeError::NoSync(
            "contec V7: a byte after the type byte has bit 7 clear".into(),
        ));
    }
    let finger_out = p.get(1).is_some_and(|&hi| hi & 0x01 != 0);
    let pr = u16::from(v7_byte(p, 5));
    let spo2 = v7_byte(p, 6);
    let flags = if finger_out {
        vec![Flag::SensorOff]
    } else {
        Vec::new()
    };
    Ok(vitals(spo2, pr, finger_out, &flags))
}

fn spo2_missing(spo2: u8) -> bool {
    spo2 == 0 || spo2 > 100
}

fn pr_missing(pr: u16) -> bool {
    pr == 0 || pr == 0xFF
}

fn vitals(spo2: u8, pr: u16, sensor_off: bool, flags: &[Flag]) -> Vec<Reading> {
    let spo2 = if sensor_off || spo2_missing(spo2) {
        Reading::absent(Metric::Spo2, Absent::Missing)
    } else {
        Reading::canonical(Metric::Spo2, Decimal::int(i64::from(spo2)))
    };
    let pr = if sensor_off || pr_missing(pr) {
        Reading::absent(Metric::PulseRate, Absent::Missing)
    } else {
        Reading::canonical(Metric::PulseRate, Decimal::int(i64::from(pr)))
    };
    vec![
        spo2.with_flags(flags.iter().copied()),
        pr.with_flags(flags.iter().copied()),
    ]
}

/// One stored record: `None` where the device marked the value as missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRecord {
    pub spo2: Option<u8>,
    pub pulse: Option<u16>,
}

impl StoredRecord {
    fn new(spo2: u8, pulse: u16) -> Self {
        StoredRecord {
            spo2: Some(spo2).filter(|&s| !spo2_missing(s)),
            pulse: Some(pulse).filter(|&p| !pr_missing(p)),
        }
    }
}

/// Longest legacy download we accept: 24 h of 1-Hz records.
pub const MAX_LEGACY_RECORDS: usize = 24 * 3600;

/// Decodes a whole legacy recorded-data download (§2.2 A): `F2 80 00` three times, a 3-byte
/// length, then 3-byte records `F0|PR7`, `80|PR6..0`, `SpO2`.
pub fn decode_legacy_download(buf: &[u8]) -> Result<Vec<StoredRecord>, DecodeError> {
    let header = [0xF2, 0x80, 0x00];
    for i in 0..3 {
        let got = buf.get(i * 3..i * 3 + 3).ok_or(DecodeError::TooShort {
            needed: 12,
            got: buf.len(),
        })?;
        if got != header {
            return Err(DecodeError::NoSync(format!(
                "contec download: header {} is {got:02x?}, F2 80 00 expected",
                i + 1
            )));
        }
    }
    let &[l1, l2, l3] = buf.get(9..12).ok_or(DecodeError::TooShort {
        needed: 12,
        got: buf.len(),
    })?
    else {
        return Err(DecodeError::TooShort {
            needed: 12,
            got: buf.len(),
        });
    };
    if l1 & 0x80 == 0 || l2 & 0x80 == 0 || l3 & 0x80 != 0 {
        return Err(DecodeError::Malformed(
            "contec download: length bytes need bit 7 set, set, clear".into(),
        ));
    }
    let bytes =
        ((usize::from(l1 & 0x7F) << 14) | (usize::from(l2 & 0x7F) << 7) | usize::from(l3)) + 1;
    if bytes % 3 != 0 || bytes / 3 > MAX_LEGACY_RECORDS {
        return Err(DecodeError::BadLength(format!(
            "contec download: {bytes} bytes is not a whole number of records up to {MAX_LEGACY_RECORDS}"
        )));
    }
    let body = buf.get(12..).unwrap_or(&[]);
    if body.len() != bytes {
        return Err(DecodeError::BadLength(format!(
            "contec download: header says {bytes} bytes, got {}",
            body.len()
        )));
    }
    body.chunks_exact(3)
        .enumerate()
        .map(|(i, r)| match *r {
            [a, b, spo2] if a & 0xFE == 0xF0 && b & 0x80 != 0 && spo2 & 0x80 == 0 => Ok(
                StoredRecord::new(spo2, (u16::from(a & 1) << 7) | u16::from(b & 0x7F)),
            ),
            _ => Err(DecodeError::Malformed(format!(
                "contec download: record {i} is {r:02x?}"
            ))),
        })
        .collect()
}

/// Decodes a V7 stored-data packet (type 0x0F, 8 bytes): three (SpO2, PR) pairs (§2.2 C9).
pub fn decode_v7_stored(p: &[u8]) -> Result<Vec<StoredRecord>, DecodeError> {
    if p.len() != V7_STORED_LEN || p.first() != Some(&V7_STORED) {
        return Err(DecodeError::BadLength(format!(
            "contec V7 stored packet: {} bytes, 8 starting 0x0F expected",
            p.len()
        )));
    }
    if p.iter().skip(1).any(|&b| b & 0x80 == 0) {
        return Err(DecodeError::NoSync(
            "contec V7: a byte after the type byte has bit 7 clear".into(),
        ));
    }
    Ok((0..3)
        .map(|k| StoredRecord::new(v7_byte(p, 2 + 2 * k), u16::from(v7_byte(p, 3 + 2 * k))))
        .collect())
}

/// Readings for stored records taken every `interval` from `start` (the session start the
/// device reports separately), flagged `stored`.
pub fn stored_readings(
    records: &[StoredRecord],
    start: OffsetDateTime,
    interval: Duration,
) -> Vec<Reading> {
    let mut out = Vec::with_capacity(records.len().saturating_mul(2));
    let mut t = start;
    for r in records {
        let spo2 = match r.spo2 {
            Some(v) => Reading::canonical(Metric::Spo2, Decimal::int(i64::from(v))),
            None => Reading::absent(Metric::Spo2, Absent::Missing),
        };
        let pr = match r.pulse {
            Some(v) => Reading::canonical(Metric::PulseRate, Decimal::int(i64::from(v))),
            None => Reading::absent(Metric::PulseRate, Absent::Missing),
        };
        out.push(spo2.at(t).with_flags([Flag::Stored]));
        out.push(pr.at(t).with_flags([Flag::Stored]));
        t = t.saturating_add(interval);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Encoders (device simulator)

fn sim_values(sample: &SimSample) -> (u8, u16) {
    (
        sample.spo2.map_or(0x7F, |v| v.min(100)),
        sample.pulse.map_or(0xFF, |v| v.min(254)),
    )
}

/// One legacy live packet. `corrupt` sets bit 7 of the SpO2 byte (a broken sync pattern).
pub fn encode_legacy(sample: &SimSample, faults: &Faults) -> Vec<u8> {
    let (spo2, pr) = sim_values(sample);
    let has = |f| sample.flags.contains(&f);
    let b1 = 0x80 | 0x05 | if has(Flag::SensorOff) { 0x10 } else { 0 };
    let mut b3 = 0x06 | (((pr >> 7) & 1) as u8) << 6;
    if has(Flag::Searching) {
        b3 |= 0x20;
    }
    if has(Flag::SensorFault) {
        b3 |= 0x10;
    }
    let spo2 = if faults.corrupt {
        spo2 | 0x80
    } else {
        spo2 & 0x7F
    };
    apply_faults(vec![b1, 0x32, b3, (pr & 0x7F) as u8, spo2], faults)
}

/// One V7 real-time packet. `corrupt` clears bit 7 of the SpO2 byte.
pub fn encode_v7(sample: &SimSample, faults: &Faults) -> Vec<u8> {
    let (spo2, pr) = sim_values(sample);
    let pr = pr as u8;
    let finger_out = sample.flags.contains(&Flag::SensorOff);
    let hi = 0x80 | u8::from(finger_out) | ((pr >> 7) << 3) | ((spo2 >> 7) << 4);
    let mut p = vec![
        V7_REALTIME,
        hi,
        0x80,
        0x80 | 0x32,
        0x80,
        0x80 | (pr & 0x7F),
        0x80 | (spo2 & 0x7F),
        0xFF,
        0xFF,
    ];
    if faults.corrupt {
        if let Some(b) = p.get_mut(6) {
            *b &= 0x7F;
        }
    }
    apply_faults(p, faults)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::serial::testutil::check_resync;
    use crate::drivers::serial::testutil::{
        assert_truncations_need_more, check_contract, hex, run,
    };
    use crate::reading::Value;
    use proptest::prelude::*;

    /// A buffer this long always makes progress (StreamDecoder contract).
    const MAX_FRAME: usize = V7_MAX_LEN + 1;
    use time::macros::datetime;

    fn make() -> Box<dyn StreamDecoder> {
        Box::new(Cms50dDecoder::default())
    }

    fn value(rs: &[Reading], m: Metric) -> Value {
        rs.iter().find(|r| r.metric == m).unwrap().value
    }

    fn num(v: i64) -> Value {
        Value::Number(Decimal::int(v))
    }

    #[test]
    fn contec_legacy_c1_all_zero_packet_is_valid_with_values_missing() {
        // protocols.md §2.2 vector C1 [V] ATB test_LiveData_init_syncbit
        let (readings, errors, n) = run(make().as_mut(), &hex("80 00 00 00 00"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(n, 5);
        assert_eq!(
            value(&readings, Metric::Spo2),
            Value::Absent(Absent::Missing)
        );
        assert_eq!(
            value(&readings, Metric::PulseRate),
            Value::Absent(Absent::Missing)
        );
    }

    #[test]
    fn contec_legacy_c2_wrong_sync_bits_are_invalid() {
        // protocols.md §2.2 vector C2 [V] ATB: 00 00 00 00 00 and 80 80 00 00 00.
        for bad in ["00 00 00 00 00", "80 80 00 00 00"] {
            let (readings, errors, _) = run(make().as_mut(), &hex(bad));
            assert!(readings.is_empty(), "{bad}");
            assert!(!errors.is_empty(), "{bad}");
        }
    }

    #[test]
    fn contec_legacy_c3_pr_bit7_comes_from_byte3_bit6() {
        // protocols.md §2.2 vector C3 [V*] ATB test_LiveData_pulseRate at x = 200
        let (readings, _, _) = run(make().as_mut(), &hex("80 00 40 48 00"));
        assert_eq!(value(&readings, Metric::PulseRate), num(200));
    }

    #[test]
    fn contec_legacy_c4_decodes_pr_and_spo2() {
        // protocols.md §2.2 vector C4 [D]: signal 5, beep, pleth 50, bar 6, PR 72, SpO2 97.
        let (readings, errors, _) = run(make().as_mut(), &hex("C5 32 06 48 61"));
        assert!(errors.is_empty());
        assert_eq!(value(&readings, Metric::PulseRate), num(72));
        assert_eq!(value(&readings, Metric::Spo2), num(97));
        assert!(readings.iter().all(|r| r.flags.is_empty()));
    }

    #[test]
    fn contec_legacy_finger_out_gives_sensor_off_and_no_numbers() {
        // §2.2 A byte 1 bit 4 "searching too long" [ATB: fingerOut].
        let (readings, _, _) = run(make().as_mut(), &hex("D5 32 06 48 61"));
        assert!(readings
            .iter()
            .all(|r| r.value == Value::Absent(Absent::Missing)));
        assert!(readings.iter().all(|r| r.flags == vec![Flag::SensorOff]));
    }

    #[test]
    fn contec_legacy_every_truncation_needs_more() {
        assert_truncations_need_more(make, &hex("C5 32 06 48 61"));
    }

    #[test]
    fn contec_legacy_garbage_then_packet_decodes() {
        // A cut packet (3 of 5 bytes), then a full one.
        let (readings, errors, _) = run(make().as_mut(), &hex("32 06 C5 32 06 C5 32 06 48 61"));
        assert!(!errors.is_empty());
        assert_eq!(value(&readings, Metric::Spo2), num(97));
    }

    #[test]
    fn contec_legacy_60_identical_packets_give_one_set() {
        let bytes: Vec<u8> = std::iter::repeat_n(hex("C5 32 06 48 61"), 60)
            .flatten()
            .collect();
        let (readings, _, _) = run(make().as_mut(), &bytes);
        assert_eq!(readings.len(), 2);
    }

    #[test]
    fn contec_legacy_c6_c7_download_decodes_records() {
        // protocols.md §2.2 vectors C6 (records F0 C8 61 / F1 C8 61) and C7 (length header).
        let mut dl = hex("F2 80 00 F2 80 00 F2 80 00 80 80 05 F0 C8 61 F1 C8 61");
        let records = decode_legacy_download(&dl).unwrap();
        assert_eq!(
            records,
            vec![
                StoredRecord {
                    spo2: Some(97),
                    pulse: Some(72)
                },
                StoredRecord {
                    spo2: Some(97),
                    pulse: Some(200)
                }
            ]
        );
        dl.pop();
        assert!(decode_legacy_download(&dl).is_err());
    }

    #[test]
    fn contec_legacy_c7_length_header_means_3600_records() {
        // protocols.md §2.2 vector C7 [D]: 80 D4 2F = 10 800 bytes.
        let mut dl = hex("F2 80 00 F2 80 00 F2 80 00 80 D4 2F");
        dl.extend(std::iter::repeat_n(hex("F0 C8 61"), 3600).flatten());
        assert_eq!(decode_legacy_download(&dl).unwrap().len(), 3600);
    }

    #[test]
    fn contec_v7_c8_start_command_matches_vector() {
        // protocols.md §2.2 vector C8 [V] CMSN
        assert_eq!(
            V7_START_REALTIME.to_vec(),
            hex("7D 81 A1 80 80 80 80 80 80")
        );
    }

    #[test]
    fn contec_v7_c9_stored_packet_decodes_three_pairs() {
        // protocols.md §2.2 vector C9 [V] MYO cms50f_test.go
        let records = decode_v7_stored(&hex("0F 80 E2 CD E2 CC E1 CD")).unwrap();
        let pairs: Vec<_> = records.iter().map(|r| (r.spo2, r.pulse)).collect();
        assert_eq!(
            pairs,
            vec![
                (Some(98), Some(77)),
                (Some(98), Some(76)),
                (Some(97), Some(77))
            ]
        );
    }

    #[test]
    fn contec_v7_stored_packet_in_live_stream_is_unsupported_not_current() {
        let (readings, errors, n) = run(make().as_mut(), &hex("0F 80 E2 CD E2 CC E1 CD"));
        assert!(readings.is_empty());
        assert!(matches!(errors.as_slice(), [DecodeError::Unsupported(_)]));
        assert_eq!(n, 8);
    }

    #[test]
    fn contec_stored_readings_are_timed_from_start_and_flagged() {
        let records = decode_v7_stored(&hex("0F 80 E2 CD E2 CC E1 CD")).unwrap();
        let rs = stored_readings(
            &records,
            datetime!(2026-11-23 01:00 UTC),
            Duration::seconds(1),
        );
        assert_eq!(rs.len(), 6);
        assert_eq!(rs[4].device_time, Some(datetime!(2026-11-23 01:00:02 UTC)));
        assert!(rs.iter().all(|r| r.flags == vec![Flag::Stored]));
    }

    #[test]
    fn contec_v7_realtime_decodes_pr_and_spo2() {
        // §2.2 B: byte 5 PR, byte 6 SpO2 (0-based), bytes 7-8 FF FF. [D]
        let (readings, errors, n) = run(make().as_mut(), &hex("01 80 80 B2 80 C8 E1 FF FF"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(n, 9);
        assert_eq!(value(&readings, Metric::PulseRate), num(72));
        assert_eq!(value(&readings, Metric::Spo2), num(97));
    }

    #[test]
    fn contec_v7_pitfall8_pr_above_127_uses_high_bits_byte() {
        // protocols.md §4 pitfall 8: PR 200 = 0xC8; its bit 7 is bit 3 of byte 1. [D]
        let (readings, _, _) = run(make().as_mut(), &hex("01 88 80 B2 80 C8 E1 FF FF"));
        assert_eq!(value(&readings, Metric::PulseRate), num(200));
    }

    #[test]
    fn contec_v7_finger_out_bit_gives_sensor_off_and_no_numbers() {
        // §2.2 B: byte 1 bit 0 observed set with the finger out (CMSN).
        let (readings, _, _) = run(make().as_mut(), &hex("01 81 80 B2 80 FF FF FF FF"));
        assert!(readings
            .iter()
            .all(|r| r.value == Value::Absent(Absent::Missing)));
        assert!(readings.iter().all(|r| r.flags == vec![Flag::SensorOff]));
    }

    #[test]
    fn contec_v7_every_truncation_needs_more() {
        assert_truncations_need_more(make, &hex("01 80 80 B2 80 C8 E1 FF FF"));
    }

    #[test]
    fn contec_v7_cut_packet_then_packet_decodes() {
        let (readings, errors, _) = run(
            make().as_mut(),
            &hex("01 80 80 B2 01 80 80 B2 80 C8 E1 FF FF"),
        );
        assert!(
            matches!(errors.as_slice(), [DecodeError::BadLength(_)]),
            "{errors:?}"
        );
        assert_eq!(value(&readings, Metric::Spo2), num(97));
    }

    #[test]
    fn contec_v7_unknown_packet_type_is_skipped_whole() {
        let (readings, errors, n) = run(
            make().as_mut(),
            &hex("05 80 81 82 01 80 80 B2 80 C8 E1 FF FF"),
        );
        assert!(
            matches!(errors.as_slice(), [DecodeError::Unsupported(_)]),
            "{errors:?}"
        );
        assert_eq!(readings.len(), 2);
        assert_eq!(n, 13);
    }

    #[test]
    fn contec_v7_after_stray_sync_byte_keeps_the_type_byte() {
        // Regression (proptest): a stray 0x80 before a V7 packet made the legacy path skip the
        // V7 type byte as part of a "cut short" legacy packet, losing every following packet.
        let (readings, errors, _) =
            run(make().as_mut(), &hex("00 00 80 01 80 80 B2 80 C8 E1 FF FF"));
        assert!(!errors.is_empty());
        assert_eq!(value(&readings, Metric::PulseRate), num(72));
    }

    #[test]
    fn contec_detects_protocol_per_packet() {
        let mut bytes = hex("C5 32 06 48 61");
        bytes.extend(hex("01 80 80 B2 80 C8 E1 FF FF"));
        let (readings, errors, _) = run(make().as_mut(), &bytes);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(readings.len(), 4);
    }

    proptest! {
        #[test]
        fn contec_never_panics_and_consumes_within_len(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            prop_assert_eq!(check_contract(make().as_mut(), &bytes, MAX_FRAME), Ok(()));
        }

        #[test]
        fn contec_resyncs_after_any_garbage(garbage in proptest::collection::vec(any::<u8>(), 0..64), v7 in any::<bool>()) {
            let s = SimSample { spo2: Some(93), pulse: Some(150), ..Default::default() };
            let frame = if v7 { encode_v7(&s, &Faults::default()) } else { encode_legacy(&s, &Faults::default()) };
            let want = vec![Reading::canonical(Metric::Spo2, Decimal::int(93)), Reading::canonical(Metric::PulseRate, Decimal::int(150))];
            prop_assert_eq!(check_resync(make().as_mut(), &garbage, &frame, &want), Ok(()));
        }

        #[test]
        fn contec_encode_decode_round_trips(
            spo2 in proptest::option::of(1u8..=100),
            pulse in proptest::option::of(1u16..=254),
            off in any::<bool>(),
            v7 in any::<bool>(),
        ) {
            let flags = if off { vec![Flag::SensorOff] } else { vec![] };
            let s = SimSample { spo2, pulse, flags: flags.clone(), ..Default::default() };
            let bytes = if v7 { encode_v7(&s, &Faults::default()) } else { encode_legacy(&s, &Faults::default()) };
            let (got, errs, _) = run(make().as_mut(), &bytes);
            prop_assert!(errs.is_empty(), "{:?}", errs);
            let want = |m, v: Option<i64>| match v.filter(|_| !off) {
                Some(v) => Reading::canonical(m, Decimal::int(v)),
                None => Reading::absent(m, Absent::Missing),
            }.with_flags(flags.iter().copied());
            prop_assert_eq!(got, vec![want(Metric::Spo2, spo2.map(i64::from)), want(Metric::PulseRate, pulse.map(i64::from))]);
        }

        #[test]
        fn contec_corrupt_fault_gives_no_readings(v7 in any::<bool>()) {
            let s = SimSample { spo2: Some(97), pulse: Some(72), ..Default::default() };
            let f = Faults { corrupt: true, ..Default::default() };
            let bytes = if v7 { encode_v7(&s, &f) } else { encode_legacy(&s, &f) };
            let (got, errs, _) = run(make().as_mut(), &bytes);
            prop_assert!(got.is_empty());
            prop_assert!(!errs.is_empty());
        }
    }
}

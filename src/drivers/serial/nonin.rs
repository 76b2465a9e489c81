//! Nonin OEM III / Xpod / WristOx2 / 9560 serial data formats #2, #7 and #8
//! (`specs/protocols.md` §2.1): drivers `nonin-fmt2`, `nonin-fmt7`, `nonin-fmt8`.
//!
//! - **#2** and **#7**: 5-byte frames with an additive checksum, 25 frames to a packet (3 packets
//!   a second), the first frame marked by the SYNC status bit. The numeric values come one byte
//!   per frame (the "FLOAT byte" schedule), so readings are emitted when frame 25 completes a
//!   packet. #2 starts every frame with `0x01`; #7 starts with the status byte and carries a
//!   16-bit pleth.
//! - **#8**: 4 bytes once a second, no checksum; byte 1 is the only one with bit 7 set.
//!
//! Choices (and why):
//! - #2/#7 publish the *recording* values HR and SpO2 (frames 1–3, 4-beat averages, missing at
//!   once when the finger is removed), not the display values HR-D/SpO2-D, which the device
//!   holds for 10 s after finger removal: a held number is a stale number. #8 only has the
//!   display values.
//! - HR 511 and SpO2 127 are the device's "missing" markers: [`Absent::Missing`], never numbers.
//! - While the status says the sensor is off or disconnected (SNSA, SNSD), both values are
//!   published as missing, with the flag saying why, whatever number the device still shows.
//! - Status bits become flags: SNSD -> `probe_disconnected`, SNSA -> `sensor_off`, ARTF ->
//!   `artifact`, OOT -> `out_of_track`, red/low perfusion -> `low_perfusion`, yellow/marginal
//!   perfusion -> `low_signal_quality`, LOW BAT -> `low_battery`. SmartPoint (SPA) is a positive
//!   mark and its absence is normal in continuous mode (vector N8: STATUS2 `00`, no flags), so it
//!   adds no flag. For #2/#7, a flag seen in any frame of the packet applies to the packet.
//! - SREV (firmware revision) may exceed the documented 0–127 (vector N5): not checked.
//! - An incomplete packet (a new SYNC before frame 25, vector N4) is dropped and reported as a
//!   `Skip` of the frame that revealed it; that frame is kept as frame 1 of the next packet.
//!   Frames seen before the first SYNC (connecting mid-packet) are consumed quietly.
//! - A frame without SYNC straight after a complete packet means frame 1 of the next packet
//!   was lost (a whole frame gone, e.g. dropped by a USB-serial buffer, leaves no checksum
//!   error behind): that packet can never complete, so the frame is reported as a `Skip`
//!   (counted in the device's decode errors) and the rest of the packet is consumed quietly
//!   up to the next SYNC. One error per lost packet, not one per orphaned frame.
//! - Host-bound control bytes interleaved with the data (`06` ACK, `15` NAK, and `02 cmd len
//!   data… 03` replies such as the clock) are consumed as frames without readings.

use super::{apply_faults, skip_to, sync_bit_frame, Faults, SimSample, Throttle};
use crate::drivers::{DecodeError, DriverInfo, DriverKind, Step, StreamDecoder};
use crate::reading::{Absent, Decimal, Flag, Metric, Reading};

pub const DRIVER_FMT2: DriverInfo = DriverInfo {
    name: "nonin-fmt2",
    summary: "Nonin data format #2 (OEM III, Xpod, WristOx2, 9560): 5-byte frames, 25-frame packets, 9600 8N1",
    text: false,
    kind: DriverKind::Stream(|| Box::new(PacketDecoder::fmt2())),
};

pub const DRIVER_FMT7: DriverInfo = DriverInfo {
    name: "nonin-fmt7",
    summary: "Nonin data format #7: as #2 with a 16-bit pleth, 9600 8N1",
    text: false,
    kind: DriverKind::Stream(|| Box::new(PacketDecoder::fmt7())),
};

pub const DRIVER_FMT8: DriverInfo = DriverInfo {
    name: "nonin-fmt8",
    summary: "Nonin data format #8: 4 bytes once a second (HR-D, SpO2-D, status), 9600 8N1",
    text: false,
    kind: DriverKind::Stream(|| Box::new(Fmt8Decoder)),
};

/// Frames in a #2/#7 packet.
pub const FRAMES_PER_PACKET: usize = 25;
/// Heart rate "missing" marker (all formats).
pub const MISSING_HR: u16 = 511;
/// SpO2 "missing" marker (all formats).
pub const MISSING_SPO2: u8 = 127;

/// Longest host-bound control message we accept (`02 cmd len data 03`, data capped at 16).
const MAX_CONTROL_DATA: usize = 16;

// STATUS bits (#2/#7).
const ST_SNSD: u8 = 0x40;
const ST_ARTF: u8 = 0x20;
const ST_OOT: u8 = 0x10;
const ST_SNSA: u8 = 0x08;
const ST_SYNC: u8 = 0x01;
// STAT2 / STATUS2 bits.
const ST2_SNSA: u8 = 0x08;
const ST2_LOW_BAT: u8 = 0x01;

/// Which of the two packet formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Fmt2,
    Fmt7,
}

/// Every value of one #2/#7 packet, decoded from the FLOAT-byte schedule (§2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Packet {
    /// 4-beat HR for recording (frames 1–2); 511 = missing.
    pub hr: u16,
    pub spo2: u8,
    pub srev: u8,
    /// 1/3-s timer, 7+7 bits (frames 6–7).
    pub timer: u16,
    pub stat2: u8,
    pub spo2_d: u8,
    pub spo2_fast: u8,
    pub spo2_bb: u8,
    pub e_hr: u16,
    pub e_spo2: u8,
    pub e_spo2_d: u8,
    pub hr_d: u16,
    pub e_hr_d: u16,
    /// The STATUS bytes of all 25 frames OR-ed together (SYNC and perfusion bits excluded).
    pub status_any: u8,
    /// Whether any frame showed red (low) or yellow (marginal) perfusion.
    pub red_perfusion: bool,
    pub yellow_perfusion: bool,
}

fn hr9(msb: u8, lsb: u8) -> u16 {
    (u16::from(msb & 0x03) << 7) | u16::from(lsb & 0x7F)
}

impl Packet {
    /// Decodes the schedule; `floats[i]` is the FLOAT byte of frame `i + 1`.
    pub fn from_frames(
        floats: &[u8; FRAMES_PER_PACKET],
        statuses: &[u8; FRAMES_PER_PACKET],
    ) -> Packet {
        let f = |n: usize| floats.get(n - 1).copied().unwrap_or(0);
        let mut p = Packet {
            hr: hr9(f(1), f(2)),
            spo2: f(3) & 0x7F,
            srev: f(4),
            timer: (u16::from(f(6) & 0x7F) << 7) | u16::from(f(7) & 0x7F),
            stat2: f(8),
            spo2_d: f(9) & 0x7F,
            spo2_fast: f(10) & 0x7F,
            spo2_bb: f(11) & 0x7F,
            e_hr: hr9(f(14), f(15)),
            e_spo2: f(16) & 0x7F,
            e_spo2_d: f(17) & 0x7F,
            hr_d: hr9(f(20), f(21)),
            e_hr_d: hr9(f(22), f(23)),
            ..Packet::default()
        };
        for &s in statuses {
            p.status_any |= s & (ST_SNSD | ST_ARTF | ST_OOT | ST_SNSA);
            match (s >> 1) & 0x03 {
                0b10 => p.red_perfusion = true,
                0b11 => p.yellow_perfusion = true,
                _ => {}
            }
        }
        p
    }

    /// The packet's readings: SpO2 and pulse rate (recording values), with flags.
    pub fn readings(&self) -> Vec<Reading> {
        let mut flags = Vec::new();
        let s = self.status_any;
        push_if(&mut flags, s & ST_SNSD != 0, Flag::ProbeDisconnected);
        push_if(&mut flags, s & ST_SNSA != 0, Flag::SensorOff);
        push_if(&mut flags, s & ST_ARTF != 0, Flag::Artifact);
        push_if(&mut flags, s & ST_OOT != 0, Flag::OutOfTrack);
        push_if(&mut flags, self.red_perfusion, Flag::LowPerfusion);
        push_if(&mut flags, self.yellow_perfusion, Flag::LowSignalQuality);
        push_if(&mut flags, self.stat2 & ST2_LOW_BAT != 0, Flag::LowBattery);
        let sensor_off = s & (ST_SNSD | ST_SNSA) != 0;
        vitals(self.spo2, self.hr, sensor_off, &flags)
    }
}

fn push_if(flags: &mut Vec<Flag>, cond: bool, flag: Flag) {
    if cond {
        flags.push(flag);
    }
}

/// SpO2 and pulse-rate readings, applying the missing markers and the sensor-off rule.
fn vitals(spo2: u8, hr: u16, sensor_off: bool, flags: &[Flag]) -> Vec<Reading> {
    let spo2 = if spo2 == MISSING_SPO2 || sensor_off {
        Reading::absent(Metric::Spo2, Absent::Missing)
    } else {
        Reading::canonical(Metric::Spo2, Decimal::int(i64::from(spo2)))
    };
    let pulse = if hr == MISSING_HR || sensor_off {
        Reading::absent(Metric::PulseRate, Absent::Missing)
    } else {
        Reading::canonical(Metric::PulseRate, Decimal::int(i64::from(hr)))
    };
    vec![
        spo2.with_flags(flags.iter().copied()),
        pulse.with_flags(flags.iter().copied()),
    ]
}

/// Host-bound control bytes at the front of `buf`: `Some(step)` if they are one (or could
/// still become one), `None` if `buf[0]` is not a control byte.
fn control(buf: &[u8]) -> Option<Step> {
    match *buf.first()? {
        0x06 | 0x15 => Some(Step::Frame {
            consumed: 1,
            readings: Vec::new(),
        }),
        0x02 => {
            let Some(&len) = buf.get(2) else {
                return Some(Step::NeedMore);
            };
            let len = usize::from(len);
            if len > MAX_CONTROL_DATA {
                return None;
            }
            let total = len + 4;
            match buf.get(total - 1) {
                None => Some(Step::NeedMore),
                Some(0x03) => Some(Step::Frame {
                    consumed: total,
                    readings: Vec::new(),
                }),
                Some(_) => None,
            }
        }
        _ => None,
    }
}

/// Decoder for formats #2 and #7: assembles 25-frame packets.
#[derive(Debug, Clone)]
pub struct PacketDecoder {
    variant: Variant,
    /// Frames of the current packet so far; 0 = waiting for a SYNC frame.
    frames: usize,
    /// A packet has just completed: the next frame must be a SYNC frame.
    expect_sync: bool,
    floats: [u8; FRAMES_PER_PACKET],
    statuses: [u8; FRAMES_PER_PACKET],
    last: Option<Packet>,
    throttle: Throttle,
}

impl PacketDecoder {
    pub fn fmt2() -> Self {
        Self::new(Variant::Fmt2)
    }

    pub fn fmt7() -> Self {
        Self::new(Variant::Fmt7)
    }

    fn new(variant: Variant) -> Self {
        PacketDecoder {
            variant,
            frames: 0,
            expect_sync: false,
            floats: [0; FRAMES_PER_PACKET],
            statuses: [0; FRAMES_PER_PACKET],
            last: None,
            // 3 packets a second.
            throttle: Throttle::new(3),
        }
    }

    /// The last complete packet, with every scheduled value (for tests and diagnostics).
    pub fn last_packet(&self) -> Option<Packet> {
        self.last
    }

    fn name(&self) -> &'static str {
        match self.variant {
            Variant::Fmt2 => "nonin #2",
            Variant::Fmt7 => "nonin #7",
        }
    }

    fn could_start(&self, b: u8) -> bool {
        match self.variant {
            Variant::Fmt2 => b == 0x01,
            Variant::Fmt7 => b & 0x80 != 0,
        }
    }

    fn resync(&mut self) {
        self.frames = 0;
        self.expect_sync = false;
        self.throttle.reset();
    }

    /// Takes one checked frame's STATUS and FLOAT bytes into the packet.
    fn push(&mut self, status: u8, float: u8) -> Step {
        const LEN: usize = 5;
        let expected_sync = std::mem::take(&mut self.expect_sync);
        if status & ST_SYNC != 0 {
            let dropped = self.frames;
            self.frames = 0;
            self.store(status, float);
            if dropped > 0 {
                self.throttle.reset();
                return Step::Skip {
                    consumed: LEN,
                    error: DecodeError::BadLength(format!(
                        "{}: packet of {dropped} frames cut short by a new SYNC (25 expected); dropped it",
                        self.name()
                    )),
                };
            }
            return Step::Frame {
                consumed: LEN,
                readings: Vec::new(),
            };
        }
        if self.frames == 0 {
            if expected_sync {
                self.throttle.reset();
                return Step::Skip {
                    consumed: LEN,
                    error: DecodeError::BadLength(format!(
                        "{}: frame without SYNC straight after a complete packet: frame 1 of the next packet was lost; that packet is dropped",
                        self.name()
                    )),
                };
            }
            // Mid-packet after connecting or a resync: wait for the next SYNC.
            return Step::Frame {
                consumed: LEN,
                readings: Vec::new(),
            };
        }
        self.store(status, float);
        if self.frames < FRAMES_PER_PACKET {
            return Step::Frame {
                consumed: LEN,
                readings: Vec::new(),
            };
        }
        self.frames = 0;
        self.expect_sync = true;
        let packet = Packet::from_frames(&self.floats, &self.statuses);
        self.last = Some(packet);
        Step::Frame {
            consumed: LEN,
            readings: self.throttle.offer(packet.readings()),
        }
    }

    fn store(&mut self, status: u8, float: u8) {
        if let (Some(f), Some(s)) = (
            self.floats.get_mut(self.frames),
            self.statuses.get_mut(self.frames),
        ) {
            *f = float;
            *s = status;
        }
        self.frames += 1;
    }
}

impl StreamDecoder for PacketDecoder {
    fn feed(&mut self, buf: &[u8]) -> Step {
        let Some(&b0) = buf.first() else {
            return Step::NeedMore;
        };
        if !self.could_start(b0) {
            if let Some(step) = control(buf) {
                return step;
            }
            self.resync();
            let v = self.variant;
            let what = self.name();
            return skip_to(
                buf,
                move |b| match v {
                    Variant::Fmt2 => b == 0x01,
                    Variant::Fmt7 => b & 0x80 != 0,
                },
                DecodeError::NoSync(format!(
                    "{what}: byte {b0:#04x} cannot start a frame ({})",
                    match v {
                        Variant::Fmt2 => "expected 0x01",
                        Variant::Fmt7 => "expected a status byte with bit 7 set",
                    }
                )),
            );
        }
        if self.variant == Variant::Fmt2 {
            if let Some(&status) = buf.get(1) {
                if status & 0x80 == 0 {
                    self.resync();
                    return Step::Skip {
                        consumed: 1,
                        error: DecodeError::NoSync(format!(
                            "nonin #2: status byte {status:#04x} has bit 7 clear (always set)"
                        )),
                    };
                }
            }
        }
        let [a, b, c, d, chk] = match buf.get(..5) {
            Some(&[a, b, c, d, chk]) => [a, b, c, d, chk],
            _ => return Step::NeedMore,
        };
        let sum = a.wrapping_add(b).wrapping_add(c).wrapping_add(d);
        if sum != chk {
            self.resync();
            return Step::Skip {
                consumed: 1,
                error: DecodeError::BadChecksum {
                    expected: u32::from(sum),
                    got: u32::from(chk),
                },
            };
        }
        let status = match self.variant {
            Variant::Fmt2 => b,
            Variant::Fmt7 => a,
        };
        self.push(status, d)
    }
}

/// Decoder for format #8: one 4-byte frame a second.
#[derive(Debug, Clone, Default)]
pub struct Fmt8Decoder;

/// Decodes one #8 frame (exactly 4 bytes) into readings.
pub fn decode_fmt8(frame: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let &[status, hr_lsb, spo2, status2] = frame else {
        return Err(DecodeError::BadLength(format!(
            "nonin #8: frame of {} bytes, 4 expected",
            frame.len()
        )));
    };
    if status & 0x80 == 0 || (hr_lsb | spo2 | status2) & 0x80 != 0 {
        return Err(DecodeError::NoSync(
            "nonin #8: only byte 1 may have bit 7 set".into(),
        ));
    }
    let hr = (u16::from(status & 0x03) << 7) | u16::from(hr_lsb);
    let mut flags = Vec::new();
    push_if(&mut flags, status & 0x40 != 0, Flag::ProbeDisconnected);
    push_if(&mut flags, status2 & ST2_SNSA != 0, Flag::SensorOff);
    push_if(&mut flags, status & 0x20 != 0, Flag::OutOfTrack);
    push_if(&mut flags, status & 0x10 != 0, Flag::LowPerfusion);
    push_if(&mut flags, status & 0x08 != 0, Flag::LowSignalQuality);
    push_if(&mut flags, status & 0x04 != 0, Flag::Artifact);
    push_if(&mut flags, status2 & ST2_LOW_BAT != 0, Flag::LowBattery);
    let sensor_off = status & 0x40 != 0 || status2 & ST2_SNSA != 0;
    Ok(vitals(spo2, hr, sensor_off, &flags))
}

impl StreamDecoder for Fmt8Decoder {
    fn feed(&mut self, buf: &[u8]) -> Step {
        if let Some(step) = buf
            .first()
            .filter(|&&b| b & 0x80 == 0)
            .and_then(|_| control(buf))
        {
            return step;
        }
        match sync_bit_frame(buf, 4, "nonin #8") {
            Err(step) => step,
            Ok(frame) => match decode_fmt8(&frame) {
                Ok(readings) => Step::Frame {
                    consumed: 4,
                    readings,
                },
                Err(error) => Step::Skip { consumed: 1, error },
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoders (device simulator)

/// STATUS bits (#2/#7) for a sample's flags.
fn status_bits(flags: &[Flag]) -> u8 {
    let mut s = 0x80;
    for f in flags {
        s |= match f {
            Flag::ProbeDisconnected => ST_SNSD,
            Flag::Artifact => ST_ARTF,
            Flag::OutOfTrack => ST_OOT,
            Flag::SensorOff => ST_SNSA,
            _ => 0,
        };
    }
    s | if flags.contains(&Flag::LowPerfusion) {
        0b100
    } else if flags.contains(&Flag::LowSignalQuality) {
        0b110
    } else {
        0b010
    }
}

fn sample_values(sample: &SimSample) -> (u16, u8) {
    let hr = sample.pulse.map_or(MISSING_HR, |v| v.min(MISSING_HR - 1));
    let spo2 = sample
        .spo2
        .map_or(MISSING_SPO2, |v| v.min(MISSING_SPO2 - 1));
    (hr, spo2)
}

/// The 25 FLOAT bytes of a packet carrying `sample` in every HR/SpO2 slot.
fn float_schedule(sample: &SimSample) -> [u8; FRAMES_PER_PACKET] {
    let (hr, spo2) = sample_values(sample);
    let (msb, lsb) = (((hr >> 7) & 0x03) as u8, (hr & 0x7F) as u8);
    let stat2 = if sample.flags.contains(&Flag::LowBattery) {
        ST2_LOW_BAT
    } else {
        0
    };
    let mut f = [0u8; FRAMES_PER_PACKET];
    for (i, slot) in f.iter_mut().enumerate() {
        *slot = match i + 1 {
            1 | 14 | 20 | 22 => msb,
            2 | 15 | 21 | 23 => lsb,
            3 | 9 | 10 | 11 | 16 | 17 => spo2,
            4 => 48,
            8 => stat2,
            _ => 0,
        };
    }
    f
}

fn encode_packet(sample: &SimSample, faults: &Faults, variant: Variant) -> Vec<u8> {
    let status = status_bits(&sample.flags);
    let floats = float_schedule(sample);
    let mut out = Vec::with_capacity(FRAMES_PER_PACKET * 5);
    for (i, &float) in floats.iter().enumerate() {
        let st = if i == 0 { status | ST_SYNC } else { status };
        let pleth = 0x40u8.wrapping_add(i as u8);
        let mut frame = match variant {
            Variant::Fmt2 => [0x01, st, pleth, float, 0],
            Variant::Fmt7 => [st, 0x7F, pleth, float, 0],
        };
        frame[4] = frame[..4].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        if faults.corrupt && i == 1 {
            frame[4] = frame[4].wrapping_add(1);
        }
        out.extend(frame);
    }
    apply_faults(out, faults)
}

/// One #2 packet (25 frames) carrying `sample`. `corrupt` breaks frame 2's checksum.
pub fn encode_fmt2(sample: &SimSample, faults: &Faults) -> Vec<u8> {
    encode_packet(sample, faults, Variant::Fmt2)
}

/// One #7 packet (25 frames) carrying `sample`. `corrupt` breaks frame 2's checksum.
pub fn encode_fmt7(sample: &SimSample, faults: &Faults) -> Vec<u8> {
    encode_packet(sample, faults, Variant::Fmt7)
}

/// One #8 frame carrying `sample`. `corrupt` sets bit 7 of the SpO2 byte.
pub fn encode_fmt8(sample: &SimSample, faults: &Faults) -> Vec<u8> {
    let (hr, spo2) = sample_values(sample);
    let has = |f| sample.flags.contains(&f);
    let mut status = 0x80 | ((hr >> 7) & 0x03) as u8;
    let bits = [
        (Flag::ProbeDisconnected, 0x40),
        (Flag::OutOfTrack, 0x20),
        (Flag::LowPerfusion, 0x10),
        (Flag::LowSignalQuality, 0x08),
        (Flag::Artifact, 0x04),
    ];
    for (flag, bit) in bits {
        if has(flag) {
            status |= bit;
        }
    }
    let mut status2 = 0;
    if has(Flag::SensorOff) {
        status2 |= ST2_SNSA;
    }
    if has(Flag::LowBattery) {
        status2 |= ST2_LOW_BAT;
    }
    let spo2 = if faults.corrupt { spo2 | 0x80 } else { spo2 };
    apply_faults(vec![status, (hr & 0x7F) as u8, spo2, status2], faults)
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
    const MAX_FRAME: usize = 4 + 16; // longest control reply (02 cmd len 16 bytes 03)

    fn fmt2() -> Box<dyn StreamDecoder> {
        Box::new(PacketDecoder::fmt2())
    }
    fn fmt7() -> Box<dyn StreamDecoder> {
        Box::new(PacketDecoder::fmt7())
    }
    fn fmt8() -> Box<dyn StreamDecoder> {
        Box::new(Fmt8Decoder)
    }

    /// protocols.md §2.1 vector N1 (PUF "valid packet data"), 25 frames.
    fn n1() -> Vec<u8> {
        let a = "01 80 01 00 82";
        let b = "01 80 01 61 E3";
        let c = "01 80 01 48 CA";
        let frames = [
            "01 81 01 00 83",
            "01 80 01 48 CA",
            b,
            "01 80 01 30 B2",
            a,
            a,
            a,
            a,
            b,
            b,
            b,
            a,
            a,
            a,
            c,
            b,
            b,
            a,
            a,
            a,
            c,
            a,
            c,
            a,
            a,
        ];
        assert_eq!(frames.len(), 25);
        hex(&frames.join(" "))
    }

    fn number(r: &Reading) -> Option<i64> {
        match r.value {
            Value::Number(d) => {
                Some(d.normalized().mantissa * 10i64.pow(d.normalized().exponent as u32))
            }
            _ => None,
        }
    }

    fn find(rs: &[Reading], m: Metric) -> &Reading {
        rs.iter().find(|r| r.metric == m).unwrap()
    }

    #[test]
    fn nonin_fmt2_n1_valid_packet_decodes_every_scheduled_value() {
        // protocols.md §2.1 vector N1 [V] PUF TestNoninOEM3.cpp
        let mut dec = PacketDecoder::fmt2();
        let (readings, errors, n) = run(&mut dec, &n1());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(n, 125);
        let p = dec.last_packet().unwrap();
        assert_eq!((p.hr, p.hr_d, p.e_hr, p.e_hr_d), (72, 72, 72, 72));
        assert_eq!(
            (
                p.spo2,
                p.spo2_d,
                p.e_spo2,
                p.e_spo2_d,
                p.spo2_bb,
                p.spo2_fast
            ),
            (97, 97, 97, 97, 97, 97)
        );
        assert_eq!(p.srev, 48);
        assert_eq!(number(find(&readings, Metric::Spo2)), Some(97));
        assert_eq!(number(find(&readings, Metric::PulseRate)), Some(72));
        assert_eq!(readings.len(), 2);
        assert!(readings.iter().all(|r| r.flags.is_empty()), "{readings:?}");
    }

    #[test]
    fn nonin_fmt2_n2_bad_checksum_in_second_frame_is_skipped_with_bad_checksum() {
        // protocols.md §2.1 vector N2 [V] PUF "checksum error in 2nd frame"
        let mut dec = PacketDecoder::fmt2();
        let bytes = hex("01 81 01 00 83 01 80 01 48 CB");
        assert!(matches!(dec.feed(&bytes), Step::Frame { consumed: 5, .. }));
        assert_eq!(
            dec.feed(&bytes[5..]),
            Step::Skip {
                consumed: 1,
                error: DecodeError::BadChecksum {
                    expected: 0xCA,
                    got: 0xCB
                }
            }
        );
    }

    #[test]
    fn nonin_fmt2_n2_packet_after_bad_checksum_is_not_completed() {
        // protocols.md §2.1 vector N2: the framing error drops the packet (resync on next SYNC).
        let mut bytes = hex("01 81 01 00 83 01 80 01 48 CB");
        bytes.extend(&n1()[10..]); // frames 3..25 of N1
        let mut dec = PacketDecoder::fmt2();
        let (readings, errors, _) = run(&mut dec, &bytes);
        assert!(readings.is_empty(), "{readings:?}");
        assert!(errors
            .iter()
            .any(|e| matches!(e, DecodeError::BadChecksum { .. })));
        // The next full packet decodes.
        let (readings, _, _) = run(&mut dec, &n1());
        assert_eq!(readings.len(), 2);
    }

    #[test]
    fn nonin_fmt2_n3_status_bit7_low_is_a_framing_error() {
        // protocols.md §2.1 vector N3 [V] PUF "status byte error (Bit-7 is low)"
        let mut dec = PacketDecoder::fmt2();
        let bytes = hex("01 81 01 00 83 01 7F 01 48 CA");
        let (readings, errors, n) = run(&mut dec, &bytes);
        assert!(readings.is_empty());
        assert!(
            matches!(errors.first(), Some(DecodeError::NoSync(m)) if m.contains("bit 7")),
            "{errors:?}"
        );
        assert_eq!(n, bytes.len());
    }

    #[test]
    fn nonin_fmt2_n4_new_sync_before_frame_25_drops_the_packet() {
        // protocols.md §2.1 vector N4 [V] PUF "invalid data": 23 frames then a SYNC frame.
        let mut bytes = n1()[..23 * 5].to_vec();
        bytes.extend(hex("01 81 01 00 83"));
        let mut dec = PacketDecoder::fmt2();
        let (readings, errors, _) = run(&mut dec, &bytes);
        assert!(readings.is_empty());
        assert!(
            matches!(errors.as_slice(), [DecodeError::BadLength(m)] if m.contains("23 frames")),
            "{errors:?}"
        );
    }

    #[test]
    fn nonin_fmt2_n4_sync_frame_that_dropped_a_packet_starts_the_next() {
        // protocols.md §2.1 vector N4: the SYNC frame is frame 1 of a packet that then completes.
        let mut bytes = n1()[..23 * 5].to_vec();
        bytes.extend(n1());
        let mut dec = PacketDecoder::fmt2();
        let (readings, errors, _) = run(&mut dec, &bytes);
        assert_eq!(errors.len(), 1);
        assert_eq!(readings.len(), 2);
    }

    #[test]
    fn nonin_fmt2_lost_sync_frame_after_a_complete_packet_is_counted_once() {
        // protocols.md §2.1 vector N1 three times, the second packet without its SYNC frame
        // (frames 2..25): the frames straight after a complete packet lack SYNC, so a frame
        // was lost. One decode error for the lost packet; the packets around it decode.
        let mut bytes = n1();
        bytes.extend(&n1()[5..]);
        bytes.extend(n1());
        let mut dec = PacketDecoder::fmt2();
        let (readings, errors, n) = run(&mut dec, &bytes);
        assert_eq!(n, bytes.len());
        assert!(
            matches!(errors.as_slice(), [DecodeError::BadLength(m)] if m.contains("lost")),
            "{errors:?}"
        );
        assert_eq!(
            readings.len(),
            4,
            "the first and third packets: {readings:?}"
        );
    }

    #[test]
    fn nonin_fmt2_frames_before_the_first_sync_are_not_a_lost_frame() {
        // protocols.md §2.1 vector N1 joined mid-packet (frames 3..25, as after connecting),
        // then a whole packet: nothing was lost that the decoder could have known about.
        let mut bytes = n1()[10..].to_vec();
        bytes.extend(n1());
        let mut dec = PacketDecoder::fmt2();
        let (readings, errors, _) = run(&mut dec, &bytes);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(readings.len(), 2);
    }

    #[test]
    fn nonin_fmt2_n5_real_9560_capture_decodes_packet_of_frames_5_to_29() {
        // protocols.md §2.1 vector N5 [V] NML: real 9560 capture, SYNC at frames 5 and 30.
        let capture = "01804900CA 0180464A11 01804400C5 01804300C4 01814300C5 0180434A0E 0180436024 \
            0180439458 01804300C4 01804100C2 01803E17D6 01803C04C1 018039601A 0180366017 0180356016 \
            01803400B5 01803400B5 01803400B5 0180354A00 0180366017 0180376018 01803A00BB 01804000C1 \
            01804A00CB 0180574A22 01806900EA 01807C4A47 0180900011 0180A10022 0181AF0031";
        let mut dec = PacketDecoder::fmt2();
        let (readings, errors, n) = run(&mut dec, &hex(capture));
        assert!(errors.is_empty(), "all 30 checksums are valid: {errors:?}");
        assert_eq!(n, 150);
        let p = dec.last_packet().unwrap();
        assert_eq!((p.hr, p.hr_d, p.e_hr, p.e_hr_d), (74, 74, 74, 74));
        assert_eq!(
            (
                p.spo2,
                p.spo2_d,
                p.e_spo2,
                p.e_spo2_d,
                p.spo2_bb,
                p.spo2_fast
            ),
            (96, 96, 96, 96, 96, 96)
        );
        assert_eq!(p.srev, 0x94, "pitfall 7: SREV above 127 is accepted");
        assert_eq!(p.timer, 0x0017);
        assert_eq!(p.stat2, 0x04);
        assert_eq!(number(find(&readings, Metric::Spo2)), Some(96));
        assert_eq!(number(find(&readings, Metric::PulseRate)), Some(74));
    }

    fn n6_packet() -> Vec<u8> {
        // protocols.md §2.1 vector N6 [D]: frames 1-3 float bytes 03, 7F, 7F with SNSA set.
        let mut frames = vec![
            "01 89 00 03 8D".to_string(),
            "01 88 00 7F 08".into(),
            "01 88 00 7F 08".into(),
        ];
        frames.extend(std::iter::repeat_n("01 88 00 00 89".to_string(), 22));
        hex(&frames.join(" "))
    }

    #[test]
    fn nonin_fmt2_n6_missing_markers_are_absent_not_numbers() {
        // protocols.md §2.1 vector N6, pitfall 7: HR 511 and SpO2 127 are missing.
        let (readings, errors, _) = run(&mut PacketDecoder::fmt2(), &n6_packet());
        assert!(errors.is_empty(), "{errors:?}");
        for m in [Metric::Spo2, Metric::PulseRate] {
            let r = find(&readings, m);
            assert_eq!(r.value, Value::Absent(Absent::Missing));
            assert_eq!(r.flags, vec![Flag::SensorOff]);
        }
    }

    #[test]
    fn nonin_fmt2_sensor_alarm_suppresses_held_numbers() {
        // §2.1: SNSA = unusable data; a number shown with it is not published.
        let sample = SimSample {
            spo2: Some(95),
            pulse: Some(80),
            flags: vec![Flag::SensorOff],
            ..Default::default()
        };
        let (readings, _, _) = run(
            &mut PacketDecoder::fmt2(),
            &encode_fmt2(&sample, &Faults::default()),
        );
        assert!(
            readings
                .iter()
                .all(|r| r.value == Value::Absent(Absent::Missing)),
            "{readings:?}"
        );
    }

    #[test]
    fn nonin_fmt2_pitfall7_hr_uses_bits_1_0_of_msb() {
        // protocols.md §4 pitfall 7: HR8/HR7 are bits 1-0 of the MSB byte (PUF's 0x18 mask is wrong).
        assert_eq!(hr9(0x01, 0x2C), 172);
        assert_eq!(hr9(0x03, 0x7F), 511);
        assert_eq!(hr9(0x18, 0x48), 72, "bits 4-3 are not part of HR");
    }

    #[test]
    fn nonin_fmt2_frames_before_first_sync_are_consumed_quietly() {
        let mut bytes = n1()[5..].to_vec(); // connected after frame 1
        bytes.extend(n1());
        let (readings, errors, _) = run(&mut PacketDecoder::fmt2(), &bytes);
        assert!(errors.is_empty());
        assert_eq!(readings.len(), 2);
    }

    #[test]
    fn nonin_fmt2_every_truncation_needs_more() {
        assert_truncations_need_more(fmt2, &hex("01 81 01 00 83"));
    }

    #[test]
    fn nonin_fmt2_garbage_then_packet_decodes() {
        let mut bytes = hex("FF 00 01 13 37 80 01");
        bytes.extend(n1());
        let (readings, errors, _) = run(&mut PacketDecoder::fmt2(), &bytes);
        assert!(!errors.is_empty());
        assert_eq!(number(find(&readings, Metric::Spo2)), Some(97));
    }

    #[test]
    fn nonin_fmt2_interleaved_ack_and_clock_reply_are_not_errors() {
        // §2.1: host-bound 06 ACK and a `02 F2 06 … 03` clock reply between frames.
        let mut bytes = n1()[..50].to_vec();
        bytes.extend(hex("06 02 F2 06 32 0C 1F 0E 1E 0F 03"));
        bytes.extend(&n1()[50..]);
        let (readings, errors, _) = run(&mut PacketDecoder::fmt2(), &bytes);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(readings.len(), 2);
    }

    #[test]
    fn nonin_fmt2_identical_packets_are_throttled_to_one_per_second() {
        let bytes: Vec<u8> = std::iter::repeat_n(n1(), 6).flatten().collect();
        let (readings, _, _) = run(&mut PacketDecoder::fmt2(), &bytes);
        assert_eq!(
            readings.len(),
            4,
            "6 packets = 2 s at 3 packets/s: 2 sets of 2 readings"
        );
    }

    #[test]
    fn nonin_fmt7_n7_first_three_frames_decode_pleth_and_values() {
        // protocols.md §2.1 vector N7 [D]: SYNC + GPRF; pleth 32512, 32528, 32544.
        let frames = hex("83 7F 00 00 02 82 7F 10 48 59 80 7F 20 61 80");
        let mut dec = PacketDecoder::fmt7();
        let (readings, errors, n) = run(&mut dec, &frames);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(readings.is_empty(), "packet incomplete");
        assert_eq!(n, 15);
        // Complete the packet with frames repeating frame 3's layout and check the values.
        let mut bytes = frames.clone();
        for _ in 3..25 {
            bytes.extend(hex("80 7F 20 00 1F"));
        }
        let mut dec = PacketDecoder::fmt7();
        let (readings, errors, _) = run(&mut dec, &bytes);
        assert!(errors.is_empty(), "{errors:?}");
        let p = dec.last_packet().unwrap();
        assert_eq!((p.hr, p.spo2), (72, 97));
        assert!(
            readings.iter().all(|r| r.flags.is_empty()),
            "green perfusion is no flag"
        );
    }

    #[test]
    fn nonin_fmt7_bad_checksum_is_skip_bad_checksum() {
        let mut dec = PacketDecoder::fmt7();
        assert!(matches!(
            dec.feed(&hex("83 7F 00 00 03")),
            Step::Skip {
                consumed: 1,
                error: DecodeError::BadChecksum {
                    expected: 0x02,
                    got: 0x03
                }
            }
        ));
    }

    #[test]
    fn nonin_fmt7_every_truncation_needs_more() {
        assert_truncations_need_more(fmt7, &hex("83 7F 00 00 02"));
    }

    #[test]
    fn nonin_fmt8_n8_decodes_hr_and_spo2_without_flags() {
        // protocols.md §2.1 vector N8 [D]
        let (readings, errors, n) = run(&mut Fmt8Decoder, &hex("80 48 61 00"));
        assert!(errors.is_empty());
        assert_eq!(n, 4);
        assert_eq!(number(find(&readings, Metric::PulseRate)), Some(72));
        assert_eq!(number(find(&readings, Metric::Spo2)), Some(97));
        assert!(readings.iter().all(|r| r.flags.is_empty()));
    }

    #[test]
    fn nonin_fmt8_hr_above_127_uses_status_bits() {
        // §2.1 #8: HR8, HR7 are status bits 1, 0. 0x81, 0x2C -> 128 + 44 = 172.
        let (readings, _, _) = run(&mut Fmt8Decoder, &hex("81 2C 61 00"));
        assert_eq!(number(find(&readings, Metric::PulseRate)), Some(172));
    }

    #[test]
    fn nonin_fmt8_missing_markers_are_absent() {
        // §2.1: HR 511 (status bits 1-0 = 11, byte 0x7F) and SpO2 127.
        let (readings, _, _) = run(&mut Fmt8Decoder, &hex("83 7F 7F 08"));
        assert!(readings
            .iter()
            .all(|r| r.value == Value::Absent(Absent::Missing)));
        assert!(readings.iter().all(|r| r.flags == vec![Flag::SensorOff]));
    }

    #[test]
    fn nonin_fmt8_status_bits_become_flags() {
        // §2.1 #8: 6 SNSD, 5 OOT, 4 LPRF, 3 MPRF, 2 ARTF; STATUS2 0 LOW BAT.
        let (readings, _, _) = run(&mut Fmt8Decoder, &hex("BC 48 61 01"));
        assert_eq!(
            readings[0].flags,
            vec![
                Flag::LowPerfusion,
                Flag::LowBattery,
                Flag::Artifact,
                Flag::OutOfTrack,
                Flag::LowSignalQuality
            ]
        );
        assert_eq!(number(&readings[0]), Some(97));
    }

    #[test]
    fn nonin_fmt8_every_truncation_needs_more() {
        assert_truncations_need_more(fmt8, &hex("80 48 61 00"));
    }

    #[test]
    fn nonin_fmt8_cut_frame_resyncs_on_next_status_byte() {
        let (readings, errors, _) = run(&mut Fmt8Decoder, &hex("80 48 80 48 61 00"));
        assert_eq!(errors.len(), 1);
        assert!(matches!(errors[0], DecodeError::BadLength(_)));
        assert_eq!(readings.len(), 2);
    }

    #[test]
    fn nonin_fmt8_garbage_then_frame_decodes() {
        let (readings, errors, _) = run(&mut Fmt8Decoder, &hex("00 13 37 FF 80 48 61 00"));
        assert!(!errors.is_empty());
        assert_eq!(number(find(&readings, Metric::Spo2)), Some(97));
    }

    fn sample(spo2: Option<u8>, pulse: Option<u16>, flags: Vec<Flag>) -> SimSample {
        SimSample {
            spo2,
            pulse,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn nonin_encoders_corrupt_fault_is_rejected() {
        let s = sample(Some(97), Some(72), vec![]);
        let corrupt = Faults {
            corrupt: true,
            ..Default::default()
        };
        let (r, e, _) = run(&mut PacketDecoder::fmt2(), &encode_fmt2(&s, &corrupt));
        assert!(r.is_empty() && matches!(e.first(), Some(DecodeError::BadChecksum { .. })));
        let (r, e, _) = run(&mut Fmt8Decoder, &encode_fmt8(&s, &corrupt));
        assert!(r.is_empty() && !e.is_empty());
    }

    #[test]
    fn nonin_fmt8_garbage_ending_like_a_control_reply_is_resynced_once_frames_follow() {
        // Found by `nonin_decoders_resync_after_any_garbage`: `02 00 08` reads as the start
        // of a control reply of 8 data bytes, so the decoder waits for its ETX; the frames
        // after it show it was not one, and every one of them decodes.
        let garbage = [0x80u8, 0, 0, 0, 2, 0, 8];
        let s = sample(Some(95), Some(130), vec![]);
        let want = vec![
            Reading::canonical(Metric::Spo2, Decimal::int(95)),
            Reading::canonical(Metric::PulseRate, Decimal::int(130)),
        ];
        let frame = encode_fmt8(&s, &Faults::default());
        assert_eq!(
            check_resync(&mut Fmt8Decoder, &garbage, &frame, &want),
            Ok(())
        );
    }

    proptest! {
        #[test]
        fn nonin_decoders_never_panic_and_consume_within_len(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            for make in [fmt2, fmt7, fmt8] {
                prop_assert_eq!(check_contract(make().as_mut(), &bytes, MAX_FRAME), Ok(()));
            }
        }

        #[test]
        fn nonin_decoders_resync_after_any_garbage(garbage in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = sample(Some(95), Some(130), vec![]);
            let want = vec![Reading::canonical(Metric::Spo2, Decimal::int(95)), Reading::canonical(Metric::PulseRate, Decimal::int(130))];
            for (make, enc) in [(fmt2 as fn() -> Box<dyn StreamDecoder>, encode_fmt2 as super::super::Encoder),
                                (fmt7, encode_fmt7), (fmt8, encode_fmt8)] {
                let frame = enc(&s, &Faults::default());
                prop_assert_eq!(check_resync(make().as_mut(), &garbage, &frame, &want), Ok(()));
            }
        }

        #[test]
        fn nonin_encode_decode_round_trips(
            spo2 in proptest::option::of(0u8..=100),
            pulse in proptest::option::of(0u16..=300),
            flags in proptest::sample::subsequence(
                vec![Flag::Artifact, Flag::OutOfTrack, Flag::LowPerfusion, Flag::LowBattery, Flag::SensorOff], 0..=5),
        ) {
            let s = sample(spo2, pulse, flags.clone());
            let sensor_off = flags.contains(&Flag::SensorOff);
            let expect = |m: Metric, v: Option<i64>| {
                let r = match v.filter(|_| !sensor_off) {
                    Some(v) => Reading::canonical(m, Decimal::int(v)),
                    None => Reading::absent(m, Absent::Missing),
                };
                r.with_flags(flags.iter().copied())
            };
            let want = vec![expect(Metric::Spo2, spo2.map(i64::from)), expect(Metric::PulseRate, pulse.map(i64::from))];
            for (make, enc) in [(fmt2 as fn() -> Box<dyn StreamDecoder>, encode_fmt2 as super::super::Encoder),
                                (fmt7, encode_fmt7), (fmt8, encode_fmt8)] {
                let (got, errs, _) = run(make().as_mut(), &enc(&s, &Faults::default()));
                prop_assert!(errs.is_empty(), "{:?}", errs);
                prop_assert_eq!(&got, &want);
            }
        }
    }
}

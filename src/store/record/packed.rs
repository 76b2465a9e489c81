//! The packed storage form of a [`ReadingRecord`] (issue 18, bytes written per reading).
//!
//! Why: every reading is written to the SD card at least twice (the WAL, then the database
//! at a checkpoint), so its row size is the footprint. The CBOR form spells its field names,
//! its enum variants as text (`"Reading"`, `"Spo2"`, `"PerMinute"`) and its integers at
//! CBOR's widths: about 115 bytes for an oximeter reading. This form writes the same values,
//! losslessly, as codes and LEB128 varints: about half of that.
//!
//! Layout (every integer a LEB128 varint, signed ones zigzag-encoded, strings as a length
//! then UTF-8):
//!
//! ```text
//! FORMAT (1 byte) | bits (1 byte) | device_id | patient_id | [nhs] | received_at | [boot]
//!   | count | count x reading
//! time    = seconds (signed) | nanoseconds | UTC offset seconds (signed)
//! device time: the same, its seconds counted from received_at's (a byte, not five)
//! nhs     = ten digits as one integer (bit NHS_DIGITS) or a string (bit NHS_TEXT)
//! boot    = boot id (16 bytes, big-endian) | ms since boot
//! reading = metric code | shape bits | value | [unit code] | [device time] | [flags]
//! ```
//!
//! The first byte tells the forms apart: a CBOR record (every row written before) starts
//! with a one-entry map (`0xA1`), this one with [`FORMAT`]. The codes below are part of the
//! stored format: never renumber one; a new variant takes a new code (the tests fail when a
//! variant has none). Decoding is strict: a truncated, over-long or unknown value is an
//! error naming what was wrong, never a panic (the plaintext is authenticated, so an error
//! is a format matter, not damage).

use std::sync::Arc;

use time::{OffsetDateTime, UtcOffset};

use super::ReadingRecord;
use crate::clock::{BootId, BootStamp};
use crate::reading::{Absent, Acvpu, Decimal, Flag, Metric, Reading, Unit, Value};

/// The first byte of a packed reading record (a CBOR record starts with `0xA1`).
pub const FORMAT: u8 = 0x01;

const SYNCED: u8 = 1;
const NHS_DIGITS: u8 = 1 << 1;
const NHS_TEXT: u8 = 1 << 2;
const BOOT: u8 = 1 << 3;

const VALUE_NUMBER: u8 = 0;
const VALUE_CODE: u8 = 1;
const VALUE_ABSENT: u8 = 2;
const VALUE_MASK: u8 = 0b11;
const HAS_UNIT: u8 = 1 << 2;
const HAS_TIME: u8 = 1 << 3;
const HAS_FLAGS: u8 = 1 << 4;

/// Appends `record` in the packed form to `out`.
pub fn encode_into(record: &ReadingRecord, out: &mut Vec<u8>) {
    let start = out.len();
    let end = encode_at(record, out, start, 0);
    out.truncate(end);
}

/// Writes `record` packed into `buf` from `from` on and returns where it ends. `buf` grows
/// (zero-filled) only when it is shorter than the record at its widest ([`most_bytes`])
/// plus `spare` bytes; what lies after the record is left as it was. The ingest writer
/// reuses one buffer for every row of a batch, so it is filled once, not per row.
///
/// Written into a slice sized beforehand rather than byte by byte with `Vec::push`: a push
/// must reload the vector's length after every byte it stores (the byte could alias it), a
/// slice index does not (issue 18, acceptance 4). The bytes are exactly those of the format
/// (the golden test).
pub fn encode_at(record: &ReadingRecord, buf: &mut Vec<u8>, from: usize, spare: usize) -> usize {
    let most = most_bytes(record);
    let need = from + most + spare;
    if buf.len() < need {
        buf.resize(need, 0);
    }
    let mut w = Packer {
        buf: &mut buf[from..from + most],
        at: 0,
    };
    w.record(record);
    from + w.at
}

/// The most bytes a varint takes (a `u64`, 7 bits a byte).
const VARINT_MAX: usize = 10;
/// The most bytes a time takes: three varints.
const TIME_MAX: usize = 3 * VARINT_MAX;

/// An upper bound of `record`'s packed size: each field at its widest, in the order
/// [`Packer::record`] writes them.
fn most_bytes(record: &ReadingRecord) -> usize {
    let text = |s: &str| VARINT_MAX + s.len();
    let header = 2
        + text(&record.device_id)
        + text(&record.patient_id)
        + record.nhs_number.as_deref().map_or(0, text)
        + TIME_MAX
        + 16
        + VARINT_MAX
        + VARINT_MAX;
    let readings: usize = record
        .readings
        .iter()
        .map(|r| 2 + VARINT_MAX + 1 + 1 + TIME_MAX + VARINT_MAX + r.flags.len())
        .sum();
    header + readings
}

/// Writes the packed form into a slice at least [`most_bytes`] long.
struct Packer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

/// Every step is inlined into [`encode_at`]: in one function the write position stays
/// in a register instead of being stored and reloaded around each byte (the writer packs
/// every row; issue 18, acceptance 4).
impl Packer<'_> {
    #[inline(always)]
    fn record(&mut self, record: &ReadingRecord) {
        let nhs_digits = record.nhs_number.as_deref().and_then(ten_digits);
        let mut bits = 0;
        if record.clock_synced {
            bits |= SYNCED;
        }
        match (&record.nhs_number, nhs_digits) {
            (Some(_), Some(_)) => bits |= NHS_DIGITS,
            (Some(_), None) => bits |= NHS_TEXT,
            (None, _) => {}
        }
        if record.boot.is_some() {
            bits |= BOOT;
        }
        self.byte(FORMAT);
        self.byte(bits);
        self.text(&record.device_id);
        self.text(&record.patient_id);
        match (&record.nhs_number, nhs_digits) {
            (_, Some(n)) => self.u64(n),
            (Some(text), None) => self.text(text),
            (None, None) => {}
        }
        let received = record.received_at.unix_timestamp();
        self.time_from(record.received_at, received, 0);
        if let Some(boot) = record.boot {
            self.bytes(&boot.boot.0.to_be_bytes());
            self.u64(boot.since_boot_ms);
        }
        self.u64(record.readings.len() as u64);
        for r in &record.readings {
            self.reading(r, received);
        }
    }

    #[inline(always)]
    fn reading(&mut self, r: &Reading, received: i64) {
        self.byte(metric_code(r.metric));
        let mut shape = match r.value {
            Value::Number(_) => VALUE_NUMBER,
            Value::Code(_) => VALUE_CODE,
            Value::Absent(_) => VALUE_ABSENT,
        };
        if r.unit.is_some() {
            shape |= HAS_UNIT;
        }
        if r.device_time.is_some() {
            shape |= HAS_TIME;
        }
        if !r.flags.is_empty() {
            shape |= HAS_FLAGS;
        }
        self.byte(shape);
        match r.value {
            Value::Number(d) => {
                self.i64(d.mantissa);
                self.byte(d.exponent as u8);
            }
            Value::Code(c) => self.byte(acvpu_code(c)),
            Value::Absent(a) => self.byte(absent_code(a)),
        }
        if let Some(u) = r.unit {
            self.byte(unit_code(u));
        }
        if let Some(t) = r.device_time {
            self.time_from(t, t.unix_timestamp(), received);
        }
        if !r.flags.is_empty() {
            self.u64(r.flags.len() as u64);
            for &f in &r.flags {
                self.byte(flag_code(f));
            }
        }
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.buf[self.at] = b;
        self.at += 1;
    }

    #[inline(always)]
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }

    #[inline(always)]
    fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    #[inline(always)]
    fn i64(&mut self, v: i64) {
        self.u64(zigzag(v));
    }

    #[inline(always)]
    fn text(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }

    /// `t` (whose unix seconds are `seconds`) with its seconds counted from `base`. Both lie
    /// within the `time` crate's range (years -9999..=9999), so the difference cannot
    /// overflow.
    #[inline(always)]
    fn time_from(&mut self, t: OffsetDateTime, seconds: i64, base: i64) {
        self.i64(seconds - base);
        self.u64(u64::from(t.nanosecond()));
        self.i64(i64::from(t.offset().whole_seconds()));
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Reads a packed record (starting with [`FORMAT`]); every byte must be used.
pub fn decode(bytes: &[u8]) -> Result<ReadingRecord, String> {
    let mut r = Reader { bytes, at: 0 };
    let format = r.byte("format")?;
    if format != FORMAT {
        return Err(format!("packed record format {format} is not {FORMAT}"));
    }
    let bits = r.byte("flags")?;
    let both_nhs = NHS_DIGITS | NHS_TEXT;
    if bits & !(SYNCED | both_nhs | BOOT) != 0 || bits & both_nhs == both_nhs {
        return Err(format!("unknown record flags {bits:#04x}"));
    }
    let device_id = r.string("device id")?;
    let patient_id = r.string("patient id")?;
    let nhs_number = if bits & NHS_DIGITS != 0 {
        let n = r.u64("NHS Number")?;
        if n > 9_999_999_999 {
            return Err("NHS Number out of range".into());
        }
        Some(ten_digit_text(n)?)
    } else if bits & NHS_TEXT != 0 {
        Some(r.string("NHS Number")?)
    } else {
        None
    };
    let received_at = r.time("received time")?;
    let boot = if bits & BOOT != 0 {
        let id = r.take(16, "boot id")?;
        let mut b = [0u8; 16];
        b.copy_from_slice(id);
        Some(BootStamp {
            boot: BootId(u128::from_be_bytes(b)),
            since_boot_ms: r.u64("ms since boot")?,
        })
    } else {
        None
    };
    let count = r.u64("reading count")?;
    // Each reading takes at least three bytes: a count beyond that is damage, not a size
    // to allocate for.
    if count > (bytes.len() as u64) / 3 {
        return Err(format!("reading count {count} exceeds the record"));
    }
    let mut readings = Vec::with_capacity(count as usize);
    for _ in 0..count {
        readings.push(r.reading(received_at.unix_timestamp())?);
    }
    if r.at != bytes.len() {
        return Err(format!(
            "{} bytes left over after the record",
            bytes.len() - r.at
        ));
    }
    Ok(ReadingRecord {
        device_id,
        patient_id,
        nhs_number,
        received_at,
        clock_synced: bits & SYNCED != 0,
        readings,
        boot,
    })
}

/// A 10-digit NHS Number (the only form a configured one takes) as one integer.
///
/// The first eight digits are checked and summed as one 64-bit word (the digit test and
/// conversion of `simdjson` and `fast_float`), the last two one by one: the byte-by-byte
/// loop, not unrolled at the release profile's size optimisation, was a third of the
/// packing of an oximeter reading (issue 18, acceptance 4). Equal to [`ten_digits_plain`]
/// for every input (tests below).
fn ten_digits(text: &str) -> Option<u64> {
    let digits: &[u8; 10] = text.as_bytes().try_into().ok()?;
    let (first8, last2) = digits.split_at(8);
    let word = u64::from_le_bytes(first8.try_into().ok()?);
    // Every byte 0x30..=0x3F, and none above 0x39 (adding 6 would carry into its high
    // nibble); no byte carries into the next, so each is judged on its own.
    let high = word & 0xF0F0_F0F0_F0F0_F0F0;
    let carried = word.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0;
    if high | (carried >> 4) != 0x3333_3333_3333_3333 {
        return None;
    }
    let tens = last2[0].wrapping_sub(b'0');
    let units = last2[1].wrapping_sub(b'0');
    if tens > 9 || units > 9 {
        return None;
    }
    // Eight digit values (the first in the lowest byte) to pairs, then to one number.
    let values = word.wrapping_sub(0x3030_3030_3030_3030);
    let pairs = values.wrapping_mul(10).wrapping_add(values >> 8);
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let eight = (pairs & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((pairs >> 16) & MASK).wrapping_mul(MUL2))
        >> 32;
    Some(eight * 100 + u64::from(tens) * 10 + u64::from(units))
}

/// [`ten_digits`] the plain way, byte by byte: what the fast form is held to.
#[cfg(test)]
fn ten_digits_plain(text: &str) -> Option<u64> {
    let digits: &[u8; 10] = text.as_bytes().try_into().ok()?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, &b| n * 10 + u64::from(b - b'0')),
    )
}

/// `n` (at most 9,999,999,999) as its ten digits, leading zeros kept: one allocation.
fn ten_digit_text(mut n: u64) -> Result<Arc<str>, String> {
    let mut digits = [b'0'; 10];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    std::str::from_utf8(&digits)
        .map(Arc::from)
        .map_err(|_| "NHS Number digits".to_string())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("record ends inside its {what}"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("{what} is not a 64-bit integer"))
    }

    fn i64(&mut self, what: &str) -> Result<i64, String> {
        let v = self.u64(what)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A text, shared as [`ReadingRecord`] holds it: one allocation.
    fn string(&mut self, what: &str) -> Result<Arc<str>, String> {
        let len = usize::try_from(self.u64(what)?).map_err(|_| format!("{what} too long"))?;
        let raw = self.take(len, what)?;
        std::str::from_utf8(raw)
            .map(Arc::from)
            .map_err(|_| format!("{what} is not UTF-8"))
    }

    fn time(&mut self, what: &str) -> Result<OffsetDateTime, String> {
        self.time_from(what, 0)
    }

    fn time_from(&mut self, what: &str, base: i64) -> Result<OffsetDateTime, String> {
        let seconds = self
            .i64(what)?
            .checked_add(base)
            .ok_or_else(|| format!("{what} out of range"))?;
        let nanos =
            u32::try_from(self.u64(what)?).map_err(|_| format!("{what}: bad nanoseconds"))?;
        let offset = i32::try_from(self.i64(what)?).map_err(|_| format!("{what}: bad offset"))?;
        let utc =
            OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| format!("{what}: {e}"))?;
        let t = utc
            .replace_nanosecond(nanos)
            .map_err(|e| format!("{what}: {e}"))?;
        let offset = UtcOffset::from_whole_seconds(offset).map_err(|e| format!("{what}: {e}"))?;
        Ok(t.to_offset(offset))
    }

    fn reading(&mut self, received: i64) -> Result<Reading, String> {
        let metric = decode_code(self.byte("metric")?, &METRICS, "metric")?;
        let shape = self.byte("reading shape")?;
        if shape & !(VALUE_MASK | HAS_UNIT | HAS_TIME | HAS_FLAGS) != 0 {
            return Err(format!("unknown reading shape {shape:#04x}"));
        }
        let value = match shape & VALUE_MASK {
            VALUE_NUMBER => {
                let mantissa = self.i64("value")?;
                let exponent = self.byte("exponent")? as i8;
                Value::Number(Decimal::new(mantissa, exponent))
            }
            VALUE_CODE => Value::Code(decode_code(self.byte("code")?, &ACVPU, "ACVPU code")?),
            VALUE_ABSENT => {
                Value::Absent(decode_code(self.byte("absence")?, &ABSENT, "absence code")?)
            }
            other => return Err(format!("unknown value kind {other}")),
        };
        let unit = if shape & HAS_UNIT != 0 {
            Some(decode_code(self.byte("unit")?, &UNITS, "unit")?)
        } else {
            None
        };
        let device_time = if shape & HAS_TIME != 0 {
            Some(self.time_from("device time", received)?)
        } else {
            None
        };
        let flags = if shape & HAS_FLAGS != 0 {
            let n = self.u64("flag count")?;
            if n > FLAGS.len() as u64 * 4 {
                return Err(format!("flag count {n} out of range"));
            }
            (0..n)
                .map(|_| decode_code(self.byte("flag")?, &FLAGS, "flag"))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        Ok(Reading {
            metric,
            value,
            unit,
            device_time,
            flags,
        })
    }
}

/// `table[code]`, where each table lists the variants in code order.
fn decode_code<T: Copy>(code: u8, table: &[T], what: &str) -> Result<T, String> {
    table
        .get(usize::from(code))
        .copied()
        .ok_or_else(|| format!("unknown {what} code {code}"))
}

// The codes: a match per enum (a new variant does not compile without one) and the table
// in code order for decoding (the tests check the two agree for every variant).

const METRICS: [Metric; 15] = [
    Metric::HeartRate,
    Metric::PulseRate,
    Metric::Spo2,
    Metric::RespiratoryRate,
    Metric::BodyTemperature,
    Metric::SystolicBp,
    Metric::DiastolicBp,
    Metric::MeanBp,
    Metric::BodyWeight,
    Metric::BodyHeight,
    Metric::Bmi,
    Metric::BloodGlucose,
    Metric::PerfusionIndex,
    Metric::InspiredOxygen,
    Metric::Acvpu,
];

fn metric_code(m: Metric) -> u8 {
    match m {
        Metric::HeartRate => 0,
        Metric::PulseRate => 1,
        Metric::Spo2 => 2,
        Metric::RespiratoryRate => 3,
        Metric::BodyTemperature => 4,
        Metric::SystolicBp => 5,
        Metric::DiastolicBp => 6,
        Metric::MeanBp => 7,
        Metric::BodyWeight => 8,
        Metric::BodyHeight => 9,
        Metric::Bmi => 10,
        Metric::BloodGlucose => 11,
        Metric::PerfusionIndex => 12,
        Metric::InspiredOxygen => 13,
        Metric::Acvpu => 14,
    }
}

const UNITS: [Unit; 15] = [
    Unit::PerMinute,
    Unit::Percent,
    Unit::Celsius,
    Unit::Fahrenheit,
    Unit::MmHg,
    Unit::KiloPascal,
    Unit::Kilogram,
    Unit::Pound,
    Unit::Centimetre,
    Unit::Metre,
    Unit::Inch,
    Unit::KgPerM2,
    Unit::MmolPerL,
    Unit::MgPerDl,
    Unit::LitrePerMinute,
];

fn unit_code(u: Unit) -> u8 {
    match u {
        Unit::PerMinute => 0,
        Unit::Percent => 1,
        Unit::Celsius => 2,
        Unit::Fahrenheit => 3,
        Unit::MmHg => 4,
        Unit::KiloPascal => 5,
        Unit::Kilogram => 6,
        Unit::Pound => 7,
        Unit::Centimetre => 8,
        Unit::Metre => 9,
        Unit::Inch => 10,
        Unit::KgPerM2 => 11,
        Unit::MmolPerL => 12,
        Unit::MgPerDl => 13,
        Unit::LitrePerMinute => 14,
    }
}

const ACVPU: [Acvpu; 5] = [Acvpu::A, Acvpu::C, Acvpu::V, Acvpu::P, Acvpu::U];

fn acvpu_code(c: Acvpu) -> u8 {
    match c {
        Acvpu::A => 0,
        Acvpu::C => 1,
        Acvpu::V => 2,
        Acvpu::P => 3,
        Acvpu::U => 4,
    }
}

const ABSENT: [Absent; 5] = [
    Absent::Nan,
    Absent::Nres,
    Absent::PosInf,
    Absent::NegInf,
    Absent::Missing,
];

fn absent_code(a: Absent) -> u8 {
    match a {
        Absent::Nan => 0,
        Absent::Nres => 1,
        Absent::PosInf => 2,
        Absent::NegInf => 3,
        Absent::Missing => 4,
    }
}

const FLAGS: [Flag; 19] = [
    Flag::SensorOff,
    Flag::ProbeDisconnected,
    Flag::SensorFault,
    Flag::LowPerfusion,
    Flag::LowBattery,
    Flag::Motion,
    Flag::Artifact,
    Flag::OutOfTrack,
    Flag::Searching,
    Flag::LowSignalQuality,
    Flag::IrregularPulse,
    Flag::CuffFitLoose,
    Flag::BodyMovement,
    Flag::ImproperPosition,
    Flag::Stored,
    Flag::TimeCorrected,
    Flag::DeviceClockSuspect,
    Flag::Interference,
    Flag::Questionable,
];

fn flag_code(f: Flag) -> u8 {
    match f {
        Flag::SensorOff => 0,
        Flag::ProbeDisconnected => 1,
        Flag::SensorFault => 2,
        Flag::LowPerfusion => 3,
        Flag::LowBattery => 4,
        Flag::Motion => 5,
        Flag::Artifact => 6,
        Flag::OutOfTrack => 7,
        Flag::Searching => 8,
        Flag::LowSignalQuality => 9,
        Flag::IrregularPulse => 10,
        Flag::CuffFitLoose => 11,
        Flag::BodyMovement => 12,
        Flag::ImproperPosition => 13,
        Flag::Stored => 14,
        Flag::TimeCorrected => 15,
        Flag::DeviceClockSuspect => 16,
        Flag::Interference => 17,
        Flag::Questionable => 18,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_table_lists_each_variant_at_its_own_code() {
        for (i, &m) in METRICS.iter().enumerate() {
            assert_eq!(usize::from(metric_code(m)), i, "{m:?}");
        }
        assert_eq!(METRICS.len(), Metric::ALL.len());
        for (i, &u) in UNITS.iter().enumerate() {
            assert_eq!(usize::from(unit_code(u)), i, "{u:?}");
        }
        for (i, &c) in ACVPU.iter().enumerate() {
            assert_eq!(usize::from(acvpu_code(c)), i, "{c:?}");
        }
        for (i, &a) in ABSENT.iter().enumerate() {
            assert_eq!(usize::from(absent_code(a)), i, "{a:?}");
        }
        for (i, &f) in FLAGS.iter().enumerate() {
            assert_eq!(usize::from(flag_code(f)), i, "{f:?}");
        }
    }

    #[test]
    fn every_unit_a_metric_accepts_has_a_code() {
        for m in Metric::ALL {
            for &u in m.accepted_units() {
                assert_eq!(UNITS[usize::from(unit_code(u))], u);
            }
        }
    }

    /// A varint written by [`Packer`] (at most [`VARINT_MAX`] bytes), as the decoder reads it.
    fn packed_varint(write: impl FnOnce(&mut Packer)) -> Vec<u8> {
        let mut out = vec![0; VARINT_MAX];
        let mut w = Packer {
            buf: &mut out,
            at: 0,
        };
        write(&mut w);
        let n = w.at;
        out.truncate(n);
        out
    }

    #[test]
    fn varints_round_trip_at_their_limits() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX - 1, u64::MAX] {
            let out = packed_varint(|w| w.u64(v));
            assert_eq!(Reader { bytes: &out, at: 0 }.u64("v").unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            let out = packed_varint(|w| w.i64(v));
            assert_eq!(Reader { bytes: &out, at: 0 }.i64("v").unwrap(), v);
        }
    }

    #[test]
    fn the_size_bound_holds_for_every_field_at_its_widest() {
        let widest = |s: &str| -> Arc<str> { s.repeat(40).into() };
        let t = time::macros::datetime!(-9999-01-01 00:00:00.999_999_999 -25:59:59);
        let reading = Reading {
            metric: Metric::BodyWeight,
            value: Value::Number(Decimal::new(i64::MIN, -128)),
            unit: Some(Unit::Pound),
            device_time: Some(time::macros::datetime!(+9999-12-31 23:59:59.999_999_999 +25:59:59)),
            flags: FLAGS.to_vec(),
        };
        let record = ReadingRecord {
            device_id: widest("d\u{e9}"),
            patient_id: widest("p"),
            nhs_number: Some(widest("9 ")),
            received_at: t,
            clock_synced: true,
            readings: vec![reading; 5],
            boot: Some(BootStamp {
                boot: BootId(u128::MAX),
                since_boot_ms: u64::MAX,
            }),
        };
        let mut out = vec![7u8; 3]; // appended after what the buffer holds
        encode_into(&record, &mut out);
        assert_eq!(&out[..3], &[7, 7, 7]);
        assert!(out.len() - 3 <= most_bytes(&record));
        assert_eq!(decode(&out[3..]).unwrap(), record);
    }

    #[test]
    fn only_ten_ascii_digits_are_packed_as_a_number() {
        assert_eq!(ten_digits("9434765919"), Some(9_434_765_919));
        assert_eq!(ten_digits("0000000001"), Some(1));
        assert_eq!(ten_digits("9999999999"), Some(9_999_999_999));
        for text in [
            "943476591x",
            "943 476 5919",
            "943476591",
            "94347659190",
            "+434765919",
        ] {
            assert_eq!(ten_digits(text), None, "{text}");
        }
    }

    /// The word-at-a-time parse gives what the byte-by-byte one gives: for numbers across
    /// the whole range and every digit position, and for each position holding each byte
    /// that is not a digit (those either side of '0'..='9' included, and multi-byte UTF-8).
    #[test]
    fn ten_digits_agrees_with_the_plain_parse_for_every_byte_in_every_position() {
        let mut n: u64 = 1;
        for _ in 0..200_000 {
            n = n
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let text = format!("{:010}", (n >> 20) % 10_000_000_000);
            assert_eq!(ten_digits(&text), ten_digits_plain(&text), "{text}");
            assert_eq!(ten_digits(&text), text.parse().ok());
        }
        for position in 0..10 {
            for byte in 0u8..=0x7F {
                let mut bytes = *b"9434765919";
                bytes[position] = byte;
                let text = std::str::from_utf8(&bytes).unwrap();
                assert_eq!(ten_digits(text), ten_digits_plain(text), "{bytes:?}");
            }
            for digit in b'0'..=b'9' {
                let mut bytes = *b"0000000000";
                bytes[position] = digit;
                let text = std::str::from_utf8(&bytes).unwrap();
                assert_eq!(ten_digits(text), ten_digits_plain(text), "{text}");
            }
        }
        for text in ["é34765919", "94347659é", "9434765£9", "943476591é"] {
            assert_eq!(ten_digits(text), ten_digits_plain(text), "{text}");
        }
    }

    /// Two records covering every field, in the bytes the packed form has had since issue 18:
    /// an encoder rewritten for speed must write exactly these (rows already on disk are
    /// read by the same decoder).
    fn golden_records() -> [ReadingRecord; 2] {
        let at = time::macros::datetime!(2026-12-03 09:30:01.250_123_456 +01:00);
        let oximeter = ReadingRecord {
            device_id: "sim-0".into(),
            patient_id: "p1".into(),
            nhs_number: Some("9434765919".into()),
            received_at: at,
            clock_synced: true,
            readings: vec![
                Reading::canonical(Metric::Spo2, Decimal::int(97))
                    .at(at - time::Duration::milliseconds(40)),
                Reading::canonical(Metric::PulseRate, Decimal::int(72))
                    .at(at - time::Duration::milliseconds(40)),
            ],
            boot: None,
        };
        let odd = ReadingRecord {
            device_id: "bp-\u{e9}".into(),
            patient_id: "".into(),
            nhs_number: Some("943 476 5919".into()),
            received_at: time::macros::datetime!(1969-07-20 20:17:40.5 -05:30),
            clock_synced: false,
            readings: vec![
                Reading {
                    metric: Metric::BodyTemperature,
                    value: Value::Number(Decimal::new(-3_751, -2)),
                    unit: Some(Unit::Fahrenheit),
                    device_time: Some(time::macros::datetime!(2026-12-03 09:30:01 UTC)),
                    flags: vec![Flag::Motion, Flag::Questionable],
                },
                Reading {
                    metric: Metric::Acvpu,
                    value: Value::Code(Acvpu::V),
                    unit: None,
                    device_time: None,
                    flags: Vec::new(),
                },
                Reading {
                    metric: Metric::HeartRate,
                    value: Value::Absent(Absent::Nres),
                    unit: Some(Unit::PerMinute),
                    device_time: None,
                    flags: Vec::new(),
                },
            ],
            boot: Some(BootStamp {
                boot: BootId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
                since_boot_ms: u64::MAX,
            }),
        };
        [oximeter, odd]
    }

    #[test]
    fn the_packed_form_keeps_its_bytes() {
        let expected = [
            "01030573696d2d30027031dfb4ec922392a289b10dc0a9a277a03802020cc201000100c0f59864a038010c9001000000c0f59864a038",
            "010c0562702dc3a9000c39343320343736203539313987f3c00d80cab5ee01afb5020123456789abcdef\
             0123456789abcdefffffffffffffffffff0103041ccd3afe03bacdcabe0d00000205120e010200060100",
        ];
        for (record, hex) in golden_records().iter().zip(expected) {
            let mut out = Vec::new();
            encode_into(record, &mut out);
            let got: String = out.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, hex, "{record:?}");
            assert_eq!(&decode(&out).unwrap(), record);
        }
    }

    #[test]
    fn a_varint_longer_than_64_bits_is_an_error() {
        let bytes = [0xff; 11];
        assert!(Reader {
            bytes: &bytes,
            at: 0
        }
        .u64("v")
        .is_err());
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert!(Reader {
            bytes: &over,
            at: 0
        }
        .u64("v")
        .is_err());
    }
}

//! Masimo Rad-8 / Radical-5 / Radical-7 serial ASCII output (`specs/protocols.md` §2.3,
//! Rad-8 "ASCII 1" mode): driver `masimo-ascii`.
//!
//! One line a second: `MM/DD/YY HH:MM:SS` then `KEY=VALUE` tokens. Parsed **by key, never by
//! position** (pitfall 9): models and firmware add, drop and widen fields. Two pure steps, as in
//! STYLE.md: [`parse_line`] gives a [`MasimoLine`] (every key kept as text, the clock, SpO2,
//! pulse rate, PI, ALARM and EXC), and [`MasimoLine::readings`] applies the policy below.
//!
//! Policy (§2.3):
//! - A value whose second character is `-` (`---`, `--.-`, `+--`) is unavailable:
//!   [`Absent::Missing`]. A key that is not in the line gives no reading at all.
//! - EXC bits 0x1 (no sensor), 0x2 (defective sensor), 0x20 (sensor off) and 0x80 (unrecognised
//!   sensor) suppress the numerics: they are published as missing, with the flag saying why.
//! - EXC low signal IQ (0x400) and pulse search (0x8) qualify the values: `low_signal_quality` /
//!   `searching`, plus `questionable`. Low perfusion (0x4) -> `low_perfusion`; interference
//!   (0x10) and ambient light (0x40) -> `interference`; cable and sensor-life faults ->
//!   `sensor_fault`; SpCO/SpMet low confidence and sensor calibrating -> `questionable`.
//!   0x800 "Masimo SET" is normal operation. ALARM 0x40 (low battery) -> `low_battery`; the
//!   other ALARM bits are the monitor's own clinical alarms (proprietary table): not flags.
//!
//! The device clock is parsed and checked but not put on the readings: it is a wall clock set
//! by hand, with no zone and no date beyond two digits of year, and the line is read live, so
//! ingest's receive time is the better timestamp. `MasimoLine::time` keeps it for diagnostics.
//! SpCO, SpMet, SpHb, PVI and the other keys have no [`Metric`] yet and give no readings.

use std::collections::BTreeMap;

use time::{Date, Month, PrimitiveDateTime, Time};

use super::line::{next_line, LineStep};
use super::{apply_faults, Faults, SimSample};
use crate::drivers::{DecodeError, DriverInfo, DriverKind, Step, StreamDecoder};
use crate::reading::{parse_exact, Absent, Decimal, Flag, Metric, Reading};

pub const DRIVER: DriverInfo = DriverInfo {
    name: "masimo-ascii",
    summary:
        "Masimo Rad-8 / Radical-5/7 serial ASCII 1 output, one KEY=VALUE line a second, 9600 8N1",
    text: true,
    kind: DriverKind::Stream(|| Box::new(MasimoDecoder)),
};

/// Longest line accepted; the longest documented line (newer Radical-7) is about 200 bytes.
pub const MAX_LINE: usize = 512;

/// EXC bits that make the numerics unusable (§2.3 policy).
pub const EXC_SUPPRESS: u32 = 0x01 | 0x02 | 0x20 | 0x80;

/// EXC bit -> flag.
const EXC_FLAGS: [(u32, Flag); 20] = [
    (0x00_0001, Flag::ProbeDisconnected),
    (0x00_0002, Flag::SensorFault),
    (0x00_0004, Flag::LowPerfusion),
    (0x00_0008, Flag::Searching),
    (0x00_0008, Flag::Questionable),
    (0x00_0010, Flag::Interference),
    (0x00_0020, Flag::SensorOff),
    (0x00_0040, Flag::Interference),
    (0x00_0080, Flag::SensorFault),
    (0x00_0100, Flag::SensorFault),
    (0x00_0400, Flag::LowSignalQuality),
    (0x00_0400, Flag::Questionable),
    (0x00_1000, Flag::ProbeDisconnected),
    (0x00_2000, Flag::SensorFault),
    (0x00_4000, Flag::SensorFault),
    (0x00_8000 | 0x01_0000, Flag::SensorFault),
    (0x02_0000, Flag::Questionable),
    (0x04_0000 | 0x08_0000 | 0x10_0000, Flag::SensorFault),
    (0x20_0000, Flag::Questionable),
    (0x40_0000, Flag::Questionable),
];

const ALARM_LOW_BATTERY: u32 = 0x40;

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub struct MasimoLine {
    /// The device's wall clock (no zone).
    pub time: PrimitiveDateTime,
    /// Every `KEY=VALUE` token, value as sent (`SN`, `SPCO`, ...).
    pub fields: BTreeMap<String, String>,
    /// `None`: key absent; `Some(None)`: dash-filled.
    pub spo2: Option<Option<Decimal>>,
    pub pulse: Option<Option<Decimal>>,
    pub pi: Option<Option<Decimal>>,
    pub alarm: u32,
    pub exc: u32,
}

/// Parses one line (without its terminator).
pub fn parse_line(line: &str) -> Result<MasimoLine, DecodeError> {
    let mut tokens = line.split_whitespace();
    let (Some(date), Some(clock)) = (tokens.next(), tokens.next()) else {
        return Err(DecodeError::Malformed(format!(
            "masimo: {line:?} does not start with MM/DD/YY HH:MM:SS"
        )));
    };
    let time = parse_clock(date, clock)?;
    let mut fields = BTreeMap::new();
    for tok in tokens {
        let (key, value) = tok.split_once('=').ok_or_else(|| {
            DecodeError::Malformed(format!("masimo: token {tok:?} is not KEY=VALUE"))
        })?;
        if fields.insert(key.to_string(), value.to_string()).is_some() {
            return Err(DecodeError::Malformed(format!(
                "masimo: key {key} appears twice"
            )));
        }
    }
    let number = |key: &str| -> Result<Option<Option<Decimal>>, DecodeError> {
        let Some(v) = fields.get(key) else {
            return Ok(None);
        };
        if v.chars().nth(1) == Some('-') {
            return Ok(Some(None));
        }
        let digits = v.strip_suffix('%').unwrap_or(v);
        parse_exact(digits).map(|d| Some(Some(d))).ok_or_else(|| {
            DecodeError::Malformed(format!("masimo: {key}={v} is not a number or dashes"))
        })
    };
    let hex = |key: &str| -> Result<u32, DecodeError> {
        match fields.get(key) {
            None => Ok(0),
            Some(v) if v.len() <= 8 => u32::from_str_radix(v, 16).map_err(|_| {
                DecodeError::Malformed(format!("masimo: {key}={v} is not hexadecimal"))
            }),
            Some(v) => Err(DecodeError::Malformed(format!(
                "masimo: {key}={v} is longer than 8 hex digits"
            ))),
        }
    };
    Ok(MasimoLine {
        time,
        spo2: number("SPO2")?,
        pulse: number("BPM")?,
        pi: number("PI")?,
        alarm: hex("ALARM")?,
        exc: hex("EXC")?,
        fields,
    })
}

fn parse_clock(date: &str, clock: &str) -> Result<PrimitiveDateTime, DecodeError> {
    let bad = || {
        DecodeError::Malformed(format!(
            "masimo: {date} {clock} is not a valid MM/DD/YY HH:MM:SS"
        ))
    };
    let num = |s: &str| -> Result<u8, DecodeError> {
        if s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let d: Vec<&str> = date.split('/').collect();
    let c: Vec<&str> = clock.split(':').collect();
    let (&[mm, dd, yy], &[h, mi, se]) = (d.as_slice(), c.as_slice()) else {
        return Err(bad());
    };
    let month = Month::try_from(num(mm)?).map_err(|_| bad())?;
    let date =
        Date::from_calendar_date(2000 + i32::from(num(yy)?), month, num(dd)?).map_err(|_| bad())?;
    let time = Time::from_hms(num(h)?, num(mi)?, num(se)?).map_err(|_| bad())?;
    Ok(PrimitiveDateTime::new(date, time))
}

impl MasimoLine {
    /// The flags the EXC and ALARM words give, sorted.
    pub fn flags(&self) -> Vec<Flag> {
        let mut flags: Vec<Flag> = EXC_FLAGS
            .iter()
            .filter(|(bits, _)| self.exc & bits != 0)
            .map(|&(_, f)| f)
            .collect();
        if self.alarm & ALARM_LOW_BATTERY != 0 {
            flags.push(Flag::LowBattery);
        }
        flags.sort();
        flags.dedup();
        flags
    }

    /// SpO2, pulse rate and PI readings, for the keys present, with the §2.3 policy applied.
    pub fn readings(&self) -> Vec<Reading> {
        let flags = self.flags();
        let suppress = self.exc & EXC_SUPPRESS != 0;
        [
            (Metric::Spo2, self.spo2),
            (Metric::PulseRate, self.pulse),
            (Metric::PerfusionIndex, self.pi),
        ]
        .into_iter()
        .filter_map(|(metric, v)| {
            let r = match v? {
                Some(d) if !suppress => Reading::canonical(metric, d),
                _ => Reading::absent(metric, Absent::Missing),
            };
            Some(r.with_flags(flags.iter().copied()))
        })
        .collect()
    }
}

/// Stateless line decoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct MasimoDecoder;

impl StreamDecoder for MasimoDecoder {
    fn feed(&mut self, buf: &[u8]) -> Step {
        match next_line(buf, MAX_LINE) {
            LineStep::NeedMore => Step::NeedMore,
            LineStep::TooLong { consumed } => Step::Skip {
                consumed,
                error: DecodeError::BadLength(format!("masimo: line longer than {MAX_LINE} bytes")),
            },
            LineStep::Line { consumed, text } => {
                let Ok(text) = std::str::from_utf8(text) else {
                    return Step::Skip {
                        consumed,
                        error: DecodeError::Malformed("masimo: line is not ASCII".into()),
                    };
                };
                if text.trim().is_empty() {
                    return Step::Frame {
                        consumed,
                        readings: Vec::new(),
                    };
                }
                match parse_line(text) {
                    Ok(line) => Step::Frame {
                        consumed,
                        readings: line.readings(),
                    },
                    Err(error) => Step::Skip { consumed, error },
                }
            }
        }
    }
}

/// One Rad-8 style line for `sample`, CR LF terminated. `corrupt` garbles the EXC token.
pub fn encode(sample: &SimSample, faults: &Faults) -> Vec<u8> {
    let t = sample
        .time
        .unwrap_or(time::macros::datetime!(2026-01-01 00:00));
    let has = |f| sample.flags.contains(&f);
    let mut exc: u32 = 0x800;
    for (flag, bit) in [
        (Flag::SensorOff, 0x20),
        (Flag::LowPerfusion, 0x04),
        (Flag::Searching, 0x08),
        (Flag::Interference, 0x10),
        (Flag::LowSignalQuality, 0x400),
    ] {
        if has(flag) {
            exc |= bit;
        }
    }
    let alarm: u32 = if has(Flag::LowBattery) {
        ALARM_LOW_BATTERY
    } else {
        0
    };
    let spo2 = sample
        .spo2
        .map_or("---".to_string(), |v| format!("{:03}", v.min(100)));
    let bpm = sample
        .pulse
        .map_or("---".to_string(), |v| format!("{:03}", v.min(999)));
    let pi = sample.pi.map_or("--.--".to_string(), |d| d.to_string());
    let exc = if faults.corrupt {
        "0008ZZ".to_string()
    } else {
        format!("{exc:06X}")
    };
    let line = format!(
        "{:02}/{:02}/{:02} {:02}:{:02}:{:02} SN=0000012345 SPO2={spo2}% BPM={bpm} PI={pi}% ALARM={alarm:04X} EXC={exc}\r\n",
        u8::from(t.month()),
        t.day(),
        t.year().rem_euclid(100),
        t.hour(),
        t.minute(),
        t.second(),
    );
    apply_faults(line.into_bytes(), faults)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::serial::testutil::{
        assert_truncations_need_more, check_contract, check_resync, run,
    };
    use crate::reading::Value;
    use proptest::prelude::*;

    /// A buffer this long always makes progress (StreamDecoder contract).
    const MAX_FRAME: usize = MAX_LINE + 1;
    use time::macros::datetime;

    const M1: &str = "02/22/16 22:47:45 SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800";
    const M2: &str = "12/01/05 11:56:29 SN=0123456789 SPO2=098% BPM=240 PI=20.00% SPCO=01.0% SPMET=00.5% DESAT=01 PIDELTA=-02 PVI=027 ALARM=0000 EXC=000820\r\n";
    const M3: &str = "09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82% ALARM=20 EXC=800\r\n";
    const M4: &str = "05/15/07 08:12:21 SN=0000070986 SPO2=---% BPM=--- PI=--.--% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000000";

    fn make() -> Box<dyn StreamDecoder> {
        Box::new(MasimoDecoder)
    }

    fn value(rs: &[Reading], m: Metric) -> Value {
        rs.iter().find(|r| r.metric == m).unwrap().value
    }

    #[test]
    fn masimo_m1_rad8_capture_parses_by_key() {
        // protocols.md §2.3 vector M1 [V] YPO (real Rad-8 capture)
        let line = parse_line(M1).unwrap();
        assert_eq!(line.time, datetime!(2016-02-22 22:47:45));
        assert_eq!(line.fields["SN"], "0000056661");
        assert_eq!(line.spo2, Some(Some(Decimal::int(98))));
        assert_eq!(line.pulse, Some(Some(Decimal::int(97))));
        assert_eq!(line.pi, Some(Some(Decimal::new(360, -2))));
        assert_eq!((line.alarm, line.exc), (0, 0x800));
        let rs = line.readings();
        assert_eq!(rs.len(), 3);
        assert!(
            rs.iter().all(|r| r.flags.is_empty()),
            "EXC = SET only is normal: {rs:?}"
        );
    }

    #[test]
    fn masimo_m1_pi_keeps_its_two_decimals() {
        // protocols.md §2.3 vector M1: PI 03.60 stays 3.60, not 3.6.
        let rs = parse_line(M1).unwrap().readings();
        let Value::Number(d) = value(&rs, Metric::PerfusionIndex) else {
            panic!("PI missing")
        };
        assert_eq!(d.to_string(), "3.60");
    }

    #[test]
    fn masimo_m2_sensor_off_suppresses_numerics() {
        // protocols.md §2.3 vector M2 [V] MDP Radical-7: EXC 0x820 = Sensor Off + SET.
        let (rs, errors, n) = run(make().as_mut(), M2.as_bytes());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(n, M2.len());
        assert_eq!(rs.len(), 3);
        assert!(
            rs.iter().all(|r| r.value == Value::Absent(Absent::Missing)),
            "{rs:?}"
        );
        assert!(rs.iter().all(|r| r.flags == vec![Flag::SensorOff]));
    }

    #[test]
    fn masimo_m2_parses_the_values_it_suppresses() {
        // protocols.md §2.3 vector M2: the parsed line keeps SpO2 98, PR 240, PI 20.00.
        let line = parse_line(M2.trim_end()).unwrap();
        assert_eq!(line.pulse, Some(Some(Decimal::int(240))));
        assert_eq!(line.fields["PIDELTA"], "-02");
        assert_eq!(line.fields["PVI"], "027");
    }

    #[test]
    fn masimo_m3_radical5_without_sn_decodes() {
        // protocols.md §2.3 vector M3 [V] MDP Radical-5: no SN, ALARM=20 (silenced), EXC=800.
        let (rs, errors, _) = run(make().as_mut(), M3.as_bytes());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(value(&rs, Metric::Spo2), Value::Number(Decimal::int(97)));
        assert_eq!(
            value(&rs, Metric::PulseRate),
            Value::Number(Decimal::int(64))
        );
        assert_eq!(
            value(&rs, Metric::PerfusionIndex),
            Value::Number(Decimal::new(1182, -2))
        );
        assert!(
            rs.iter().all(|r| r.flags.is_empty()),
            "alarm silenced is not a device status flag"
        );
        assert_eq!(parse_line(M3.trim_end()).unwrap().alarm, 0x20);
    }

    #[test]
    fn masimo_m4_dashes_are_missing_not_numbers() {
        // protocols.md §2.3 vector M4 [V] RMC
        let rs = parse_line(M4).unwrap().readings();
        assert_eq!(rs.len(), 3);
        assert!(rs.iter().all(|r| r.value == Value::Absent(Absent::Missing)));
        assert!(rs.iter().all(|r| r.flags.is_empty()));
    }

    #[test]
    fn masimo_pitfall9_key_order_does_not_matter() {
        // protocols.md §4 pitfall 9: parse by key.
        let rs = parse_line("09/15/10 15:10:29 EXC=800 BPM=064 SPO2=097% ALARM=0")
            .unwrap()
            .readings();
        assert_eq!(value(&rs, Metric::Spo2), Value::Number(Decimal::int(97)));
        assert_eq!(rs.len(), 2, "no PI key, no PI reading");
    }

    #[test]
    fn masimo_low_signal_iq_and_pulse_search_are_questionable() {
        // §2.3 policy: flag Low SIQ (0x400) and Pulse Search (0x8) as questionable.
        let rs = parse_line("09/15/10 15:10:29 SPO2=097% BPM=064 EXC=000C08")
            .unwrap()
            .readings();
        assert_eq!(value(&rs, Metric::Spo2), Value::Number(Decimal::int(97)));
        assert_eq!(
            rs[0].flags,
            vec![Flag::Searching, Flag::LowSignalQuality, Flag::Questionable]
        );
    }

    #[test]
    fn masimo_each_suppressing_exception_withholds_numbers() {
        for exc in [0x1, 0x2, 0x20, 0x80] {
            let rs = parse_line(&format!("09/15/10 15:10:29 SPO2=097% BPM=064 EXC={exc:X}"))
                .unwrap()
                .readings();
            assert!(
                rs.iter().all(|r| r.value == Value::Absent(Absent::Missing)),
                "EXC {exc:#x}"
            );
        }
    }

    #[test]
    fn masimo_bad_clock_is_malformed() {
        let err = parse_line("13/45/10 15:10:29 SPO2=097%").unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(m) if m.contains("MM/DD/YY")));
    }

    #[test]
    fn masimo_garbage_value_is_malformed_and_names_the_key() {
        let err = parse_line("09/15/10 15:10:29 SPO2=9x7%").unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(m) if m.contains("SPO2")));
    }

    #[test]
    fn masimo_every_truncation_needs_more() {
        assert_truncations_need_more(make, M2.as_bytes());
    }

    #[test]
    fn masimo_garbage_then_line_decodes() {
        let mut bytes = b"\x00\xffnoise\r\n".to_vec();
        bytes.extend(M3.as_bytes());
        let (rs, errors, _) = run(make().as_mut(), &bytes);
        assert_eq!(errors.len(), 1);
        assert_eq!(rs.len(), 3);
    }

    #[test]
    fn masimo_overlong_line_is_skipped() {
        let mut bytes = vec![b'A'; MAX_LINE + 10];
        bytes.extend(b"\r\n");
        bytes.extend(M3.as_bytes());
        let (rs, errors, _) = run(make().as_mut(), &bytes);
        assert!(matches!(errors.as_slice(), [DecodeError::BadLength(_)]));
        assert_eq!(rs.len(), 3);
    }

    proptest! {
        #[test]
        fn masimo_never_panics_and_consumes_within_len(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            prop_assert_eq!(check_contract(make().as_mut(), &bytes, MAX_FRAME), Ok(()));
        }

        #[test]
        fn masimo_never_panics_on_near_lines(s in "[0-9/: A-Z=%+.-]{0,120}\r\n") {
            prop_assert_eq!(check_contract(make().as_mut(), s.as_bytes(), MAX_FRAME), Ok(()));
        }

        #[test]
        fn masimo_resyncs_after_any_garbage(garbage in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = SimSample { spo2: Some(93), pulse: Some(150), pi: Some(Decimal::new(42, -1)), ..Default::default() };
            let want = vec![
                Reading::canonical(Metric::Spo2, Decimal::int(93)),
                Reading::canonical(Metric::PulseRate, Decimal::int(150)),
                Reading::canonical(Metric::PerfusionIndex, Decimal::new(42, -1)),
            ];
            prop_assert_eq!(check_resync(make().as_mut(), &garbage, &encode(&s, &Faults::default()), &want), Ok(()));
        }

        #[test]
        fn masimo_encode_decode_round_trips(
            spo2 in proptest::option::of(50u8..=100),
            pulse in proptest::option::of(20u16..=300),
            pi in proptest::option::of(0i64..=2000),
            flags in proptest::sample::subsequence(vec![Flag::LowPerfusion, Flag::Interference, Flag::LowBattery], 0..=3),
        ) {
            let pi = pi.map(|m| Decimal::new(m, -2));
            let s = SimSample { spo2, pulse, pi, flags: flags.clone(), time: None };
            let (got, errs, _) = run(make().as_mut(), &encode(&s, &Faults::default()));
            prop_assert!(errs.is_empty(), "{:?}", errs);
            let want = |m, v: Option<Decimal>| match v {
                Some(d) => Reading::canonical(m, d),
                None => Reading::absent(m, Absent::Missing),
            }.with_flags(flags.iter().copied());
            prop_assert_eq!(got, vec![
                want(Metric::Spo2, spo2.map(|v| Decimal::int(i64::from(v)))),
                want(Metric::PulseRate, pulse.map(|v| Decimal::int(i64::from(v)))),
                want(Metric::PerfusionIndex, pi),
            ]);
        }

        #[test]
        fn masimo_corrupt_fault_is_rejected(spo2 in 50u8..=100) {
            let s = SimSample { spo2: Some(spo2), ..Default::default() };
            let (got, errs, _) = run(make().as_mut(), &encode(&s, &Faults { corrupt: true, ..Default::default() }));
            prop_assert!(got.is_empty());
            prop_assert_eq!(errs.len(), 1);
        }
    }
}

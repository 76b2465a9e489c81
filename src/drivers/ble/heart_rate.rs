//! Heart Rate Measurement (0x2A37), protocols.md §1.4.
//!
//! Gives one `heart_rate` reading (bpm). When the strap says it supports contact detection and
//! has **no** skin contact, the reading keeps the number the device sent and carries
//! `sensor_off`: the value is not from a body and alerting must treat it as a technical
//! condition, not a heart rate. Energy expended (kJ) and RR intervals (1/1024 s, not ms) have
//! no metric and are only in the typed form.

use super::wire::{flags, Wire};
use crate::drivers::DecodeError;
use crate::reading::{Decimal, Flag, Metric, Reading};

const FLAG_HR_U16: u8 = 0x01;
const FLAG_EE: u8 = 0x08;
const FLAG_RR: u8 = 0x10;
const RFU: u8 = 0xE0;

/// Skin-contact status (flags bits 1–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorContact {
    /// Values 0 and 1: the sensor cannot tell.
    NotSupported,
    /// Value 2: supported, and the sensor is not on the skin.
    NotDetected,
    /// Value 3: supported and detected.
    Detected,
}

/// A decoded Heart Rate Measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartRateMeasurement {
    /// Beats per minute.
    pub bpm: u16,
    pub sensor_contact: SensorContact,
    /// Energy expended since the last reset, kilojoules.
    pub energy_expended_kj: Option<u16>,
    /// RR intervals in raw ticks of 1/1024 s, oldest first (see [`rr_interval_seconds`]).
    pub rr_intervals: Vec<u16>,
}

/// An RR interval in seconds, exactly: `raw / 1024` = `raw × 0.0009765625`.
pub fn rr_interval_seconds(raw: u16) -> Decimal {
    Decimal::new(i64::from(raw) * 9_765_625, -10)
}

/// Decodes a whole Heart Rate Measurement value.
///
/// With the RR flag set at least one interval must follow; an odd number of bytes after the
/// fixed fields is a truncated interval (`TooShort`).
pub fn decode_heart_rate(buf: &[u8]) -> Result<HeartRateMeasurement, DecodeError> {
    let f = flags(buf, RFU, "Heart Rate Measurement", 2)?;
    let fixed = 1 + if f & FLAG_HR_U16 != 0 { 2 } else { 1 } + if f & FLAG_EE != 0 { 2 } else { 0 };
    let min = fixed + if f & FLAG_RR != 0 { 2 } else { 0 };
    if buf.len() < min {
        return Err(DecodeError::TooShort {
            needed: min,
            got: buf.len(),
        });
    }
    let mut w = Wire::new(buf);
    w.u8()?;
    let bpm = if f & FLAG_HR_U16 != 0 {
        w.u16()?
    } else {
        u16::from(w.u8()?)
    };
    let sensor_contact = match (f >> 1) & 0x03 {
        2 => SensorContact::NotDetected,
        3 => SensorContact::Detected,
        _ => SensorContact::NotSupported,
    };
    let energy_expended_kj = if f & FLAG_EE != 0 {
        Some(w.u16()?)
    } else {
        None
    };
    let mut rr_intervals = Vec::new();
    if f & FLAG_RR != 0 {
        if w.remaining() % 2 != 0 {
            return Err(DecodeError::TooShort {
                needed: buf.len() + 1,
                got: buf.len(),
            });
        }
        while w.remaining() >= 2 {
            rr_intervals.push(w.u16()?);
        }
    }
    w.finish()?;
    Ok(HeartRateMeasurement {
        bpm,
        sensor_contact,
        energy_expended_kj,
        rr_intervals,
    })
}

impl HeartRateMeasurement {
    /// One `heart_rate` reading, flagged `sensor_off` when contact is supported but not detected.
    pub fn to_readings(&self) -> Vec<Reading> {
        let mut r = Reading::canonical(Metric::HeartRate, Decimal::int(i64::from(self.bpm)));
        if self.sensor_contact == SensorContact::NotDetected {
            r = r.with_flags([Flag::SensorOff]);
        }
        vec![r]
    }
}

/// Registry form (`ble-heart-rate`).
pub fn heart_rate_readings(buf: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    decode_heart_rate(buf).map(|m| m.to_readings())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ble::wire::testutil::*;
    use crate::reading::Unit;
    use proptest::prelude::*;

    #[test]
    fn heart_rate_hr1_uint8_without_options() {
        // protocols.md §1.4 vector HR1
        let m = decode_heart_rate(&hexb("00 55")).unwrap();
        assert_eq!(
            m,
            HeartRateMeasurement {
                bpm: 85,
                sensor_contact: SensorContact::NotSupported,
                energy_expended_kj: None,
                rr_intervals: vec![]
            }
        );
        let r = m.to_readings();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].metric, exact(&r[0]), r[0].unit),
            (Metric::HeartRate, (85, 0), Some(Unit::PerMinute))
        );
        assert!(r[0].flags.is_empty());
    }

    #[test]
    fn heart_rate_hr2_no_contact_is_flagged_sensor_off() {
        // protocols.md §1.4 vector HR2
        let m = decode_heart_rate(&hexb("04 FF")).unwrap();
        assert_eq!((m.bpm, m.sensor_contact), (255, SensorContact::NotDetected));
        assert_eq!(m.to_readings()[0].flags, vec![Flag::SensorOff]);
    }

    #[test]
    fn heart_rate_hr3_energy_and_one_rr_interval() {
        // protocols.md §1.4 vector HR3
        let m = decode_heart_rate(&hexb("1E 55 32 00 21 00")).unwrap();
        assert_eq!(m.bpm, 85);
        assert_eq!(m.sensor_contact, SensorContact::Detected);
        assert_eq!(m.energy_expended_kj, Some(50));
        assert_eq!(m.rr_intervals, vec![33]);
        assert!(m.to_readings()[0].flags.is_empty());
    }

    #[test]
    fn heart_rate_hr4_uint16_with_three_rr_intervals() {
        // protocols.md §1.4 vector HR4
        let m = decode_heart_rate(&hexb("1F 01 01 32 01 01 00 02 01 FF FF")).unwrap();
        assert_eq!(m.bpm, 257);
        assert_eq!(m.energy_expended_kj, Some(306));
        assert_eq!(m.rr_intervals, vec![1, 258, 65535]);
    }

    #[test]
    fn heart_rate_hr5_rr_flagged_but_missing_is_too_short() {
        // protocols.md §1.4 vector HR5
        assert_eq!(
            decode_heart_rate(&hexb("17 01 01")),
            Err(DecodeError::TooShort { needed: 5, got: 3 })
        );
    }

    #[test]
    fn rr_interval_is_in_units_of_1024th_second() {
        // protocols.md §1.4 / §4 pitfall 2: HR3's 33 ticks = 32.2 ms, not 33 ms
        assert_eq!(rr_interval_seconds(33).to_string(), "0.0322265625");
        assert_eq!(rr_interval_seconds(1024), Decimal::int(1));
    }

    #[test]
    fn heart_rate_every_flag_combination_decodes_its_fields() {
        // protocols.md §1.4 layout: flags | HR (1|2) | [EE 2] | [RR 2 × n]; one RR interval, so
        // every strict prefix is a truncation (two would make the first interval a valid value)
        for f in 0u8..0x20 {
            let mut v = vec![f];
            if f & FLAG_HR_U16 != 0 {
                v.extend([0x2C, 0x01])
            } else {
                v.push(0x48)
            }
            if f & FLAG_EE != 0 {
                v.extend([0x10, 0x00])
            }
            if f & FLAG_RR != 0 {
                v.extend([0x00, 0x04])
            }
            let m = decode_heart_rate(&v).unwrap_or_else(|e| panic!("flags {f:#04x}: {e}"));
            assert_eq!(
                m.bpm,
                if f & FLAG_HR_U16 != 0 { 300 } else { 72 },
                "{f:#04x}"
            );
            assert_eq!(
                m.energy_expended_kj,
                (f & FLAG_EE != 0).then_some(16),
                "{f:#04x}"
            );
            let rr: Vec<u16> = if f & FLAG_RR != 0 { vec![1024] } else { vec![] };
            assert_eq!(m.rr_intervals, rr, "{f:#04x}");
            assert_truncations_too_short(decode_heart_rate, &v);
            if f & FLAG_RR == 0 {
                assert_trailing_rejected(decode_heart_rate, &v);
            }
        }
    }

    #[test]
    fn heart_rate_odd_rr_byte_is_a_truncated_interval() {
        // protocols.md §1.4: RR count = remaining bytes / 2, so a lone byte is half an interval
        assert_eq!(
            decode_heart_rate(&hexb("10 48 00 04 00")),
            Err(DecodeError::TooShort { needed: 6, got: 5 })
        );
    }

    #[test]
    fn heart_rate_reserved_flag_bits_are_refused() {
        // protocols.md §1.4: bits 5–7 RFU
        for f in [0x20u8, 0x40, 0x80] {
            assert!(matches!(
                decode_heart_rate(&[f, 0x48]),
                Err(DecodeError::Unsupported(_))
            ));
        }
    }

    proptest! {
        #[test]
        fn heart_rate_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = heart_rate_readings(&bytes);
        }
    }
}

//! Blood Pressure Measurement (0x2A35) and Intermediate Cuff Pressure (0x2A36),
//! protocols.md §1.6.
//!
//! A measurement gives `systolic_bp`, `diastolic_bp`, `mean_bp` (in `mm[Hg]` or `kPa`, as the
//! device sent them: no conversion, so the exact digits stay) and, when present, `pulse_rate`
//! (`/min`; the units flag does not apply to it). Measurement Status bits become flags on every
//! reading of the measurement: body movement, cuff too loose, irregular pulse, improper
//! measurement position. The pulse-rate-range bits compare against device-set limits and stay
//! in the typed form only.
//!
//! The user id (255 = unknown user) is in the typed form only: on a shared cuff, deciding
//! whether a reading belongs to the monitored patient is the central's job, from configuration.
//!
//! Intermediate Cuff Pressure is the cuff pressure during inflation, never a result: it has a
//! typed decoder (for progress display) and no reading form. Its diastolic and MAP slots are
//! unused and ignored.

use super::datetime::DateTime;
use super::ieee11073::Float11073;
use super::wire::{expect_len, flags, Wire};
use crate::drivers::DecodeError;
use crate::reading::{Flag, Metric, Reading, Unit};

const FLAG_KPA: u8 = 0x01;
const FLAG_TIME_STAMP: u8 = 0x02;
const FLAG_PULSE: u8 = 0x04;
const FLAG_USER: u8 = 0x08;
const FLAG_STATUS: u8 = 0x10;
const RFU: u8 = 0xE0;

/// User id 255: the device does not know who measured.
pub const UNKNOWN_USER: u8 = 255;

/// Unit of systolic, diastolic, MAP and cuff pressure (flags bit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressureUnit {
    MmHg,
    KiloPascal,
}

impl PressureUnit {
    /// The UCUM unit.
    pub fn unit(self) -> Unit {
        match self {
            PressureUnit::MmHg => Unit::MmHg,
            PressureUnit::KiloPascal => Unit::KiloPascal,
        }
    }
}

/// Pulse rate against the device's own limits (status bits 3–4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PulseRateRange {
    WithinRange,
    ExceedsUpperLimit,
    BelowLowerLimit,
    Reserved,
}

/// Measurement Status (16 bits, protocols.md §1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpStatus(pub u16);

impl BpStatus {
    pub fn body_movement(self) -> bool {
        self.0 & 0x0001 != 0
    }
    pub fn cuff_too_loose(self) -> bool {
        self.0 & 0x0002 != 0
    }
    pub fn irregular_pulse(self) -> bool {
        self.0 & 0x0004 != 0
    }
    pub fn pulse_rate_range(self) -> PulseRateRange {
        match (self.0 >> 3) & 0x03 {
            0 => PulseRateRange::WithinRange,
            1 => PulseRateRange::ExceedsUpperLimit,
            2 => PulseRateRange::BelowLowerLimit,
            _ => PulseRateRange::Reserved,
        }
    }
    pub fn improper_position(self) -> bool {
        self.0 & 0x0020 != 0
    }

    /// The reading flags these bits imply.
    pub fn flags(self) -> Vec<Flag> {
        [
            (self.body_movement(), Flag::BodyMovement),
            (self.cuff_too_loose(), Flag::CuffFitLoose),
            (self.irregular_pulse(), Flag::IrregularPulse),
            (self.improper_position(), Flag::ImproperPosition),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect()
    }
}

/// A decoded Blood Pressure Measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BloodPressureMeasurement {
    pub unit: PressureUnit,
    pub systolic: Float11073,
    pub diastolic: Float11073,
    pub mean_arterial: Float11073,
    pub time_stamp: Option<DateTime>,
    /// Beats per minute (not affected by the units flag).
    pub pulse_rate: Option<Float11073>,
    /// 255 ([`UNKNOWN_USER`]) = unknown user.
    pub user_id: Option<u8>,
    pub status: Option<BpStatus>,
}

/// A decoded Intermediate Cuff Pressure: the cuff pressure during inflation, never a result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntermediateCuffPressure {
    pub unit: PressureUnit,
    pub cuff_pressure: Float11073,
    pub time_stamp: Option<DateTime>,
    pub pulse_rate: Option<Float11073>,
    pub user_id: Option<u8>,
    pub status: Option<BpStatus>,
}

/// Decodes a whole Blood Pressure Measurement value.
pub fn decode_blood_pressure(buf: &[u8]) -> Result<BloodPressureMeasurement, DecodeError> {
    let f = flags(buf, RFU, "Blood Pressure Measurement", 7)?;
    let needed = 7
        + if f & FLAG_TIME_STAMP != 0 { 7 } else { 0 }
        + if f & FLAG_PULSE != 0 { 2 } else { 0 }
        + if f & FLAG_USER != 0 { 1 } else { 0 }
        + if f & FLAG_STATUS != 0 { 2 } else { 0 };
    expect_len(buf, needed)?;
    let mut w = Wire::new(buf);
    w.u8()?;
    let systolic = w.sfloat()?;
    let diastolic = w.sfloat()?;
    let mean_arterial = w.sfloat()?;
    let time_stamp = if f & FLAG_TIME_STAMP != 0 {
        Some(w.date_time()?)
    } else {
        None
    };
    let pulse_rate = if f & FLAG_PULSE != 0 {
        Some(w.sfloat()?)
    } else {
        None
    };
    let user_id = if f & FLAG_USER != 0 {
        Some(w.u8()?)
    } else {
        None
    };
    let status = if f & FLAG_STATUS != 0 {
        Some(BpStatus(w.u16()?))
    } else {
        None
    };
    w.finish()?;
    let unit = if f & FLAG_KPA != 0 {
        PressureUnit::KiloPascal
    } else {
        PressureUnit::MmHg
    };
    Ok(BloodPressureMeasurement {
        unit,
        systolic,
        diastolic,
        mean_arterial,
        time_stamp,
        pulse_rate,
        user_id,
        status,
    })
}

/// Decodes a whole Intermediate Cuff Pressure value (same layout as the measurement).
pub fn decode_intermediate_cuff_pressure(
    buf: &[u8],
) -> Result<IntermediateCuffPressure, DecodeError> {
    let m = decode_blood_pressure(buf)?;
    Ok(IntermediateCuffPressure {
        unit: m.unit,
        cuff_pressure: m.systolic,
        time_stamp: m.time_stamp,
        pulse_rate: m.pulse_rate,
        user_id: m.user_id,
        status: m.status,
    })
}

fn reading(metric: Metric, v: Float11073, unit: Unit) -> Reading {
    let mut r = Reading::absent(metric, crate::reading::Absent::Nan);
    r.value = v.to_value();
    r.unit = Some(unit);
    r
}

impl BloodPressureMeasurement {
    /// Systolic, diastolic, mean and (if present) pulse rate, each with the status flags and
    /// the device time.
    pub fn to_readings(&self) -> Vec<Reading> {
        let unit = self.unit.unit();
        let mut out = vec![
            reading(Metric::SystolicBp, self.systolic, unit),
            reading(Metric::DiastolicBp, self.diastolic, unit),
            reading(Metric::MeanBp, self.mean_arterial, unit),
        ];
        if let Some(p) = self.pulse_rate {
            out.push(reading(Metric::PulseRate, p, Unit::PerMinute));
        }
        let flags = self.status.map(BpStatus::flags).unwrap_or_default();
        let time = self.time_stamp.and_then(|t| t.device_time());
        out.into_iter()
            .map(|mut r| {
                r.device_time = time;
                r.with_flags(flags.iter().copied())
            })
            .collect()
    }
}

/// Registry form (`ble-blood-pressure`).
pub fn blood_pressure_readings(buf: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    decode_blood_pressure(buf).map(|m| m.to_readings())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ble::wire::testutil::*;
    use crate::reading::{Absent, Decimal, Value};
    use proptest::prelude::*;
    use time::macros::datetime;

    fn values(rs: &[Reading]) -> Vec<(Metric, (i64, i8), Option<Unit>)> {
        rs.iter().map(|r| (r.metric, exact(r), r.unit)).collect()
    }

    #[test]
    fn blood_pressure_bp1_full_measurement() {
        // protocols.md §1.6 vector BP1
        let m = decode_blood_pressure(&hexb(
            "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
        ))
        .unwrap();
        assert_eq!(m.user_id, Some(1));
        let t = m.time_stamp.unwrap();
        assert_eq!(
            (t.year, t.month, t.day, t.hours, t.minutes, t.seconds),
            (0, 4, 17, 20, 41, 59)
        );
        let s = m.status.unwrap();
        assert_eq!(s, BpStatus(0x0027));
        assert_eq!(s.pulse_rate_range(), PulseRateRange::WithinRange);
        let rs = m.to_readings();
        let mmhg = Some(Unit::MmHg);
        assert_eq!(
            values(&rs),
            vec![
                (Metric::SystolicBp, (138, 0), mmhg),
                (Metric::DiastolicBp, (88, 0), mmhg),
                (Metric::MeanBp, (120, 0), mmhg),
                (Metric::PulseRate, (60, 0), Some(Unit::PerMinute)),
            ]
        );
        for r in &rs {
            assert_eq!(
                r.device_time, None,
                "year unknown: untrusted clock (protocols.md §1.3)"
            );
            assert_eq!(
                r.flags,
                vec![
                    Flag::IrregularPulse,
                    Flag::CuffFitLoose,
                    Flag::BodyMovement,
                    Flag::ImproperPosition
                ] // (sorted in Flag order by Reading::with_flags)
            );
        }
    }

    #[test]
    fn blood_pressure_bp2_kpa_with_pulse_and_status() {
        // protocols.md §1.6 vector BP2
        let m = decode_blood_pressure(&hexb("15 BD F0 0B 00 9F F0 3C 00 12 00")).unwrap();
        assert_eq!(m.unit, PressureUnit::KiloPascal);
        assert_eq!(
            m.status.unwrap().pulse_rate_range(),
            PulseRateRange::BelowLowerLimit
        );
        let rs = m.to_readings();
        let kpa = Some(Unit::KiloPascal);
        assert_eq!(
            values(&rs),
            vec![
                (Metric::SystolicBp, (189, -1), kpa),
                (Metric::DiastolicBp, (11, 0), kpa),
                (Metric::MeanBp, (159, -1), kpa),
                (Metric::PulseRate, (60, 0), Some(Unit::PerMinute)),
            ]
        );
        assert!(rs.iter().all(|r| r.flags == vec![Flag::CuffFitLoose]));
    }

    #[test]
    fn blood_pressure_bp3_minimal_mmhg() {
        // protocols.md §1.6 vector BP3
        let rs = blood_pressure_readings(&hexb("00 BD F0 0B 00 9F F0")).unwrap();
        let mmhg = Some(Unit::MmHg);
        assert_eq!(
            values(&rs),
            vec![
                (Metric::SystolicBp, (189, -1), mmhg),
                (Metric::DiastolicBp, (11, 0), mmhg),
                (Metric::MeanBp, (159, -1), mmhg),
            ]
        );
        assert!(rs
            .iter()
            .all(|r| r.flags.is_empty() && r.device_time.is_none()));
    }

    #[test]
    fn blood_pressure_bp4_six_bytes_is_too_short() {
        // protocols.md §1.6 vector BP4
        assert_eq!(
            decode_blood_pressure(&hexb("01 02 03 04 05 06")),
            Err(DecodeError::TooShort { needed: 7, got: 6 })
        );
    }

    #[test]
    fn blood_pressure_bp5_timestamp_flagged_but_absent_is_too_short() {
        // protocols.md §1.6 vector BP5
        assert_eq!(
            decode_blood_pressure(&hexb("03 02 03 04 05 06 07")),
            Err(DecodeError::TooShort { needed: 14, got: 7 })
        );
    }

    #[test]
    fn intermediate_cuff_pressure_icp1_reads_cuff_pressure_only() {
        // protocols.md §1.6 vector ICP1
        let m = decode_intermediate_cuff_pressure(&hexb(
            "1E 04 00 00 00 00 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
        ))
        .unwrap();
        assert_eq!(m.cuff_pressure, Float11073::Number(Decimal::int(4)));
        assert_eq!(m.unit, PressureUnit::MmHg);
        assert_eq!(m.pulse_rate, Some(Float11073::Number(Decimal::int(60))));
        assert_eq!((m.user_id, m.status), (Some(1), Some(BpStatus(0x0027))));
    }

    #[test]
    fn blood_pressure_with_known_date_sets_device_time() {
        // protocols.md §1.3 Date Time inside §1.6
        let rs =
            blood_pressure_readings(&hexb("02 80 00 50 00 60 00 EA 07 0B 17 07 05 09")).unwrap();
        assert!(rs
            .iter()
            .all(|r| r.device_time == Some(datetime!(2026-11-23 07:05:09 UTC))));
    }

    #[test]
    fn blood_pressure_special_values_become_absent() {
        // protocols.md §1.2: NRes systolic (cuff out of range) is not NaN and not a number
        let rs = blood_pressure_readings(&hexb("00 00 08 FF 07 02 08")).unwrap();
        assert_eq!(rs[0].value, Value::Absent(Absent::Nres));
        assert_eq!(rs[1].value, Value::Absent(Absent::Nan));
        assert_eq!(rs[2].value, Value::Absent(Absent::NegInf));
    }

    #[test]
    fn blood_pressure_status_pulse_range_values() {
        // protocols.md §1.6 Measurement Status bits 3–4
        assert_eq!(
            BpStatus(0x0008).pulse_rate_range(),
            PulseRateRange::ExceedsUpperLimit
        );
        assert_eq!(
            BpStatus(0x0018).pulse_rate_range(),
            PulseRateRange::Reserved
        );
        assert!(BpStatus(0x0018).flags().is_empty());
    }

    #[test]
    fn blood_pressure_every_flag_combination_decodes_its_fields() {
        // protocols.md §1.6 layout: flags | sys | dia | MAP | [time 7] | [pulse 2] | [user 1] | [status 2]
        for f in 0u8..0x20 {
            let mut v = vec![f, 0x78, 0x00, 0x50, 0x00, 0x5D, 0x00];
            if f & FLAG_TIME_STAMP != 0 {
                v.extend(hexb("EA 07 0B 17 07 05 09"))
            }
            if f & FLAG_PULSE != 0 {
                v.extend([0x48, 0x00])
            }
            if f & FLAG_USER != 0 {
                v.push(UNKNOWN_USER)
            }
            if f & FLAG_STATUS != 0 {
                v.extend([0x04, 0x00])
            }
            let m = decode_blood_pressure(&v).unwrap_or_else(|e| panic!("flags {f:#04x}: {e}"));
            let rs = m.to_readings();
            let unit = if f & FLAG_KPA != 0 {
                Unit::KiloPascal
            } else {
                Unit::MmHg
            };
            assert_eq!(
                rs.len(),
                if f & FLAG_PULSE != 0 { 4 } else { 3 },
                "{f:#04x}"
            );
            assert_eq!(
                (exact(&rs[0]), rs[0].unit),
                ((120, 0), Some(unit)),
                "{f:#04x}"
            );
            assert_eq!(exact(&rs[1]), (80, 0));
            assert_eq!(exact(&rs[2]), (93, 0));
            if let Some(p) = rs.get(3) {
                assert_eq!(
                    (p.metric, exact(p), p.unit),
                    (Metric::PulseRate, (72, 0), Some(Unit::PerMinute))
                );
            }
            let t = (f & FLAG_TIME_STAMP != 0).then_some(datetime!(2026-11-23 07:05:09 UTC));
            let fl = if f & FLAG_STATUS != 0 {
                vec![Flag::IrregularPulse]
            } else {
                vec![]
            };
            assert!(
                rs.iter().all(|r| r.device_time == t && r.flags == fl),
                "{f:#04x}"
            );
            assert_eq!(m.user_id, (f & FLAG_USER != 0).then_some(UNKNOWN_USER));
            assert_truncations_too_short(decode_blood_pressure, &v);
            assert_trailing_rejected(decode_blood_pressure, &v);
        }
    }

    #[test]
    fn blood_pressure_reserved_flag_bits_are_refused() {
        // protocols.md §1.6: bits 5–7 RFU
        for f in [0x20u8, 0x40, 0x80] {
            let v = [f, 0x78, 0x00, 0x50, 0x00, 0x5D, 0x00];
            assert!(
                matches!(decode_blood_pressure(&v), Err(DecodeError::Unsupported(_))),
                "{f:#04x}"
            );
        }
    }

    #[test]
    fn blood_pressure_invalid_date_in_time_stamp_refuses_the_value() {
        // protocols.md §1.3: month 13 is invalid, not "unknown"
        let e =
            decode_blood_pressure(&hexb("02 80 00 50 00 60 00 EA 07 0D 17 07 05 09")).unwrap_err();
        assert!(
            matches!(e, DecodeError::Malformed(ref m) if m.contains("month 13")),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn blood_pressure_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..30)) {
            let _ = blood_pressure_readings(&bytes);
            let _ = decode_intermediate_cuff_pressure(&bytes);
        }
    }
}

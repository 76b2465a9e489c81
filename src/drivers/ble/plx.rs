//! Pulse Oximeter service: PLX Spot-check (0x2A5E), PLX Continuous (0x2A5F) and PLX Features
//! (0x2A60), protocols.md §1.7 (PLXS §3.1–3.5).
//!
//! Readings: `spo2` (%), `pulse_rate` (/min) and, when present, `perfusion_index` (%, the Pulse
//! Amplitude Index). For continuous values only the Normal SpO2/PR pair becomes readings; the
//! Fast and Slow averages are alternative views of the same moment and stay in the typed form.
//!
//! Data that is not a patient's: a Measurement Status with "Data for Demonstration" (bit 10)
//! or "Data for Testing" (bit 11) decodes to an **empty vec** of readings (the value is well
//! formed; [`PlxSpotCheck::not_patient_data`] says why, so the central can count and log it).
//!
//! Status to flags (PLXS Tables 3.4/3.5, with the protocols.md §1.7 policy: measurement bits
//! 14–15 and device bits 1, 11, 13–15 are questionable):
//! - measurement: early estimated data → `searching`; data from storage → `stored`;
//!   calibration ongoing, questionable, invalid → `questionable`; "measurement unavailable"
//!   turns every value of the notification into `missing` (whatever digits were sent).
//! - device and sensor: equipment malfunction, unknown sensor, sensor malfunctioning →
//!   `sensor_fault`; signal processing irregularity, erratic signal → `artifact`; inadequate,
//!   poor or non-pulsatile signal → `low_signal_quality`; low perfusion → `low_perfusion`;
//!   questionable pulse → `questionable`; signal analysis ongoing → `searching`; interference →
//!   `interference`; unconnected to user, displaced → `sensor_off`; sensor disconnected →
//!   `probe_disconnected`; and bits 1, 11, 13, 14, 15 also add `questionable`.
//!
//! The spot-check flag "Device Clock is Not Set" (bit 4) overrides the timestamp: the reading
//! gets no device time (protocols.md §4 pitfall 6).

use super::datetime::DateTime;
use super::ieee11073::Float11073;
use super::wire::{expect_len, flags, Wire};
use crate::drivers::DecodeError;
use crate::reading::{Absent, Flag, Metric, Reading};

const RFU: u8 = 0xE0;

// Spot-check flags
const SPOT_TIME_STAMP: u8 = 0x01;
const SPOT_MEAS_STATUS: u8 = 0x02;
const SPOT_DEVICE_STATUS: u8 = 0x04;
const SPOT_PAI: u8 = 0x08;
const SPOT_CLOCK_NOT_SET: u8 = 0x10;

// Continuous flags
const CONT_FAST: u8 = 0x01;
const CONT_SLOW: u8 = 0x02;
const CONT_MEAS_STATUS: u8 = 0x04;
const CONT_DEVICE_STATUS: u8 = 0x08;
const CONT_PAI: u8 = 0x10;

/// Why a well-formed PLX value gives no readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotPatientData {
    /// Measurement Status bit 10: data for demonstration.
    Demonstration,
    /// Measurement Status bit 11: data for testing.
    Testing,
}

/// PLX Measurement Status (16 bits, PLXS Table 3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlxMeasurementStatus(pub u16);

impl PlxMeasurementStatus {
    pub const MEASUREMENT_ONGOING: u16 = 1 << 5;
    pub const EARLY_ESTIMATED_DATA: u16 = 1 << 6;
    pub const VALIDATED_DATA: u16 = 1 << 7;
    pub const FULLY_QUALIFIED_DATA: u16 = 1 << 8;
    pub const DATA_FROM_STORAGE: u16 = 1 << 9;
    pub const DATA_FOR_DEMONSTRATION: u16 = 1 << 10;
    pub const DATA_FOR_TESTING: u16 = 1 << 11;
    pub const CALIBRATION_ONGOING: u16 = 1 << 12;
    pub const MEASUREMENT_UNAVAILABLE: u16 = 1 << 13;
    pub const QUESTIONABLE_MEASUREMENT: u16 = 1 << 14;
    pub const INVALID_MEASUREMENT: u16 = 1 << 15;

    /// Whether bit `mask` is set.
    pub fn has(self, mask: u16) -> bool {
        self.0 & mask != 0
    }

    /// Demonstration or testing data, which must never become a patient reading.
    pub fn not_patient_data(self) -> Option<NotPatientData> {
        if self.has(Self::DATA_FOR_DEMONSTRATION) {
            Some(NotPatientData::Demonstration)
        } else if self.has(Self::DATA_FOR_TESTING) {
            Some(NotPatientData::Testing)
        } else {
            None
        }
    }

    /// The reading flags these bits imply (see the module docs).
    pub fn flags(self) -> Vec<Flag> {
        [
            (Self::EARLY_ESTIMATED_DATA, Flag::Searching),
            (Self::DATA_FROM_STORAGE, Flag::Stored),
            (Self::CALIBRATION_ONGOING, Flag::Questionable),
            (Self::QUESTIONABLE_MEASUREMENT, Flag::Questionable),
            (Self::INVALID_MEASUREMENT, Flag::Questionable),
        ]
        .into_iter()
        .filter_map(|(mask, flag)| self.has(mask).then_some(flag))
        .collect()
    }
}

/// PLX Device and Sensor Status (24 bits, PLXS Table 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlxDeviceStatus(pub u32);

impl PlxDeviceStatus {
    pub const EXTENDED_DISPLAY_UPDATE_ONGOING: u32 = 1 << 0;
    pub const EQUIPMENT_MALFUNCTION: u32 = 1 << 1;
    pub const SIGNAL_PROCESSING_IRREGULARITY: u32 = 1 << 2;
    pub const INADEQUATE_SIGNAL: u32 = 1 << 3;
    pub const POOR_SIGNAL: u32 = 1 << 4;
    pub const LOW_PERFUSION: u32 = 1 << 5;
    pub const ERRATIC_SIGNAL: u32 = 1 << 6;
    pub const NON_PULSATILE_SIGNAL: u32 = 1 << 7;
    pub const QUESTIONABLE_PULSE: u32 = 1 << 8;
    pub const SIGNAL_ANALYSIS_ONGOING: u32 = 1 << 9;
    pub const SENSOR_INTERFERENCE: u32 = 1 << 10;
    pub const SENSOR_UNCONNECTED_TO_USER: u32 = 1 << 11;
    pub const UNKNOWN_SENSOR_CONNECTED: u32 = 1 << 12;
    pub const SENSOR_DISPLACED: u32 = 1 << 13;
    pub const SENSOR_MALFUNCTIONING: u32 = 1 << 14;
    pub const SENSOR_DISCONNECTED: u32 = 1 << 15;

    /// Whether bit `mask` is set.
    pub fn has(self, mask: u32) -> bool {
        self.0 & mask != 0
    }

    /// The reading flags these bits imply (see the module docs).
    pub fn flags(self) -> Vec<Flag> {
        [
            (Self::EQUIPMENT_MALFUNCTION, Flag::SensorFault),
            (Self::EQUIPMENT_MALFUNCTION, Flag::Questionable),
            (Self::SIGNAL_PROCESSING_IRREGULARITY, Flag::Artifact),
            (Self::INADEQUATE_SIGNAL, Flag::LowSignalQuality),
            (Self::POOR_SIGNAL, Flag::LowSignalQuality),
            (Self::LOW_PERFUSION, Flag::LowPerfusion),
            (Self::ERRATIC_SIGNAL, Flag::Artifact),
            (Self::NON_PULSATILE_SIGNAL, Flag::LowSignalQuality),
            (Self::QUESTIONABLE_PULSE, Flag::Questionable),
            (Self::SIGNAL_ANALYSIS_ONGOING, Flag::Searching),
            (Self::SENSOR_INTERFERENCE, Flag::Interference),
            (Self::SENSOR_UNCONNECTED_TO_USER, Flag::SensorOff),
            (Self::SENSOR_UNCONNECTED_TO_USER, Flag::Questionable),
            (Self::UNKNOWN_SENSOR_CONNECTED, Flag::SensorFault),
            (Self::SENSOR_DISPLACED, Flag::SensorOff),
            (Self::SENSOR_DISPLACED, Flag::Questionable),
            (Self::SENSOR_MALFUNCTIONING, Flag::SensorFault),
            (Self::SENSOR_MALFUNCTIONING, Flag::Questionable),
            (Self::SENSOR_DISCONNECTED, Flag::ProbeDisconnected),
            (Self::SENSOR_DISCONNECTED, Flag::Questionable),
        ]
        .into_iter()
        .filter_map(|(mask, flag)| self.has(mask).then_some(flag))
        .collect()
    }
}

/// An SpO2 (%) and pulse rate (bpm) pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpO2Pr {
    pub spo2: Float11073,
    pub pulse_rate: Float11073,
}

/// A decoded PLX Spot-check Measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlxSpotCheck {
    pub spo2: Float11073,
    pub pulse_rate: Float11073,
    pub time_stamp: Option<DateTime>,
    pub measurement_status: Option<PlxMeasurementStatus>,
    pub device_status: Option<PlxDeviceStatus>,
    /// Pulse Amplitude Index, %.
    pub pulse_amplitude_index: Option<Float11073>,
    /// Flags bit 4: the time stamp is not from a set clock and must not be used.
    pub device_clock_not_set: bool,
}

/// A decoded PLX Continuous Measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlxContinuous {
    pub normal: SpO2Pr,
    pub fast: Option<SpO2Pr>,
    pub slow: Option<SpO2Pr>,
    pub measurement_status: Option<PlxMeasurementStatus>,
    pub device_status: Option<PlxDeviceStatus>,
    /// Pulse Amplitude Index, %.
    pub pulse_amplitude_index: Option<Float11073>,
}

/// A decoded PLX Features value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlxFeatures {
    /// Supported Features: bit 0 measurement status, 1 device and sensor status, 2 spot-check
    /// storage, 3 spot-check timestamp, 4 SpO2PR-Fast, 5 SpO2PR-Slow, 6 PAI, 7 multiple bonds.
    pub supported: u16,
    pub measurement_status_support: Option<u16>,
    pub device_status_support: Option<u32>,
}

fn plx_len(f: u8, opt: [(u8, usize); 5]) -> usize {
    opt.iter()
        .fold(5, |n, &(bit, size)| if f & bit != 0 { n + size } else { n })
}

/// Decodes a whole PLX Spot-check Measurement value.
pub fn decode_plx_spot_check(buf: &[u8]) -> Result<PlxSpotCheck, DecodeError> {
    let f = flags(buf, RFU, "PLX Spot-check Measurement", 5)?;
    let needed = plx_len(
        f,
        [
            (SPOT_TIME_STAMP, 7),
            (SPOT_MEAS_STATUS, 2),
            (SPOT_DEVICE_STATUS, 3),
            (SPOT_PAI, 2),
            (0, 0),
        ],
    );
    expect_len(buf, needed)?;
    let mut w = Wire::new(buf);
    w.u8()?;
    let spo2 = w.sfloat()?;
    let pulse_rate = w.sfloat()?;
    let time_stamp = if f & SPOT_TIME_STAMP != 0 {
        Some(w.date_time()?)
    } else {
        None
    };
    let measurement_status = if f & SPOT_MEAS_STATUS != 0 {
        Some(PlxMeasurementStatus(w.u16()?))
    } else {
        None
    };
    let device_status = if f & SPOT_DEVICE_STATUS != 0 {
        Some(PlxDeviceStatus(w.u24()?))
    } else {
        None
    };
    let pulse_amplitude_index = if f & SPOT_PAI != 0 {
        Some(w.sfloat()?)
    } else {
        None
    };
    w.finish()?;
    Ok(PlxSpotCheck {
        spo2,
        pulse_rate,
        time_stamp,
        measurement_status,
        device_status,
        pulse_amplitude_index,
        device_clock_not_set: f & SPOT_CLOCK_NOT_SET != 0,
    })
}

/// Decodes a whole PLX Continuous Measurement value.
pub fn decode_plx_continuous(buf: &[u8]) -> Result<PlxContinuous, DecodeError> {
    let f = flags(buf, RFU, "PLX Continuous Measurement", 5)?;
    let needed = plx_len(
        f,
        [
            (CONT_FAST, 4),
            (CONT_SLOW, 4),
            (CONT_MEAS_STATUS, 2),
            (CONT_DEVICE_STATUS, 3),
            (CONT_PAI, 2),
        ],
    );
    expect_len(buf, needed)?;
    let mut w = Wire::new(buf);
    w.u8()?;
    let pair = |w: &mut Wire| -> Result<SpO2Pr, DecodeError> {
        Ok(SpO2Pr {
            spo2: w.sfloat()?,
            pulse_rate: w.sfloat()?,
        })
    };
    let normal = pair(&mut w)?;
    let fast = if f & CONT_FAST != 0 {
        Some(pair(&mut w)?)
    } else {
        None
    };
    let slow = if f & CONT_SLOW != 0 {
        Some(pair(&mut w)?)
    } else {
        None
    };
    let measurement_status = if f & CONT_MEAS_STATUS != 0 {
        Some(PlxMeasurementStatus(w.u16()?))
    } else {
        None
    };
    let device_status = if f & CONT_DEVICE_STATUS != 0 {
        Some(PlxDeviceStatus(w.u24()?))
    } else {
        None
    };
    let pulse_amplitude_index = if f & CONT_PAI != 0 {
        Some(w.sfloat()?)
    } else {
        None
    };
    w.finish()?;
    Ok(PlxContinuous {
        normal,
        fast,
        slow,
        measurement_status,
        device_status,
        pulse_amplitude_index,
    })
}

/// Decodes a whole PLX Features value.
pub fn decode_plx_features(buf: &[u8]) -> Result<PlxFeatures, DecodeError> {
    let supported = match buf {
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        _ => {
            return Err(DecodeError::TooShort {
                needed: 2,
                got: buf.len(),
            })
        }
    };
    let needed =
        2 + if supported & 0x01 != 0 { 2 } else { 0 } + if supported & 0x02 != 0 { 3 } else { 0 };
    expect_len(buf, needed)?;
    let mut w = Wire::new(buf);
    w.u16()?;
    let measurement_status_support = if supported & 0x01 != 0 {
        Some(w.u16()?)
    } else {
        None
    };
    let device_status_support = if supported & 0x02 != 0 {
        Some(w.u24()?)
    } else {
        None
    };
    w.finish()?;
    Ok(PlxFeatures {
        supported,
        measurement_status_support,
        device_status_support,
    })
}

/// Shared reading construction for both PLX characteristics.
fn plx_readings(
    pair: SpO2Pr,
    pai: Option<Float11073>,
    ms: Option<PlxMeasurementStatus>,
    ds: Option<PlxDeviceStatus>,
    device_time: Option<time::OffsetDateTime>,
) -> Vec<Reading> {
    if ms.and_then(|s| s.not_patient_data()).is_some() {
        return Vec::new();
    }
    let unavailable = ms.is_some_and(|s| s.has(PlxMeasurementStatus::MEASUREMENT_UNAVAILABLE));
    let mut flags = ms.map(PlxMeasurementStatus::flags).unwrap_or_default();
    flags.extend(ds.map(PlxDeviceStatus::flags).unwrap_or_default());
    let mut values = vec![
        (Metric::Spo2, pair.spo2),
        (Metric::PulseRate, pair.pulse_rate),
    ];
    if let Some(p) = pai {
        values.push((Metric::PerfusionIndex, p));
    }
    values
        .into_iter()
        .map(|(metric, v)| {
            let mut r = Reading::absent(metric, Absent::Missing);
            if !unavailable {
                r.value = v.to_value();
            }
            r.device_time = device_time;
            r.with_flags(flags.iter().copied())
        })
        .collect()
}

impl PlxSpotCheck {
    /// Demonstration or testing data (never a patient reading), if so flagged.
    pub fn not_patient_data(&self) -> Option<NotPatientData> {
        self.measurement_status.and_then(|s| s.not_patient_data())
    }

    /// The device time, unless the device says its clock is not set or the date is unknown.
    pub fn device_time(&self) -> Option<time::OffsetDateTime> {
        if self.device_clock_not_set {
            return None;
        }
        self.time_stamp.and_then(|t| t.device_time())
    }

    /// `spo2`, `pulse_rate` and `perfusion_index` (if sent); empty for demo/test data.
    pub fn to_readings(&self) -> Vec<Reading> {
        let pair = SpO2Pr {
            spo2: self.spo2,
            pulse_rate: self.pulse_rate,
        };
        plx_readings(
            pair,
            self.pulse_amplitude_index,
            self.measurement_status,
            self.device_status,
            self.device_time(),
        )
    }
}

impl PlxContinuous {
    /// Demonstration or testing data (never a patient reading), if so flagged.
    pub fn not_patient_data(&self) -> Option<NotPatientData> {
        self.measurement_status.and_then(|s| s.not_patient_data())
    }

    /// `spo2` and `pulse_rate` from the Normal pair and `perfusion_index` (if sent); empty for
    /// demo/test data. No device time (the characteristic has none).
    pub fn to_readings(&self) -> Vec<Reading> {
        plx_readings(
            self.normal,
            self.pulse_amplitude_index,
            self.measurement_status,
            self.device_status,
            None,
        )
    }
}

/// Registry form (`ble-plx-spot`); demo/test data gives `Ok(vec![])`.
pub fn plx_spot_check_readings(buf: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    decode_plx_spot_check(buf).map(|m| m.to_readings())
}

/// Registry form (`ble-plx-continuous`); demo/test data gives `Ok(vec![])`.
pub fn plx_continuous_readings(buf: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    decode_plx_continuous(buf).map(|m| m.to_readings())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ble::wire::testutil::*;
    use crate::reading::{Decimal, Unit, Value};
    use proptest::prelude::*;
    use time::macros::datetime;

    fn n(m: i64, e: i8) -> Float11073 {
        Float11073::Number(Decimal::new(m, e))
    }

    fn metrics(rs: &[Reading]) -> Vec<(Metric, (i64, i8))> {
        rs.iter().map(|r| (r.metric, exact(r))).collect()
    }

    #[test]
    fn plx_continuous_p1_normal_pair_only() {
        // protocols.md §1.7 vector P1
        let rs = plx_continuous_readings(&hexb("00 E8 F3 84 F3")).unwrap();
        assert_eq!(
            metrics(&rs),
            vec![(Metric::Spo2, (1000, -1)), (Metric::PulseRate, (900, -1))]
        );
        assert_eq!(rs[0].unit, Some(Unit::Percent));
        assert_eq!(rs[1].unit, Some(Unit::PerMinute));
        assert!(rs
            .iter()
            .all(|r| r.device_time.is_none() && r.flags.is_empty()));
    }

    #[test]
    fn plx_continuous_p2_equals_p1() {
        // protocols.md §1.7 vector P2 (same values as P1, exponent 0)
        let p1 = plx_continuous_readings(&hexb("00 E8 F3 84 F3")).unwrap();
        let p2 = plx_continuous_readings(&hexb("00 64 00 5A 00")).unwrap();
        assert_eq!(p1, p2);
        assert_eq!(exact(&p2[0]), (100, 0));
    }

    #[test]
    fn plx_continuous_p3_status_and_pai() {
        // protocols.md §1.7 vector P3
        let m = decode_plx_continuous(&hexb("1C 5F 00 5A 00 20 00 00 00 00 57 F0")).unwrap();
        assert_eq!(m.measurement_status, Some(PlxMeasurementStatus(0x0020)));
        assert_eq!(m.device_status, Some(PlxDeviceStatus(0)));
        let rs = m.to_readings();
        assert_eq!(
            metrics(&rs),
            vec![
                (Metric::Spo2, (95, 0)),
                (Metric::PulseRate, (90, 0)),
                (Metric::PerfusionIndex, (87, -1))
            ]
        );
        assert_eq!(rs[2].unit, Some(Unit::Percent));
        assert!(
            rs.iter().all(|r| r.flags.is_empty()),
            "measurement ongoing is normal streaming"
        );
    }

    #[test]
    fn plx_continuous_p4_fast_and_slow_stay_typed() {
        // protocols.md §1.7 vector P4
        let m = decode_plx_continuous(&hexb(
            "1F DE F3 CA F3 CA F3 5A F5 D4 F3 B2 F2 20 01 00 00 00 7A E3",
        ))
        .unwrap();
        assert_eq!(
            m.normal,
            SpO2Pr {
                spo2: n(990, -1),
                pulse_rate: n(970, -1)
            }
        );
        assert_eq!(
            m.fast,
            Some(SpO2Pr {
                spo2: n(970, -1),
                pulse_rate: n(1370, -1)
            })
        );
        assert_eq!(
            m.slow,
            Some(SpO2Pr {
                spo2: n(980, -1),
                pulse_rate: n(690, -1)
            })
        );
        assert_eq!(m.measurement_status, Some(PlxMeasurementStatus(0x0120)));
        assert_eq!(m.device_status, Some(PlxDeviceStatus(0)));
        assert_eq!(m.pulse_amplitude_index, Some(n(890, -2)));
        let rs = m.to_readings();
        assert_eq!(
            metrics(&rs),
            vec![
                (Metric::Spo2, (990, -1)),
                (Metric::PulseRate, (970, -1)),
                (Metric::PerfusionIndex, (890, -2))
            ]
        );
    }

    #[test]
    fn plx_spot_check_p5_full_with_status_flags() {
        // protocols.md §1.7 vector P5
        let m = decode_plx_spot_check(&hexb(
            "0F AC F3 BE F5 E8 07 0B 1D 17 08 39 20 40 22 00 00 66 E3",
        ))
        .unwrap();
        assert!(!m.device_clock_not_set);
        let rs = m.to_readings();
        assert_eq!(
            metrics(&rs),
            vec![
                (Metric::Spo2, (940, -1)),
                (Metric::PulseRate, (1470, -1)),
                (Metric::PerfusionIndex, (870, -2))
            ]
        );
        for r in &rs {
            assert_eq!(r.device_time, Some(datetime!(2024-11-29 23:08:57 UTC)));
            // 0x4020 questionable; 0x000022 equipment malfunction + low perfusion
            assert_eq!(
                r.flags,
                vec![Flag::SensorFault, Flag::LowPerfusion, Flag::Questionable]
            );
        }
    }

    #[test]
    fn plx_features_p6() {
        // protocols.md §1.7 vector P6
        assert_eq!(
            decode_plx_features(&hexb("A3 00 40 10 80 01 00")),
            Ok(PlxFeatures {
                supported: 0x00A3,
                measurement_status_support: Some(0x1040),
                device_status_support: Some(0x000180)
            })
        );
        assert_eq!(
            decode_plx_features(&hexb("A3 00 40 10 80 01")),
            Err(DecodeError::TooShort { needed: 7, got: 6 })
        );
        assert_eq!(
            decode_plx_features(&hexb("80 00 00")),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn plx_spot_check_demonstration_data_gives_no_readings() {
        // protocols.md §1.7: Measurement Status bit 10, data for demonstration
        let v = hexb("02 61 00 48 00 00 04");
        assert_eq!(
            decode_plx_spot_check(&v).unwrap().not_patient_data(),
            Some(NotPatientData::Demonstration)
        );
        assert_eq!(plx_spot_check_readings(&v), Ok(vec![]));
    }

    #[test]
    fn plx_spot_check_testing_data_gives_no_readings() {
        // protocols.md §1.7: Measurement Status bit 11, data for testing
        let v = hexb("02 61 00 48 00 00 08");
        assert_eq!(
            decode_plx_spot_check(&v).unwrap().not_patient_data(),
            Some(NotPatientData::Testing)
        );
        assert_eq!(plx_spot_check_readings(&v), Ok(vec![]));
    }

    #[test]
    fn plx_continuous_demonstration_and_testing_data_give_no_readings() {
        // protocols.md §1.7: bits 10 and 11 apply to both characteristics
        assert_eq!(
            plx_continuous_readings(&hexb("04 61 00 48 00 00 04")),
            Ok(vec![])
        );
        assert_eq!(
            plx_continuous_readings(&hexb("04 61 00 48 00 00 08")),
            Ok(vec![])
        );
        assert_eq!(
            plx_continuous_readings(&hexb("04 61 00 48 00 00 0C")),
            Ok(vec![])
        );
        assert_eq!(
            plx_continuous_readings(&hexb("04 61 00 48 00 00 00"))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn plx_spot_check_clock_not_set_overrides_the_time_stamp() {
        // protocols.md §1.7 flags bit 4, §4 pitfall 6
        let v = hexb("11 61 00 48 00 EA 07 0B 17 08 1E 00");
        let m = decode_plx_spot_check(&v).unwrap();
        assert!(m.device_clock_not_set);
        assert!(m.time_stamp.is_some());
        assert!(m.to_readings().iter().all(|r| r.device_time.is_none()));
        let set = plx_spot_check_readings(&hexb("01 61 00 48 00 EA 07 0B 17 08 1E 00")).unwrap();
        assert!(set
            .iter()
            .all(|r| r.device_time == Some(datetime!(2026-11-23 08:30:00 UTC))));
    }

    #[test]
    fn plx_measurement_unavailable_turns_values_into_missing() {
        // PLXS Table 3.4 bit 13: no measurement, whatever digits were sent
        let rs = plx_continuous_readings(&hexb("04 61 00 48 00 00 20")).unwrap();
        assert_eq!(rs.len(), 2);
        assert!(rs.iter().all(|r| r.value == Value::Absent(Absent::Missing)));
    }

    #[test]
    fn plx_nan_spo2_is_absent_nan() {
        // protocols.md §1.7: any unavailable SpO2/PR/PAI is sent as SFLOAT NaN
        let rs = plx_continuous_readings(&hexb("00 FF 07 FF 07")).unwrap();
        assert!(rs.iter().all(|r| r.value == Value::Absent(Absent::Nan)));
    }

    #[test]
    fn plx_measurement_status_bits_map_to_flags() {
        // protocols.md §1.7 Measurement Status table and policy
        let s = |bits: u16| PlxMeasurementStatus(bits).flags();
        assert_eq!(s(1 << 5), vec![]);
        assert_eq!(s(1 << 6), vec![Flag::Searching]);
        assert_eq!(s(1 << 7 | 1 << 8), vec![]);
        assert_eq!(s(1 << 9), vec![Flag::Stored]);
        assert_eq!(s(1 << 12), vec![Flag::Questionable]);
        assert_eq!(s(1 << 14), vec![Flag::Questionable]);
        assert_eq!(s(1 << 15), vec![Flag::Questionable]);
        assert_eq!(s(0x001F), vec![], "bits 0–4 are RFU");
    }

    #[test]
    fn plx_device_status_bits_map_to_flags() {
        // protocols.md §1.7 Device and Sensor Status table and policy (1, 11, 13–15 questionable)
        let d = |bit: u32| {
            let mut f = PlxDeviceStatus(1 << bit).flags();
            f.sort();
            f.dedup();
            f
        };
        use Flag::*;
        let expected: [(u32, Vec<Flag>); 16] = [
            (0, vec![]),
            (1, vec![SensorFault, Questionable]),
            (2, vec![Artifact]),
            (3, vec![LowSignalQuality]),
            (4, vec![LowSignalQuality]),
            (5, vec![LowPerfusion]),
            (6, vec![Artifact]),
            (7, vec![LowSignalQuality]),
            (8, vec![Questionable]),
            (9, vec![Searching]),
            (10, vec![Interference]),
            (11, vec![SensorOff, Questionable]),
            (12, vec![SensorFault]),
            (13, vec![SensorOff, Questionable]),
            (14, vec![SensorFault, Questionable]),
            (15, vec![ProbeDisconnected, Questionable]),
        ];
        for (bit, flags) in expected {
            assert_eq!(d(bit), flags, "device status bit {bit}");
        }
        assert_eq!(
            PlxDeviceStatus(0xFF_0000).flags(),
            vec![],
            "bits 16–23 are RFU"
        );
    }

    #[test]
    fn plx_spot_check_every_flag_combination_decodes_its_fields() {
        // protocols.md §1.7 layout: flags | SpO2 | PR | [time 7] | [MS 2] | [DSS 3] | [PAI 2]
        for f in 0u8..0x20 {
            let mut v = vec![f, 0x61, 0x00, 0x48, 0x00]; // 97 %, 72 bpm
            if f & SPOT_TIME_STAMP != 0 {
                v.extend(hexb("EA 07 0B 17 08 1E 00"))
            }
            if f & SPOT_MEAS_STATUS != 0 {
                v.extend([0x00, 0x02])
            } // from storage
            if f & SPOT_DEVICE_STATUS != 0 {
                v.extend([0x20, 0x00, 0x00])
            } // low perfusion
            if f & SPOT_PAI != 0 {
                v.extend([0x2D, 0xF0])
            } // 4.5
            let m = decode_plx_spot_check(&v).unwrap_or_else(|e| panic!("flags {f:#04x}: {e}"));
            let rs = m.to_readings();
            let mut want = vec![(Metric::Spo2, (97, 0)), (Metric::PulseRate, (72, 0))];
            if f & SPOT_PAI != 0 {
                want.push((Metric::PerfusionIndex, (45, -1)))
            }
            assert_eq!(metrics(&rs), want, "{f:#04x}");
            let mut flags = vec![];
            if f & SPOT_DEVICE_STATUS != 0 {
                flags.push(Flag::LowPerfusion)
            }
            if f & SPOT_MEAS_STATUS != 0 {
                flags.push(Flag::Stored)
            }
            let t = (f & SPOT_TIME_STAMP != 0 && f & SPOT_CLOCK_NOT_SET == 0)
                .then_some(datetime!(2026-11-23 08:30:00 UTC));
            assert!(
                rs.iter().all(|r| r.flags == flags && r.device_time == t),
                "{f:#04x}: {rs:?}"
            );
            assert_truncations_too_short(decode_plx_spot_check, &v);
            assert_trailing_rejected(decode_plx_spot_check, &v);
        }
    }

    #[test]
    fn plx_continuous_every_flag_combination_decodes_its_fields() {
        // protocols.md §1.7 layout: flags | normal 4 | [fast 4] | [slow 4] | [MS 2] | [DSS 3] | [PAI 2]
        for f in 0u8..0x20 {
            let mut v = vec![f, 0x61, 0x00, 0x48, 0x00];
            if f & CONT_FAST != 0 {
                v.extend([0x60, 0x00, 0x4A, 0x00])
            }
            if f & CONT_SLOW != 0 {
                v.extend([0x62, 0x00, 0x46, 0x00])
            }
            if f & CONT_MEAS_STATUS != 0 {
                v.extend([0x40, 0x00])
            } // early estimate
            if f & CONT_DEVICE_STATUS != 0 {
                v.extend([0x00, 0x04, 0x00])
            } // interference
            if f & CONT_PAI != 0 {
                v.extend([0x2D, 0xF0])
            }
            let m = decode_plx_continuous(&v).unwrap_or_else(|e| panic!("flags {f:#04x}: {e}"));
            assert_eq!(m.fast.is_some(), f & CONT_FAST != 0);
            assert_eq!(
                m.slow.map(|p| p.spo2),
                (f & CONT_SLOW != 0).then_some(n(98, 0))
            );
            let rs = m.to_readings();
            let mut want = vec![(Metric::Spo2, (97, 0)), (Metric::PulseRate, (72, 0))];
            if f & CONT_PAI != 0 {
                want.push((Metric::PerfusionIndex, (45, -1)))
            }
            assert_eq!(metrics(&rs), want, "{f:#04x}");
            let mut flags = vec![];
            if f & CONT_MEAS_STATUS != 0 {
                flags.push(Flag::Searching)
            }
            if f & CONT_DEVICE_STATUS != 0 {
                flags.push(Flag::Interference)
            }
            assert!(rs.iter().all(|r| r.flags == flags), "{f:#04x}");
            assert_truncations_too_short(decode_plx_continuous, &v);
            assert_trailing_rejected(decode_plx_continuous, &v);
        }
    }

    #[test]
    fn plx_reserved_flag_bits_are_refused() {
        // protocols.md §1.7: bits 5–7 RFU in both characteristics
        for f in [0x20u8, 0x40, 0x80] {
            let v = [f, 0x61, 0x00, 0x48, 0x00];
            assert!(matches!(
                decode_plx_spot_check(&v),
                Err(DecodeError::Unsupported(_))
            ));
            assert!(matches!(
                decode_plx_continuous(&v),
                Err(DecodeError::Unsupported(_))
            ));
        }
    }

    proptest! {
        #[test]
        fn plx_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..30)) {
            let _ = plx_spot_check_readings(&bytes);
            let _ = plx_continuous_readings(&bytes);
            let _ = decode_plx_features(&bytes);
        }

        #[test]
        fn plx_demo_or_test_status_never_yields_readings(
            spo2 in any::<u16>(), pr in any::<u16>(), status in any::<u16>(), continuous in any::<bool>()
        ) {
            let status = status | if continuous { 1 << 10 } else { 1 << 11 };
            let [s0, s1] = spo2.to_le_bytes();
            let [p0, p1] = pr.to_le_bytes();
            let [m0, m1] = status.to_le_bytes();
            let rs = if continuous {
                plx_continuous_readings(&[CONT_MEAS_STATUS, s0, s1, p0, p1, m0, m1])
            } else {
                plx_spot_check_readings(&[SPOT_MEAS_STATUS, s0, s1, p0, p1, m0, m1])
            };
            prop_assert_eq!(rs, Ok(vec![]));
        }
    }
}

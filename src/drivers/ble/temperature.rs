//! Temperature Measurement (0x2A1C), Intermediate Temperature (0x2A1E) and Temperature Type
//! (0x2A1D), protocols.md §1.5.
//!
//! Gives one `body_temperature` reading in the unit the device chose (`Cel` or `[degF]`, no
//! conversion: the exact digits stay). A special FLOAT (NaN, NRes, ±INF) gives a reading with
//! no number and its reason, never a fake value (T4). Intermediate Temperature has the same
//! layout but is not a final result, so it has a typed decoder and no reading form.

use super::datetime::DateTime;
use super::ieee11073::Float11073;
use super::wire::{expect_len, flags, Wire};
use crate::drivers::DecodeError;
use crate::reading::{Metric, Reading, Unit};

const FLAG_FAHRENHEIT: u8 = 0x01;
const FLAG_TIME_STAMP: u8 = 0x02;
const FLAG_TYPE: u8 = 0x04;
const RFU: u8 = 0xF8;

/// The unit of the temperature value (flags bit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemperatureUnit {
    Celsius,
    Fahrenheit,
}

impl TemperatureUnit {
    /// The UCUM unit.
    pub fn unit(self) -> Unit {
        match self {
            TemperatureUnit::Celsius => Unit::Celsius,
            TemperatureUnit::Fahrenheit => Unit::Fahrenheit,
        }
    }
}

/// Measurement site (Temperature Type, XML `temperature_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemperatureType {
    Armpit,
    Body,
    Ear,
    Finger,
    GastroIntestinalTract,
    Mouth,
    Rectum,
    Toe,
    Tympanum,
    /// 0 and 10–255: reserved; kept so the central can log it.
    Reserved(u8),
}

impl From<u8> for TemperatureType {
    fn from(v: u8) -> Self {
        match v {
            1 => TemperatureType::Armpit,
            2 => TemperatureType::Body,
            3 => TemperatureType::Ear,
            4 => TemperatureType::Finger,
            5 => TemperatureType::GastroIntestinalTract,
            6 => TemperatureType::Mouth,
            7 => TemperatureType::Rectum,
            8 => TemperatureType::Toe,
            9 => TemperatureType::Tympanum,
            other => TemperatureType::Reserved(other),
        }
    }
}

/// A decoded Temperature Measurement (or Intermediate Temperature).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TemperatureMeasurement {
    pub value: Float11073,
    pub unit: TemperatureUnit,
    pub time_stamp: Option<DateTime>,
    pub temperature_type: Option<TemperatureType>,
}

/// Decodes a whole Temperature Measurement value.
pub fn decode_temperature(buf: &[u8]) -> Result<TemperatureMeasurement, DecodeError> {
    let f = flags(buf, RFU, "Temperature Measurement", 5)?;
    let needed =
        5 + if f & FLAG_TIME_STAMP != 0 { 7 } else { 0 } + if f & FLAG_TYPE != 0 { 1 } else { 0 };
    expect_len(buf, needed)?;
    let mut w = Wire::new(buf);
    w.u8()?;
    let value = w.float()?;
    let time_stamp = if f & FLAG_TIME_STAMP != 0 {
        Some(w.date_time()?)
    } else {
        None
    };
    let temperature_type = if f & FLAG_TYPE != 0 {
        Some(w.u8()?.into())
    } else {
        None
    };
    w.finish()?;
    let unit = if f & FLAG_FAHRENHEIT != 0 {
        TemperatureUnit::Fahrenheit
    } else {
        TemperatureUnit::Celsius
    };
    Ok(TemperatureMeasurement {
        value,
        unit,
        time_stamp,
        temperature_type,
    })
}

/// Decodes an Intermediate Temperature (0x2A1E) value: same layout, never a result.
pub fn decode_intermediate_temperature(buf: &[u8]) -> Result<TemperatureMeasurement, DecodeError> {
    decode_temperature(buf)
}

/// Decodes a Temperature Type (0x2A1D) value: one byte.
pub fn decode_temperature_type(buf: &[u8]) -> Result<TemperatureType, DecodeError> {
    expect_len(buf, 1)?;
    let mut w = Wire::new(buf);
    Ok(w.u8()?.into())
}

impl TemperatureMeasurement {
    /// One `body_temperature` reading in the device's unit, with the device time if known.
    pub fn to_readings(&self) -> Vec<Reading> {
        let mut r = Reading::absent(Metric::BodyTemperature, crate::reading::Absent::Nan);
        r.value = self.value.to_value();
        r.unit = Some(self.unit.unit());
        r.device_time = self.time_stamp.and_then(|t| t.device_time());
        vec![r]
    }
}

/// Registry form (`ble-temperature`).
pub fn temperature_readings(buf: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    decode_temperature(buf).map(|m| m.to_readings())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ble::wire::testutil::*;
    use crate::reading::{Absent, Value};
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn temperature_t1_celsius_with_time_and_finger_site() {
        // protocols.md §1.5 vector T1
        let m = decode_temperature(&hexb("06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04")).unwrap();
        assert_eq!(m.unit, TemperatureUnit::Celsius);
        assert_eq!(m.temperature_type, Some(TemperatureType::Finger));
        let r = &m.to_readings()[0];
        assert_eq!(r.metric, Metric::BodyTemperature);
        assert_eq!(exact(r), (3760, -2));
        assert_eq!(r.unit, Some(Unit::Celsius));
        assert_eq!(r.device_time, Some(datetime!(2012-12-05 11:50:27 UTC)));
    }

    #[test]
    fn temperature_t2_type_flagged_but_missing_is_too_short() {
        // protocols.md §1.5 vector T2
        assert_eq!(
            decode_temperature(&hexb("06 B0 0E 00 FE DC 07 0C 05 0B 32 1B")),
            Err(DecodeError::TooShort {
                needed: 13,
                got: 12
            })
        );
    }

    #[test]
    fn temperature_t3_fahrenheit_keeps_device_unit_and_digits() {
        // protocols.md §1.5 vector T3
        let r = &temperature_readings(&hexb("01 DA 03 00 FF")).unwrap()[0];
        assert_eq!((exact(r), r.unit), ((986, -1), Some(Unit::Fahrenheit)));
        assert_eq!(r.device_time, None);
    }

    #[test]
    fn temperature_t4_nan_is_absent_never_a_number() {
        // protocols.md §1.5 vector T4
        let r = &temperature_readings(&hexb("00 FF FF 7F 00")).unwrap()[0];
        assert_eq!(r.value, Value::Absent(Absent::Nan));
    }

    #[test]
    fn temperature_nres_stays_nres() {
        // protocols.md §1.2: NRes (out of range) must stay distinct from NaN
        let r = &temperature_readings(&hexb("00 00 00 80 00")).unwrap()[0];
        assert_eq!(r.value, Value::Absent(Absent::Nres));
    }

    #[test]
    fn temperature_unknown_date_gives_no_device_time() {
        // protocols.md §1.3: a zero year/month/day is an untrusted clock
        let r = &temperature_readings(&hexb("02 70 01 00 FF 00 00 00 00 0B 32 1B")).unwrap()[0];
        assert_eq!((exact(r), r.device_time), ((368, -1), None));
    }

    #[test]
    fn temperature_every_flag_combination_decodes_its_fields() {
        // protocols.md §1.5 layout: flags | FLOAT | [Date Time 7] | [type 1]
        for f in 0u8..0x08 {
            let mut v = vec![f, 0x70, 0x01, 0x00, 0xFF]; // 36.8
            if f & FLAG_TIME_STAMP != 0 {
                v.extend(hexb("EA 07 0B 17 08 1E 00"))
            }
            if f & FLAG_TYPE != 0 {
                v.push(0x06)
            }
            let m = decode_temperature(&v).unwrap_or_else(|e| panic!("flags {f:#04x}: {e}"));
            let r = &m.to_readings()[0];
            assert_eq!(exact(r), (368, -1));
            let unit = if f & FLAG_FAHRENHEIT != 0 {
                Unit::Fahrenheit
            } else {
                Unit::Celsius
            };
            assert_eq!(r.unit, Some(unit), "{f:#04x}");
            let t = (f & FLAG_TIME_STAMP != 0).then_some(datetime!(2026-11-23 08:30:00 UTC));
            assert_eq!(r.device_time, t, "{f:#04x}");
            assert_eq!(
                m.temperature_type,
                (f & FLAG_TYPE != 0).then_some(TemperatureType::Mouth)
            );
            assert_truncations_too_short(decode_temperature, &v);
            assert_trailing_rejected(decode_temperature, &v);
        }
    }

    #[test]
    fn temperature_reserved_flag_bits_are_refused() {
        // protocols.md §1.5: bits 3–7 RFU
        assert!(matches!(
            decode_temperature(&hexb("08 70 01 00 FF")),
            Err(DecodeError::Unsupported(_))
        ));
    }

    #[test]
    fn temperature_type_characteristic_decodes_sites_and_keeps_reserved() {
        // protocols.md §1.5 Temperature Type table
        assert_eq!(decode_temperature_type(&[9]), Ok(TemperatureType::Tympanum));
        assert_eq!(
            decode_temperature_type(&[0]),
            Ok(TemperatureType::Reserved(0))
        );
        assert_eq!(
            decode_temperature_type(&[]),
            Err(DecodeError::TooShort { needed: 1, got: 0 })
        );
        assert_eq!(
            decode_temperature_type(&[1, 2]),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    proptest! {
        #[test]
        fn temperature_any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = temperature_readings(&bytes);
            let _ = decode_temperature_type(&bytes);
        }
    }
}
